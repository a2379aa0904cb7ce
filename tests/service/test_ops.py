"""Operations: readiness, JSON logs, graceful SIGTERM, the dashboard alone, artifact stores."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import optuna
import pytest
import sqlalchemy as sa
import torch
from fastapi.testclient import TestClient

from service import db
from service.artifacts import LinkingArtifactStore, artifact_store
from service.config import Settings
from service.connection_pool import IDLE_PING
from tests.service.conftest import end_connections, free_port, make_queue, tiny, wait_up
from trainer.images import save_samples
from trainer.train import _append_line


def test_readyz_follows_the_schema(client: TestClient, settings: Settings) -> None:
    assert client.get("/readyz").json() == {"status": "ready"}
    with db.engine(settings).begin() as conn:
        conn.execute(sa.text("UPDATE gat_tune_alembic_version SET version_num = '0000'"))
    r = client.get("/readyz")
    assert r.status_code == 503
    assert "run `gat-tune db upgrade`" in r.json()["problems"][0]
    assert client.get("/healthz").status_code == 200  # alive, just not ready


def test_connections_dropped_by_the_server_are_replaced(
    client: TestClient, settings: Settings, admin: sa.Engine, database_url: str
) -> None:
    """An idle drop or a server restart: every pooled connection (API reads, Optuna's
    storage, a worker's queue) is pinged before reuse, and a dead one is replaced."""
    assert client.post("/studies", json=tiny()).status_code == 201
    q = make_queue(settings, "w")
    first = q.claim()
    assert first is not None and client.get("/studies/tiny/trials").status_code == 200

    assert end_connections(admin, database_url) >= 3  # the API's, the storage's and the queue's
    time.sleep(IDLE_PING + 0.2)  # they sat idle: the next checkout pings them
    assert client.get("/studies/tiny").json()["trial_counts"]["RUNNING"] == 1
    assert client.get("/studies/tiny/trials").status_code == 200
    assert q.finish(first, state=optuna.trial.TrialState.COMPLETE, values=[1.0])
    assert q.claim() is not None
    assert client.post("/studies/tiny/pause").status_code == 200


def test_logs_are_json_lines_off_a_terminal(database_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "db", "upgrade"],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert lines, "logged nothing"
    assert {"ts", "level", "logger", "msg"} <= set(lines[0])
    assert any(line["msg"] == "database up to date" for line in lines)


def start_listening(command: str, database_url: str, data_dir: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """`gat-tune COMMAND --port P [ARGS]` in a child process; its base URL."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "GAT_TUNE_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", command, "--port", str(port), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("processes", ["1", "2"])
@pytest.mark.slow
def test_api_logs_requests_and_stops_gracefully_on_sigterm(database_url: str, tmp_path: Path, processes: str) -> None:
    proc, base = start_listening("serve", database_url, tmp_path, "--workers", processes)
    wait_up(f"{base}/readyz", proc)
    assert httpx.get(f"{base}/studies/nothing-here").status_code == 404
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught; gat-tune turns it into
    # exit status 128 + 15 so that its exit hooks run (they stop an embedded PostgreSQL).
    assert proc.returncode in (0, 128 + signal.SIGTERM)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert any("Shutting down" in m for m in messages), messages
    assert any("Finished server process" in m for m in messages), messages
    # every server process logs its requests, JSON lines included
    assert any(line["logger"] == "uvicorn.access" and "/studies/nothing-here" in line["msg"] for line in lines), lines


def test_dashboard_runs_alone(database_url: str, tmp_path: Path) -> None:
    proc, base = start_listening("dashboard", database_url, tmp_path)
    try:
        wait_up(f"{base}/dashboard", proc)
        assert httpx.get(f"{base}/api/studies").json() == {"study_summaries": []}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_dashboard_stops_on_a_sigterm_that_lands_mid_request(database_url: str, tmp_path: Path) -> None:
    """wsgiref's request handler catches every exception: a SIGTERM raised as SystemExit
    while a request was served was lost, and the process served on (seen under load)."""
    proc, base = start_listening("dashboard", database_url, tmp_path)
    try:
        wait_up(f"{base}/dashboard", proc)
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as slow:  # a login whose body is slow to come
            slow.sendall(b"POST /dashboard/login HTTP/1.0\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: 40\r\n\r\ntoken=")  # fmt: skip
            time.sleep(1.0)  # the server is inside the request, reading the body
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            slow.sendall(b"x" * 34)
            slow.recv(4096)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_artifact_store_choice(tmp_path: Path) -> None:
    local = artifact_store(Settings(data_dir=tmp_path))
    assert type(local) is optuna.artifacts.FileSystemArtifactStore  # the dashboard's: copies what it is given
    assert type(artifact_store(Settings(data_dir=tmp_path), link_files=True)) is LinkingArtifactStore
    assert (tmp_path / "artifacts").is_dir()
    s3 = Settings(data_dir=tmp_path, artifact_s3_bucket="my-bucket")
    try:
        import boto3  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"needs boto3: pip install 'gat-tune\[s3\]'"):
            artifact_store(s3)
    else:
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        store = artifact_store(s3)
        assert isinstance(store, optuna.artifacts.Boto3ArtifactStore) and store.bucket == "my-bucket"


def test_linked_artifacts_never_change_when_the_trainer_writes_on(tmp_path: Path) -> None:
    store = artifact_store(Settings(data_dir=tmp_path), link_files=True)
    run = tmp_path / "run"
    run.mkdir()
    metrics, samples = run / "metrics.jsonl", run / "samples.png"
    _append_line(metrics, '{"step": 1}')
    save_samples(torch.zeros(4, 2), samples)
    for artifact_id, path in (("m", metrics), ("s", samples)):
        with open(path, "rb") as f:
            store.write(artifact_id, f)
        assert os.path.samefile(path, tmp_path / "artifacts" / artifact_id)  # linked, not copied
    picture = (tmp_path / "artifacts" / "s").read_bytes()

    _append_line(metrics, '{"step": 2}')  # the trainer's next eval, had the run gone on
    save_samples(torch.ones(4, 2) * 5, samples)
    assert metrics.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert samples.read_bytes() != picture
    with store.open_reader("m") as f:
        assert f.read() == b'{"step": 1}\n'
    with store.open_reader("s") as f:
        assert f.read() == picture

    store.write("posted", io.BytesIO(b"from the dashboard"))  # no file behind it: copied
    with store.open_reader("posted") as f:
        assert f.read() == b"from the dashboard"
