"""The read routes' JSON (rendered by PostgreSQL) against the response models that
/openapi.json names: studies and trials in every state, non-finite values, two objectives,
a lost worker. A field the SQL adds, drops or renames fails here."""

from __future__ import annotations

import math
from typing import Any, get_args

import httpx
import pytest
import sqlalchemy as sa
import yaml
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from optuna.trial import TrialState
from pydantic import BaseModel, ValidationError

from service import db
from service.api import schemas
from service.api import studies as studies_api
from service.api import system as system_api
from service.config import Settings
from service.optuna_tables import TRIAL_FILTERS, TRIAL_STATES
from service.spec import suggest_config
from tests.service.conftest import make_queue, tiny

NAME = "/studies/{name}"
# Every route that answers JSON a model describes: (method, path, status) -> the model.
DOCUMENTED = {
    ("post", "/studies", "201"): schemas.StudyPublic,
    ("post", "/studies", "200"): schemas.StudyPublic,
    ("get", "/studies", "200"): schemas.StudyList,
    ("get", NAME, "200"): schemas.StudyPublic,
    ("get", NAME + "/trials", "200"): schemas.TrialPage,
    ("get", NAME + "/best", "200"): schemas.BestConfig,
    ("post", NAME + "/stop", "200"): schemas.StudyPublic,
    ("post", NAME + "/pause", "200"): schemas.StudyPublic,
    ("post", NAME + "/resume", "200"): schemas.StudyPublic,
    ("post", NAME + "/enqueue", "201"): schemas.EnqueuedTrial,
    ("get", "/workers", "200"): schemas.WorkerList,
}
MODELS = [getattr(schemas, name) for name in schemas.__all__ if name not in ("TrialStateName", "TrialStateFilter")]


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The model and every model nested in its fields."""
    out, todo = [], [model]
    while todo:
        m = todo.pop()
        if m in out:
            continue
        out.append(m)
        for field in m.model_fields.values():
            stack = [field.annotation]
            while stack:
                t = stack.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    todo.append(t)
                stack.extend(get_args(t))
    return out


def validated(response: httpx.Response, method: str, path: str) -> Any:
    """The body, validated (strict) against the route's model in DOCUMENTED, which /openapi.json names
    (test_openapi_references_the_models)."""
    assert response.status_code < 300, response.text
    key = (method, path, str(response.status_code))
    model = DOCUMENTED[key]
    assert response.headers["content-type"] == "application/json"
    return model.model_validate_json(response.content, strict=True)


def test_models_forbid_extra_fields_and_require_every_field() -> None:
    """So the SQL cannot add, drop or rename a field unnoticed (StudySpec is the request's own model)."""
    for model in {m for top in MODELS for m in _models(top) if m.__module__ == schemas.__name__}:
        assert model.model_config.get("extra") == "forbid", model.__name__
        optional = [name for name, field in model.model_fields.items() if not field.is_required()]
        # GET /best is a complete trainer config (DESIGN.md); a packed trial's adds `pack`
        allowed = ["pack"] if model is schemas.BestConfig else []
        assert optional == allowed, (model.__name__, optional)
    assert get_args(schemas.TrialStateName) == TRIAL_STATES
    assert get_args(schemas.TrialStateFilter) == TRIAL_FILTERS


def test_openapi_references_the_models(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    components = doc["components"]["schemas"]
    for (method, path, status), model in DOCUMENTED.items():
        content = doc["paths"][path][method]["responses"][status]["content"]
        assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model.__name__}"}
        shown = components[model.__name__]
        assert set(shown["properties"]) == set(model.model_fields), model.__name__
        assert set(shown["required"]) == set(model.model_fields) - {"pack"}, model.__name__
        assert shown["additionalProperties"] is False, model.__name__
    assert "application/yaml" in doc["paths"][NAME + "/best"]["get"]["responses"]["200"]["content"]
    assert set(components["BestConfig"]["properties"]) >= {"lambda", "aux_loss", "lr_g", "steps", "seed"}
    counts = components["TrialCounts"]["properties"]
    assert "INTERRUPTED" in counts and "not the trial's fault" in counts["INTERRUPTED"]["description"]
    assert components["StudyPublic"]["properties"]["last_failure"]["anyOf"][0] == {
        "$ref": "#/components/schemas/LastFailure"
    }
    assert components["StudyPublic"]["properties"]["spec"]["$ref"] == "#/components/schemas/StudySpec"
    assert "lost" in components["WorkerPublic"]["properties"]["status"]["enum"]
    (state,) = [p for p in doc["paths"][NAME + "/trials"]["get"]["parameters"] if p["name"] == "state"]
    assert state["schema"]["anyOf"][0]["enum"] == list(TRIAL_FILTERS)


def test_no_route_runs_its_model_on_the_way_out() -> None:
    """The models are for the docs: the hot reads pass on PostgreSQL's JSON as it came, and the
    others their dicts, never re-validated and re-encoded through pydantic."""
    routes = {
        (m.lower(), r.path): r
        for router in (studies_api.router, system_api.router)
        for r in router.routes
        if isinstance(r, APIRoute)
        for m in r.methods
    }
    for method, path, _ in DOCUMENTED:
        assert routes[method, path].response_field is None, (method, path)


def test_a_changed_field_fails_the_model(client: TestClient) -> None:
    """What a change to the SQL's json_build_object would look like to the check below."""
    client.post("/studies", json=tiny())
    body = client.get("/studies/tiny").json()
    schemas.StudyPublic.model_validate(body, strict=False)
    added = body | {"trials_total": 0}
    dropped = {k: v for k, v in body.items() if k != "last_failure"}
    renamed = {("counts" if k == "trial_counts" else k): v for k, v in body.items()}
    nested = body | {"trial_counts": {k: v for k, v in body["trial_counts"].items() if k != "INTERRUPTED"}}
    for changed in (added, dropped, renamed, nested):
        with pytest.raises(ValidationError):
            schemas.StudyPublic.model_validate(changed)


def _claim(q: Any) -> Any:
    claim = q.claim()
    assert claim is not None
    suggest_config(claim.trial, claim.spec)
    return claim


def test_every_read_route_answers_what_its_model_says(client: TestClient, settings: Settings) -> None:
    nan, inf = math.nan, math.inf
    q = make_queue(settings, "w")

    # One objective, a trial in every state.
    created = client.post("/studies", json=tiny(n_trials=20, max_parallel=1))
    validated(created, "post", "/studies")
    done = _claim(q)
    q.report(done, 20, 50.0)
    q.report(done, 40, nan)
    assert q.finish(
        done, state=TrialState.COMPLETE, values=[5.0], attrs={"train_seconds": 1.5, "odd": nan, "huge": -inf}
    )
    pruned = _claim(q)
    q.report(pruned, 20, inf)
    assert q.finish(pruned, state=TrialState.PRUNED)
    assert q.finish(_claim(q), state=TrialState.COMPLETE, values=[inf])
    assert q.finish(_claim(q), state=TrialState.FAIL, attrs={"fail_reason": "diverged at step 40"})
    assert q.finish(_claim(q), state=TrialState.FAIL, attrs={"fail_reason": "study stopped"})  # interrupted
    q.interrupt(_claim(q), "study paused; checkpointed")  # interrupted, and re-queued...
    running = q.claim()  # ...and resumed
    assert running is not None
    queued = client.post("/studies/tiny/enqueue", json={"lambda": 1.0})
    validated(queued, "post", NAME + "/enqueue")

    # Two objectives: the best by FID; a non-finite second value; a failure without a reason.
    pareto = tiny(name="pareto", n_trials=2, max_parallel=1, objective=["fid", "train_seconds"])
    validated(client.post("/studies", json=pareto, headers={"Idempotency-Key": "k1"}), "post", "/studies")
    again = client.post("/studies", json=pareto, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 200
    validated(again, "post", "/studies")
    assert q.finish(_claim(q), state=TrialState.FAIL)
    assert q.finish(_claim(q), state=TrialState.COMPLETE, values=[5.0, 2.0])
    assert q.finish(_claim(q), state=TrialState.COMPLETE, values=[3.0, inf])

    # No trials: every nullable field null; each control route.
    client.post("/studies", json=tiny(name="empty"))
    for action in ("pause", "resume", "stop"):
        validated(client.post(f"/studies/empty/{action}"), "post", NAME + f"/{action}")

    lease = settings.lease_seconds
    with db.engine(settings).begin() as conn:
        for worker, status, trial, age in (
            ("busy", "training", running.trial_id, 0.0),
            ("idle", "idle", None, 0.0),
            ("lost", "training", 123, 2 * lease),
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO gt_workers (id, host, pid, device, status, current_trial_id, last_heartbeat) "
                    "VALUES (:id, 'h', 1, 'cpu', :status, :trial, now() - make_interval(secs => :age))"
                ),
                {"id": worker, "status": status, "trial": trial, "age": age},
            )

    listed = validated(client.get("/studies", params={"limit": 500}), "get", "/studies")
    assert [s.name for s in listed.items] == ["empty", "pareto", "tiny"]
    assert validated(client.get("/studies", params={"offset": 9}), "get", "/studies").items == []

    study = validated(client.get("/studies/tiny"), "get", NAME)
    assert study.trial_counts == schemas.TrialCounts(RUNNING=1, WAITING=1, COMPLETE=2, PRUNED=1, FAIL=1, INTERRUPTED=2)
    assert study.last_failure == schemas.LastFailure(trial=3, reason="diverged at step 40")
    assert study.best is not None and study.best.fid == 5.0 and study.best.params
    two = validated(client.get("/studies/pareto"), "get", NAME)
    assert two.status == "completed" and two.objectives == ["fid", "train_seconds"]
    assert two.best is not None and two.best.fid == two.best.value == 3.0 and two.best.objective == "fid"
    assert two.last_failure == schemas.LastFailure(trial=0, reason=None)
    empty = validated(client.get("/studies/empty"), "get", NAME)
    assert empty.status == "stopped" and empty.best is None and empty.last_failure is None

    seen_states = set()
    for name in ("tiny", "pareto", "empty"):
        for state in (None, *TRIAL_FILTERS):
            params = {"limit": 500} | ({"state": state} if state else {})
            page = validated(client.get(f"/studies/{name}/trials", params=params), "get", NAME + "/trials")
            assert all(state is None or t.state == state.replace("INTERRUPTED", "FAIL") for t in page.items)
            seen_states |= {t.state for t in page.items}
        beyond = client.get(f"/studies/{name}/trials", params={"offset": 100})
        assert validated(beyond, "get", NAME + "/trials").items == []
    assert seen_states == set(TRIAL_STATES)
    trials = validated(client.get("/studies/tiny/trials"), "get", NAME + "/trials").items
    assert trials[0].intermediate_values == [
        schemas.IntermediateValue(step=20, value=50.0),
        schemas.IntermediateValue(step=40, value=None),
    ]
    assert trials[0].user_attrs["odd"] is None and trials[0].user_attrs["huge"] is None
    assert trials[1].intermediate_values == [schemas.IntermediateValue(step=20, value=None)]
    assert trials[2].values == [None]  # inf
    assert trials[6].datetime_start is not None and trials[6].datetime_complete is None  # RUNNING
    assert trials[7].datetime_start is None  # WAITING
    pareto_trials = validated(client.get("/studies/pareto/trials"), "get", NAME + "/trials").items
    assert [t.values for t in pareto_trials] == [None, [5.0, 2.0], [3.0, None]]

    for name in ("tiny", "pareto"):
        best = validated(client.get(f"/studies/{name}/best"), "get", NAME + "/best")
        as_yaml = client.get(f"/studies/{name}/best", params={"format": "yaml"})
        assert yaml.safe_load(as_yaml.text) == best.model_dump(by_alias=True, exclude_unset=True)

    workers = validated(client.get("/workers"), "get", "/workers")
    shown = {w.id: (w.status, w.current_trial_id) for w in workers.items}
    assert shown == {"busy": ("training", running.trial_id), "idle": ("idle", None), "lost": ("lost", 123)}
