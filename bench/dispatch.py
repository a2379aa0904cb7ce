"""Dispatch cost of the worker pool: claims per second and worker-side overhead per trial.

    .venv/bin/python -m bench.dispatch [--trials 120] [--workers 1 4 8]

For each pool size, a fresh study of few-millisecond trials (ring8, a width-8 MLP, 2 steps)
runs on that many worker processes (real Slot loops on real PostgreSQL). Per trial, the
overhead is the time from the start of the claim to the end of the tell minus the time
inside ``train``; the eval callback that runs inside train (report to Optuna, the pruner,
the study's status) counts as overhead. Wall clock, with the slot's CPU time for the same
span beside it, and the CPU time of all slots and of PostgreSQL per trial. The reference
is a 10-second trial (the 1 % budget: 100 ms). Every run checks that exactly n_trials
trials completed, none twice, none lost.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import queue
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa

from bench.scratch_database import ADMIN_URL, scratch_database
from service import db, worker
from service.config import Settings
from service.spec import StudySpec
from service.studies import StudyService

SPEC: dict[str, Any] = {
    "base": {"dataset": "ring8", "steps": 2, "eval_every": 2, "eval_samples": 16, "g_width": 8, "d_width": 8,
             "z_dim": 2, "batch_size": 16},
    "search_space": {"lambda": {"type": "float", "low": 0.1, "high": 10, "log": True}},
    "sampler": "random",
    "pruner": "none",
    "pack": 1,  # one trial per claim: the dispatch cost of a trial, not of a pack
}  # fmt: skip


def slot_process(settings_json: str, results: Any) -> None:
    worker.limit_threads(1)  # as `gat-tune worker` does for CPU slots (cores // slots, at least 1)
    worker.preload()  # as run_slot does before the slot registers
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    settings = Settings.model_validate_json(settings_json)
    inside: list[tuple[float, float]] = []  # (wall, CPU) seconds inside train
    real_train = worker.train

    def timed_train(*args: Any, on_eval: Any, **kwargs: Any) -> Any:
        # The eval callback (report, the pruner, the study's status) runs inside train but
        # is dispatch, not training: its time is taken out of train's.
        in_eval = [0.0, 0.0]

        def timed_eval(*a: Any) -> None:
            t, c = time.perf_counter(), time.process_time()
            try:
                on_eval(*a)
            finally:
                in_eval[0] += time.perf_counter() - t
                in_eval[1] += time.process_time() - c

        t, c = time.perf_counter(), time.process_time()
        try:
            return real_train(*args, on_eval=timed_eval, **kwargs)
        finally:
            inside.append((time.perf_counter() - t - in_eval[0], time.process_time() - c - in_eval[1]))

    worker.train = timed_train  # type: ignore[assignment]
    slot = worker.Slot(settings, "cpu")
    signal.signal(signal.SIGTERM, lambda *_: slot.shutdown.set())
    claim_real, run_real = slot.queue.claim, slot.run_claims
    cycle: dict[str, float] = {}

    def claim() -> Any:
        cycle["start"], cycle["cpu"] = time.perf_counter(), time.process_time()
        return claim_real()

    def run_claims(c: Any) -> None:
        run_real(c)
        wall, cpu = time.perf_counter() - cycle["start"], time.process_time() - cycle["cpu"]
        results.put((c.trial.number, wall, inside[-1][0], cpu - inside[-1][1], inside[-1][1], c.waited))

    slot.queue.claim = claim  # type: ignore[method-assign,assignment]
    slot.run_claims = run_claims  # type: ignore[method-assign,assignment]
    slot.run()


def _cpu_by_pid(pids: list[int] | None = None) -> dict[int, float]:
    """User + system CPU seconds of these processes (all PostgreSQL processes when None), from /proc."""
    tick, cpu = os.sysconf("SC_CLK_TCK"), {}
    for pid in pids if pids is not None else [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        with contextlib.suppress(OSError):  # gone meanwhile
            with open(f"/proc/{pid}/stat") as f:
                comm, rest = f.read().split(" (", 1)[1].rsplit(")", 1)
            if pids is not None or comm == "postgres":
                fields = rest.split()  # after the name: state, ppid, ... utime (12th), stime (13th)
                cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
    return cpu


def _cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two readings by the processes alive at the second (a
    PostgreSQL backend that started between them counts from zero)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def run(settings: Settings, n_workers: int, n_trials: int, steps: int = 2, evals: int = 1) -> dict[str, float]:
    name = f"dispatch-{n_workers}"
    service = StudyService(db.engine(settings), db.optuna_storage(settings), max_trials=100_000, base_url="")
    base = {**SPEC["base"], "steps": steps, "eval_every": max(1, steps // evals)}
    spec = {**SPEC, "base": base, "name": name, "n_trials": n_trials, "max_parallel": n_workers}
    service.create(StudySpec.model_validate(spec))
    # Steady state, not start-up: the study opens once every slot has started (imported
    # torch and registered), so no trial runs beside another process's start-up.
    service.control(name, "pause")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=slot_process, args=(settings.model_dump_json(), results)) for _ in range(n_workers)]
    for p in procs:
        p.start()
    with db.engine(settings).connect() as conn:
        while conn.execute(sa.text("SELECT count(*) FROM gt_workers")).scalar_one() < n_workers:
            assert all(p.is_alive() for p in procs), "a slot died while starting"
            conn.commit()
            time.sleep(0.2)
    slot_pids = [p.pid for p in procs if p.pid is not None]
    service.control(name, "resume")
    started = time.perf_counter()
    cpu_slots, cpu_server = _cpu_by_pid(slot_pids), _cpu_by_pid()
    rows: list[tuple[int, float, float, float, float, float]] = []
    while len(rows) < n_trials and (any(p.is_alive() for p in procs) or not results.empty()):
        with contextlib.suppress(queue.Empty):  # none yet: look at the processes again
            rows.append(results.get(timeout=1))
    wall = time.perf_counter() - started
    slots_cpu, server_cpu = _cpu_since(cpu_slots, _cpu_by_pid(slot_pids)), _cpu_since(cpu_server, _cpu_by_pid())
    for p in procs:
        p.terminate()  # SIGTERM: the slot's shutdown
        p.join()
    trials = optuna.load_study(study_name=name, storage=db.optuna_storage(settings)).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    for t in trials:
        if t.state != optuna.trial.TrialState.COMPLETE:
            print(f"  trial {t.number}: {t.state.name} {t.user_attrs}", flush=True)
    numbers = [r[0] for r in rows]
    overhead = [total - inside for _, total, inside, *_ in rows]
    overhead_cpu = [r[3] for r in rows]
    return {
        "claims_per_s": len(rows) / wall,
        "overhead_median_ms": statistics.median(overhead) * 1e3,
        "overhead_p95_ms": sorted(overhead)[int(0.95 * (len(overhead) - 1))] * 1e3,
        "overhead_unqueued_median_ms": statistics.median(o - r[5] for o, r in zip(overhead, rows, strict=True)) * 1e3,
        "queued_median_ms": statistics.median(r[5] for r in rows) * 1e3,
        "queued_share": sum(1 for r in rows if r[5] > 0) / len(rows),
        "train_median_ms": statistics.median(r[2] for r in rows) * 1e3,
        "overhead_cpu_median_ms": statistics.median(overhead_cpu) * 1e3,
        "train_cpu_median_ms": statistics.median(r[4] for r in rows) * 1e3,
        "slots_cpu_per_trial_ms": slots_cpu / len(rows) * 1e3,
        "server_cpu_per_trial_ms": server_cpu / len(rows) * 1e3,
        "complete": len(complete),
        "duplicates": len(numbers) - len(set(numbers)),
        "lost": n_trials - len(complete),
        "other_states": len(trials) - len(complete),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=120)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--steps", type=int, default=2, help="training steps per trial (about 1.8 ms each alone)")
    parser.add_argument("--evals", type=int, default=1, help="FID evaluations (reports to Optuna) per trial")
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with scratch_database(args.admin_url) as url, tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(DATABASE_URL=url, data_dir=Path(data_dir), poll_seconds=0.05, lease_seconds=30)
        db.upgrade(settings)
        for n in args.workers:
            r = run(settings, n, args.trials, args.steps, args.evals)
            print(
                f"{n} workers: {r['claims_per_s']:.1f} trials/s; overhead per trial median "
                f"{r['overhead_median_ms']:.1f} ms, p95 {r['overhead_p95_ms']:.1f} ms "
                f"(train {r['train_median_ms']:.1f} ms; CPU of the overhead {r['overhead_cpu_median_ms']:.1f} ms); "
                f"{r['overhead_median_ms'] / 10_000 * 100:.2f}% of a 10 s trial (target <= 1%); "
                f"{r['queued_share']:.0%} of claims waited for another's (median {r['queued_median_ms']:.1f} ms), "
                f"overhead without that wait {r['overhead_unqueued_median_ms']:.1f} ms; "
                f"all CPU per trial: slots {r['slots_cpu_per_trial_ms']:.0f} ms (train's median "
                f"{r['train_cpu_median_ms']:.0f}), PostgreSQL {r['server_cpu_per_trial_ms']:.0f} ms; "
                f"complete {r['complete']}/{args.trials}, duplicates {r['duplicates']}, lost {r['lost']}, "
                f"other states {r['other_states']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
