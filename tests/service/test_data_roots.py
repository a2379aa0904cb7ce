"""folder: datasets are confined to the data roots (GAT_TUNE_DATA_ROOTS), checked at submit
time with a 422 that names the roots and never tells whether a path exists."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.spec import EXAMPLE_SPEC
from tests.service.conftest import ADMIN_TOKEN


def _spec(dataset: str, **extra: Any) -> dict[str, Any]:
    spec = copy.deepcopy(EXAMPLE_SPEC)
    spec["base"]["dataset"] = dataset
    spec.update(extra)
    return spec


def _refusal(client: TestClient, spec: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/studies", json=spec)
    assert r.status_code == 422, r.text
    detail: dict[str, Any] = r.json()["detail"][0]
    return detail


def test_folders_outside_the_data_directory_are_refused(client: TestClient, settings: Settings) -> None:
    root = os.path.realpath(settings.data_dir / "datasets")
    for path in ("/etc", "/", "../../", "/proc/self", f"{settings.data_dir}/runs/other-study/trial-00000"):
        detail = _refusal(client, _spec(f"folder:{path}"))
        assert detail["loc"] == ["body", "base", "dataset"], path
        assert f"is not under an allowed data root ({root})" in detail["msg"], path
        assert "GAT_TUNE_DATA_ROOTS" in detail["msg"]


def test_the_refusal_does_not_tell_whether_a_directory_exists(client: TestClient, tmp_path: Path) -> None:
    there, missing = "/etc", "/etc-not-here-at-all"
    told = _refusal(client, _spec(f"folder:{there}"))["msg"].replace(there, "PATH")
    not_told = _refusal(client, _spec(f"folder:{missing}"))["msg"].replace(missing, "PATH")
    assert told == not_told


def test_a_folder_under_the_root_is_accepted(client: TestClient, settings: Settings) -> None:
    images = settings.data_dir / "datasets" / "faces"
    images.mkdir(parents=True)
    assert client.post("/studies", json=_spec(f"folder:{images}")).status_code == 201
    # A path that merely starts with the root's name is not under it.
    assert _refusal(client, _spec(f"folder:{settings.data_dir}/datasets-other", name="b"))


def test_a_symlink_out_of_the_root_is_refused(client: TestClient, settings: Settings) -> None:
    root = settings.data_dir / "datasets"
    root.mkdir(parents=True)
    (root / "escape").symlink_to("/etc")
    assert _refusal(client, _spec(f"folder:{root}/escape"))["loc"] == ["body", "base", "dataset"]
    assert _refusal(client, _spec(f"folder:{root}/../runs"))


def test_every_place_a_dataset_can_come_from_is_checked(client: TestClient, settings: Settings) -> None:
    good = f"folder:{settings.data_dir}/datasets/a"
    spec = _spec("digits")
    spec["search_space"]["dataset"] = {"type": "categorical", "choices": ["digits", good, "folder:/etc"]}
    assert _refusal(client, spec)["loc"] == ["body", "search_space", "dataset", "choices", 2]
    spec["search_space"]["dataset"]["choices"] = ["digits", good]
    spec["enqueue"] = [{"dataset": "folder:/etc"}]
    assert _refusal(client, spec)["loc"] == ["body", "enqueue", 0, "dataset"]
    spec["enqueue"] = []
    assert client.post("/studies", json=spec).status_code == 201
    r = client.post(f"/studies/{spec['name']}/enqueue", json={"dataset": "folder:/etc"})
    assert r.status_code == 422 and "allowed data root" in r.text


@pytest.fixture
def rooted(settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    roots = f"{tmp_path}/images{os.pathsep}{tmp_path}/more,{tmp_path}"
    app = create_app(settings.model_copy(update={"data_roots": roots}))
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
        yield c


def test_gat_tune_data_roots_lists_the_roots(
    rooted: TestClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GAT_TUNE_DATA_ROOTS", f"/a{os.pathsep}/b, /c")
    assert Settings().folder_roots.allowed == (Path("/a"), Path("/b"), Path("/c"))
    for i, path in enumerate(("images/x", "more/y", "elsewhere")):
        assert rooted.post("/studies", json=_spec(f"folder:{tmp_path}/{path}", name=f"s{i}")).status_code == 201
    # A root that holds the data directory still never admits its runs or artifacts.
    for path in ("runs/s0/trial-00000", "artifacts"):
        detail = _refusal(rooted, _spec(f"folder:{settings.data_dir}/{path}", name="t"))
        assert "is not under an allowed data root" in detail["msg"], path


def test_a_folder_in_a_conditional_case_is_checked(client: TestClient) -> None:
    spec = _spec("digits")
    spec["search_space"]["dataset"] = {
        "type": "conditional",
        "on": "aux_loss",
        "cases": {"r1": {"type": "categorical", "choices": ["digits", "folder:/etc"]}},
    }
    assert _refusal(client, spec)["loc"] == ["body", "search_space", "dataset", "cases", "r1", "choices", 1]


def test_a_worker_checks_the_folder_again_before_it_reads(client: TestClient, settings: Settings) -> None:
    """Accepted by the API (under its roots), refused by a worker whose roots differ: the
    trial fails with the refusal, and nothing is read from the folder."""
    from service.worker import Slot
    from tests.service.conftest import load

    images = settings.data_dir / "datasets" / "faces"
    images.mkdir(parents=True)
    spec = _spec(f"folder:{images}", enqueue=[], n_trials=1, max_parallel=1, max_failures=1)
    assert client.post("/studies", json=spec).status_code == 201
    worker_settings = settings.model_copy(update={"data_roots": str(settings.data_dir / "elsewhere")})
    Slot(worker_settings.model_copy(update={"poll_seconds": 0.1}), "cpu", idle_exit=0.3).run()
    (trial,) = load(str(settings.database_url), spec["name"]).trials
    assert trial.state.name == "FAIL"
    assert trial.user_attrs["fail_reason"].startswith(f"DataError: dataset: 'folder:{images}' is not under")
