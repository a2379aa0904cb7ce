"""The race of issue 15: best FID so far against wall time, plain Optuna against gat-tune.

    .venv/bin/python -m bench.race [--budget 240] [--seeds 3] [--arms a b c] [--procs 2]
                                   [--steps 3000] [--eval-every 500] [--gat-spec-extra JSON]
                                   [--arm NAME=JSON ...] [--history DATABASE_URL]
                                   [--out bench/race.json] [--png PATH]

Arms, each on the same cores, the same search space and base config (the demo's:
service.demo.DIGITS_DEMO, digits, MLP, R1, 3,000 steps, FID every 500 on 1,000 samples), the
same trainer and the same wall budget:

- ``a``: plain Optuna as a user writes it: ``study.optimize`` in ``--procs`` processes, each
  with the threads gat-tune gives a CPU slot (cores // procs: one on 2 cores), sharing one
  study in a scratch PostgreSQL database, TPESampler(seed), no pruning, the objective
  ``trainer.train.train`` returning the final FID. Each process seeds its sampler with
  seed + 1000 * its index: the same seed in both would draw the same random start-up
  trials twice, which no one would keep once they saw it.
- ``b``: the same with HyperbandPruner fed by every eval's FID (``trial.report`` and
  ``trial.should_prune`` in the trainer's ``on_eval``), configured as gat-tune's
  ``pruner: hyperband`` is (min_resource eval_every, max_resource steps, reduction_factor 3).
  As in gat-tune, the last eval does not ask the pruner.
- ``c``: gat-tune with its defaults: ``gat-tune serve`` and ``gat-tune worker --devices cpu
  --per-device PROCS`` as subprocesses on a fresh scratch database and data directory, the
  demo's spec submitted over HTTP (TPE, the far-above-best pruner, its two enqueued λ) with
  its seed set, n_trials too many to end within the budget and max_parallel PROCS (one trial
  per slot, as the demo; ``'{"max_parallel": 16}'`` packs 8 per slot); ``--gat-spec-extra``
  is merged into the spec (a dict value such as ``base`` is merged one level down), and each
  ``--arm NAME=JSON`` adds a gat-tune arm with that JSON merged on top (``--arm
  'pack4={"pack": 4}'``). An arm whose JSON has a ``warm_start`` starts from studies in
  ``--history`` (a database URL): they are copied into each of its runs' fresh databases
  before the spec is submitted, outside the clock (in its start-up), as if the service
  had run them before.

Each arm's clock starts at its first trial's start; the seconds before it (processes,
imports, database migrations, the API coming up) are reported apart as start-up. A trial
counts when it completed within the budget; one still running at the budget is stopped and
does not count; pruned and failed trials have no final FID and do not count. The FID
classifier and the real statistics are built once before the race and copied into every
arm's data directory, so no arm pays for them inside its clock.

The anytime metric is the best FID so far against that clock. The target is the median
over seeds of arm a's best at the full budget (``--target`` sets it). Per run: the time to
target, or "n.r." (not reached); per arm the median of those, a run that did not reach it
counted as the budget (so a ratio against such an arm is a bound, said where it applies),
and the best at 25, 50 and 100 % of the budget. Seed s is TPESampler(seed=s) for a and b
and the spec's seed s for c; the arms' order turns by one with each seed, so machine noise
falls on all. Raw curves go to ``--out`` (JSON, rewritten after every run, so an
interrupted race keeps what finished), the curves' median and range per arm to a PNG
(``--png``, default beside the JSON), the table to stdout, ready for bench/RESULTS.md.

Meant to run unattended: every gat-tune arm's spec is checked as the API would before the
race starts; a run that fails is recorded with its error (and the tail of the service's
logs) and the race goes on; Ctrl-C or SIGTERM stops the processes, drops the scratch
databases and still prints the table of the runs that finished. For a quick check of the
machinery: ``--budget 25 --seeds 1 --steps 300 --eval-every 100``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import multiprocessing as mp
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.scratch_database import ADMIN_URL, scratch_database
from service.client import ApiError, Client
from service.demo import DIGITS_DEMO

DB_PREFIX = "gt_race_"
PLAIN_ARMS = {"a": False, "b": True}  # arm → pruned
GRACE = 3.0  # seconds after the budget before the trials are read: a tell in flight lands
STARTUP_LIMIT = 300.0  # seconds an arm may take to start its first trial


class BudgetOver(Exception):
    """The wall budget ended while this trial trained: it does not count."""


# -- the plain arms (a, b): one process per core around study.optimize ---------------------
def _suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, dist in space.items():
        if dist["type"] == "float":
            params[key] = trial.suggest_float(key, dist["low"], dist["high"], log=dist.get("log", False))
        elif dist["type"] == "categorical":
            params[key] = trial.suggest_categorical(key, dist["choices"])
        else:
            raise ValueError(f"search_space.{key}: type {dist['type']} not handled by the plain arms")
    return params


def plain_process(
    url: str, study_name: str, seed: int, index: int, pruned: bool, base: dict[str, Any], budget: float,
    t0: Any, data_dir: str, threads: int,
) -> None:  # fmt: skip
    """What a user writes: load the shared study and optimize until the budget is spent."""
    import optuna

    from trainer.config import TrainConfig
    from trainer.train import Diverged, limit_threads, train

    limit_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    pruner = (
        optuna.pruners.HyperbandPruner(min_resource=base["eval_every"], max_resource=base["steps"], reduction_factor=3)
        if pruned
        else optuna.pruners.NopPruner()
    )
    sampler = optuna.samplers.TPESampler(seed=seed + 1000 * index)
    study = optuna.load_study(study_name=study_name, storage=url, sampler=sampler, pruner=pruner)

    def deadline() -> float:
        with t0.get_lock():
            if t0.value == 0.0:
                t0.value = time.time()
            return float(t0.value) + budget

    def objective(trial: optuna.Trial) -> float:
        end = deadline()
        config = TrainConfig.from_dict({**base, **_suggest(trial, DIGITS_DEMO["search_space"])})

        def on_eval(step: int, metrics: dict[str, Any]) -> None:
            trial.report(metrics["fid"], step)
            if step < config.steps and trial.should_prune():
                raise optuna.TrialPruned()

        try:
            result = train(
                config, on_eval=on_eval if pruned else None, should_stop=lambda: time.time() > end, data_dir=data_dir
            )
        except Diverged as exc:
            trial.set_user_attr("fail", str(exc))
            raise
        if result.stopped:
            trial.set_user_attr("fail", "budget over")
            raise BudgetOver
        return result.fid

    def stop_at_budget(study: optuna.Study, trial: Any) -> None:
        if time.time() >= deadline():
            study.stop()

    study.optimize(objective, timeout=budget + STARTUP_LIMIT, catch=(Diverged, BudgetOver), callbacks=[stop_at_budget])


def slot_threads(procs: int) -> int:
    """A process's threads: the rule `gat-tune worker` gives its CPU slots (cores // slots)."""
    return max(1, (os.cpu_count() or 1) // procs)


def _optuna_trials(study: Any) -> list[dict[str, Any]]:
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "start": t.datetime_start.timestamp() if t.datetime_start else None,
            "complete": t.datetime_complete.timestamp() if t.datetime_complete else None,
            "value": t.value,
            "params": t.params,
        }
        for t in study.get_trials(deepcopy=False)
    ]


def run_plain(arm: str, seed: int, args: argparse.Namespace, base: dict[str, Any], cache: Path) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = mp.get_context("spawn")
    t0 = ctx.Value("d", 0.0)
    threads = slot_threads(args.procs)
    procs: list[Any] = []
    with scratch_database(args.admin_url, prefix=DB_PREFIX) as url:
        storage = optuna.storages.RDBStorage(url)
        try:
            study = optuna.create_study(study_name=f"race-{arm}-{seed}", storage=storage, direction="minimize")
            launched = time.monotonic()
            procs = [
                ctx.Process(
                    target=plain_process,
                    args=(url, study.study_name, seed, i, PLAIN_ARMS[arm], base, args.budget, t0, str(cache), threads),
                    name=f"race-{arm}-{i}",
                )
                for i in range(args.procs)
            ]
            for p in procs:
                p.start()
            while t0.value == 0.0:
                if not any(p.is_alive() for p in procs):
                    raise RuntimeError(f"every process of arm {arm} exited before a trial started")
                if time.monotonic() - launched > STARTUP_LIMIT:
                    raise RuntimeError(f"arm {arm}: no trial started within {STARTUP_LIMIT:.0f} s")
                time.sleep(0.1)
            startup = time.monotonic() - launched - (time.time() - t0.value)
            end = t0.value + args.budget
            last = 0.0
            while time.time() < end + GRACE and any(p.is_alive() for p in procs):
                if time.time() - last >= args.every:
                    last = time.time()
                    _progress(arm, seed, last - t0.value, _counts(_optuna_trials(study)))
                time.sleep(0.5)
            for p in procs:
                p.join(timeout=60)  # the trial past the budget stops at its next step
            trials = _optuna_trials(study)
            exits = [p.exitcode for p in procs]
            if any(code != 0 for code in exits):
                print(f"[race] arm {arm} seed {seed}: process exit codes {exits}", flush=True)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=10)
                if p.is_alive():
                    p.kill()
                    p.join()
            storage.engine.dispose()
    return {"startup_s": startup, "trials": trials}


# -- the gat-tune arm (c): serve + worker subprocesses, the spec over HTTP ------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM (the pool forwards it to its slots), then SIGKILL for the process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # a slot the pool left behind (its own session)


def _merge(spec: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(spec)
    for key, value in extra.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def gat_spec(seed: int, base: dict[str, Any], procs: int, extra: dict[str, Any]) -> dict[str, Any]:
    spec = {**DIGITS_DEMO, "name": f"race-{seed}", "base": base, "seed": seed, "n_trials": 5000,
            "max_parallel": procs}  # fmt: skip
    return _merge(spec, extra)


def check_gat_spec(spec: dict[str, Any]) -> None:
    """The checks the API makes on a submitted spec, here, before the race rather than at
    its first gat-tune run (a lever this version does not know is refused at once).

    Raises:
        SpecIssue, pydantic.ValidationError: what the API would answer with 422.
    """
    from service.config import Settings
    from service.spec import StudySpec, check_spec, check_top_level, check_values

    check_values(spec)
    check_top_level(spec)
    check_spec(StudySpec.model_validate(spec), max_trials=Settings().max_trials)


def _api_trials(client: Client, name: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = client.trials(name, offset=len(out), limit=500)
        for t in page["items"]:
            value = (t["values"] or [None])[0]
            out.append(
                {
                    "number": t["number"],
                    "state": t["state"],
                    "start": datetime.fromisoformat(t["datetime_start"]).timestamp() if t["datetime_start"] else None,
                    "complete": (
                        datetime.fromisoformat(t["datetime_complete"]).timestamp() if t["datetime_complete"] else None
                    ),
                    "value": value,
                    "params": t["params"],
                }
            )
        if not page["items"] or len(out) >= page["total"]:
            return out


def run_gat(
    arm: str, seed: int, args: argparse.Namespace, base: dict[str, Any], cache: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    spec = gat_spec(seed, base, args.procs, extra)
    procs: list[subprocess.Popen[bytes]] = []
    with (
        scratch_database(args.admin_url, prefix=DB_PREFIX) as url,
        tempfile.TemporaryDirectory(prefix=DB_PREFIX) as tmp,
    ):
        data_dir = Path(tmp) / "data"
        shutil.copytree(cache, data_dir)
        port, token = _free_port(), secrets.token_urlsafe(24)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GAT_TUNE_")},  # its defaults, not ours
            "GAT_TUNE_DATABASE_URL": url,
            "GAT_TUNE_DATA_DIR": str(data_dir),
            "GAT_TUNE_TOKEN": token,
            "GAT_TUNE_HOST": "127.0.0.1",
            "GAT_TUNE_PORT": str(port),
            "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
        cli = [sys.executable, "-m", "service.cli"]
        logs = {name: Path(tmp) / f"{name}.log" for name in ("serve", "worker")}
        try:
            launched = time.monotonic()
            for name, command in (
                ("serve", [*cli, "serve"]),
                ("worker", [*cli, "worker", "--devices", "cpu", "--per-device", str(args.procs)]),
            ):
                with logs[name].open("wb") as log:
                    procs.append(
                        subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                    )
            client = Client(f"http://127.0.0.1:{port}", token=token)
            history = _history_copier(spec, args.history, url)
            first_running = _start_gat(client, spec, procs, launched, before_submit=history)
            api_up = first_running.pop("api_up_s")
            seen = time.monotonic()
            startup = seen - launched
            name = spec["name"]
            last = 0.0
            while time.monotonic() < seen + args.budget + GRACE:
                for proc, what in zip(procs, ("API server", "worker pool"), strict=True):
                    if proc.poll() is not None:
                        raise RuntimeError(f"the {what} exited with {proc.returncode}")
                if time.monotonic() - last >= args.every:
                    last = time.monotonic()
                    _progress(arm, seed, last - seen, _counts(_api_trials(client, name)))
                time.sleep(0.5)
            trials = _api_trials(client, name)
        except Exception:
            for name, path in logs.items():
                if path.exists():
                    lines = [x for x in path.read_text(errors="replace").splitlines() if "uvicorn.access" not in x]
                    tail = lines[-15:]
                    print(f"[race] arm {arm} seed {seed}: last lines of {name}:\n  " + "\n  ".join(tail), flush=True)
            raise
        finally:
            for proc in reversed(procs):  # the pool first: its slots tell their trials' end
                _stop(proc)
    return {"startup_s": startup, "api_up_s": api_up, "trials": trials, "spec_extra": extra}


def _history_copier(spec: dict[str, Any], history: str | None, url: str) -> Callable[[], None]:
    """What gives a run with a warm start its history: the studies it names, copied from
    ``--history`` into the run's fresh database (once the API has migrated it), as if this
    service had run them before."""

    def copy() -> None:
        import optuna

        for name in (spec.get("warm_start") or {}).get("studies", []):
            assert history is not None, "main() checks that --history holds every study a warm start names"
            optuna.copy_study(from_study_name=name, from_storage=history, to_storage=url)

    return copy


def _start_gat(
    client: Client,
    spec: dict[str, Any],
    procs: list[subprocess.Popen[bytes]],
    launched: float,
    before_submit: Callable[[], None],
) -> dict[str, Any]:
    """Wait for the API, call ``before_submit``, submit the spec, wait for its first trial
    to run."""
    api_up: float | None = None
    submitted = copied = False
    while time.monotonic() - launched < STARTUP_LIMIT:
        for proc, what in zip(procs, ("API server", "worker pool"), strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"the {what} exited with {proc.returncode} during start-up")
        try:
            if api_up is None:
                client.health()
                api_up = time.monotonic() - launched
            if not submitted:
                if not copied:  # once: a retried submit must not copy the studies again
                    before_submit()
                    copied = True
                client.submit(spec, idempotency_key=spec["name"])
                submitted = True
            counts = client.study(spec["name"])["trial_counts"]
            if counts.get("RUNNING") or counts.get("COMPLETE") or counts.get("PRUNED"):
                return {"api_up_s": api_up}
        except ApiError as exc:
            if exc.status:  # an answer, not a server still starting: the spec was refused
                raise
        time.sleep(0.25)
    raise RuntimeError(f"gat-tune: no trial started within {STARTUP_LIMIT:.0f} s")


# -- the metric -------------------------------------------------------------------------------
def completions(run: dict[str, Any]) -> list[tuple[float, float]]:
    """(seconds from the first trial's start, FID) of the trials that completed within the
    budget, in order of completion."""
    starts = [t["start"] for t in run["trials"] if t["start"] is not None]
    if not starts:
        return []
    t0 = min(starts)
    out = [
        (t["complete"] - t0, t["value"])
        for t in run["trials"]
        if t["state"] == "COMPLETE" and t["value"] is not None and math.isfinite(t["value"]) and t["complete"]
    ]
    return sorted((s, v) for s, v in out if s <= run["budget"])


def best_at(run: dict[str, Any], seconds: float) -> float | None:
    values = [v for s, v in completions(run) if s <= seconds]
    return min(values) if values else None


def time_to(run: dict[str, Any], target: float) -> float | None:
    return next((s for s, v in completions(run) if v <= target), None)


def _counts(trials: list[dict[str, Any]]) -> dict[str, Any]:
    states = [t["state"] for t in trials]
    values = [t["value"] for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    return {
        **{s: states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
        "best": min(values) if values else None,
    }


def _progress(arm: str, seed: int, elapsed: float, counts: dict[str, Any]) -> None:
    best = f"{counts['best']:.2f}" if counts["best"] is not None else "-"
    print(
        f"[race] arm {arm} seed {seed}: {elapsed:5.0f} s, {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
        f"{counts['FAIL']} failed, {counts['RUNNING']} running; best {best}",
        flush=True,
    )


def _fmt(x: float | None, digits: int = 1) -> str:
    return "n.r." if x is None else f"{x:.{digits}f}"


def _spread(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    text = f"{statistics.median(got):.1f} [{min(got):.1f}–{max(got):.1f}]"
    return text + (f" ({len(values) - len(got)} none)" if len(got) < len(values) else "")


def summarise(runs: list[dict[str, Any]], arms: list[str], budget: float, target: float | None) -> dict[str, Any]:
    """The target, and per arm the time to it and the best at 25/50/100 % of the budget."""
    ok = [r for r in runs if not r.get("error")]
    if target is None:
        ref = next((a for a in arms if a == "a"), arms[0])
        finals = [f for f in (best_at(r, budget) for r in ok if r["arm"] == ref) if f is not None]
        target = statistics.median(finals) if finals else None
    per_arm: dict[str, Any] = {}
    for arm in arms:
        mine = [r for r in ok if r["arm"] == arm]
        ttt = [time_to(r, target) if target is not None else None for r in mine]
        per_arm[arm] = {
            "seeds": [r["seed"] for r in mine],
            "time_to_target": ttt,
            "median_time_to_target": statistics.median([budget if t is None else t for t in ttt]) if mine else None,
            "reached": sum(t is not None for t in ttt),
            "best": {str(f): [best_at(r, f * budget) for r in mine] for f in (0.25, 0.5, 1.0)},
            "counted": [len(completions(r)) for r in mine],
            "pruned": [sum(t["state"] == "PRUNED" for t in r["trials"]) for r in mine],
            "startup_s": [r["startup_s"] for r in mine],
        }
    return {"target": target, "arms": per_arm}


def table(summary: dict[str, Any], args: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    target, per_arm = summary["target"], summary["arms"]
    lines = [
        f"Budget {args.budget:.0f} s from each arm's first trial start; seeds {', '.join(map(str, args.seed_list))}; "
        f"{args.steps} steps, FID every {args.eval_every}; {args.procs} processes/slots of "
        f"{slot_threads(args.procs)} thread(s) on {os.cpu_count()} cores. "
        f"Target FID {_fmt(target, 2)} (median over seeds of arm "
        f"{'a' if 'a' in per_arm else next(iter(per_arm))}'s best at the budget"
        f"{', given' if args.target is not None else ''}).",
        "",
        "| arm | time to target per seed (s) | median (s) | best at 25 % | best at 50 % | best at 100 % "
        "| counted / pruned trials (median) | start-up (s, median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, s in per_arm.items():
        ttt = " / ".join(_fmt(t, 0) for t in s["time_to_target"]) or "-"
        median = s["median_time_to_target"]
        nr = f" ({len(s['time_to_target']) - s['reached']} n.r. as {args.budget:.0f})" if s["reached"] < len(
            s["time_to_target"]
        ) else ""  # fmt: skip
        counted = f"{_median(s['counted'])} / {_median(s['pruned'])}"
        startup = _median(s["startup_s"], 1)
        lines.append(
            f"| {arm} | {ttt} | {_fmt(median, 0)}{nr} | {_spread(s['best']['0.25'])} | {_spread(s['best']['0.5'])} "
            f"| {_spread(s['best']['1.0'])} | {counted} | {startup} |"
        )
    lines.append("")
    gats = [a for a in per_arm if a not in PLAIN_ARMS]
    for ref in (a for a in ("a", "b") if a in per_arm):
        for other in gats:
            r, o = per_arm[ref], per_arm[other]
            if not r["time_to_target"] or not o["time_to_target"] or not o["median_time_to_target"]:
                continue
            ratio = r["median_time_to_target"] / o["median_time_to_target"]
            r_missed, o_missed = len(r["time_to_target"]) - r["reached"], len(o["time_to_target"]) - o["reached"]
            if r_missed and o_missed:
                caveats = [f"both missed it ({ref} {r_missed}, {other} {o_missed} of the runs): not a bound either way"]
            elif r_missed:
                caveats = [f"{ref} missed it in {r_missed} of {len(r['time_to_target'])} runs: a lower bound"]
            elif o_missed:
                caveats = [f"{other} missed it in {o_missed} of {len(o['time_to_target'])} runs: an upper bound"]
            else:
                caveats = []
            note = f" ({'; '.join(caveats)})" if caveats else ""
            lines.append(f"- time to target, ratio of medians ({ref})/({other}): **{ratio:.2f}x**{note}")
    if gats:
        lines.append("- a ratio above 1: the gat-tune arm reached the target sooner")
    lines += [
        "- time to target: seconds from the arm's first trial start to the first trial that completed at or "
        "below the target; n.r.: not reached within the budget, counted as the budget in the median",
        "- best at X %: median [min–max] over seeds of the best FID completed by then (-: none yet); counted: "
        "trials completed within the budget; start-up: seconds from launching the arm's processes to its "
        "first trial's start, outside its clock",
    ]
    errors = [r for r in runs if r.get("error")]
    for r in errors:
        lines.append(f"- arm {r['arm']} seed {r['seed']} failed: {r['error'].splitlines()[-1]}")
    return "\n".join(lines)


def _median(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f}" if values else "-"


# -- the plot (PIL: matplotlib is not a dependency) -----------------------------------------
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def plot(runs: list[dict[str, Any]], arms: list[str], budget: float, target: float | None, path: Path) -> None:
    """Best FID so far against seconds: per arm the median over seeds and the min-max band."""
    from PIL import Image, ImageDraw, ImageFont

    width, height, left, right, top, bottom = 960, 600, 80, 170, 40, 60
    grid = [budget * i / 240 for i in range(241)]
    curves: dict[str, list[tuple[float, float, float, float]]] = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm and not r.get("error")]
        points = []
        for t in grid:
            values = [v for v in (best_at(r, t) for r in mine) if v is not None]
            if len(values) == len(mine) and values:  # drawn once every seed has a result
                points.append((t, statistics.median(values), min(values), max(values)))
        curves[arm] = points
    ys = [y for pts in curves.values() for p in pts for y in p[1:]] + ([target] if target else [])
    if not ys:
        return
    lo, hi = math.log10(min(ys) * 0.95), math.log10(max(ys) * 1.05)
    hi = max(hi, lo + 0.05)
    font = ImageFont.load_default()
    img = Image.new("RGB", (width, height), "white")
    band = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw, bands = ImageDraw.Draw(img), ImageDraw.Draw(band)

    def xy(t: float, fid: float) -> tuple[float, float]:
        x = left + (width - left - right) * t / budget
        return x, top + (height - top - bottom) * (hi - math.log10(fid)) / (hi - lo)

    for i, arm in enumerate(arms):
        pts = curves[arm]
        if pts:
            r, g, b = COLOURS[i % len(COLOURS)]
            outline = [xy(t, mx) for t, _, _, mx in pts] + [xy(t, mn) for t, _, mn, _ in reversed(pts)]
            bands.polygon(outline, fill=(r, g, b, 50))
    img.paste(band, (0, 0), band)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        x, _ = xy(frac * budget, 10**lo)
        draw.line([x, height - bottom, x, height - bottom + 5], fill="black")
        draw.text((x - 10, height - bottom + 8), f"{frac * budget:.0f}", fill="black", font=font)
    for k in range(-2, 6):
        for m in (1, 2, 5):
            v = m * 10.0**k
            if lo <= math.log10(v) <= hi:
                _, y = xy(0, v)
                draw.line([left - 5, y, left, y], fill="black")
                draw.text((left - 45, y - 6), f"{v:g}", fill="black", font=font)
    draw.text((left + (width - left - right) / 2 - 120, height - 25), "seconds from the first trial's start",
              fill="black", font=font)  # fmt: skip
    draw.text((10, 10), "best FID so far (log scale): median over seeds, band min-max", fill="black", font=font)
    if target:
        _, y = xy(0, target)
        for x in range(left, width - right, 12):
            draw.line([x, y, x + 6, y], fill=(90, 90, 90))
        draw.text((width - right + 8, y - 6), f"target {target:.1f}", fill=(90, 90, 90), font=font)
    for i, arm in enumerate(arms):
        colour = COLOURS[i % len(COLOURS)]
        pts = curves[arm]
        if len(pts) > 1:
            line = []
            for (t0, m0, _, _), (t1, _, _, _) in itertools.pairwise(pts):  # a step function
                line += [xy(t0, m0), xy(t1, m0)]
            line.append(xy(pts[-1][0], pts[-1][1]))
            draw.line(line, fill=colour, width=3)
        y = top + 20 * i + 30
        draw.line([width - right + 8, y, width - right + 30, y], fill=colour, width=3)
        draw.text((width - right + 36, y - 6), arm, fill="black", font=font)
    img.save(path)


# -- the race -------------------------------------------------------------------------------
def _arm_spec(text: str) -> tuple[str, dict[str, Any]]:
    name, _, extra = text.partition("=")
    if not name or not extra:
        raise argparse.ArgumentTypeError(f"--arm {text}: expected NAME=JSON, e.g. pack4='{{\"pack\": 4}}'")
    value = json.loads(extra)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--arm {text}: the JSON must be an object")
    return name, value


def _prepare_cache(base: dict[str, Any], cache: Path) -> None:
    """The classifier features and real statistics, built once for every arm (a one-step
    run with the arms' eval settings builds exactly what their evaluations read)."""
    from trainer.config import TrainConfig
    from trainer.train import limit_threads, train

    limit_threads(1)
    train(TrainConfig.from_dict({**base, "steps": 1, "eval_every": 1}), data_dir=cache)


@contextlib.contextmanager
def _written(path: Path, payload: Callable[[], dict[str, Any]]) -> Iterator[Callable[[], None]]:
    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(payload(), indent=1, default=str))
        tmp.replace(path)

    try:
        yield write
    finally:
        write()


def run_one(
    arm: str, seed: int, args: argparse.Namespace, base: dict[str, Any], cache: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    """One arm, one seed; a failure is recorded in the run (the race goes on with the next)."""
    print(f"[race] arm {arm} seed {seed}: starting", flush=True)
    run: dict[str, Any] = {"arm": arm, "seed": seed, "budget": args.budget, "trials": [], "startup_s": None}
    try:
        if arm in PLAIN_ARMS:
            run.update(run_plain(arm, seed, args, base, cache))
        else:
            run.update(run_gat(arm, seed, args, base, cache, extra))
    except Exception:
        run["error"] = traceback.format_exc()
        print(f"[race] arm {arm} seed {seed} failed:\n{run['error']}", flush=True)
        return run
    print(
        f"[race] arm {arm} seed {seed}: done; {len(completions(run))} trials counted, best "
        f"{_fmt(best_at(run, args.budget), 2)} at the budget; start-up {run['startup_s']:.1f} s",
        flush=True,
    )
    return run


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # a SIGTERM cleans up as Ctrl-C does: processes, databases, the JSON


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=240, help="wall seconds per arm and seed (default 240)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    parser.add_argument("--arm", type=_arm_spec, action="append", default=[], metavar="NAME=JSON",
                        help="another gat-tune arm, its JSON merged into the spec after --gat-spec-extra")  # fmt: skip
    parser.add_argument("--procs", type=int, default=2, help="processes (a, b) and worker slots (c) (default 2)")
    parser.add_argument("--steps", type=int, default=DIGITS_DEMO["base"]["steps"])
    parser.add_argument("--eval-every", type=int, help="default: the demo's 500, or --steps when fewer")
    parser.add_argument("--gat-spec-extra", type=json.loads, default={}, metavar="JSON",
                        help="merged into gat-tune's spec, e.g. '{\"pack\": 4}'")  # fmt: skip
    parser.add_argument("--target", type=float, help="the target FID (default: the median of arm a's best)")
    parser.add_argument("--every", type=float, default=20, help="seconds between progress lines")
    parser.add_argument("--out", type=Path, default=Path("bench/race.json"))
    parser.add_argument("--png", type=Path, help="default: --out with .png")
    parser.add_argument("--admin-url", default=ADMIN_URL)
    parser.add_argument("--history", metavar="DATABASE_URL",
                        help="where the studies an arm's warm_start names lie: copied into each of its runs' "
                        "databases before the spec is submitted (outside the clock)")  # fmt: skip
    args = parser.parse_args()
    if args.history:  # the driver we ship: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3
        from sqlalchemy.engine import make_url

        args.history = make_url(args.history).set(drivername="postgresql+psycopg2").render_as_string(False)
    args.eval_every = args.eval_every or min(DIGITS_DEMO["base"]["eval_every"], args.steps)
    args.seed_list = list(range(args.first_seed, args.first_seed + args.seeds))
    png = args.png or args.out.with_suffix(".png")
    base = {**DIGITS_DEMO["base"], "steps": args.steps, "eval_every": args.eval_every}  # the device: cpu
    extras = {"c": args.gat_spec_extra}
    for name, extra in args.arm:
        if name in PLAIN_ARMS or name in extras:
            parser.error(f"--arm {name}: that arm exists already")
        extras[name] = _merge(args.gat_spec_extra, extra)
    for name, extra in extras.items():
        if name not in args.arms and name not in dict(args.arm):
            continue
        try:
            check_gat_spec(gat_spec(0, base, args.procs, extra))
        except Exception as exc:
            parser.error(f"arm {name}: gat-tune would refuse the spec: {exc}")
        wanted = set((extra.get("warm_start") or {}).get("studies", []))
        if wanted:
            # Read with SQL: opening an Optuna storage on it could create or migrate its tables.
            found: set[str] = set()
            if args.history:
                import sqlalchemy as sa

                try:
                    with sa.create_engine(args.history).connect() as conn:
                        found = set(conn.execute(sa.text("SELECT study_name FROM studies")).scalars())
                except sa.exc.SQLAlchemyError as exc:
                    parser.error(f"--history: its studies cannot be read: {str(exc).splitlines()[0]}")
            if wanted - found:
                parser.error(f"arm {name}: warm_start names {sorted(wanted - found)}, not in --history")
    arms = [a for a in args.arms if a in PLAIN_ARMS or a == "c"] + [name for name, _ in args.arm]
    runs: list[dict[str, Any]] = []

    def payload() -> dict[str, Any]:
        summary = summarise(runs, arms, args.budget, args.target)
        return {
            "command": " ".join(sys.argv),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "budget": args.budget,
            "seeds": args.seed_list,
            "procs": args.procs,
            "base": base,
            "arms": {
                a: {"kind": "plain", "pruner": "hyperband" if PLAIN_ARMS[a] else "none"}
                if a in PLAIN_ARMS
                else {"kind": "gat-tune", "spec_extra": extras[a]}
                for a in arms
            },
            "summary": summary,
            "runs": [{**r, "curve": completions(r)} for r in runs],
        }

    with tempfile.TemporaryDirectory(prefix=DB_PREFIX) as tmp, _written(args.out, payload) as write:
        cache = Path(tmp) / "cache"
        t = time.monotonic()
        _prepare_cache(base, cache)
        print(f"[race] FID features and real statistics built in {time.monotonic() - t:.0f} s (outside every clock)")
        print(f"[race] arms {' '.join(arms)}; {len(args.seed_list)} seeds; {args.budget:.0f} s each: "
              f"about {len(arms) * len(args.seed_list) * (args.budget + 30) / 60:.0f} min", flush=True)  # fmt: skip
        try:
            for i, seed in enumerate(args.seed_list):
                order = arms[i % len(arms) :] + arms[: i % len(arms)]
                for arm in order:
                    runs.append(run_one(arm, seed, args, base, cache, extras.get(arm, {})))
                    write()
        except KeyboardInterrupt:
            print("\n[race] interrupted: the table covers the runs that finished", flush=True)
        summary = summarise(runs, arms, args.budget, args.target)
    print(f"\nraw curves: {args.out}")
    try:
        plot(runs, arms, args.budget, summary["target"], png)
        print(f"plot: {png}")
    except Exception as exc:  # the figures matter more than the picture
        print(f"plot failed: {exc}")
    print()
    print(table(summary, args, runs))


if __name__ == "__main__":
    main()
