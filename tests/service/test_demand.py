"""The queue's demand (service/queue/demand.py), the count KEDA scales the workers on, over
studies in every state, checked against what claims can actually take."""

from __future__ import annotations

from typing import Any

import optuna
import sqlalchemy as sa
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from service import db
from service.config import Settings
from service.queue import Claim, TrialQueue
from service.queue.demand import SLOTS_WANTED_SQL, Demand, demand
from tests.service.conftest import make_queue as queue
from tests.service.conftest import tiny as spec


def now(settings: Settings) -> tuple[Demand, int]:
    with db.engine(settings).connect() as conn:
        return demand(conn), int(conn.execute(sa.text(SLOTS_WANTED_SQL)).scalar_one())


def claims(q: TrialQueue, n: int) -> list[Claim]:
    out = [q.claim() for _ in range(n)]
    assert all(c is not None for c in out), "the setup needs every claim to succeed"
    return [c for c in out if c is not None]


def test_demand_over_studies_in_every_state(client: TestClient, settings: Settings) -> None:
    """Each study is set up alone (the others paused: a claim takes from the oldest running
    study with room), then every study is put in its final state."""
    q = queue(settings, "setup")

    def create(name: str, **changes: Any) -> None:
        assert client.post("/studies", json=spec(name=name, **changes)).status_code == 201
        for other in client.get("/studies").json()["items"]:
            if other["name"] != name and other["status"] == "running":
                assert client.post(f"/studies/{other['name']}/pause").status_code == 200

    # Failed: three trials failed alike, none finished; the next claim marks the study failed.
    create("failed", n_trials=5, max_parallel=3)
    for c in claims(q, 3):
        assert q.finish(c, state=TrialState.FAIL, attrs={"fail_reason": "no such data set"})
    assert q.claim() is None
    # Completed: n_trials finished (one PRUNED, one COMPLETE).
    create("completed", n_trials=2, max_parallel=2)
    done = claims(q, 2)
    assert q.finish(done[0], state=TrialState.COMPLETE, values=[3.0])
    assert q.finish(done[1], state=TrialState.PRUNED)
    assert q.claim() is None
    # Stopped, with room left and a queued trial: nothing to start.
    create("stopped", n_trials=6, max_parallel=2)
    (c,) = claims(q, 1)
    assert q.finish(c, state=TrialState.COMPLETE, values=[2.0])
    optuna.load_study(study_name="stopped", storage=db.optuna_storage(settings)).enqueue_trial({"lambda": 1.0})
    # Paused, one trial still leased (its worker has not seen the pause yet): running, not startable.
    create("paused", n_trials=6, max_parallel=3)
    claims(q, 1)
    # Full: max_parallel trials running.
    create("full", n_trials=8, max_parallel=2)
    claims(q, 2)
    # Nearly done: 2 finished + 1 running of n_trials=4, max_parallel=4: room for 1, not 3.
    create("nearly", n_trials=4, max_parallel=4)
    a, b, _ = claims(q, 3)
    assert q.finish(a, state=TrialState.COMPLETE, values=[1.0])
    assert q.finish(b, state=TrialState.PRUNED)
    # Busy: every trial state. 1 COMPLETE, 1 PRUNED, 1 FAIL, 1 interrupted (FAIL + a WAITING
    # copy), 1 WAITING enqueued, 2 RUNNING, of n_trials=10, max_parallel=4: room for 2.
    create("busy", n_trials=10, max_parallel=4)
    c1, c2, c3, c4 = claims(q, 4)
    assert q.finish(c1, state=TrialState.COMPLETE, values=[4.0])
    assert q.finish(c2, state=TrialState.PRUNED)
    assert q.finish(c3, state=TrialState.FAIL, attrs={"fail_reason": "diverged"})
    q.interrupt(c4, "worker shut down at step 3; checkpointed")
    busy = optuna.load_study(study_name="busy", storage=db.optuna_storage(settings))
    busy.enqueue_trial({"lambda": 2.0})
    claims(q, 2)  # the two WAITING trials (re-queued, enqueued) are popped first
    states = [t.state for t in busy.get_trials(deepcopy=False)]
    assert {s: states.count(s) for s in set(states)} == {
        TrialState.COMPLETE: 1,
        TrialState.PRUNED: 1,
        TrialState.FAIL: 2,
        TrialState.RUNNING: 2,
    }
    busy.enqueue_trial({"lambda": 3.0})  # and one left WAITING
    # Fresh: nothing yet.
    create("fresh", n_trials=6, max_parallel=2)

    for name in ("nearly", "full", "busy"):  # "fresh" still runs; "paused" stays paused
        assert client.post(f"/studies/{name}/resume").status_code == 200
    assert client.post("/studies/stopped/stop").status_code == 200
    statuses = {s["name"]: s["status"] for s in client.get("/studies").json()["items"]}
    assert statuses == {
        "failed": "failed",
        "completed": "completed",
        "stopped": "stopped",
        "paused": "paused",
        "full": "running",
        "nearly": "running",
        "busy": "running",
        "fresh": "running",
    }

    # running: paused 1 + full 2 + nearly 1 + busy 2; startable: nearly 1 + busy 2 + fresh 2.
    expected = Demand(running=6, startable=5)
    assert now(settings) == (expected, expected.slots_wanted)
    assert client.get("/workers").json()["demand"] == {"running": 6, "startable": 5, "slots_wanted": 11}

    # The oracle: a pool can start exactly that many trials now, and then none.
    drained = queue(settings, "drain")
    taken = [c for c in iter(drained.claim, None)]
    assert len(taken) == expected.startable
    assert sorted(c.study_name for c in taken) == ["busy", "busy", "fresh", "fresh", "nearly"]
    assert now(settings) == (Demand(running=11, startable=0), 11)

    # A trial ending frees its slot for the next one: the slots wanted stay until n_trials.
    fresh = next(c for c in taken if c.study_name == "fresh")
    assert drained.finish(fresh, state=TrialState.COMPLETE, values=[0.5])
    assert now(settings) == (Demand(running=10, startable=1), 11)
    nearly = next(c for c in taken if c.study_name == "nearly")
    assert drained.finish(nearly, state=TrialState.COMPLETE, values=[0.5])
    assert now(settings) == (Demand(running=9, startable=1), 10), "nearly: 3 finished + 1 running of 4"


def test_an_empty_queue_wants_no_workers(settings: Settings) -> None:
    assert now(settings) == (Demand(running=0, startable=0), 0)
