"""Trial packing in the worker: a slot trains several trials of a study as one batched model,
and each stays a trial of its own (its report, its end, its lease, its replay), through
crashes and shutdowns too. Real pools against real PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from service.config import Settings
from service.optuna_tables import PACK_REPLAY
from service.worker import Slot
from tests.service.conftest import eval_steps, finish, load, make_queue, stop_when_done, tiny, wait_for
from trainer.config import PackReplay, TrainConfig
from trainer.packed import replay as packed_replay

GOOD = {"lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5, "beta2": 0.999}
BAD = {"lr_g": 1000.0, "lr_d": 1000.0, "beta1": 0.0, "beta2": 0.0}  # sign-SGD at lr 1000: overflows


def packed_spec(**changes: Any) -> dict[str, Any]:
    """Four trials of mixed widths, λ and rates: one pack of four in one slot."""
    space = {
        "lambda": {"type": "float", "low": 0.1, "high": 10, "log": True},
        "g_width": {"type": "categorical", "choices": [32, 64]},
        "d_width": {"type": "categorical", "choices": [32, 64]},
    }
    return tiny(**{"search_space": space, "n_trials": 4, "max_parallel": 4, "pack": 4, **changes})


@pytest.mark.slow
def test_a_slot_packs_trials_and_each_member_is_a_trial_of_its_own(
    client: TestClient,
    start_pool: Callable[..., subprocess.Popen[str]],
    pool_env: dict[str, str],
    database_url: str,
    tmp_path: Path,
) -> None:
    spec = packed_spec(
        search_space={
            **packed_spec()["search_space"],
            **{k: {"type": "categorical", "choices": [GOOD[k], BAD[k]]} for k in GOOD},
        },
        enqueue=[GOOD, {**BAD, "g_width": 64, "d_width": 64}, {**GOOD, "g_width": 64}, {**GOOD, "d_width": 64}],
    )
    assert client.post("/studies", json=spec).status_code == 201
    finish(start_pool("--per-device", "1", "--exit-when-idle", "3"))

    everything = sorted(load(database_url).trials, key=lambda t: t.number)
    assert len(everything) == 5
    trials, fifth = everything[:4], everything[4]
    assert {t.user_attrs["pack"]["size"] for t in trials} == {4}, "one pack of four"
    assert [t.user_attrs["pack"]["position"] for t in trials] == [0, 1, 2, 3]
    # A failed trial does not count to n_trials: a fifth was claimed into its place at the
    # pack's next eval (step 20), and trained its own 60 steps from there.
    assert fifth.state == TrialState.COMPLETE and sorted(fifth.intermediate_values) == [20, 40, 60]
    assert fifth.user_attrs["pack"]["joined"] == 20 and fifth.user_attrs["pack"]["position"] == 4
    for t in everything:
        assert t.user_attrs["pack"]["trials"] == ([0, 1, 2, 3] if t.number == 1 else [0, 1, 2, 3, 4])
    # The diverging member failed alone, with its step; the others trained on to the end.
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [1] and failed[0].user_attrs["fail_reason"].startswith("diverged at step")
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == [20, 40, 60] and t.value == t.intermediate_values[60]
            assert t.user_attrs["fid"] == t.value
    assert [t.number for t in trials if t.state == TrialState.COMPLETE] == [0, 2, 3]

    # The production handoff: the best config carries its pack; `gat-tune train` replays it
    # (on the slot's thread count, read from the record) and gets the trial's FID exactly.
    best = client.get("/studies/tiny/best").json()
    best_trial = load(database_url).best_trial
    assert best["pack"]["position"] == best_trial.user_attrs["pack"]["position"]
    assert best["pack"]["exact"] is True and best["pack"]["joined"] == [0, 0, 0, 0, 20][: len(best["pack"]["members"])]
    (tmp_path / "best.json").write_text(json.dumps(best))
    replay = subprocess.run(
        [sys.executable, "-m", "service.cli", "train", "--config", str(tmp_path / "best.json"),
         "--out", str(tmp_path / "replay"), "--json"],
        env=pool_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    assert "training the pack again" in replay.stderr
    assert json.loads(replay.stdout.splitlines()[-1])["fid"] == best_trial.value
    # The member that joined mid-pack replays exactly too: the pack again, with its join.
    record = fifth.system_attrs[PACK_REPLAY]
    assert record["joined"] == [0, 0, 0, 0, 20] and record["left"] == [None] * 5
    threads = torch.get_num_threads()
    torch.set_num_threads(record["cpu_threads"])
    try:
        config = TrainConfig.from_dict(record["members"][4])
        again = packed_replay(PackReplay.from_dict(record, config), data_dir=Path(pool_env["GAT_TUNE_DATA_DIR"]))
    finally:
        torch.set_num_threads(threads)
    assert again.fid == fifth.value


@pytest.mark.slow
def test_packing_does_not_bend_the_search(
    client: TestClient, start_pool: Callable[..., subprocess.Popen[str]], database_url: str
) -> None:
    # The sampler proposes what it would without packing: the same trials, by number.
    params = {}
    for pack in (1, 4):
        name = f"tiny-pack{pack}"
        assert client.post("/studies", json=packed_spec(name=name, pack=pack, n_trials=4)).status_code == 201
        stop_when_done(start_pool("--per-device", "1"), client, name)
        trials = load(database_url, name).trials
        assert all(t.state == TrialState.COMPLETE for t in trials)
        assert {t.user_attrs.get("pack", {}).get("size", 1) for t in trials} == {pack}
        params[pack] = {t.number: t.params for t in trials}
    assert params[1] == params[4]


@pytest.mark.slow
def test_max_pack_caps_what_a_slot_packs(
    client: TestClient, start_pool: Callable[..., subprocess.Popen[str]], database_url: str
) -> None:
    assert client.post("/studies", json=packed_spec()).status_code == 201
    stop_when_done(start_pool("--per-device", "1", "--max-pack", "2"), client)
    trials = load(database_url).trials
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.user_attrs["pack"]["size"] for t in trials) == [2, 2, 2, 2]


def a_pack_of_three_checkpointed(
    client: TestClient, start_pool: Callable[..., subprocess.Popen[str]], tmp_path: Path, *pool_args: str
) -> subprocess.Popen[str]:
    """A pool whose one slot trains three 600-step trials as a pack, once each member has
    written a checkpoint."""
    spec = packed_spec(base={"steps": 600, "eval_every": 100}, n_trials=3, max_parallel=3, pack=3)
    client.post("/studies", json=spec)
    pool = start_pool("--per-device", "1", *pool_args)
    runs = tmp_path / "runs" / "tiny"
    wait_for(
        lambda: all((runs / f"trial-{n:05d}" / "checkpoint.pt").exists() for n in range(3)),
        what="a checkpoint of each member",
    )
    return pool


@pytest.mark.slow
def test_kill_9_mid_pack_retries_every_member_from_its_checkpoint(
    client: TestClient, start_pool: Callable[..., subprocess.Popen[str]], database_url: str, tmp_path: Path
) -> None:
    pool = a_pack_of_three_checkpointed(client, start_pool, tmp_path)
    os.kill(client.get("/workers").json()["items"][0]["pid"], signal.SIGKILL)
    out = stop_when_done(pool, client, slot_deaths=1)
    assert "died with -9; starting another" in out

    trials = load(database_url).trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert sorted(t.number for t in failed) == [0, 1, 2]
    assert all(t.user_attrs["fail_reason"].startswith("lease expired") for t in failed)
    assert all(max(t.intermediate_values, default=0) < 600 for t in failed), "killed mid-run, not after its last eval"
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    for retry in done:
        origin = next(t for t in failed if t.number == retry.user_attrs["gat_tune_retry_of"])
        assert retry.params == origin.params and retry.user_attrs["run_dir"] == origin.user_attrs["run_dir"]
        steps = eval_steps(retry.user_attrs["run_dir"])
        assert steps == sorted(set(steps)) and steps[-1] == 600, "no step trained twice, none lost"


@pytest.mark.slow
def test_sigterm_mid_pack_requeues_every_member_and_they_resume(
    client: TestClient, start_pool: Callable[..., subprocess.Popen[str]], database_url: str, tmp_path: Path
) -> None:
    pool = a_pack_of_three_checkpointed(client, start_pool, tmp_path)
    pool.send_signal(signal.SIGTERM)
    finish(pool, timeout=120)
    stopped = [t for t in load(database_url).trials if t.state == TrialState.FAIL]
    assert sorted(t.number for t in stopped) == [0, 1, 2]
    assert all(t.user_attrs["fail_reason"].startswith("worker shut down at step") for t in stopped)
    assert all(max(t.intermediate_values, default=0) < 600 for t in stopped), "stopped mid-run, not after its last eval"

    stop_when_done(start_pool("--per-device", "1"), client)
    trials = load(database_url).trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and client.get("/studies/tiny").json()["status"] == "completed"
    for t in done:
        steps = eval_steps(t.user_attrs["run_dir"])
        assert steps == sorted(set(steps)) and steps[-1] == 600
    assert optuna.trial.TrialState.RUNNING not in {t.state for t in trials}


@pytest.mark.slow
def test_a_slot_whose_pack_keeps_refilling_still_reaps_the_trials_of_dead_workers(
    client: TestClient, settings: Settings, digits_cache: Path
) -> None:
    # A long member and, claimed into the pack at its evals in enqueue order, members that
    # diverge at once: the pack goes on while a dead worker's lease expires, and the slot
    # reaps it from inside the pack.
    assert client.post("/studies", json=tiny(name="other", n_trials=1, max_parallel=1)).status_code == 201
    assert make_queue(settings, "dead", lease=4.0).claim() is not None  # never renewed
    space = {
        "lambda": {"type": "float", "low": 0.1, "high": 10},
        **{k: {"type": "categorical", "choices": [GOOD[k], BAD[k]]} for k in GOOD},
    }
    diverging = [{**BAD, "lambda": 0.1 + i / 10} for i in range(60)]
    spec = packed_spec(
        search_space=space, base={"steps": 6000, "eval_every": 50}, n_trials=61, max_parallel=2, pack=2,
        max_failures=1000, enqueue=[{**GOOD, "lambda": 1.0}, *diverging],
    )  # fmt: skip
    assert client.post("/studies", json=spec).status_code == 201
    for sub in ("features", "stats"):  # its own runs directory: the shared cache's would outlive the test
        shutil.copytree(digits_cache / sub, settings.data_dir / sub, dirs_exist_ok=True)
    slot = Slot(settings.model_copy(update={"lease_seconds": 3}), "cpu")
    runner = threading.Thread(target=slot.run)
    runner.start()
    try:
        wait_for(
            lambda: load(settings.database_url or "", "other").trials[0].state == TrialState.FAIL,
            timeout=60,
            what="the dead worker's trial reaped",
        )
        trials = load(settings.database_url or "").trials
        held = len(slot.current)  # what the heartbeat renews: the members training, not those that left
    finally:
        slot.shutdown.set()
        runner.join(timeout=60)
    dead = load(settings.database_url or "", "other").trials[0]
    assert dead.user_attrs["fail_reason"].startswith("lease expired: worker dead")
    assert trials[0].state == TrialState.RUNNING, "reaped while the pack trained"
    assert sum(t.state == TrialState.FAIL for t in trials) >= 2, "members joined the pack and left it"
    assert held <= 3, f"the slot still holds {held} claims with a pack of 2"


@pytest.mark.slow
def test_the_first_slots_of_a_pool_wait_for_each_other_before_packing(
    client: TestClient, start_pool: Callable[..., subprocess.Popen[str]], database_url: str
) -> None:
    """A study waiting before its pool starts (the README's order: serve, submit, worker):
    the first slot up does not pack the trial its sibling, a moment later, trains on another
    core. The slots register, then pass the pool's start-up barrier together."""
    assert client.post("/studies", json=tiny(n_trials=2, max_parallel=2)).status_code == 201  # pack: the CPU's 8
    out = stop_when_done(start_pool("--per-device", "2"), client)
    trials = load(database_url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, out
    assert [t.user_attrs.get("pack") for t in trials] == [None, None], "each trial alone"
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "on a slot each"
