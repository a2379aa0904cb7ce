"""Bearer tokens: 401 without, 403 with the wrong scope; reads open only on loopback."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service import db
from service.app import create_app
from service.auth import create_token
from service.config import Settings
from service.spec import EXAMPLE_SPEC

SPEC = copy.deepcopy(EXAMPLE_SPEC)


def test_mutations_need_a_token(anonymous: TestClient) -> None:
    r = anonymous.post("/studies", json=SPEC)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    bad = anonymous.post("/studies", json=SPEC, headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401
    assert anonymous.post("/studies/x/stop").status_code == 401
    assert anonymous.get("/studies").status_code == 200  # loopback: reads are open


def test_scopes(anonymous: TestClient, settings: Settings) -> None:
    engine = db.engine(settings)
    reader = create_token(engine, "reader", ["read"])
    writer = create_token(engine, "writer", ["read", "write"])
    r = anonymous.post("/studies", json=SPEC, headers={"Authorization": f"Bearer {reader}"})
    assert r.status_code == 403 and "write" in r.json()["detail"]
    r = anonymous.post("/studies", json=SPEC, headers={"Authorization": f"Bearer {writer}"})
    assert r.status_code == 201


def test_tokens_are_stored_hashed(settings: Settings) -> None:
    engine = db.engine(settings)
    token = create_token(engine, "someone", ["read"])
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT token_sha256 FROM gt_api_tokens").scalar_one()
    assert token not in stored and len(stored) == 64


@pytest.fixture
def public(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"host": "0.0.0.0"}))) as c:
        yield c


def test_reads_need_a_token_off_loopback(public: TestClient, settings: Settings) -> None:
    assert public.get("/studies").status_code == 401
    reader = create_token(db.engine(settings), "reader", ["read"])
    assert public.get("/studies", headers={"Authorization": f"Bearer {reader}"}).status_code == 200
    assert public.get("/healthz").status_code == 200


@pytest.mark.parametrize("command", ["serve", "dashboard"])
def test_servers_refuse_a_public_address_without_a_token(database_url: str, command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", command, "--host", "0.0.0.0", "--port", "8765"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0 with no token" in proc.stderr
