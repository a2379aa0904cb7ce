"""/studies: create, list, read, control."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from service.api.deps import AdminAccess, ReadAccess, StateDep, WriteAccess
from service.api.schemas import BestConfig, EnqueuedTrial, StudyList, StudyPublic, TrialPage, TrialStateFilter
from service.errors import Invalid, NotFound
from service.spec import EXAMPLE_SPEC, NAME_PATTERN, SpecIssue, StudySpec, check_top_level, check_values
from trainer.config import load_yaml, yaml_error

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


class Problem(BaseModel):
    """A refusal: one line that says what is wrong and what to do."""

    detail: str


def _answers(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for the refusals a route gives (``_404="..."``)."""
    return {int(code.lstrip("_")): {"model": Problem, "description": text} for code, text in described.items()}


_NO_STUDY = "no study of that name"
_STORED = "the study's stored spec is from an incompatible version of gat-tune"


def _shows(model: type[BaseModel], text: str) -> dict[str, Any]:
    """The OpenAPI of a success body: its model, for the docs only. No route runs it on the way
    out (response_model=None, or a Response returned as it is): the hot reads pass on JSON
    that PostgreSQL rendered; tests/service/test_response_models.py checks the two agree."""
    return {"model": model, "description": text}


def _name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise NotFound(f"no study named {name!r}")
    return name


def _json(body: bytes) -> Response:
    """Hot read routes: JSON rendered by PostgreSQL, passed on as it came."""
    return Response(body, media_type="application/json")


def parse_body(body: bytes, content_type: str) -> Any:
    """A JSON (or, for a YAML content type, YAML) body, every value checked by check_values.

    Raises:
        SpecIssue: one line that says what is wrong and where (line and column for syntax).
    """
    kind = "YAML" if "yaml" in content_type else "JSON"
    hint = "" if kind == "YAML" else " (for YAML, send Content-Type: application/yaml)"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecIssue((), f"the body is not UTF-8 (byte {exc.start}); send UTF-8 {kind}") from None
    try:
        data = load_yaml(text) if kind == "YAML" else json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecIssue(
            (), f"the body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}{hint}"
        ) from None
    except yaml.YAMLError as exc:
        raise SpecIssue((), f"the body is not valid YAML: {yaml_error(exc)}") from None
    except ValueError:  # json: an integer literal over Python's int-str limit (4,300 digits)
        raise SpecIssue(
            (), f"the body is not valid {kind}: an integer literal of more than 4300 digits is too long for a number"
        ) from None
    except RecursionError:
        raise SpecIssue((), f"the body is not valid {kind}: nested too deeply") from None
    check_values(data)
    return data


def parse_spec(body: bytes, content_type: str) -> StudySpec:
    """A spec from a JSON or YAML body; shape errors become SpecIssue/ValidationError (422)."""
    data = parse_body(body, content_type)
    if not isinstance(data, dict):
        raise SpecIssue((), "the body must be an object: a study spec")
    check_top_level(data)
    return StudySpec.model_validate(data)


@router.post(
    "",
    status_code=201,
    openapi_extra=_SPEC_BODY,
    dependencies=[WriteAccess],
    summary="Create a study",
    response_model=None,
    responses={
        201: _shows(StudyPublic, "the study, as GET /studies/{name} shows it"),
        200: _shows(StudyPublic, "a retry with the same Idempotency-Key and spec: the study the first request made"),
        **_answers(_409="the name is taken, or the Idempotency-Key was used with a different spec"),
    },
)
async def create_study(
    request: Request,
    response: Response,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any]:
    """Create an Optuna study from a spec (JSON, or YAML with Content-Type application/yaml).

    With an Idempotency-Key header a retried request returns the study the first one made.
    """
    body, content_type = await request.body(), request.headers.get("content-type", "")

    def create() -> tuple[dict[str, Any], bool]:  # a large YAML body takes a while to parse
        return state.study_service.create(parse_spec(body, content_type), idempotency_key=idempotency_key)

    study, created = await run_in_threadpool(create)
    if not created:
        response.status_code = 200
    return study


@router.get(
    "", dependencies=[ReadAccess], summary="List studies", responses={200: _shows(StudyList, "a page of studies")}
)
def list_studies(state: StateDep, offset: Offset = 0, limit: Limit = 50) -> Response:
    return _json(state.study_service.studies_json(offset=offset, limit=limit))


@router.get(
    "/{name}",
    dependencies=[ReadAccess],
    summary="A study: state, trial counts, best so far",
    responses={200: _shows(StudyPublic, "the study"), **_answers(_404=_NO_STUDY)},
)
def get_study(name: StudyName, state: StateDep) -> Response:
    return _json(state.study_service.study_json(_name(name)))


@router.get(
    "/{name}/trials",
    dependencies=[ReadAccess],
    summary="A page of a study's trials",
    responses={200: _shows(TrialPage, "a page of trials"), **_answers(_404=_NO_STUDY)},
)
def list_trials(
    name: StudyName,
    state: StateDep,
    offset: Offset = 0,
    limit: Limit = 50,
    trial_state: Annotated[
        TrialStateFilter | None,
        Query(
            alias="state",
            description="only trials in this state, as trial_counts counts them: FAIL is a trial that "
            "failed on its own, INTERRUPTED one paused, left by its worker or ended by a stop (both "
            "FAIL in Optuna, which is the state each item shows)",
        ),
    ] = None,
) -> Response:
    return _json(state.study_service.trials_json(_name(name), offset=offset, limit=limit, state=trial_state))


@router.get(
    "/{name}/best",
    dependencies=[ReadAccess],
    summary="The best trial's complete trainer config",
    response_model=None,
    responses={
        200: {
            **_shows(BestConfig, "the config; with ?format=yaml, the same as YAML"),
            "content": {"application/yaml": {"schema": {"type": "string"}}},
        },
        **_answers(_404=_NO_STUDY, _409=f"no trial has completed yet, or {_STORED}"),
    },
)
def best_config(name: StudyName, state: StateDep, format: Annotated[Literal["json", "yaml"], Query()] = "json") -> Any:
    """A config that `gat-tune train --config` accepts; `?format=yaml` for YAML. 409 before any
    trial has completed."""
    config = state.study_service.best_config(_name(name))
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
    state.study_service.delete(_name(name))
    return Response(status_code=204)


def _control(action: str):  # type: ignore[no-untyped-def]
    def handler(name: StudyName, state: StateDep) -> dict[str, Any]:
        return state.study_service.control(_name(name), action)

    handler.__name__ = f"{action}_study"
    return handler


for _action, _summary in (
    ("stop", "Stop a study for good"),
    ("pause", "Pause a study"),
    ("resume", "Resume a paused study"),
):
    router.add_api_route(
        f"/{{name}}/{_action}",
        _control(_action),
        methods=["POST"],
        dependencies=[WriteAccess],
        summary=_summary,
        response_model=None,
        responses={
            200: _shows(StudyPublic, "the study, with its new status"),
            **_answers(_404=_NO_STUDY, _409="the study is stopped: a stopped study cannot pause or resume"),
        },
    )


@router.post(
    "/{name}/enqueue",
    dependencies=[WriteAccess],
    status_code=201,
    summary="Queue a config to try next",
    response_model=None,
    responses={201: _shows(EnqueuedTrial, "the queued trial"), **_answers(_404=_NO_STUDY, _409=_STORED)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EnqueueConfig"}}},
        }
    },
)
async def enqueue(name: StudyName, request: Request, state: StateDep) -> dict[str, Any]:
    """Body: search-space keys → values (a partial trainer config)."""
    values = parse_body(await request.body(), "application/json")
    if not isinstance(values, dict):
        raise Invalid("the body must be an object of search_space keys to values")
    return await run_in_threadpool(state.study_service.enqueue, _name(name), values)


__all__ = ["Problem", "parse_body", "parse_spec", "router"]
