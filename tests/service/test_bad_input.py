"""Every kind of bad request gets a clear 4xx naming the field, never a 500."""

from __future__ import annotations

import copy
import json
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
    (
        "unknown top-level field",
        spec(trials=3),
        ["body", "trials"],
        "unknown key 'trials' (did you mean 'n_trials'?); allowed keys: name, base, search_space,",
    ),
    ("NUL in base.dataset", spec(base={"dataset": "digits\u0000"}), ["body", "base", "dataset"], "NUL character"),
    ("NUL in base.device", spec(base={"device": "cpu\u0000"}), ["body", "base", "device"], "NUL character"),
    ("NUL in a key", spec(base={"dev\u0000": "cpu"}), ["body", "base"], "NUL character"),
    (
        "float too large for a number",
        spec(base={"lambda": 10**400}),
        ["body", "base", "lambda"],
        "out of range (a spec's numbers fit in 64 bits)",
    ),
    (
        "infinite step",
        space(lr_g={"type": "float", "low": 0.1, "high": 1, "step": float("inf")}),
        ["body", "search_space", "lr_g", "step"],
        "search_space.lr_g.step: inf is not a finite number",
    ),
    (
        "NaN in an enqueued value",
        spec(enqueue=[{"aux_loss": "r1", "lambda": float("nan")}]),
        ["body", "enqueue", 0, "lambda"],
        "enqueue.0.lambda: nan is not a finite number",
    ),
    ("enqueue outside the space", spec(enqueue=[{"z_dim": 4}]), ["body", "enqueue", 0, "z_dim"], "not in search_space"),
    (
        "unknown objective",
        spec(objective=["fid", "coverge"], pruner="none"),
        ["body", "objective"],
        "objective: unknown metric 'coverge' (did you mean 'coverage'?); one of fid, precision",
    ),
    ("objective twice", spec(objective=["fid", "recall", "fid"]), ["body", "objective"], "'fid' is named twice"),
    ("objective not a name", spec(objective=3), ["body", "objective"], "a metric name or a non-empty list"),
    (
        "PRDC on too few samples",
        space(eval_samples={"type": "int", "low": 4, "high": 100}) | {"objective": "coverage"},
        ["body", "objective"],
        "objective: coverage needs eval_samples > 5; it can be 4",
    ),
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
    # json.dumps writes NaN and Infinity as JavaScript does (httpx's json= refuses them)
    r = client.post("/studies", content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
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


def _one_line(r: Any) -> str:
    """The single message of a 422, checked to be one line."""
    assert r.status_code == 422, r.text
    (detail,) = r.json()["detail"]
    assert "\n" not in detail["msg"]
    return str(detail["msg"])


@pytest.mark.parametrize("content_type", ["application/json", "application/yaml"])
def test_an_integer_literal_over_pythons_limit_is_422(client: TestClient, content_type: str) -> None:
    huge = "9" * 5000  # int() refuses over 4,300 digits (ValueError): this was a 500
    body = f'{{"name": "big", "n_trials": {huge}}}'
    r = client.post("/studies", content=body.encode(), headers={"Content-Type": content_type})
    assert "too long for a number" in _one_line(r)
    client.post("/studies", json=spec(enqueue=[]))
    r = client.post("/studies/digits-gat/enqueue", content=f'{{"lambda": {huge}}}'.encode())
    assert "too long for a number" in _one_line(r)


@pytest.mark.parametrize(
    ("body", "content_type", "loc"),
    [
        ('{"name": "s", "search_space": {"lr_g": {"type": "float", "low": 0.1, "high": 1, "step": NaN}}}',
         "application/json", ["body", "search_space", "lr_g", "step"]),
        ('{"name": "s", "base": {"lambda": Infinity}}', "application/json", ["body", "base", "lambda"]),
        ("name: s\nsearch_space:\n  lr_g: {type: float, low: 0.1, high: 1, step: .nan}\n",
         "application/yaml", ["body", "search_space", "lr_g", "step"]),
        ("name: s\nbase: {lambda: -.inf}\n", "application/yaml", ["body", "base", "lambda"]),
    ],
)  # fmt: skip
def test_non_finite_numbers_are_422_naming_the_field(
    client: TestClient, body: str, content_type: str, loc: list[Any]
) -> None:
    """NaN for a float step was stored (as null): every non-finite number is refused."""
    r = client.post("/studies", content=body.encode(), headers={"Content-Type": content_type})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc
    assert "is not a finite number" in _one_line(r)
    assert client.get("/studies").json()["total"] == 0


def test_nul_in_an_enqueued_config_is_422(client: TestClient) -> None:
    client.post("/studies", json=spec(enqueue=[]))
    r = client.post("/studies/digits-gat/enqueue", json={"aux_loss": "r1\u0000"})
    assert r.json()["detail"][0]["loc"] == ["body", "aux_loss"]
    assert "NUL character" in _one_line(r)


@pytest.mark.parametrize(
    ("body", "content_type", "where"),
    [
        (b"name: s\nbase: {steps: 3\nn_trials: 4\n", "application/yaml", "line 3, column 9"),
        (b"name: s\n  base: x\n", "application/yaml", "line 2, column 7"),
        (
            b"name: s\nseed: 2026-13-45\n",
            "application/yaml",
            "not a valid date (month must be in 1..12); quote it at line 2, column 7",
        ),
        (b'{"name": "s",\n "n_trials": 3,,\n}', "application/json", "line 2, column 16"),
    ],
)
def test_syntax_errors_give_line_and_column(client: TestClient, body: bytes, content_type: str, where: str) -> None:
    message = _one_line(client.post("/studies", content=body, headers={"Content-Type": content_type}))
    assert message.startswith("the body is not valid "), message
    assert where in message, message


def test_nul_in_a_yaml_body_is_422_with_its_place(client: TestClient) -> None:
    r = client.post("/studies", content=b"name: a\x00b\n", headers={"Content-Type": "application/yaml"})
    assert _one_line(r) == (
        "the body is not valid YAML: special characters are not allowed (character #x0000) at character 8"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"name: a\nbase: &x [*x]\n",
        b"name: a\nenqueue: &x {a: *x}\n",
        b"name: a\nbase: " + b"[" * 40 + b"]" * 40 + b"\n",
    ],
    ids=["a list holding itself", "a mapping holding itself", "deep nesting"],
)
def test_a_body_that_holds_itself_or_nests_deep_is_a_fast_422(client: TestClient, body: bytes) -> None:
    # The depth limit ends the walk (not the million-value limit, which took half an hour here).
    r = client.post("/studies", content=body, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 422 and "nests deeper than 32 levels" in _one_line(r), r.text


def test_a_misspelt_search_space_type_gets_did_you_mean(client: TestClient) -> None:
    body = spec(search_space={"lr_d": {"type": "flot", "low": 1e-4, "high": 1e-3}})
    (detail,) = client.post("/studies", json=body).json()["detail"]
    assert detail["loc"] == ["body", "search_space", "lr_d", "type"]
    assert detail["msg"] == "type: 'flot' is not one of float, int, categorical, conditional (did you mean 'float'?)"
