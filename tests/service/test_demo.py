"""`gat-tune demo` end to end on a tiny study: a line at each stage, and no address printed
for a server that has stopped."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from service import demo
from service.cli import cmd_demo
from service.spec import StudySpec
from tests.service.conftest import free_port

TINY_DEMO = {
    "name": "digits-demo",
    "base": {"dataset": "ring8", "steps": 40, "eval_every": 20, "eval_samples": 200, "g_width": 32, "d_width": 32},
    "search_space": {"lambda": {"type": "float", "low": 0.1, "high": 10, "log": True}},
    "sampler": "random",
    "pruner": "none",
    "n_trials": 2,
    "max_parallel": 2,
    "seed": 0,
}


@pytest.mark.slow
def test_demo_shows_progress_early_and_no_dead_address(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    for key, value in {"DATABASE_URL": database_url, "GAT_TUNE_DATA_DIR": str(tmp_path), "GAT_TUNE_PORT": str(port),
                       "GAT_TUNE_POLL_SECONDS": "0.3"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(demo.DEMO_SPECS, "digits", TINY_DEMO)
    assert demo.run_demo(out=tmp_path / "best.yaml") == 0
    lines = capsys.readouterr().out.splitlines()
    stages = ["starting the database", "starting the API", "study digits-demo-", "first trials training",
              "2/2 finished"]  # fmt: skip
    at = [next(i for i, line in enumerate(lines) if stage in line) for stage in stages]
    assert at == sorted(at), lines
    end = next(i for i, line in enumerate(lines) if "best config written" in line)
    assert not [line for line in lines[end:] if "http://" in line], "the API has stopped: print no address of it"
    assert any("gat-tune dashboard" in line for line in lines[end:])
    assert "lambda:" in (tmp_path / "best.yaml").read_text()


def test_demo_data_sets_are_a_registry_and_others_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(demo.DEMO_SPECS) == ["digits", "fashion-mnist"]
    for name, spec in demo.DEMO_SPECS.items():
        assert spec["base"]["dataset"] == name
        StudySpec.model_validate(spec)  # every demo's spec is one the API accepts
    assert cmd_demo(argparse.Namespace(dataset="imagenet", out=Path("best.yaml"), keep_serving=False)) == 1
    error = "gat-tune: error: demo: --dataset 'imagenet' is not one of digits, fashion-mnist"
    assert capsys.readouterr().err.strip() == error


def test_the_demo_keeps_its_port_when_the_last_api_on_it_just_stopped() -> None:
    """A port in TIME_WAIT after the previous demo is one uvicorn can listen on; the demo
    moved to another one and said nothing."""
    port = free_port()
    with socket.create_server(("127.0.0.1", port)) as server, socket.create_connection(("127.0.0.1", port)) as c:
        accepted, _ = server.accept()
        accepted.close()  # the server's side closes first: its address waits in TIME_WAIT
        c.recv(1)
    assert demo._port(port) == port
    with socket.create_server(("127.0.0.1", port)):  # listened on: taken
        assert demo._port(port) != port
