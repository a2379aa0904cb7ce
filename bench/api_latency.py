"""API latency under load: p50/p99 of GET /studies/{id} and GET /studies/{id}/trials for a
study with 1,000 finished trials, 50 concurrent clients on loopback.

    .venv/bin/python -m bench.api_latency [--trials 1000] [--connections 50] [--seconds 10] [--workers 1]

The load comes from wrk (Debian package `wrk`), a closed loop of 50 connections sharing the
machine with the server. The reference is GET /healthz (one `SELECT 1`) under the same load:
the floor of this stack on this machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import httpx
import optuna

from bench.scratch import ADMIN_URL, scratch_database
from service import db
from service.config import Settings
from service.spec import EXAMPLE_SPEC, StudySpec, suggest_config
from service.studies import StudyService


def wrk(url: str, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    pct = {m[0]: float(m[1]) * unit[m[2]] for m in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50": pct["50"], "p99": pct["99"], "rps": rps, "non2xx": float(errors.group(1)) if errors else 0.0}


def fill(settings: Settings, n: int) -> None:
    service = StudyService(db.engine(settings), db.optuna_storage(settings), max_trials=10_000, base_url="")
    spec = StudySpec.model_validate({**EXAMPLE_SPEC, "name": "bench", "n_trials": n, "enqueue": []})
    service.create(spec)
    study = optuna.load_study(study_name="bench", storage=db.optuna_storage(settings))
    for i in range(n):
        trial = study.ask()
        suggest_config(trial, spec)
        for step in (200, 400, 600):
            trial.report(100.0 / step + i, step)
        trial.set_user_attr("train_seconds", 1.5)
        study.tell(trial, float(i))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench.api_latency needs wrk: apt-get install wrk")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    server = None
    with scratch_database(args.admin_url) as url:
        try:
            settings = Settings(DATABASE_URL=url)
            db.upgrade(settings)
            t = time.perf_counter()
            fill(settings, args.trials)
            print(f"study with {args.trials} finished trials made in {time.perf_counter() - t:.0f}s")
            db.dispose_all()
            server, base = start_server(url, args.workers)
            measure(base, args.connections, args.seconds)
        finally:
            if server is not None:
                server.terminate()
                server.wait()


def start_server(url: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env={**os.environ, "DATABASE_URL": url},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    return server, base


def measure(base: str, connections: int, seconds: int) -> None:
    results = {}
    for label, path in (
        ("GET /healthz (reference)", "/healthz"),
        ("GET /studies/{id}", "/studies/bench"),
        ("GET /studies/{id}/trials", "/studies/bench/trials"),
    ):
        wrk(base + path, connections, 2)  # warm-up
        results[label] = r = wrk(base + path, connections, seconds)
        print(
            f"{label:28s} p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms  {r['rps']:7.0f} req/s"
            f"  non-2xx {r['non2xx']:.0f}",
            flush=True,
        )
    ref = results["GET /healthz (reference)"]
    for label in ("GET /studies/{id}", "GET /studies/{id}/trials"):
        r = results[label]
        print(f"{label}: p99 {r['p99']:.1f} ms (target <= 50 ms); p99 / healthz p99 = {r['p99'] / ref['p99']:.2f}")


if __name__ == "__main__":
    main()
