"""The queue's guarantees, driven directly (no worker processes): leases, limits, reaping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from service import db
from service.config import Settings
from service.spec import suggest_config
from service.worker import Slot
from tests.service.conftest import make_queue as queue
from tests.service.conftest import tiny as spec


def test_max_parallel_and_n_trials_hold(client: TestClient, settings: Settings) -> None:
    client.post("/studies", json=spec(n_trials=3, max_parallel=2))
    a, b = queue(settings, "a"), queue(settings, "b")
    first, second = a.claim(), b.claim()
    assert first is not None and second is not None
    assert a.claim() is None, "max_parallel=2 reached"
    assert a.finish(first, state=TrialState.COMPLETE, values=[5.0])
    third = a.claim()
    assert third is not None
    assert a.claim() is None and b.claim() is None, "2 running + 1 finished = n_trials"
    assert b.finish(second, state=TrialState.PRUNED)
    assert a.finish(third, state=TrialState.COMPLETE, values=[4.0])
    assert client.get("/studies/tiny").json()["status"] == "completed"
    assert a.claim() is None


def test_completed_at_complete_plus_pruned_in_each_place(client: TestClient, settings: Settings) -> None:
    """The rule "completed when COMPLETE + PRUNED >= n_trials" (service/optuna_tables/studies.py) holds
    where it is read: the study's summary, the claim, and the release of a finished trial."""

    def stored() -> str:
        with db.engine(settings).connect() as conn:
            return str(conn.execute(sa.text("SELECT status FROM gt_studies WHERE name = 'tiny'")).scalar_one())

    client.post("/studies", json=spec(n_trials=3, max_parallel=3))
    study = optuna.load_study(study_name="tiny", storage=db.optuna_storage(settings))
    study.tell(study.ask(), 1.0)
    study.tell(study.ask(), state=TrialState.PRUNED)
    study.tell(study.ask(), state=TrialState.FAIL)  # a failed trial does not count
    assert client.get("/studies/tiny").json()["status"] == "running"
    assert queue(settings, "a").claim() is not None, "2 finished of 3: room for one more"
    study.tell(study.ask(), state=TrialState.PRUNED)  # finished behind the queue's back
    assert stored() == "running"
    assert client.get("/studies/tiny").json()["status"] == "completed", "the summary"
    assert queue(settings, "b").claim() is None
    assert stored() == "completed", "the claim"

    client.post("/studies", json=spec(name="other", n_trials=2, max_parallel=2))
    q = queue(settings, "c")
    first, second = q.claim(), q.claim()
    assert first is not None and second is not None
    assert q.finish(first, state=TrialState.PRUNED)
    with db.engine(settings).connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM gt_studies WHERE name = 'other'")).scalar_one() == "running"
    assert q.finish(second, state=TrialState.COMPLETE, values=[2.0])
    with db.engine(settings).connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM gt_studies WHERE name = 'other'")).scalar_one() == "completed"


def test_a_report_writes_the_value_once_and_reads_the_study_status(client: TestClient, settings: Settings) -> None:
    client.post("/studies", json=spec(n_trials=1))
    q = queue(settings, "w")
    claim = q.claim()
    assert claim is not None
    assert q.report(claim, 1, 3.0) == "running"
    client.post("/studies/tiny/pause")
    assert q.report(claim, 2, 2.0) == "paused"
    assert q.report(claim, 2, 9.0) == "paused", "a step already reported: the status only"
    assert db.optuna_storage(settings).get_trial(claim.trial_id).intermediate_values == {1: 3.0, 2: 2.0}


def test_a_result_after_the_lease_was_reaped_is_dropped(client: TestClient, settings: Settings) -> None:
    client.post("/studies", json=spec(n_trials=1, max_parallel=1))
    slow = queue(settings, "slow", lease=0.2)
    claim = slow.claim()
    assert claim is not None
    time.sleep(0.5)
    assert queue(settings, "reaper").reap() == 1
    assert not slow.finish(claim, state=TrialState.COMPLETE, values=[1.0]), "never counted twice"
    trials = optuna.load_study(study_name="tiny", storage=db.optuna_storage(settings)).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["fail_reason"].startswith("lease expired: worker slow stopped heartbeating")
    assert trials[1].params == trials[0].params and trials[1].user_attrs["gat_tune_attempt"] == 1


def test_retries_stop_at_max_retries(client: TestClient, settings: Settings) -> None:
    client.post("/studies", json=spec(n_trials=1, max_parallel=1, max_retries=1))
    for _ in range(2):
        claim = queue(settings, "dies", lease=0.1).claim()
        assert claim is not None
        time.sleep(0.3)
        queue(settings, "reaper").reap()
    trials = optuna.load_study(study_name="tiny", storage=db.optuna_storage(settings)).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert "not re-queued (max_retries=1 spent)" in trials[1].user_attrs["fail_reason"]


def test_a_trial_without_a_lease_is_reaped(client: TestClient, settings: Settings) -> None:
    client.post("/studies", json=spec(n_trials=1))
    study = optuna.load_study(study_name="tiny", storage=db.optuna_storage(settings))
    study.ask()  # a worker that died between Optuna's ask and its lease
    time.sleep(0.5)
    assert queue(settings, "reaper", lease=0.1).reap() == 1
    trials = study.trials
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"].startswith("no lease: its worker died while claiming it; re-queued")
    assert trials[1].state == TrialState.WAITING


def test_a_study_whose_trials_keep_failing_ends(client: TestClient, settings: Settings) -> None:
    client.post("/studies", json=spec(n_trials=5, max_failures=2))
    q = queue(settings, "w")
    for _ in range(2):
        claim = q.claim()
        assert claim is not None
        q.finish(claim, state=TrialState.FAIL, attrs={"fail_reason": "diverged at step 3"})
    assert q.claim() is None
    assert client.get("/studies/tiny").json()["status"] == "failed"


@pytest.mark.parametrize("packed", [False, True])
def test_a_trial_claimed_during_a_heartbeat_is_not_lost(client: TestClient, settings: Settings, packed: bool) -> None:
    """The heartbeat must not take a trial claimed while renew() ran for one it failed to
    renew (that trial would be interrupted as 'lease lost' and re-run): the next trial after
    one that ended, or (packed) a member added to the slot's pack."""
    client.post("/studies", json=spec(n_trials=2, max_parallel=2 if packed else 1))
    slot = Slot(settings, "cpu")
    slot.register()
    first = slot.queue.claim()
    assert first is not None
    slot.current = [first]
    renew = slot.queue.renew

    def renew_while_the_next_trial_is_claimed() -> set[int]:
        held = renew()
        if not packed:
            assert slot.queue.finish(slot.current[0], state=TrialState.COMPLETE, values=[1.0])
        more = slot.queue.claim()  # after renew's statement: its lease is not in `held`
        assert more is not None
        slot.current = [*slot.current, more] if packed else [more]
        return held

    slot.queue.renew = renew_while_the_next_trial_is_claimed  # type: ignore[method-assign]
    slot.beat()
    latest = slot.current[-1]
    assert latest.trial_id != first.trial_id and latest.trial_id not in slot.lost
    slot.queue.renew = renew  # type: ignore[method-assign]
    slot.beat()
    assert not slot.lost, "its lease is renewed at the next beat"


def _hold_claim_lock(settings: Settings, study: str) -> Any:
    """Another worker in the middle of a claim: a transaction holding the study's row lock."""
    conn = db.engine(settings).connect()
    conn.execute(sa.text("SELECT 1 FROM gt_studies WHERE name = :n FOR UPDATE"), {"n": study})
    return conn


def test_a_claim_skips_a_study_being_claimed_from_then_waits_its_turn(client: TestClient, settings: Settings) -> None:
    client.post("/studies", json=spec(name="older"))
    client.post("/studies", json=spec(name="newer"))
    q = queue(settings, "w")
    q.lock_wait = 2.0
    other = _hold_claim_lock(settings, "older")
    claim = q.claim()
    assert claim is not None and claim.study_name == "newer" and claim.waited == 0.0, "no wait with a study free"
    client.post("/studies/newer/pause")  # now the only study with room is the locked one

    release = threading.Timer(0.3, other.rollback)
    release.start()
    claim = q.claim()
    release.join()
    assert claim is not None and claim.study_name == "older"
    assert 0.25 <= claim.waited < 2.0, "woken when the other claim ended, not by a poll"

    other = _hold_claim_lock(settings, "older")
    q.lock_wait = 0.2
    started = time.perf_counter()
    assert q.claim() is None, "gives up after lock_wait"
    assert time.perf_counter() - started < 1.5
    other.rollback()
    other.close()
    claim = q.claim()
    assert claim is not None and claim.study_name == "older", "and claims normally afterwards"


def test_queued_configs_are_claimed_first_in_order(client: TestClient, settings: Settings) -> None:
    """A claim pops the study's queued trials (the spec's enqueue, then the route's) before
    it asks the sampler, and the trial runs the queued values."""
    client.post("/studies", json=spec(enqueue=[{"lambda": 0.5, "lr_g": 2e-4}], max_parallel=3))
    assert client.post("/studies/tiny/enqueue", json={"lambda": 3.0}).status_code == 201
    q = queue(settings, "w")
    claims = [q.claim() for _ in range(3)]
    assert all(c is not None for c in claims)
    configs = [suggest_config(c.trial, c.spec) for c in claims if c is not None]
    assert (configs[0]["lambda"], configs[0]["lr_g"]) == (0.5, 2e-4)
    assert configs[1]["lambda"] == 3.0 and 1e-4 <= configs[1]["lr_g"] <= 1e-3  # the rest sampled
    assert [c.trial.number for c in claims if c is not None] == [0, 1, 2]
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=db.optuna_storage(settings)).trials]
    assert states == [TrialState.RUNNING] * 3, "the third is a new trial: nothing left queued"


def test_a_study_whose_optuna_study_was_deleted_is_skipped_and_marked(client: TestClient, settings: Settings) -> None:
    """optuna.delete_study under our row: a claim used to raise KeyError (every slot crashed
    and restarted, no study progressed); now it marks the ghost failed and goes on."""
    client.post("/studies", json=spec(name="ghost"))
    client.post("/studies", json=spec(name="alive"))
    q = queue(settings, "w")
    warm = q.claim()  # the ghost's Optuna study loaded and cached before it goes
    assert warm is not None and warm.study_name == "ghost"
    assert q.finish(warm, state=TrialState.COMPLETE, values=[1.0])
    optuna.delete_study(study_name="ghost", storage=settings.database_url or "")
    claim = q.claim()
    assert claim is not None and claim.study_name == "alive"
    with db.engine(settings).connect() as conn:
        status = {name: state for name, state in conn.execute(sa.text("SELECT name, status FROM gt_studies"))}
    assert status == {"ghost": "failed", "alive": "running"}
    assert queue(settings, "fresh").claim() is not None, "a worker that never loaded it skips it too"


def test_a_finish_tried_again_after_its_tell_committed_counts_once(client: TestClient, settings: Settings) -> None:
    """The database went away after the tell committed but before the lease's transaction
    did: the finish tried again must count it as told, once."""
    client.post("/studies", json=spec(n_trials=1, max_parallel=1))
    q = queue(settings, "w")
    claim = q.claim()
    assert claim is not None
    claim.study.tell(claim.trial, [2.5], state=TrialState.COMPLETE)  # the first try's tell
    assert q.finish(claim, state=TrialState.COMPLETE, values=[2.5]), "told, not 'already finished elsewhere'"
    trials = optuna.load_study(study_name="tiny", storage=db.optuna_storage(settings)).trials
    assert [(t.state, t.value) for t in trials] == [(TrialState.COMPLETE, 2.5)]
    assert client.get("/studies/tiny").json()["status"] == "completed"
    assert q.claim() is None


def test_an_interrupt_tried_again_requeues_once(client: TestClient, settings: Settings) -> None:
    client.post("/studies", json=spec(n_trials=1, max_parallel=1))
    q = queue(settings, "w")
    claim = q.claim()
    assert claim is not None
    suggest_config(claim.trial, claim.spec)
    # The first try re-queued the trial, then lost its connection before releasing the lease.
    claim.study.enqueue_trial(claim.trial.params, user_attrs={"gat_tune_attempt": 0, "gat_tune_retry_of": 0})
    q.interrupt(claim, "database unavailable; checkpointed")
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=db.optuna_storage(settings)).trials]
    assert states == [TrialState.FAIL, TrialState.WAITING], "one re-queued copy, not two"


def test_lost_workers_are_shown_lost_then_pruned_by_the_reaper(client: TestClient, settings: Settings) -> None:
    lease = settings.lease_seconds
    with db.engine(settings).begin() as conn:
        for name, age in (("alive", 0.0), ("lost", 2 * lease), ("long-gone", 11 * lease)):
            conn.execute(
                sa.text(
                    "INSERT INTO gt_workers (id, host, pid, device, status, last_heartbeat) "
                    "VALUES (:id, 'h', 1, 'cpu', 'training', now() - make_interval(secs => :age))"
                ),
                {"id": name, "age": age},
            )
    shown = {w["id"]: w["status"] for w in client.get("/workers").json()["items"]}
    assert shown == {"alive": "training", "lost": "lost", "long-gone": "lost"}
    queue(settings, "reaper", lease=lease).reap()
    shown = {w["id"]: w["status"] for w in client.get("/workers").json()["items"]}
    assert shown == {"alive": "training", "lost": "lost"}, "pruned after 10 leases, not before"


def _in_zone(tz: str, database_url: str, code: str) -> Any:
    """Run ``code`` in a new Python process whose local time zone is ``tz``; the JSON it
    printed last."""
    env = {**os.environ, "TZ": tz, "DATABASE_URL": database_url}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


_CLAIM_ORPHAN = """
import json, time
import sqlalchemy as sa
from optuna.trial import TrialState
from service import db
from service.config import Settings
from service.queue import TrialQueue
settings = Settings()
q = TrialQueue(db.engine(settings), db.optuna_storage(settings), "w-{zone}", lease_seconds={lease})
done = q.claim()
q.finish(done, state=TrialState.COMPLETE, values=[1.0])
q.claim()
with db.engine(settings).begin() as conn:  # its worker died between Optuna's ask and the lease
    conn.execute(sa.text("DELETE FROM gt_trial_leases"))
time.sleep({wait})
print(json.dumps({{"reaped": q.reap()}}))
"""

_READ_TRIALS = """
import json
from fastapi.testclient import TestClient
from service.app import create_app
from service.config import Settings
with TestClient(create_app(Settings())) as client:
    print(json.dumps(client.get("/studies/{name}/trials").json()["items"]))
"""


@pytest.mark.slow
def test_workers_and_api_in_other_time_zones_agree(client: TestClient, settings: Settings) -> None:
    """Optuna stamps trials with the writing process's local time. A worker in Tokyo (UTC+9)
    used to write times 9 h ahead: the reaper never took its orphans and the API showed them
    9 h off; one in Los Angeles (UTC-8) wrote them 8 h behind: the reaper took a trial at
    once, long before its grace (two leases) was over."""
    url = settings.database_url or ""
    client.post("/studies", json=spec(name="tokyo", max_parallel=2))
    client.post("/studies", json=spec(name="la", max_parallel=2))
    tokyo = _CLAIM_ORPHAN.format(zone="tokyo", lease=0.5, wait=1.5)  # past its grace: taken
    assert _in_zone("Asia/Tokyo", url, tokyo) == {"reaped": 1}
    client.post("/studies/tokyo/pause")
    la = _CLAIM_ORPHAN.format(zone="la", lease=30, wait=0)  # within its grace (60 s): left alone
    assert _in_zone("America/Los_Angeles", url, la) == {"reaped": 0}

    now = datetime.now(timezone.utc)
    for name in ("tokyo", "la"):
        trials = _in_zone(
            "America/Los_Angeles" if name == "tokyo" else "Asia/Tokyo", url, _READ_TRIALS.format(name=name)
        )
        for key in ("datetime_start", "datetime_complete"):
            shown = datetime.fromisoformat(trials[0][key])
            assert abs((shown - now).total_seconds()) < 120, (name, key, shown, now)


def test_a_study_that_cannot_be_claimed_from_is_skipped(client: TestClient, settings: Settings) -> None:
    """Any error of one study's own (here a stored spec that no longer validates) skips that
    study; it used to fail every claim, and so every study."""
    client.post("/studies", json=spec(name="broken"))
    client.post("/studies", json=spec(name="fine"))
    with db.engine(settings).begin() as conn:
        conn.execute(
            sa.text("""UPDATE gt_studies SET spec = jsonb_set(spec, '{sampler}', '"gone"') WHERE name = 'broken'""")
        )
    claim = queue(settings, "w").claim()
    assert claim is not None and claim.study_name == "fine"


@pytest.mark.parametrize("breakage", ["spec from another version", "optuna study deleted"])
def test_an_expired_lease_of_a_broken_study_keeps_no_worker_from_claiming(
    client: TestClient, settings: Settings, breakage: str
) -> None:
    """The reaper runs before every claim: one study's error there used to fail the whole
    pass, every time, so no worker claimed anything from any study."""
    client.post("/studies", json=spec(name="broken", max_retries=3))
    dead = queue(settings, "dead", lease=0.2)
    lost = dead.claim()
    assert lost is not None and lost.study_name == "broken"
    client.post("/studies", json=spec(name="fine"))
    with db.engine(settings).begin() as conn:
        conn.execute(
            sa.text("""UPDATE gt_studies SET spec = jsonb_set(spec, '{sampler}', '"gone"') WHERE name = 'broken'""")
        )
    if breakage == "optuna study deleted":
        optuna.delete_study(study_name="broken", storage=db.optuna_storage(settings))
    time.sleep(0.5)
    alive = queue(settings, "alive")
    reaped = alive.reap()
    claim = alive.claim()
    assert claim is not None and claim.study_name == "fine"
    if breakage == "spec from another version":
        assert reaped == 1
        trials = optuna.load_study(study_name="broken", storage=db.optuna_storage(settings)).trials
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING], "re-queued, its max_retries read raw"
    else:
        assert reaped == 0
    with db.engine(settings).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM gt_trial_leases WHERE worker_id = 'dead'").scalar() == 0
