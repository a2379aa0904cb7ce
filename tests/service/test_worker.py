"""Worker pools as real processes against real PostgreSQL: end to end, crashes, control."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from service import db
from service.app import create_app
from service.config import Settings
from service.pool import RestartBackoff, StartLine
from service.spec import StudySpec, make_pruner, suggest_config
from service.worker import Slot, _one_line
from tests.service.conftest import PrivatePostgres, eval_steps, finish, load, stop_when_done, tiny, wait_for
from trainer.config import TrainConfig
from trainer.train import train


@pytest.mark.slow
def test_two_slots_finish_a_study_over_http(
    client: TestClient,
    start_pool: Callable[..., subprocess.Popen[str]],
    pool_env: dict[str, str],
    database_url: str,
    tmp_path: Path,
) -> None:
    # Both slots up before the study exists: a slot that starts first packs the trials of
    # one not yet registered (it cannot know of it), so who trains what would be timing.
    pool = start_pool("--per-device", "2")
    seen_workers = wait_for(lambda: len(w := client.get("/workers").json()["items"]) == 2 and w, what="both slots")
    assert {w["device"] for w in seen_workers} == {"cpu"}
    assert client.post("/studies", json=tiny()).status_code == 201
    stop_when_done(pool, client)

    study = client.get("/studies/tiny").json()
    assert study["status"] == "completed"
    assert study["trial_counts"]["COMPLETE"] == 6 and study["finished"] == 6
    assert study["trial_counts"]["RUNNING"] == 0 and study["trial_counts"]["FAIL"] == 0
    trials = client.get("/studies/tiny/trials").json()["items"]
    workers = {t["user_attrs"]["worker"] for t in trials}
    assert len(workers) == 2, "both slots trained"
    store = optuna.artifacts.FileSystemArtifactStore(tmp_path / "artifacts")
    for t in load(database_url).trials:
        assert t.value is not None and t.value > 0
        assert [s for s, _ in sorted(t.intermediate_values.items())] == [20, 40, 60]
        assert t.user_attrs["device"] == "cpu" and t.user_attrs["steps_per_second"] > 0
        assert t.user_attrs["cpu_threads"] == max(1, (os.cpu_count() or 1) // 2)  # two slots share the cores
        metas = optuna.artifacts.get_all_artifact_meta(t, storage=load(database_url)._storage)
        assert {m.filename for m in metas} == {"samples.png", "curve.png", "metrics.jsonl"}
        with store.open_reader(next(m.artifact_id for m in metas if m.filename == "samples.png")) as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    best = client.get("/studies/tiny/best").json()
    result = train(TrainConfig.from_dict(best))
    assert result.steps == 60 and result.fid > 0
    # The production handoff: `train --threads` as the trial ran gives its FID exactly.
    best_trial = load(database_url).best_trial
    (tmp_path / "best.json").write_text(json.dumps(best))
    replay = subprocess.run(
        [sys.executable, "-m", "service.cli", "train", "--config", str(tmp_path / "best.json"),
         "--threads", str(best_trial.user_attrs["cpu_threads"]), "--out", str(tmp_path / "replay"), "--json"],
        env=pool_env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert json.loads(replay.stdout.splitlines()[-1])["fid"] == best_trial.value
    assert client.get("/workers").json()["items"] == []  # workers deregister on exit


@pytest.mark.slow
def test_kill_9_mid_trial_is_failed_retried_and_resumed(
    client: TestClient, start_pool: Callable[..., subprocess.Popen[str]], database_url: str, tmp_path: Path
) -> None:
    spec = tiny(base={"steps": 600, "eval_every": 100}, n_trials=2, max_parallel=1)
    client.post("/studies", json=spec)
    pool = start_pool("--per-device", "1")

    def first_checkpoint() -> Path | None:
        path = tmp_path / "runs" / "tiny" / "trial-00000" / "checkpoint.pt"
        return path if path.exists() else None

    wait_for(first_checkpoint, what="a checkpoint of trial 0")
    slot_pid = client.get("/workers").json()["items"][0]["pid"]
    os.kill(slot_pid, signal.SIGKILL)
    out = stop_when_done(pool, client, slot_deaths=1)
    assert "died with -9; starting another" in out

    trials = load(database_url).trials
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and failed[0].number == 0
    assert max(failed[0].intermediate_values, default=0) < 600, "killed mid-run, not after its last eval"
    assert (
        failed[0]
        .user_attrs["fail_reason"]
        .startswith(f"lease expired: worker vm-{slot_pid}".replace("vm", os.uname().nodename))
    )
    retry = next(t for t in trials if t.user_attrs.get("gat_tune_retry_of") == 0)
    assert retry.params == failed[0].params and retry.user_attrs["gat_tune_attempt"] == 1
    assert retry.user_attrs["run_dir"] == failed[0].user_attrs["run_dir"]  # resumed from its checkpoint
    steps = eval_steps(retry.user_attrs["run_dir"])
    assert steps == sorted(set(steps)) and steps[-1] == 600, "no step trained twice, none lost"
    assert client.get("/studies/tiny").json()["finished"] == 2


@pytest.mark.slow
def test_pause_resume_stop_and_a_diverging_trial(
    client: TestClient, start_pool: Callable[..., subprocess.Popen[str]], database_url: str
) -> None:
    # Trial 0 diverges within a few steps; the worker must go on with the next ones.
    spec = tiny(
        base={"steps": 3000, "eval_every": 50, "g_width": 256, "d_width": 256, "batch_size": 64},
        search_space={
            "lr_g": {"type": "categorical", "choices": [2e-4, 1000.0]},
            "lr_d": {"type": "categorical", "choices": [2e-4, 1000.0]},
            "aux_loss": {"type": "categorical", "choices": ["r1", "consensus"]},
            "beta1": {"type": "categorical", "choices": [0.5, 0.0]},
        },
        enqueue=[
            {"lr_g": 1000.0, "lr_d": 1000.0, "aux_loss": "consensus", "beta1": 0.0},
            {"lr_g": 2e-4, "lr_d": 2e-4, "aux_loss": "r1", "beta1": 0.5},
        ],
        n_trials=3,
        max_parallel=1,
    )
    client.post("/studies", json=spec)
    pool = start_pool("--per-device", "1")

    def trial(number: int) -> optuna.trial.FrozenTrial | None:
        trials = load(database_url).trials
        return trials[number] if len(trials) > number else None

    wait_for(lambda: (t := trial(0)) is not None and t.state.is_finished(), what="trial 0 to end")
    diverged = trial(0)
    assert diverged is not None and diverged.state == optuna.trial.TrialState.FAIL
    assert diverged.user_attrs["fail_reason"].startswith("diverged at step ")

    wait_for(lambda: (t := trial(1)) is not None and len(t.intermediate_values) >= 1, what="trial 1 to report")
    client.post("/studies/tiny/pause")
    wait_for(lambda: (t := trial(1)) is not None and t.state.is_finished(), timeout=60, what="the pause")
    paused = trial(1)
    assert paused is not None and paused.state == optuna.trial.TrialState.FAIL
    assert paused.user_attrs["fail_reason"].startswith("study paused; checkpointed; re-queued")
    time.sleep(2)  # paused: nothing is claimed
    assert len(load(database_url).trials) == 3
    assert load(database_url).trials[2].state == optuna.trial.TrialState.WAITING

    client.post("/studies/tiny/resume")
    wait_for(lambda: (t := trial(2)) is not None and t.state == optuna.trial.TrialState.RUNNING, what="resume")
    resumed = trial(2)
    assert resumed is not None and resumed.user_attrs["gat_tune_retry_of"] == 1
    assert min(resumed.intermediate_values) == min(paused.intermediate_values)  # history replayed, then on

    client.post("/studies/tiny/stop")
    wait_for(lambda: (t := trial(2)) is not None and t.state.is_finished(), timeout=60, what="the stop")
    stopped = trial(2)
    assert stopped is not None and stopped.user_attrs["fail_reason"] == "study stopped"
    time.sleep(1.5)
    trials = load(database_url).trials
    assert len(trials) == 3, "a stopped study gets no new trials"
    assert not [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING], "and none runs on"
    assert client.get("/studies/tiny").json()["status"] == "stopped"
    pool.send_signal(signal.SIGTERM)
    finish(pool, timeout=60)


@pytest.mark.slow
def test_two_pools_never_run_the_same_trial(
    client: TestClient,
    start_pool: Callable[..., subprocess.Popen[str]],
    pool_env: dict[str, str],
    database_url: str,
    tmp_path: Path,
) -> None:
    other_dir = tmp_path / "second-pool"
    shutil.copytree(tmp_path / "features", other_dir / "features")
    shutil.copytree(tmp_path / "stats", other_dir / "stats")
    a = start_pool("--per-device", "1")
    b = start_pool("--per-device", "1", env={**pool_env, "GAT_TUNE_DATA_DIR": str(other_dir)})
    # Both idle before the study exists: a packing slot leaves a trial to an idle one.
    wait_for(lambda: len(client.get("/workers").json()["items"]) == 2, what="both pools' slots")
    client.post("/studies", json=tiny(n_trials=8, max_parallel=4))
    stop_when_done(a, client)
    stop_when_done(b, client)
    trials = load(database_url).trials
    assert len(trials) == 8
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.number for t in trials}) == 8
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both pools took trials"


@pytest.mark.slow
def test_sigterm_checkpoints_and_requeues(
    client: TestClient, start_pool: Callable[..., subprocess.Popen[str]], database_url: str, tmp_path: Path
) -> None:
    client.post("/studies", json=tiny(base={"steps": 3000, "eval_every": 100}, n_trials=1, max_parallel=1))
    pool = start_pool("--per-device", "1")
    checkpoint = tmp_path / "runs" / "tiny" / "trial-00000" / "checkpoint.pt"
    wait_for(checkpoint.exists, what="a checkpoint")
    pool.send_signal(signal.SIGTERM)
    out = finish(pool, timeout=60)
    trials = load(database_url).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    reason = trials[0].user_attrs["fail_reason"]
    assert reason.startswith("worker shut down at step ") and "re-queued" in reason
    # the log says what happened: the signal, the trial checkpointed and re-queued, the end
    assert "SIGTERM: stopping 1 slot(s)" in out, out
    assert "trial 0 of tiny: worker shut down at step " in out and "pool stopped" in out, out
    assert out.index("SIGTERM: stopping") < out.index("worker shut down at step") < out.index("pool stopped"), out
    assert trials[1].state == optuna.trial.TrialState.WAITING
    assert trials[1].user_attrs["gat_tune_resume_from"] == str(checkpoint.parent)
    assert client.get("/workers").json()["items"] == []


@pytest.mark.slow
def test_best_config_reproduces_the_trial(
    client: TestClient, start_pool: Callable[..., subprocess.Popen[str]], pool_env: dict[str, str], tmp_path: Path
) -> None:
    client.post("/studies", json=tiny(base={"steps": 200, "eval_every": 100}, n_trials=2))
    stop_when_done(start_pool("--per-device", "2"), client)
    best_fid = client.get("/studies/tiny").json()["best"]["fid"]
    best = tmp_path / "best.yaml"
    best.write_text(client.get("/studies/tiny/best", params={"format": "yaml"}).text)

    def train_cli(*args: str) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-m", "service.cli", "train", "--config", str(best), "--json", *args],
            env=pool_env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))

    same = train_cli("--out", str(tmp_path / "prod"))
    assert abs(same["fid"] - best_fid) / best_fid <= 0.01, (same["fid"], best_fid)
    longer = train_cli("--steps", "400", "--out", str(tmp_path / "prod"))  # trains on from the checkpoint
    assert longer["steps"] == 400
    assert eval_steps(tmp_path / "prod") == [100, 200, 300, 400]
    for name in ("checkpoint.pt", "samples.png", "curve.png"):
        assert (tmp_path / "prod" / name).is_file()


def test_other_errors_fail_the_trial_with_one_line_and_the_worker_goes_on(
    client: TestClient, settings: Settings, pool_env: dict[str, str], tmp_path: Path
) -> None:
    missing = f"folder:{settings.data_dir}/datasets/nonexistent"  # inside the data roots
    spec = tiny(
        search_space={"dataset": {"type": "categorical", "choices": [missing, "digits"]}},
        enqueue=[{"dataset": missing}, {"dataset": "digits"}],
        n_trials=1,
        max_parallel=1,
        max_failures=3,
    )
    client.post("/studies", json=spec)
    slot = Slot(settings.model_copy(update={"data_dir": tmp_path, "poll_seconds": 0.1}), "cpu", idle_exit=0.5)
    slot.run()
    trials = optuna.load_study(study_name="tiny", storage=slot.queue.storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert trials[0].user_attrs["fail_reason"] == f"DataError: dataset '{missing}': no such directory"


def test_out_of_memory_reason() -> None:
    import torch

    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore text")
    assert _one_line(oom) == "CUDA out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert _one_line(ValueError("bad\nthing")) == "ValueError: bad"


@pytest.mark.slow
def test_a_pruned_trial_keeps_its_last_fid_device_worker_and_artifacts(
    client: TestClient, settings: Settings, digits_cache: Path
) -> None:
    client.post("/studies", json=tiny(pruner="median", n_trials=4, max_parallel=1))
    study = load(settings.database_url or "")
    study_spec = StudySpec.model_validate(study.user_attrs["gat_tune_spec"])
    for _ in range(3):  # finished trials with an FID no real run reaches: the median pruner fires
        trial = study.ask()
        suggest_config(trial, study_spec)
        for step in (20, 40, 60):
            trial.report(1e-6, step)
        study.tell(trial, 1e-6)
    slot = Slot(settings.model_copy(update={"data_dir": digits_cache, "poll_seconds": 0.1}), "cpu", idle_exit=0.5)
    slot.run()

    pruned = load(settings.database_url or "").trials[3]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    last = max(pruned.intermediate_values)
    assert last < 60, "stopped before the end"
    assert pruned.value == pruned.intermediate_values[last] > 1e-6, "ends with its last FID"
    assert pruned.user_attrs["device"] == "cpu" and pruned.user_attrs["worker"] == slot.worker_id
    assert pruned.user_attrs["train_seconds"] > 0
    metas = optuna.artifacts.get_all_artifact_meta(pruned, storage=slot.queue.storage)
    assert {"samples.png", "curve.png", "metrics.jsonl"} <= {m.filename for m in metas}


@pytest.mark.slow
def test_a_two_objective_study_runs(client: TestClient, settings: Settings, digits_cache: Path) -> None:
    """FID and training seconds: Trial.report refuses a Pareto study (Optuna prunes single
    objectives only); the evals' FIDs are still stored, and each trial ends with both values."""
    r = client.post("/studies", json=tiny(objective=["fid", "train_seconds"], pruner="none", n_trials=2))
    assert r.status_code == 201, r.text
    slot = Slot(settings.model_copy(update={"data_dir": digits_cache, "poll_seconds": 0.1}), "cpu", idle_exit=0.5)
    slot.run()
    trials = load(settings.database_url or "").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2, [t.user_attrs for t in trials]
    for t in trials:
        assert t.values is not None and t.values[0] > 0 and round(t.values[1], 3) == t.user_attrs["train_seconds"]
        assert t.intermediate_values[max(t.intermediate_values)] == t.values[0]


@pytest.mark.slow
def test_a_study_on_fid_and_coverage_over_http(
    client: TestClient, start_pool: Callable[..., subprocess.Popen[str]], database_url: str
) -> None:
    """objective: [fid, coverage]: each trial ends with both values, in that order and each in
    its direction; the latest eval's metrics and their features are trial user attributes."""
    r = client.post("/studies", json=tiny(objective=["fid", "coverage"], n_trials=2, max_parallel=1))
    assert r.status_code == 201, r.text
    finish(start_pool("--exit-when-idle", "3"))
    study = client.get("/studies/tiny").json()
    assert study["status"] == "completed" and study["objectives"] == ["fid", "coverage"]
    loaded = load(database_url)
    assert loaded.directions == [optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MAXIMIZE]
    for t in loaded.trials:
        assert t.state == TrialState.COMPLETE and t.values is not None, t.user_attrs
        fid, coverage = t.values
        attrs = t.user_attrs
        assert fid == attrs["fid"] > 0 and coverage == attrs["coverage"] and 0.0 <= coverage <= 1.0
        assert {"precision", "recall", "density"} <= set(attrs) and attrs["features"].startswith("classifier1-")
        assert t.intermediate_values[max(t.intermediate_values)] == fid  # the first objective's curve
    assert study["best"]["features"] == loaded.trials[study["best"]["trial"]].user_attrs["features"]
    # The dashboard's trial table has a column per user attribute; numeric ones sort and plot.
    shown = client.get(f"/api/studies/{study['optuna_study_id']}").json()["union_user_attrs"]
    sortable = {a["key"]: a["sortable"] for a in shown}
    assert all(sortable[k] for k in ("fid", "precision", "recall", "density", "coverage"))
    assert sortable["features"] is False


def test_pruners_read_a_maximised_objective_upward(client: TestClient, database_url: str) -> None:
    """objective: coverage prunes on coverage with the study's direction (maximise): the
    spec's pruners are Optuna's, which read study.direction; checked on our storage."""
    for pruner in ("median", "successive-halving"):
        name = f"cov-{pruner}"
        body = tiny(name=name, objective="coverage", pruner=pruner, base={"steps": 80})
        assert client.post("/studies", json=body).status_code == 201
        study = load(database_url, name)
        study.pruner = make_pruner(StudySpec.model_validate(study.user_attrs["gat_tune_spec"]))
        for value in (0.8, 0.85, 0.9):
            trial = study.ask()
            for step in (20, 40, 60):
                trial.report(value, step)
                assert not trial.should_prune()  # as the worker asks: successive halving records rungs
            study.tell(trial, value)
        low, high = study.ask(), study.ask()
        for step in (20, 40):
            low.report(0.1, step)
            high.report(0.95, step)
        assert low.should_prune() and not high.should_prune(), pruner


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("packed", [False, True], ids=["two-slots", "one-slot-packing-three"])
def test_nothing_is_lost_when_postgresql_restarts(
    private_pg: PrivatePostgres, digits_cache: Path, tmp_path: Path, packed: bool
) -> None:
    """The database goes away while the slots start (they register), and again mid-study
    while trials report their evals. A 0.33 s restart used to fail a trial for good
    (StorageInternalError) and a longer one crashed the slots: now the slots wait and try
    again, training goes on, and every trial ends COMPLETE or PRUNED; alike when one slot
    trains three trials as a pack."""
    url = private_pg.database()
    for sub in ("features", "stats"):
        shutil.copytree(digits_cache / sub, tmp_path / sub)
    settings = Settings(DATABASE_URL=url, data_dir=tmp_path, token="t")
    parallel = {"max_parallel": 3, "pack": 3} if packed else {"max_parallel": 2}
    spec = tiny(base={"steps": 300, "eval_every": 10}, pruner="median", n_trials=6, max_failures=1, **parallel)
    with TestClient(create_app(settings), headers={"Authorization": "Bearer t"}) as client:
        assert client.post("/studies", json=spec).status_code == 201
    db.dispose_all()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "GAT_TUNE_DATA_DIR": str(tmp_path),
        "GAT_TUNE_LEASE_SECONDS": "5",
        "GAT_TUNE_POLL_SECONDS": "0.3",
    }
    log_path = tmp_path / "pool.log"
    with log_path.open("w") as log_file:
        pool = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--devices", "cpu", "--per-device", "1" if packed else "2",
             "--exit-when-idle", "5"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        wait_for(lambda: "slot on cpu: process" in log_path.read_text(), what="the slots to start")
        private_pg.ctl("stop", "-m", "fast")  # the slots start while it is down
        met = ("slot start-up: database unavailable", "worker registration: database unavailable", "died with")
        wait_for(lambda: any(m in log_path.read_text() for m in met), what="the slots to meet the outage")
        time.sleep(1)
        private_pg.ctl("start")
        probe = sa.create_engine(url, poolclass=sa.pool.NullPool)

        def reported() -> int:
            with probe.connect() as conn:
                failed = conn.execute(sa.text("SELECT count(*) FROM trials WHERE state = 'FAIL'")).scalar_one()
                assert failed == 0, "a trial failed:\n" + log_path.read_text()
                return int(conn.execute(sa.text("SELECT count(*) FROM trial_intermediate_values")).scalar_one())

        away: list[float] = []
        for evals in (3, 40):  # mid-trial, twice
            wait_for(lambda: reported() >= evals, timeout=240, what=f"{evals} evals reported")  # noqa: B023
            away.append(private_pg.restart())
        probe.dispose()
        pool.wait(timeout=400)
    finally:
        if pool.poll() is None:
            pool.kill()
    out = log_path.read_text()
    print(f"pg_ctlcluster restart took {away} s")
    assert pool.returncode == 0, out
    assert "died with" not in out, out
    assert "start-up: database unavailable" in out, "the slots started while it was down"
    assert "training on" in out, "a restart met a trial's report"
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    states = [t.state for t in trials]
    assert len(trials) == 6 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, [
        (t.state, t.user_attrs.get("fail_reason")) for t in trials
    ]
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(10, max(t.intermediate_values) + 1, 10)), "no eval missed"
    if packed:
        assert any(t.user_attrs.get("pack", {}).get("size") == 3 for t in trials), "a pack of three trained"
    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM gt_studies")).scalar_one() == "completed"


@pytest.mark.slow
def test_the_supervisor_leaves_torch_to_its_slots(pool_env: dict[str, str]) -> None:
    """`gat-tune worker --devices cpu` imports torch and the trainer only in its slots: the
    supervisor starts them without first paying for an import they do not share (spawn)."""
    script = (
        "import sys\nfrom service.cli import main\n"
        "code = main(['worker', '--devices', 'cpu', '--exit-when-idle', '0.5'])\n"
        "print(code, sorted(m for m in ('torch', 'trainer.train') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], env=pool_env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr
    assert "slot on cpu: process" in out.stderr, "a slot was started"


def _waits(line: StartLine, place: int, timeout: float = 30.0) -> float:
    """Seconds slot ``place`` waits on the line (with a process's start), in a process of
    its own as a slot is: the line's memory is shared the way a pool shares it."""
    child = mp.get_context("spawn").Process(target=line.arrive_and_wait, args=(place, timeout))
    started = time.monotonic()
    child.start()
    child.join(60)
    assert child.exitcode == 0
    return time.monotonic() - started


def test_the_start_line_lets_slots_go_together_and_nothing_blocks_it() -> None:
    """The first slots of a pool wait on it for each other; a slot that never arrives (killed
    before it registered) holds the others only until the supervisor releases the line, or
    the timeout: no lock, nothing a dead process could keep."""
    ctx = mp.get_context("spawn")
    line = StartLine(ctx, 2)
    line.arrived[1] = 1  # the other slot is already here
    assert _waits(line, 0) < 10.0, "all arrived: at once"

    alone = StartLine(ctx, 2)
    assert 2.0 <= _waits(alone, 0, timeout=2.0) < 12.0, "nobody came: the timeout"
    threading.Timer(1.0, alone.release).start()  # the supervisor saw the other die
    assert _waits(alone, 0) < 12.0, "released: at once, not after 30 s"

    stop = threading.Event()
    stop.set()  # SIGTERM to the slot itself
    started = time.monotonic()
    StartLine(ctx, 2).arrive_and_wait(0, 30.0, stop)
    assert time.monotonic() - started < 1.0


def test_a_slot_that_keeps_dying_is_restarted_later_each_time() -> None:
    backoff = RestartBackoff()
    assert [backoff.delay(lived=2.0) for _ in range(9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.delay(lived=RestartBackoff.STABLE) == 0, "at once again after it stayed up a while"
    assert backoff.delay(lived=2.0) == 1


@pytest.mark.slow
def test_the_pool_restarts_a_slot_that_keeps_dying_later_each_time(
    start_pool: Callable[..., subprocess.Popen[str]], pool_env: dict[str, str], tmp_path: Path
) -> None:
    """A slot that dies at every start (here its artifact directory cannot be made) used to
    be restarted at once, forever; the supervisor now waits longer each time."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    pool = start_pool("--per-device", "1", env={**pool_env, "GAT_TUNE_ARTIFACT_DIR": str(blocker / "artifacts")})
    assert pool.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while not any("starting another in 2 s" in line for line in lines) and time.monotonic() < deadline:
        lines.append(pool.stdout.readline())
    out = "".join(lines)
    deaths = [json.loads(line)["msg"] for line in lines if "died with 1" in line]
    assert [d.split("; ")[1] for d in deaths] == [
        "starting another",
        "starting another in 1 s (it keeps dying)",
        "starting another in 2 s (it keeps dying)",
    ], out


def test_a_trial_that_trained_to_its_end_is_complete_not_pruned(
    client: TestClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pruner that would prune at the last eval: the run is over and its FID known, so the
    trial is COMPLETE (it was recorded PRUNED, its result lost to the study)."""
    reported_at: list[int] = []

    def prune_at_the_end(trial: optuna.Trial) -> bool:
        step = max(trial._cached_frozen_trial.intermediate_values)
        reported_at.append(step)
        return step >= 60

    monkeypatch.setattr(optuna.Trial, "should_prune", prune_at_the_end)
    client.post("/studies", json=tiny(base={"dataset": "ring8"}, pruner="median", n_trials=1, max_parallel=1))
    Slot(settings.model_copy(update={"data_dir": tmp_path, "poll_seconds": 0.1}), "cpu", idle_exit=0.5).run()
    (trial,) = optuna.load_study(study_name="tiny", storage=settings.database_url).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == trial.intermediate_values[60]
    assert reported_at == [20, 40], "asked at every eval but the last"
