"""/openapi.json says what the server does: its refusals per route and its limits."""

from __future__ import annotations

import copy
from typing import Any

from fastapi.testclient import TestClient

from service.config import Settings
from service.spec import EXAMPLE_SPEC
from trainer.config import TrainConfig, json_schema
from trainer.losses import REGULARISERS

NAME = "/studies/{name}"
REFUSALS = {
    ("post", "/studies"): {"409"},
    ("get", NAME): {"404"},
    ("get", NAME + "/trials"): {"404"},
    ("get", NAME + "/best"): {"404", "409"},
    ("post", NAME + "/stop"): {"404", "409"},
    ("post", NAME + "/pause"): {"404", "409"},
    ("post", NAME + "/resume"): {"404", "409"},
    ("post", NAME + "/enqueue"): {"404", "409"},
}


def _schema(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    out: dict[str, Any] = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return out


def test_routes_document_their_404_and_409(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for (method, path), codes in REFUSALS.items():
        responses = schema["paths"][path][method]["responses"]
        assert codes <= set(responses), (method, path, sorted(responses))
        for code in codes:
            body = responses[code]["content"]["application/json"]["schema"]
            assert _schema(schema, body["$ref"])["properties"]["detail"]["type"] == "string"
            assert responses[code]["description"]


def test_schema_limits_are_the_servers(client: TestClient, settings: Settings) -> None:
    schema = client.get("/openapi.json").json()
    study_spec = schema["components"]["schemas"]["StudySpec"]
    assert study_spec["properties"]["n_trials"]["maximum"] == settings.max_trials == 500
    ok = copy.deepcopy(EXAMPLE_SPEC) | {"n_trials": settings.max_trials, "name": "at-the-limit"}
    assert client.post("/studies", json=ok).status_code == 201
    assert client.post("/studies", json=ok | {"n_trials": settings.max_trials + 1, "name": "over"}).status_code == 422

    # The enqueue body: one schema for POST /studies/{name}/enqueue and the spec's entries.
    body = schema["paths"][NAME + "/enqueue"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EnqueueConfig"}
    assert study_spec["properties"]["enqueue"]["items"] == body
    assert study_spec["properties"]["enqueue"]["maxItems"] == 1000
    enqueue = _schema(schema, body["$ref"])
    assert enqueue["type"] == "object" and enqueue["minProperties"] == 1
    assert "lambda" in enqueue["propertyNames"]["enum"] and "seed" not in enqueue["propertyNames"]["enum"]
    assert client.post("/studies/at-the-limit/enqueue", json=enqueue["example"]).status_code == 201
    assert client.post("/studies/at-the-limit/enqueue", json={}).status_code == 422  # minProperties
    assert client.post("/studies/at-the-limit/enqueue", json={"seed": 3}).status_code == 422  # propertyNames


def test_the_spec_schema_lists_every_trainer_key_in_base(client: TestClient) -> None:
    base = client.get("/openapi.json").json()["components"]["schemas"]["StudySpec"]["properties"]["base"]
    assert base["type"] == "object" and base["additionalProperties"] is False
    assert list(base["properties"]) == list(TrainConfig().to_dict())
    assert base["properties"] == json_schema()["properties"]
    assert base["properties"]["aux_loss"]["enum"] == list(REGULARISERS)
    assert base["properties"]["lambda"]["minimum"] == 0 and base["properties"]["steps"]["type"] == "integer"
