"""docker-compose.yml: what can be checked without a Docker engine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import build_parser
from tests.conftest import settings_variables

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
OURS = ("migrate", "api", "worker")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_services_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", *OURS}
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:")
    assert "pgdata:/var/lib/postgresql/data" in pg["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert set(compose["volumes"]) >= {"pgdata", "gat-tune-data"}
    for name in OURS:
        assert "gat-tune-data:/data" in services[name]["volumes"], name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["api"]["ports"] == ["8000:8000"]


def test_every_command_is_a_real_gat_tune_command(compose: dict[str, Any]) -> None:
    parser = build_parser()
    for name in OURS:
        command = compose["services"][name]["command"]
        assert command[0] == "gat-tune", name
        args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown command or flag
        assert callable(args.func)
    assert compose["services"]["migrate"]["command"] == ["gat-tune", "db", "upgrade"]


def test_every_variable_set_is_one_settings_reads(compose: dict[str, Any]) -> None:
    known = settings_variables()
    for name in OURS:
        env = compose["services"][name]["environment"]
        assert set(env) <= known, (name, set(env) - known)
        assert "DATABASE_URL" in env and "GAT_TUNE_TOKEN" in env
    example = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert example <= known | {"POSTGRES_PASSWORD"}


def test_workers_reserve_a_gpu_and_scale(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N needs neither


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_config_validates(tmp_path: Path) -> None:
    for name in ("docker-compose.yml", ".env.example", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    proc = subprocess.run(["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rendered = yaml.safe_load(proc.stdout)
    assert rendered["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
