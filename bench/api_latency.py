"""API latency under load: p50/p99 of GET /studies/{id} and GET /studies/{id}/trials for a
study with 1,000 finished trials, 50 concurrent clients on loopback.

    .venv/bin/python -m bench.api_latency [--trials 1000] [--connections 50] [--seconds 10] [--workers 1]
        [--read-cache-entries N] [--writes PER_SECOND] [--database-url URL]

Two loads, both on the machine that runs the server: wrk (Debian package `wrk`), a closed
loop of 50 connections each sending its next request as soon as the last one answers (the
server saturated), and an open loop of 50 clients each sending --rate requests a second on
a fixed schedule (latency counted from the scheduled time). The reference is GET /healthz
under the same load: the floor of this stack on this machine.

The server keeps responses while PostgreSQL's snapshot is unchanged (service/readcache.py):
``--read-cache-entries 0`` measures without that, and ``--writes R`` adds R writes a second
to another study meanwhile, so that reads keep falling through to the statement as they do
while workers report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import optuna
import sqlalchemy as sa

from bench.scratch_database import ADMIN_URL, scratch_database
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
    # wrk leaves a request unanswered after 2 s out of its percentiles: count those apart.
    timeouts = re.search(r"Socket errors: .*timeout (\d+)", out)
    return {
        "p50": pct["50"],
        "p99": pct["99"],
        "rps": rps,
        "non2xx": float(errors.group(1)) if errors else 0.0,
        "timeouts": float(timeouts.group(1)) if timeouts else 0.0,
    }


def filled(settings: Settings, n: int) -> bool:
    """Whether a kept --database-url already holds the study."""
    with db.engine(settings).connect() as conn:
        count = "SELECT count(*) FROM trials t JOIN studies s USING (study_id) WHERE s.study_name = 'bench'"
        return bool(conn.execute(sa.text(count)).scalar_one() == n)


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
    parser.add_argument("--rate", type=float, default=2.0, help="open loop: requests a second per client")
    parser.add_argument("--admin-url", default=ADMIN_URL)
    parser.add_argument("--loads", nargs="+", choices=["closed", "open"], default=["closed", "open"])
    parser.add_argument(
        "--read-cache-entries", type=int, help="the server's GAT_TUNE_READ_CACHE_ENTRIES (0: no read cache)"
    )
    parser.add_argument(
        "--writes",
        type=float,
        default=0.0,
        help="meanwhile, this many writes a second (reports to a running trial of another study), as busy workers make",
    )
    parser.add_argument(
        "--database-url", help="use this database (made and filled on first use, kept) instead of a scratch one"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench.api_latency needs wrk: apt-get install wrk")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    server = None
    with contextlib.ExitStack() as stack:
        url = args.database_url or stack.enter_context(scratch_database(args.admin_url))
        try:
            settings = Settings(DATABASE_URL=url)
            db.upgrade(settings)
            if not filled(settings, args.trials):
                t = time.perf_counter()
                fill(settings, args.trials)
                print(f"study with {args.trials} finished trials made in {time.perf_counter() - t:.0f}s")
            # The steady state of a study that finished a while ago: autovacuum has analysed the
            # tables (else it does so in the middle of the measurement, and the planner guesses)
            # and a checkpoint has written the fill out (else it may flush during the run).
            with db.engine(settings).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM ANALYZE"))
                with contextlib.suppress(sa.exc.ProgrammingError):  # CHECKPOINT needs a superuser
                    conn.execute(sa.text("CHECKPOINT"))
            db.dispose_all()
            server, base = start_server(url, args.workers, args.read_cache_entries)
            if args.writes:
                stack.enter_context(writer(settings, args.writes))
            if "closed" in args.loads:
                closed_loop(base, args.connections, args.seconds)
            if "open" in args.loads:
                open_loops(base, args.connections, args.seconds, args.rate)
        finally:
            if server is not None:
                server.terminate()
                server.wait()


@contextlib.contextmanager
def writer(settings: Settings, per_second: float) -> Iterator[None]:
    """A thread reporting intermediate values to a running trial of another study, at a
    steady rate: each report ends a transaction, so PostgreSQL's snapshot changes (what
    invalidates the server's read cache) as often as it does under busy workers."""
    study = optuna.create_study(study_name=f"writes-{time.time_ns()}", storage=db.optuna_storage(settings))
    trial, stop = study.ask(), threading.Event()

    def run() -> None:
        step, start = 0, time.perf_counter()
        while not stop.wait(max(0.0, start + step / per_second - time.perf_counter())):
            trial.report(float(step), step)
            step += 1
        print(f"writer: {step} writes in {time.perf_counter() - start:.0f} s", flush=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def start_server(url: str, workers: int, cache_entries: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env={
            **os.environ,
            "DATABASE_URL": url,
            **({} if cache_entries is None else {"GAT_TUNE_READ_CACHE_ENTRIES": str(cache_entries)}),
        },
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


def open_loop(url: str, clients: int, rate: float, seconds: float) -> dict[str, float]:
    """``clients`` clients, each sending ``rate`` requests a second on its own schedule; a
    latency counts from the scheduled send, so a slow server is not hidden (no coordinated
    omission)."""

    async def run() -> list[float]:
        latencies: list[float] = []
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=clients)) as http:

            async def client(offset: float) -> None:
                start = time.perf_counter() + offset
                for k in range(int(seconds * rate)):
                    due = start + k / rate
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    response = await http.get(url)
                    response.raise_for_status()
                    latencies.append((time.perf_counter() - due) * 1e3)

            await asyncio.gather(*(client(i / (clients * rate)) for i in range(clients)))
        return latencies

    lat = sorted(asyncio.run(run()))
    return {"p50": lat[len(lat) // 2], "p99": lat[int(0.99 * (len(lat) - 1))], "n": len(lat)}


ROUTES = (
    ("GET /healthz (reference)", "/healthz"),
    ("GET /studies/{id}", "/studies/bench"),
    ("GET /studies/{id}/trials", "/studies/bench/trials"),
)


def closed_loop(base: str, connections: int, seconds: int) -> None:
    results = {}
    for label, path in ROUTES:
        wrk(base + path, connections, 2)  # warm-up
        results[label] = r = wrk(base + path, connections, seconds)
        print(
            f"{label:28s} p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms  {r['rps']:7.0f} req/s"
            f"  non-2xx {r['non2xx']:.0f}  over 2 s {r['timeouts']:.0f}",
            flush=True,
        )
    ref = results["GET /healthz (reference)"]
    for label in ("GET /studies/{id}", "GET /studies/{id}/trials"):
        r = results[label]
        print(f"{label}: p99 {r['p99']:.1f} ms (target <= 50 ms); p99 / healthz p99 = {r['p99'] / ref['p99']:.2f}")


def open_loops(base: str, connections: int, seconds: int, rate: float) -> None:
    # This process holds Optuna, SQLAlchemy and the service (it filled the study): a full
    # collection of that heap in the middle of the run would delay sends and read as
    # server latency. Freeze it out of the collector first.
    gc.collect()
    gc.freeze()
    print(f"open loop: {connections} clients x {rate:g} req/s each ({connections * rate:g} req/s offered)")
    paced = {}
    for label, path in ROUTES:
        open_loop(base + path, connections, rate, 1)  # warm-up: opens the connections
        paced[label] = r = open_loop(base + path, connections, rate, seconds)
        print(f"{label:28s} p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms  ({r['n']:.0f} requests)", flush=True)
    for label in ("GET /studies/{id}", "GET /studies/{id}/trials"):
        r = paced[label]
        ratio = r["p99"] / paced["GET /healthz (reference)"]["p99"]
        print(f"{label} (open loop): p99 {r['p99']:.1f} ms (target <= 50 ms); p99 / healthz p99 = {ratio:.2f}")


if __name__ == "__main__":
    main()
