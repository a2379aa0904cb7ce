"""With no DATABASE_URL the service starts an embedded PostgreSQL under its data directory."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import psutil
import pytest
from fastapi.testclient import TestClient

from service import db
from service.app import create_app
from service.config import Settings
from service.spec import EXAMPLE_SPEC
from tests.service.conftest import free_port, wait_up


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


# -- the embedded server's lifecycle: it stops when the last process using it exits ----------


def _postmasters(data_dir: Path) -> list[int]:
    """pids of the postgres processes serving ``data_dir``'s embedded database."""
    pgdata = str((data_dir / "pgdata").resolve())
    found = []
    for proc in psutil.process_iter(attrs=("name", "cmdline")):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and pgdata in cmdline:
            found.append(proc.pid)
    return found


def _embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "GAT_TUNE_TOKEN")}
    return {**env, "GAT_TUNE_DATA_DIR": str(data_dir)}


def _gat_tune(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture
def reap(tmp_path: Path) -> Iterator[None]:
    """A server a failing test left running is stopped (fast shutdown) afterwards."""
    yield
    for pid in _postmasters(tmp_path):
        os.kill(pid, signal.SIGINT)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_a_process_that_died_does_not_keep_the_server_up(tmp_path: Path, reap: None) -> None:
    env = _embedded_env(tmp_path)
    first = _gat_tune("db", "upgrade", env=env)
    assert first.returncode == 0, first.stderr
    assert _postmasters(tmp_path) == []
    # A user killed with -9 (or by a signal's default action) never took its pid back.
    (tmp_path / "pgdata" / ".handle_pids.json").write_text(json.dumps([_dead_pid()]))
    again = _gat_tune("db", "upgrade", env=env)
    assert again.returncode == 0, again.stderr
    assert _postmasters(tmp_path) == []


@pytest.mark.slow
def test_serve_stops_the_embedded_server_on_sigterm(tmp_path: Path, reap: None) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        env=_embedded_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_up(f"http://127.0.0.1:{port}/healthz", proc, timeout=90)
        assert _postmasters(tmp_path), "the server should be up while serve runs"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert _postmasters(tmp_path) == []


@pytest.mark.slow
def test_db_stop(tmp_path: Path, reap: None) -> None:
    env = _embedded_env(tmp_path)
    holder = subprocess.Popen(  # a process that uses the server and stays
        [sys.executable, "-c", "import sys; from service import db; from service.config import Settings; "
         "db.embedded_url(Settings().data_dir); print('up', flush=True); sys.stdin.read()"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "up\n"
        assert _postmasters(tmp_path)
        refused = _gat_tune("db", "stop", env=env)
        assert refused.returncode == 1
        assert f"in use by process {holder.pid}" in refused.stderr and "--force" in refused.stderr
        assert _postmasters(tmp_path)
        forced = _gat_tune("db", "stop", "--force", env=env)
        assert forced.returncode == 0 and forced.stdout.startswith("stopped the embedded database"), forced.stderr
        assert _postmasters(tmp_path) == []
    finally:
        holder.kill()
        holder.wait()
    assert _gat_tune("db", "stop", env=env).stdout.strip().endswith("is not running")
