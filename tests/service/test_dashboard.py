"""optuna-dashboard on the API's port (and alone): the API's access rule, a browser login with
an HttpOnly session cookie, and study deletion through the service."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import httpx
import optuna
import pytest
import sqlalchemy as sa
from a2wsgi import WSGIMiddleware
from fastapi.testclient import TestClient

from service import db
from service.app import create_app
from service.auth import create_token
from service.config import Settings
from service.connection_pool import IDLE_PING
from service.dashboard import SESSION_COOKIE, dashboard_wsgi
from service.spec import EXAMPLE_SPEC
from tests.service.conftest import ADMIN_TOKEN, end_connections, free_port

SPEC = copy.deepcopy(EXAMPLE_SPEC)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture
def public(settings: Settings) -> Iterator[TestClient]:
    """An app serving a non-loopback address: every read needs a token."""
    with TestClient(create_app(settings.model_copy(update={"host": "0.0.0.0"}))) as c:
        yield c


def _study_id(client: TestClient) -> int:
    created = client.post("/studies", json=copy.deepcopy(SPEC), headers=ADMIN)
    assert created.status_code == 201, created.text
    return int(created.json()["optuna_study_id"])


def _login(client: TestClient, token: str) -> httpx.Response:
    return client.post("/dashboard/login", data={"token": token, "next": "/dashboard"}, follow_redirects=False)


def test_dashboard_is_served_and_read_only_on_loopback(client: TestClient, anonymous: TestClient) -> None:
    client.post("/studies", json=copy.deepcopy(SPEC))
    page = anonymous.get("/dashboard")
    assert page.status_code == 200 and "<html" in page.text.lower()
    studies = anonymous.get("/api/studies").json()["study_summaries"]
    assert [s["study_name"] for s in studies] == ["digits-gat"]
    study_id = studies[0]["study_id"]

    refused = anonymous.delete(f"/api/studies/{study_id}")
    assert refused.status_code == 401 and "read-only" in refused.json()["detail"]
    assert anonymous.get("/studies/digits-gat").status_code == 200  # still there

    allowed = client.delete(f"/api/studies/{study_id}")  # the admin token may delete
    assert allowed.status_code == 204
    assert anonymous.get("/studies/digits-gat").status_code == 404


def test_dashboard_reads_need_a_token_off_loopback(public: TestClient, settings: Settings, tmp_path: Path) -> None:
    study_id = _study_id(public)
    study = optuna.load_study(study_name=SPEC["name"], storage=db.optuna_storage(settings))
    (tmp_path / "note.txt").write_text("secret")
    artifact_id = optuna.artifacts.upload_artifact(
        study_or_trial=study,
        file_path=str(tmp_path / "note.txt"),
        artifact_store=optuna.artifacts.FileSystemArtifactStore(settings.artifacts),
    )
    reads = [
        "/api/studies",
        f"/api/studies/{study_id}",
        f"/api/studies/{study_id}/param_importances",
        f"/csv/{study_id}",
        f"/artifacts/{study_id}/{artifact_id}",
        "/api/meta",
    ]
    for path in reads:
        r = public.get(path)
        assert r.status_code == 401, path
        assert "needs a token" in r.json()["detail"], path
    reader = create_token(db.engine(settings), "reader", ["read"])
    for path in reads:
        assert public.get(path, headers={"Authorization": f"Bearer {reader}"}).status_code == 200, path
    assert public.get(f"/artifacts/{study_id}/{artifact_id}", headers=ADMIN).text == "secret"
    # The front end's own files carry no study data.
    assert public.get("/favicon.ico").status_code in (200, 404)


def test_a_browser_is_sent_to_the_login_page(public: TestClient) -> None:
    for path in ("/dashboard", "/dashboard/studies/1", "/"):
        r = public.get(path, headers=HTML, follow_redirects=False)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith(
            "/dashboard/login?next=/dashboard" if path != "/" else "/dashboard/login"
        )
    page = public.get("/dashboard", headers=HTML)  # followed: the form
    assert page.status_code == 200 and '<form method="post" action="/dashboard/login">' in page.text


def test_login_opens_a_session_with_the_tokens_scope(public: TestClient, settings: Settings) -> None:
    study_id = _study_id(public)
    engine = db.engine(settings)
    reader = create_token(engine, "reader", ["read"])
    writer = create_token(engine, "writer", ["read", "write"])

    bad = _login(public, "not-a-token")
    assert bad.status_code == 401 and "unknown token" in bad.text and SESSION_COOKIE not in public.cookies

    r = _login(public, reader)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert reader not in cookie and reader[4:20] not in cookie  # never the token itself
    assert public.get("/api/studies").status_code == 200
    assert public.get("/dashboard", headers=HTML).text.startswith("<!")  # the dashboard, not the login
    note = {"version": 1, "body": "looks good"}
    refused = public.put(f"/api/studies/{study_id}/note", json=note)
    assert refused.status_code == 403 and "'write' scope" in refused.json()["detail"]

    assert _login(public, writer).status_code == 303
    assert public.put(f"/api/studies/{study_id}/note", json=note).status_code == 204
    trial_id = optuna.load_study(study_name=SPEC["name"], storage=db.optuna_storage(settings)).trials[0]._trial_id
    marked = public.post(f"/api/trials/{trial_id}/user-attrs", json={"user_attrs": {"checked": "yes"}})
    assert marked.status_code == 204
    # A write session cannot delete: that needs the admin scope, as DELETE /studies/{name} does.
    assert public.delete(f"/api/studies/{study_id}").status_code == 403
    # A cross-site request does not ride on the session.
    assert (
        public.put(f"/api/studies/{study_id}/note", json=note, headers={"Origin": "http://evil.example"}).status_code
        == 403
    )

    public.post("/dashboard/logout")
    assert public.get("/api/studies").status_code == 401


def test_a_session_ends_with_its_token_and_cannot_be_forged(public: TestClient, settings: Settings) -> None:
    engine = db.engine(settings)
    reader = create_token(engine, "reader", ["read"])
    _login(public, reader)
    value = public.cookies[SESSION_COOKIE]
    body, signature = value.split(".")
    public.cookies.clear()
    public.cookies.set(SESSION_COOKIE, body + "." + signature[::-1])
    assert public.get("/api/studies").status_code == 401
    public.cookies.clear()
    public.cookies.set(SESSION_COOKIE, value)
    assert public.get("/api/studies").status_code == 200
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM gt_api_tokens WHERE name = 'reader'")
    assert public.get("/api/studies").status_code == 401
    # A cookie with a non-ASCII byte is no session (it was a 500: compare_digest refuses it).
    public.cookies.clear()
    r = public.get("/api/studies", headers={"Cookie": f"{SESSION_COOKIE}=".encode() + b"x.\xe9y"})
    assert r.status_code == 401


def test_login_sends_only_to_dashboard_pages(public: TestClient) -> None:
    for target in ("https://evil.example/", "//evil.example", "/api/studies", "/dashboard/x\r\nSet-Cookie: a=b"):
        r = public.post("/dashboard/login", data={"token": ADMIN_TOKEN, "next": target}, follow_redirects=False)
        assert r.headers["location"] == "/dashboard", target
    r = public.post(
        "/dashboard/login", data={"token": ADMIN_TOKEN, "next": "/dashboard/studies/3"}, follow_redirects=False
    )
    assert r.headers["location"] == "/dashboard/studies/3"


def test_deleting_a_study_from_the_dashboard_goes_through_the_service(public: TestClient, settings: Settings) -> None:
    study_id = _study_id(public)
    engine = db.engine(settings)
    with engine.begin() as conn:  # a lease as a running trial holds one
        conn.execute(
            sa.text(
                "INSERT INTO gt_trial_leases (optuna_trial_id, study_name, worker_id, expires_at) "
                "VALUES (1, :n, 'w', now() + interval '1 minute')"
            ),
            {"n": SPEC["name"]},
        )
    writer = create_token(engine, "writer", ["read", "write"])
    assert public.delete(f"/api/studies/{study_id}", headers={"Authorization": f"Bearer {writer}"}).status_code == 403
    r = public.delete(f"/api/studies/{study_id}", headers=ADMIN)
    assert r.status_code == 204
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM gt_studies").scalar_one() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM gt_trial_leases").scalar_one() == 0
    assert optuna.get_all_study_names(db.optuna_storage(settings)) == []
    assert public.delete(f"/api/studies/{study_id}", headers=ADMIN).status_code == 404
    # The name is free again.
    assert public.post("/studies", json=copy.deepcopy(SPEC), headers=ADMIN).status_code == 201


def test_renaming_one_of_our_studies_is_refused(public: TestClient) -> None:
    study_id = _study_id(public)
    r = public.post(f"/api/studies/{study_id}/rename", json={"study_name": "other"}, headers=ADMIN)
    assert r.status_code == 409 and "renaming a study is not supported" in r.json()["reason"]
    assert public.get(f"/studies/{SPEC['name']}", headers=ADMIN).status_code == 200


def test_the_standalone_dashboard_applies_the_same_guard(settings: Settings, client: TestClient) -> None:
    study_id = _study_id(client)
    public = settings.model_copy(update={"host": "0.0.0.0"})
    with TestClient(WSGIMiddleware(dashboard_wsgi(public))) as alone:  # type: ignore[arg-type]
        assert alone.get("/api/studies").status_code == 401
        assert alone.delete(f"/api/studies/{study_id}").status_code == 401
        assert alone.get("/dashboard", headers=HTML, follow_redirects=False).status_code == 303
        assert _login(alone, ADMIN_TOKEN).status_code == 303
        assert alone.get("/api/studies").status_code == 200
        assert alone.delete(f"/api/studies/{study_id}").status_code == 204
    assert client.get(f"/studies/{SPEC['name']}").status_code == 404


@pytest.mark.slow
def test_gat_tune_dashboard_refuses_an_anonymous_delete(database_url: str, client: TestClient, tmp_path: Path) -> None:
    study_id = _study_id(client)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "GAT_TUNE_TOKEN": ADMIN_TOKEN,
        "GAT_TUNE_DATA_DIR": str(tmp_path),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "dashboard", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(base + "/api/meta", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "gat-tune dashboard did not start"
                time.sleep(0.2)
        assert httpx.get(base + "/api/studies").status_code == 200  # loopback: reads are open
        assert httpx.delete(f"{base}/api/studies/{study_id}").status_code == 401
        assert client.get(f"/studies/{SPEC['name']}").status_code == 200
        assert httpx.delete(f"{base}/api/studies/{study_id}", headers=ADMIN).status_code == 204
        assert client.get(f"/studies/{SPEC['name']}").status_code == 404
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_dashboard_answers_503_while_the_database_refuses(
    client: TestClient, public: TestClient, admin: sa.Engine, database_url: str
) -> None:
    """As the API does: a database that is down or restarting is a 503 with one line, on the
    open reads and on a guarded one (the guard's own token check meets it first), not
    bottle's 500 page with a traceback on stderr."""
    client.post("/studies", json=copy.deepcopy(SPEC))
    name = sa.make_url(database_url).database
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
    end_connections(admin, database_url)
    time.sleep(IDLE_PING + 0.2)  # the pooled connections sat idle: the next checkout pings them
    try:
        for answer in (client.get("/api/studies"), client.get("/dashboard"), public.get("/api/studies", headers=ADMIN)):
            assert answer.status_code == 503, answer.text
            assert answer.json()["detail"].startswith("database unavailable: "), answer.text
        assert client.get("/studies").status_code == 503  # the API's answer, the same
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
    assert [s["study_name"] for s in client.get("/api/studies").json()["study_summaries"]] == ["digits-gat"]


def test_the_guard_passes_other_answers_on_unchanged(settings: Settings) -> None:
    """With the database up, a 500 from the dashboard stays a 500 (one ping says so), and a
    response that its body's first item starts (legal WSGI) is passed on as it is."""
    guard = dashboard_wsgi(settings)

    def fails(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"a bug"]

    def late(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"late"

    for app, status, body in ((fails, "500 Internal Server Error", b"a bug"), (late, "200 OK", b"late")):
        guard.app = app
        environ: dict[str, Any] = {}
        setup_testing_defaults(environ)
        environ["PATH_INFO"] = "/api/studies"
        seen: list[str] = []

        def start_response(status: str, headers: Any, exc_info: Any = None, seen: list[str] = seen) -> None:
            seen.append(status)

        assert b"".join(guard(environ, start_response)) == body and seen == [status]
