"""`gat-tune serve | submit | status | best | stop` against a real server process."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from service.client import ApiError, Client
from service.spec import EXAMPLE_SPEC
from tests.service.conftest import free_port

TOKEN = "cli-test-token"


def gat_tune(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "GAT_TUNE_TOKEN": TOKEN, "GAT_TUNE_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    yield url, env
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_submit_status_best_stop(server: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, env = server
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(copy.deepcopy(EXAMPLE_SPEC)))

    out = gat_tune("submit", str(spec_file), "--url", url, env=env)
    assert out.returncode == 0, out.stderr
    assert '"id": "digits-gat"' in out.stdout

    status = gat_tune("status", "digits-gat", "--url", url, env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("digits-gat: running, 0/12 finished (waiting 1)")

    best = gat_tune("best", "digits-gat", "--url", url, "-o", str(tmp_path / "best.yaml"), env=env)
    assert best.returncode == 1
    assert best.stderr.strip() == (
        "gat-tune: error: 409: study 'digits-gat' has no completed trial yet; try again when one has finished"
    )

    again = gat_tune("submit", str(spec_file), "--url", url, env=env)
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr

    stop = gat_tune("stop", "digits-gat", "--url", url, env=env)
    assert stop.stdout.strip() == "digits-gat: stopped"


def test_client_errors_are_one_line(server: tuple[str, dict[str, str]]) -> None:
    url, _ = server
    client = Client(url, token=TOKEN)
    with pytest.raises(ApiError, match="404: no study named 'missing'"):
        client.study("missing")
    bad = copy.deepcopy(EXAMPLE_SPEC)
    bad["sampler"] = "bayes"
    with pytest.raises(ApiError, match=r"^422: sampler: "):
        client.submit(bad)
    with pytest.raises(ApiError, match=r"^0: cannot reach"):
        Client("http://127.0.0.1:9", token=TOKEN).health()
