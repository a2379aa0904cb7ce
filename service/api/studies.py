"""/studies: create, list, read, control."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.api.deps import AdminAccess, ReadAccess, StateDep, WriteAccess
from service.errors import Invalid, NotFound
from service.spec import EXAMPLE_SPEC, NAME_PATTERN, SpecIssue, StudySpec

router = APIRouter(prefix="/studies", tags=["studies"])

StudyName = Annotated[str, Path(description="the study's name (its id)", max_length=128)]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]
Limit = Annotated[int, Query(ge=1, le=500)]

_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/StudySpec"}, "example": EXAMPLE_SPEC},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/StudySpec"}},
        },
    }
}


def _name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise NotFound(f"no study named {name!r}")
    return name


def _json(body: bytes) -> Response:
    """Hot read routes: JSON rendered by PostgreSQL, passed on as it came."""
    return Response(body, media_type="application/json")


def parse_spec(body: bytes, content_type: str) -> StudySpec:
    """A spec from a JSON or YAML body; shape errors become SpecIssue/ValidationError (422)."""
    try:
        text = body.decode("utf-8")
        data = yaml.safe_load(text) if "yaml" in content_type else json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError, RecursionError):
        kind = "YAML" if "yaml" in content_type else "JSON"
        raise SpecIssue((), f"the body is not valid {kind} (send application/json or application/yaml)") from None
    if not isinstance(data, dict):
        raise SpecIssue((), "the body must be an object: a study spec")
    return StudySpec.model_validate(data)


@router.post("", status_code=201, openapi_extra=_SPEC_BODY, dependencies=[WriteAccess], summary="Create a study")
async def create_study(
    request: Request,
    response: Response,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any]:
    """Create an Optuna study from a spec (JSON, or YAML with Content-Type application/yaml).

    With an Idempotency-Key header a retried request returns the study the first one made.
    """
    spec = parse_spec(await request.body(), request.headers.get("content-type", ""))
    study, created = await run_in_threadpool(state.studies.create, spec, idempotency_key=idempotency_key)
    if not created:
        response.status_code = 200
    return study


@router.get("", dependencies=[ReadAccess], summary="List studies")
def list_studies(state: StateDep, offset: Offset = 0, limit: Limit = 50) -> Response:
    return _json(state.studies.studies_json(offset=offset, limit=limit))


@router.get("/{name}", dependencies=[ReadAccess], summary="A study: state, trial counts, best so far")
def get_study(name: StudyName, state: StateDep) -> Response:
    return _json(state.studies.study_json(_name(name)))


@router.get("/{name}/trials", dependencies=[ReadAccess], summary="A page of a study's trials")
def list_trials(
    name: StudyName,
    state: StateDep,
    offset: Offset = 0,
    limit: Limit = 50,
    trial_state: Annotated[
        Literal["RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL"] | None, Query(alias="state")
    ] = None,
) -> Response:
    return _json(state.studies.trials_json(_name(name), offset=offset, limit=limit, state=trial_state))


@router.get(
    "/{name}/best",
    dependencies=[ReadAccess],
    summary="The best trial's complete trainer config",
    responses={200: {"content": {"application/json": {}, "application/yaml": {}}}},
)
def best_config(name: StudyName, state: StateDep, format: Annotated[Literal["json", "yaml"], Query()] = "json") -> Any:
    """A config that `gat-tune train --config` accepts; `?format=yaml` for YAML. 409 before any
    trial has completed."""
    config = state.studies.best_config(_name(name))
    if format == "yaml":
        return Response(yaml.safe_dump(config, sort_keys=False), media_type="application/yaml")
    return config


@router.delete(
    "/{name}",
    dependencies=[AdminAccess],
    status_code=204,
    summary="Delete a study for good (admin)",
    responses={
        204: {"description": "deleted: the Optuna study, its trials and artifacts, and its leases"},
        401: {"description": "no bearer token, or an unknown one"},
        403: {"description": "the token lacks the admin scope"},
        404: {"description": "no such study"},
    },
)
def delete_study(name: StudyName, state: StateDep) -> Response:
    """Deletes the Optuna study (trials, notes, artifacts) and gat-tune's record of it; the
    dashboard's delete goes through the same path. Running trials stop at their next report."""
    state.studies.delete(_name(name))
    return Response(status_code=204)


def _control(action: str):  # type: ignore[no-untyped-def]
    def handler(name: StudyName, state: StateDep) -> dict[str, Any]:
        return state.studies.control(_name(name), action)

    handler.__name__ = f"{action}_study"
    return handler


for _action, _summary in (
    ("stop", "Stop a study for good"),
    ("pause", "Pause a study"),
    ("resume", "Resume a paused study"),
):
    router.add_api_route(
        f"/{{name}}/{_action}", _control(_action), methods=["POST"], dependencies=[WriteAccess], summary=_summary
    )


@router.post(
    "/{name}/enqueue",
    dependencies=[WriteAccess],
    status_code=201,
    summary="Queue a config to try next",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "additionalProperties": True},
                    "example": {"aux_loss": "r1", "lambda": 1.0},
                }
            },
        }
    },
)
async def enqueue(name: StudyName, request: Request, state: StateDep) -> dict[str, Any]:
    """Body: search-space keys → values (a partial trainer config)."""
    try:
        values = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise Invalid("the body is not valid JSON") from None
    if not isinstance(values, dict):
        raise Invalid("the body must be an object of search_space keys to values")
    return await run_in_threadpool(state.studies.enqueue, _name(name), values)


__all__ = ["parse_spec", "router"]
