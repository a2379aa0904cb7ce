"""Real PostgreSQL for every service test, each in its own database cloned from a migrated
template (CI: the machine's server on 127.0.0.1:5432; override with GAT_TUNE_TEST_PG)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service import db
from service.app import create_app
from service.config import Settings
from service.queue import TrialQueue
from service.spec import EXAMPLE_SPEC
from trainer.data import load_dataset
from trainer.metrics import make_extractor, real_stats

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


# -- specs ---------------------------------------------------------------------------------
def example(**changes: Any) -> dict[str, Any]:
    """The documented example spec (service.spec.EXAMPLE_SPEC), top-level keys replaced."""
    out = copy.deepcopy(EXAMPLE_SPEC)
    out.update(changes)
    return out


TINY: dict[str, Any] = {
    "name": "tiny",
    "base": {"steps": 60, "eval_every": 20, "eval_samples": 200, "g_width": 32, "d_width": 32, "batch_size": 32},
    "search_space": {
        "lambda": {"type": "float", "low": 0.1, "high": 10, "log": True},
        "lr_g": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
    },
    "sampler": "random",
    "pruner": "none",
    "n_trials": 6,
    "max_parallel": 2,
    "seed": 0,
}


def tiny(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(TINY)
    for key, value in changes.items():
        if key == "base":
            out["base"].update(value)
        else:
            out[key] = value
    return out


# -- worker pools as processes -------------------------------------------------------------
@pytest.fixture(scope="session")
def digits_cache(data_dir: Path) -> Path:
    """The digits classifier and real statistics, made once per session."""
    data = load_dataset("digits")
    real_stats(data, make_extractor("classifier", data, data_dir), data_dir)
    return data_dir


@pytest.fixture
def pool_env(database_url: str, tmp_path: Path, digits_cache: Path) -> dict[str, str]:
    for sub in ("features", "stats"):
        shutil.copytree(digits_cache / sub, tmp_path / sub, dirs_exist_ok=True)
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "GAT_TUNE_DATA_DIR": str(tmp_path),
        "GAT_TUNE_LEASE_SECONDS": "3",
        "GAT_TUNE_POLL_SECONDS": "0.3",
    }


@pytest.fixture
def start_pool(pool_env: dict[str, str]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--devices", "cpu", *args],
            env=env or pool_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


# -- helpers -------------------------------------------------------------------------------
def end_connections(admin: sa.Engine, database_url: str) -> int:
    """End every connection to the database (as a server restart would); how many there were."""
    with admin.connect() as conn:
        ended = conn.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
            {"db": sa.make_url(database_url).database},
        )
        return len(ended.all())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    """Wait until ``url`` answers 200, failing at once (with its stderr) if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def make_queue(settings: Settings, worker: str, lease: float = 30) -> TrialQueue:
    """A worker's queue, driven directly (no process)."""
    return TrialQueue(db.engine(settings), db.optuna_storage(settings), worker, lease_seconds=lease)


def wait_for(predicate: Callable[[], Any], timeout: float = 120, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def stop_when_done(
    pool: subprocess.Popen[str], client: TestClient, study: str = "tiny", *, slot_deaths: int = 0, timeout: float = 240
) -> str:
    """The pool's output once ``study`` is completed, stopped by SIGTERM then: a test does not
    wait out an --exit-when-idle period (test_a_study_on_fid_and_coverage_over_http tests that
    flag). A pool stopped by SIGTERM exits 0 whatever its slots did, so the slots that died
    on the way are counted: ``slot_deaths`` of them, and no more."""

    def completed() -> bool:
        if pool.poll() is not None:
            raise AssertionError(f"the pool exited with {pool.returncode} first:\n{pool.communicate()[0]}")
        return bool(client.get(f"/studies/{study}").json()["status"] == "completed")

    try:
        wait_for(completed, timeout=timeout, what=f"study {study} to complete")
    except AssertionError as exc:
        if pool.poll() is None:
            pool.send_signal(signal.SIGTERM)
            raise AssertionError(f"{exc}; the pool's output:\n{pool.communicate(timeout=60)[0]}") from None
        raise
    pool.send_signal(signal.SIGTERM)
    out = finish(pool, timeout=60)
    assert out.count(" died with ") == slot_deaths, out
    return out


def eval_steps(run_dir: str | Path) -> list[int]:
    """The steps of a run directory's evals, in the order metrics.jsonl has them."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def load(database_url: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=database_url)


# -- a PostgreSQL server the tests may restart -----------------------------------------------
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
    port = free_port()
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
