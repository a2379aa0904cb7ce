"""Real PostgreSQL for every service test, each in its own database cloned from a migrated
template (CI: the machine's server on 127.0.0.1:5432; override with GAT_TUNE_TEST_PG)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service import db
from service.app import create_app
from service.config import Settings

ADMIN_TOKEN = "test-admin-token"
ADMIN_URL = os.environ.get("GAT_TUNE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def _url(database: str) -> str:
    return str(sa.make_url(ADMIN_URL).set(database=database).render_as_string(hide_password=False))


@pytest.fixture(scope="session")
def admin() -> Iterator[sa.Engine]:
    eng = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def template(admin: sa.Engine) -> Iterator[str]:
    name = f"gt_template_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db.upgrade(Settings(DATABASE_URL=_url(name)))
    db.dispose_all()  # a template must have no open connections
    yield name
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_url(admin: sa.Engine, template: str) -> Iterator[str]:
    name = f"gt_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield _url(name)
    db.dispose_all()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(DATABASE_URL=database_url, data_dir=tmp_path, max_trials=500, token=ADMIN_TOKEN)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A client holding the admin token, on an app serving loopback (reads open)."""
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
        yield c


@pytest.fixture
def anonymous(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c
