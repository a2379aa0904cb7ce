"""Every kind of bad request gets a clear 4xx naming the field, never a 500."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.spec import EXAMPLE_SPEC


def spec(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(EXAMPLE_SPEC)
    out.update(changes)
    return out


def space(**params: Any) -> dict[str, Any]:
    return spec(search_space=params, enqueue=[])


CASES = [
    ("unknown data set", spec(base={"dataset": "imagenet"}), ["body", "base"], "dataset: 'imagenet' is not one of"),
    ("unknown base key", spec(base={"width": 3}), ["body", "base", "width"], "unknown key 'width'"),
    ("unknown sampler", spec(sampler="bayes"), ["body", "sampler"], "'tpe'"),
    ("unknown pruner", spec(pruner="asha"), ["body", "pruner"], "'hyperband'"),
    (
        "unknown search key",
        space(lamda={"type": "float", "low": 0.1, "high": 1}),
        ["body", "search_space", "lamda"],
        "did you mean 'lambda'",
    ),
    (
        "low over high",
        space(lr_g={"type": "float", "low": 0.1, "high": 0.01}),
        ["body", "search_space", "lr_g", "low"],
        "low (0.1) is greater than high (0.01)",
    ),
    (
        "log range touching 0",
        space(**{"lambda": {"type": "float", "low": 0, "high": 10, "log": True}}),
        ["body", "search_space", "lambda", "low"],
        "a log range needs low > 0",
    ),
    (
        "range outside the trainer's",
        space(beta1={"type": "float", "low": 0.5, "high": 1.5}),
        ["body", "search_space", "beta1", "high"],
        "beta1: 1.5 is out of range",
    ),
    (
        "float range on an integer key",
        space(g_width={"type": "float", "low": 8, "high": 64}),
        ["body", "search_space", "g_width", "type"],
        "use type 'int'",
    ),
    (
        "bad categorical choice",
        space(aux_loss={"type": "categorical", "choices": ["r1", "r3"]}),
        ["body", "search_space", "aux_loss", "choices", 1],
        "aux_loss: 'r3' is not one of",
    ),
    (
        "a combination the trainer refuses",
        space(
            dataset={"type": "categorical", "choices": ["digits", "ring8"]},
            model={"type": "categorical", "choices": ["mlp", "dcgan"]},
        ),
        ["body", "search_space"],
        "model: 'dcgan' needs images",
    ),
    (
        "conditional on an unknown case",
        space(
            aux_loss={"type": "categorical", "choices": ["r1", "none"]},
            **{
                "lambda": {
                    "type": "conditional",
                    "on": "aux_loss",
                    "cases": {"r2": {"type": "float", "low": 1, "high": 2}},
                }
            },
        ),
        ["body", "search_space", "lambda", "cases", "r2"],
        "case 'r2' is not a choice of aux_loss",
    ),
    ("n_trials over the limit", spec(n_trials=501), ["body", "n_trials"], "over this server's limit of 500"),
    ("n_trials zero", spec(n_trials=0), ["body", "n_trials"], "greater than or equal to 1"),
    ("bad name", spec(name="no spaces allowed"), ["body", "name"], "String should match pattern"),
    ("unknown top-level field", spec(trials=3), ["body", "trials"], "Extra inputs are not permitted"),
    ("enqueue outside the space", spec(enqueue=[{"z_dim": 4}]), ["body", "enqueue", 0, "z_dim"], "not in search_space"),
    (
        "cmaes with two objectives",
        spec(objective=["fid", "train_seconds"], sampler="cmaes", pruner="none"),
        ["body", "sampler"],
        "one objective",
    ),
]


@pytest.mark.parametrize(("label", "body", "loc", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_spec_is_422_naming_the_field(
    client: TestClient, label: str, body: dict[str, Any], loc: list[Any], message: str
) -> None:
    r = client.post("/studies", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(d["loc"] == loc and message in d["msg"] for d in detail), detail
    assert client.get("/studies").json()["total"] == 0  # nothing stored


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"{not json", "application/json"), (b"\xff\xfe", "application/json"), (b"[1, 2]", "application/json"),
     (b"steps: [", "application/yaml"), (b"", "application/json")],
)  # fmt: skip
def test_malformed_bodies_are_422(client: TestClient, content: bytes, content_type: str) -> None:
    r = client.post("/studies", content=content, headers={"Content-Type": content_type})
    assert r.status_code == 422, r.text


def test_body_over_one_megabyte_is_413(client: TestClient) -> None:
    big = spec(base={"dataset": "digits"}, enqueue=[{"aux_loss": "r1" + "x" * 1_100_000}])
    r = client.post("/studies", json=big)
    assert r.status_code == 413
    assert "over 1000000 bytes" in r.json()["detail"]


def test_unknown_study_is_404(client: TestClient) -> None:
    for path in ("/studies/nope", "/studies/nope/trials", "/studies/nope/best", "/studies/%00bad"):
        assert client.get(path).status_code == 404, path
    assert client.post("/studies/nope/stop").status_code == 404


def test_bad_query_parameters_are_422(client: TestClient) -> None:
    client.post("/studies", json=spec())
    assert client.get("/studies/digits-gat/trials", params={"limit": 0}).status_code == 422
    assert client.get("/studies/digits-gat/trials", params={"offset": -1}).status_code == 422
    assert client.get("/studies/digits-gat/trials", params={"state": "DONE"}).status_code == 422
    assert client.get("/studies/digits-gat/best", params={"format": "xml"}).status_code == 422
