"""The FastAPI app factory: routers, error mapping, body limit, OpenAPI."""

from __future__ import annotations

import contextlib
import difflib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import db
from service.api import studies as studies_api
from service.api import system as system_api
from service.api.deps import AppState
from service.artifacts import artifact_store
from service.config import Settings, get_settings, is_loopback
from service.dashboard import dashboard_app
from service.errors import Conflict, Forbidden, GatTuneError, Invalid, NotFound, Unauthorized
from service.spec import SpecIssue, StudySpec, enqueue_schema
from service.studies import StudyService

__all__ = ["create_app", "create_served_app"]

log = logging.getLogger(__name__)

STATUS = {NotFound: 404, Conflict: 409, Invalid: 422, Unauthorized: 401, Forbidden: 403}


class BodyLimit:
    """413 for a body over the limit, by Content-Length or by counting a streamed body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._reject(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        response = JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)
        await response({"type": "http"}, _empty_receive, send)


class _TooLarge(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b""}


def _error_body(loc: tuple[Any, ...], message: str) -> dict[str, Any]:
    return {"detail": [{"loc": ["body", *loc], "msg": message, "type": "value_error"}]}


def _shape_error(e: Any) -> dict[str, Any]:
    """One of pydantic's errors as the API's: a misspelt tag (a search-space ``type``) gets
    "did you mean", as misspelt keys do."""
    loc, msg = ["body", *e["loc"]], e["msg"]
    if e["type"] == "union_tag_invalid":
        tags = [t.strip(" '") for t in str(e["ctx"]["expected_tags"]).split(",")]
        field = str(e["ctx"]["discriminator"]).strip("'")
        tag = str(e["ctx"]["tag"])
        close = difflib.get_close_matches(tag, tags, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        loc, msg = [*loc, field], f"{field}: '{tag}' is not one of {', '.join(tags)}{hint}"
    return {"loc": loc, "msg": msg, "type": e["type"]}


def create_app(settings: Settings | None = None, *, mount_dashboard: bool = True) -> FastAPI:
    """Build the app over the settings' database (migrated on start by `gat-tune serve`)."""
    settings = settings or get_settings()
    engine = db.engine(settings)
    service = StudyService(
        engine,
        db.optuna_storage(settings),
        max_trials=settings.max_trials,
        base_url=settings.base_url,
        cache_entries=settings.read_cache_entries,
        artifact_store=artifact_store(settings),
        data_roots=settings.folder_roots,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Sync routes run in anyio's thread pool (40 threads by default). Threads beyond the
        # database pool only wait on its lock and contend for the GIL, which shows up as
        # tail latency under load; as many threads as pooled connections keeps the queue
        # FIFO, and leaves the overflow connections to the rest (the dashboard): a route
        # thread that took one would close it again after each burst, a new PostgreSQL
        # backend every time, which stalled reads for seconds under load.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.pool_size
        # Start-up leaves many long-lived objects (optuna-dashboard imports scikit-learn); a
        # full collection over them mid-request was the latency tail (bench/RESULTS.md,
        # "Figures the code relies on"). Freezing keeps them out of every later collection.
        gc.collect()
        gc.freeze()
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="gat-tune",
        version="0.1.0",
        summary="Hyperparameter tuning of GAT (GAN + λ·gradient regulariser) training on Optuna",
        description="Mutating routes need `Authorization: Bearer <token>`; reads are open on loopback.",
    )
    app.state.gat_tune = AppState(settings, engine, service, open_reads=is_loopback(settings.host))
    app.include_router(studies_api.router)
    app.include_router(system_api.router)
    if mount_dashboard:
        app.mount("/", dashboard_app(settings, service))  # type: ignore[arg-type]

    @app.exception_handler(GatTuneError)
    async def _known(request: Request, exc: GatTuneError) -> JSONResponse:
        status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
        if isinstance(exc, Invalid):
            return JSONResponse(_error_body((exc.field,) if exc.field else (), str(exc)), status_code=422)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(sa.exc.OperationalError)
    async def _database_down(request: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        return JSONResponse({"detail": db.unavailable(exc)}, status_code=503)

    @app.exception_handler(SpecIssue)
    async def _spec(request: Request, exc: SpecIssue) -> JSONResponse:
        return JSONResponse(_error_body(exc.loc, exc.message), status_code=422)

    @app.exception_handler(ValidationError)
    async def _shape(request: Request, exc: ValidationError) -> JSONResponse:
        errors = [_shape_error(e) for e in exc.errors(include_url=False, include_input=False)]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            spec_schema = StudySpec.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(spec_schema.pop("$defs", {}))
            # The limits the server applies: n_trials up to this server's max_trials (a
            # setting), enqueue entries as POST /studies/{name}/enqueue takes them.
            spec_schema["properties"]["n_trials"]["maximum"] = settings.max_trials
            spec_schema["properties"]["enqueue"]["items"] = {"$ref": "#/components/schemas/EnqueueConfig"}
            components["EnqueueConfig"] = enqueue_schema()
            components["StudySpec"] = spec_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


def create_served_app() -> FastAPI:
    """The factory `gat-tune serve --workers N` gives uvicorn: each server process it starts
    logs as the single-process server does (JSON lines off a terminal)."""
    from service.logs import configure_logging

    configure_logging()
    return create_app()
