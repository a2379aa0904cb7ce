"""DELETE /studies/{name}: the one path a study is deleted by (the dashboard's goes through it)."""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service import db
from service.auth import create_token
from service.config import Settings
from service.spec import EXAMPLE_SPEC

SPEC = copy.deepcopy(EXAMPLE_SPEC)
NAME = SPEC["name"]


def test_delete_needs_the_admin_scope(client: TestClient, anonymous: TestClient, settings: Settings) -> None:
    assert client.post("/studies", json=copy.deepcopy(SPEC)).status_code == 201
    writer = create_token(db.engine(settings), "writer", ["read", "write"])
    assert anonymous.delete(f"/studies/{NAME}").status_code == 401
    r = anonymous.delete(f"/studies/{NAME}", headers={"Authorization": f"Bearer {writer}"})
    assert r.status_code == 403 and "'admin' scope" in r.json()["detail"]
    assert client.get(f"/studies/{NAME}").json()["status"] == "running"


def test_delete_removes_the_study_everywhere(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    assert client.post("/studies", json=copy.deepcopy(SPEC), headers={"Idempotency-Key": "k1"}).status_code == 201
    storage = db.optuna_storage(settings)
    study = optuna.load_study(study_name=NAME, storage=storage)
    trial = study.ask()
    (tmp_path / "grid.png").write_bytes(b"png")
    store = optuna.artifacts.FileSystemArtifactStore(settings.artifacts)
    artifact_id = optuna.artifacts.upload_artifact(
        study_or_trial=trial, file_path=str(tmp_path / "grid.png"), artifact_store=store
    )
    assert (settings.artifacts / artifact_id).exists()

    r = client.delete(f"/studies/{NAME}")
    assert r.status_code == 204 and r.content == b""
    assert client.get(f"/studies/{NAME}").status_code == 404
    assert NAME not in optuna.get_all_study_names(storage)
    with db.engine(settings).connect() as conn:
        for table in ("gt_studies", "gt_idempotency_keys", "gt_trial_leases"):
            assert conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one() == 0, table
    assert not (settings.artifacts / artifact_id).exists()
    assert client.delete(f"/studies/{NAME}").status_code == 404
    # The name is free for a new study.
    assert client.post("/studies", json=copy.deepcopy(SPEC)).status_code == 201


def test_delete_drops_a_row_whose_optuna_study_is_already_gone(client: TestClient, settings: Settings) -> None:
    """A study deleted behind our back (optuna delete-study, an older dashboard) left a row
    that stayed 'running'; deleting it now clears the row."""
    assert client.post("/studies", json=copy.deepcopy(SPEC)).status_code == 201
    optuna.delete_study(study_name=NAME, storage=db.optuna_storage(settings))
    assert client.delete(f"/studies/{NAME}").status_code == 204
    assert client.get("/studies").json()["total"] == 0


def test_delete_is_documented(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/studies/{name}"]["delete"]
    assert {"204", "401", "403", "404"} <= set(operation["responses"])


def _optuna_rows(conn: sa.Connection) -> dict[str, int]:
    """Rows in every table that hangs off Optuna's studies or trials, found from the foreign keys."""
    tables = conn.exec_driver_sql(
        "SELECT DISTINCT conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' "
        "AND confrelid::regclass::text IN ('studies', 'trials')"
    ).scalars()
    counts = {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one() for t in [*tables, "studies"]}
    return counts


def test_delete_takes_every_row_of_the_study_and_only_those(client: TestClient, settings: Settings) -> None:
    storage = db.optuna_storage(settings)
    engine = db.engine(settings)
    for name in ("keep", NAME):
        assert client.post("/studies", json={**copy.deepcopy(SPEC), "name": name}).status_code == 201
        study = optuna.load_study(study_name=name, storage=storage)
        study.set_user_attr("note", "x")
        storage.set_study_system_attr(study._study_id, "dashboard:note", "x")  # as the dashboard's notes
        for i in range(3):
            trial = study.ask()
            trial.suggest_float("lr_g", 1e-5, 1e-2, log=True)
            trial.report(float(i), step=1)
            trial.set_user_attr("a", i)
            study.tell(trial, float(i))
    with engine.connect() as conn:
        before = _optuna_rows(conn)
    assert client.delete("/studies/keep").status_code == 204
    with engine.connect() as conn:
        after = _optuna_rows(conn)
    assert len(before) >= 10 and all(before[t] > 0 for t in before if t != "trial_heartbeats")
    for table, count in before.items():  # the two studies had the same rows: half went
        assert after[table] * 2 == count, table
    assert optuna.get_all_study_names(storage) == [NAME]
    assert len(optuna.load_study(study_name=NAME, storage=storage).trials) == 3  # the kept study is whole


def test_a_delete_while_a_worker_ends_a_trial_waits_for_it(client: TestClient, settings: Settings) -> None:
    """The worker holds the trial's lease while it tells Optuna on another connection; the
    delete must wait for that trial to end, not deadlock with it (which nothing would see:
    one of the waits is in Python). Before the fix both hung for good."""
    from optuna.trial import TrialState

    from tests.service.conftest import make_queue, tiny

    assert client.post("/studies", json=tiny(n_trials=2)).status_code == 201
    queue = make_queue(settings, "w")
    claim = queue.claim()
    assert claim is not None
    telling, tell = threading.Event(), claim.study.tell

    def slow_tell(*args: Any, **kwargs: Any) -> Any:
        telling.set()
        time.sleep(1.0)  # the delete arrives while the lease is held and the tell is under way
        return tell(*args, **kwargs)

    claim.study.tell = slow_tell  # type: ignore[method-assign]
    ended: list[bool] = []
    finisher = threading.Thread(
        target=lambda: ended.append(queue.finish(claim, state=TrialState.COMPLETE, values=[3.0]))
    )
    finisher.start()
    assert telling.wait(10)
    r = client.delete("/studies/tiny")
    finisher.join(30)
    assert not finisher.is_alive(), "the worker's finish hung"
    assert r.status_code == 204, r.text
    assert ended == [True], "the trial ended before the study went"
    assert client.get("/studies/tiny").status_code == 404
    with db.engine(settings).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM gt_trial_leases").scalar_one() == 0
