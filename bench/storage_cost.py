"""Per-trial storage cost of one study as it grows (optuna#3053 reports 10x growth).

    .venv/bin/python -m bench.storage_cost [--trials 5000] [--database-url URL]

One study on PostgreSQL (the machine's server by default, a scratch database created and
dropped here). Trials go through what a worker does per trial: ask (with the spec's
suggestions), three intermediate reports, tell. RandomSampler, so the figure is the
storage's cost and not the sampler's. The time of trials 91-110 is the reference; trials
N-19..N are compared against it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import optuna

from bench.scratch_database import ADMIN_URL, scratch_database
from service import db
from service.config import Settings
from service.spec import EXAMPLE_SPEC, StudySpec, suggest_config


def one_trial(study: optuna.Study, spec: StudySpec) -> float:
    t = time.perf_counter()
    trial = study.ask()
    suggest_config(trial, spec)
    for step in (200, 400, 600):
        trial.report(100.0 / step, step)
    study.tell(trial, 1.0)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with scratch_database(args.admin_url) as url:
        settings = Settings(DATABASE_URL=url)
        db.upgrade(settings)
        spec = StudySpec.model_validate({**EXAMPLE_SPEC, "enqueue": []})
        study = optuna.create_study(
            study_name="bench", storage=db.optuna_storage(settings), sampler=optuna.samplers.RandomSampler(0)
        )
        times = []
        started = time.perf_counter()
        for i in range(args.trials):
            times.append(one_trial(study, spec))
            if (i + 1) % 500 == 0:
                print(f"  {i + 1} trials, last 20: {statistics.median(times[-20:]) * 1e3:.1f} ms/trial", flush=True)
        early = statistics.median(times[90:110])
        late = statistics.median(times[-20:])
        print(f"{args.trials} trials in {time.perf_counter() - started:.0f}s")
        print(f"ask+report+tell at trial ~100: {early * 1e3:.1f} ms, at trial {args.trials}: {late * 1e3:.1f} ms")
        print(f"ratio late/early = {late / early:.2f} (target <= 2)")


if __name__ == "__main__":
    main()
