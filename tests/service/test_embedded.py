"""With no DATABASE_URL the service starts an embedded PostgreSQL under its data directory."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
from fastapi.testclient import TestClient

from service import db
from service.app import create_app
from service.config import Settings
from service.spec import EXAMPLE_SPEC


def test_embedded_postgres_default(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = Settings(data_dir=tmp_path, token="t")
    assert settings.database_url is None
    url = db.database_url(settings)
    assert url.startswith("postgresql") and str(tmp_path.resolve()) in url  # its socket lives under the data dir
    db.upgrade(settings)
    try:
        with TestClient(create_app(settings), headers={"Authorization": "Bearer t"}) as client:
            r = client.post("/studies", json=copy.deepcopy(EXAMPLE_SPEC))
            assert r.status_code == 201, r.text
            assert client.get("/studies/digits-gat").json()["status"] == "running"
        study = optuna.load_study(study_name="digits-gat", storage=url)
        assert study.user_attrs["gat_tune_spec"]["n_trials"] == EXAMPLE_SPEC["n_trials"]
        assert (tmp_path / "pgdata" / "PG_VERSION").is_file()
    finally:
        db.dispose_all()
