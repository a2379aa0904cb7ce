"""What a study's status says about its failures: the last reason, interrupted trials apart
from failed ones, and a study whose every trial fails alike ending at once."""

from __future__ import annotations

import argparse
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from service import cli, db
from service.config import Settings
from service.queue import TrialQueue
from service.studies import FAIL_FAST
from tests.service.conftest import make_queue, tiny

MISSING = "data: folder:/data/faces has no PNG or JPEG images"


def spec(**changes: Any) -> dict[str, Any]:
    return tiny(**changes)


def queue(settings: Settings) -> TrialQueue:
    return make_queue(settings, "w")


def fail(q: TrialQueue, reason: str) -> None:
    claim = q.claim()
    assert claim is not None
    assert q.finish(claim, state=TrialState.FAIL, attrs={"fail_reason": reason})


def test_trials_that_all_fail_alike_end_the_study_with_the_reason(client: TestClient, settings: Settings) -> None:
    client.post("/studies", json=spec(n_trials=20, max_parallel=1))  # max_failures: 20
    q = queue(settings)
    for _ in range(FAIL_FAST):
        fail(q, MISSING)
    assert q.claim() is None
    study = client.get("/studies/tiny").json()
    assert study["status"] == "failed"
    assert study["trial_counts"]["FAIL"] == FAIL_FAST
    assert study["last_failure"] == {"trial": FAIL_FAST - 1, "reason": MISSING}
    best = client.get("/studies/tiny/best")  # no trial will finish: not "try again"
    assert best.status_code == 409
    assert best.json()["detail"] == "study 'tiny' failed with no completed trial; `gat-tune status tiny` says why"


def test_failures_that_differ_or_follow_a_finished_trial_do_not_end_it(client: TestClient, settings: Settings) -> None:
    client.post("/studies", json=spec(n_trials=20, max_parallel=1))
    q = queue(settings)
    for step in range(FAIL_FAST):
        fail(q, f"diverged at step {step}")
    claim = q.claim()
    assert claim is not None and q.finish(claim, state=TrialState.COMPLETE, values=[5.0])
    for _ in range(FAIL_FAST):
        fail(q, MISSING)
    assert q.claim() is not None
    assert client.get("/studies/tiny").json()["status"] == "running"


def test_paused_and_stopped_trials_are_interrupted_not_failed(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client.post("/studies", json=spec(n_trials=5, max_parallel=1))
    q = queue(settings)
    paused = q.claim()
    assert paused is not None
    q.interrupt(paused, "study paused; checkpointed")  # as the worker does at a pause
    resumed = q.claim()
    assert resumed is not None and resumed.trial.number == 1
    q.finish(resumed, state=TrialState.FAIL, attrs={"fail_reason": "study stopped"})  # ...and at a stop
    fail(q, "diverged at step 40")
    trials = optuna.load_study(study_name="tiny", storage=db.optuna_storage(settings)).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3

    study = client.get("/studies/tiny").json()
    assert study["trial_counts"] == {"RUNNING": 0, "WAITING": 0, "COMPLETE": 0, "PRUNED": 0, "FAIL": 1,
                                     "INTERRUPTED": 2}  # fmt: skip
    assert study["last_failure"] == {"trial": 2, "reason": "diverged at step 40"}
    for wanted, numbers in (("FAIL", [2]), ("INTERRUPTED", [0, 1]), (None, [0, 1, 2])):
        page = client.get("/studies/tiny/trials", params={"state": wanted} if wanted else {}).json()
        assert [t["number"] for t in page["items"]] == numbers and page["total"] == len(numbers)
        assert {t["state"] for t in page["items"]} == {"FAIL"}  # Optuna's state, as stored

    class Api:
        def study(self, name: str) -> dict[str, Any]:
            return dict(client.get(f"/studies/{name}").json())

    monkeypatch.setattr(cli, "_client", lambda args: Api())
    assert cli.cmd_status(argparse.Namespace(study="tiny")) == 0
    assert capsys.readouterr().out == (
        "tiny: running, 0/5 finished (fail 1, interrupted 2); no completed trial yet; "
        "last failure (trial 2): diverged at step 40\n"
    )
