"""Real PostgreSQL for every service test, each in its own database cloned from a migrated
template (CI: the machine's server on 127.0.0.1:5432; override with GAT_TUNE_TEST_PG)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
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


class PrivatePostgres:
    """A PostgreSQL cluster of this test session's own, which a test may stop and restart
    (the shared server on 5432 must never be)."""

    def __init__(self, version: str, name: str, port: int) -> None:
        self.version, self.name, self.port = version, name, port
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"

    def ctl(self, action: str, *args: str) -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", *args, self.version, self.name, action],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def restart(self) -> float:
        """Restart the server (connections dropped); the seconds it was away."""
        started = time.monotonic()
        self.ctl("restart", "-m", "fast")
        return time.monotonic() - started

    def database(self) -> str:
        """A new, migrated database on this server; its URL."""
        name = f"gt_outage_{uuid.uuid4().hex[:12]}"
        eng = sa.create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with eng.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        eng.dispose()
        url = str(sa.make_url(self.url).set(database=name).render_as_string(hide_password=False))
        db.upgrade(Settings(DATABASE_URL=url))
        db.dispose_all()
        return url


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePostgres]:
    """A private cluster made with Debian's pg_createcluster (root only), dropped at the end;
    the tests that restart PostgreSQL skip without it."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if shutil.which("pg_createcluster") is None or not versions or os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs root, pg_createcluster (postgresql-common) and a server")
    version = versions[-1].parent.parent.name
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg = PrivatePostgres(version, f"gtblink{os.getpid()}", port)
    subprocess.run(
        ["pg_createcluster", version, pg.name, "--port", str(port), "-o", "fsync=off",
         "--", "--auth-local=trust", "--auth-host=trust"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        pg.ctl("start")
        yield pg
    finally:
        subprocess.run(["pg_dropcluster", "--stop", version, pg.name], capture_output=True, timeout=120)
