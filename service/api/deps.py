"""Shared dependencies of the routes: the service state and the auth checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from service.auth import authorize
from service.config import Settings
from service.studies import StudyService


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    study_service: StudyService
    open_reads: bool  # reads need no token when the server listens on loopback only


# The dependencies are coroutines: FastAPI runs a plain function in the thread pool, and a
# read would hop threads three times (state, access check, route) instead of once.
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.gat_tune
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def _require(scope: str):  # type: ignore[no-untyped-def]
    async def check(
        state: StateDep,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> None:
        if scope == "read" and state.open_reads:
            return
        await run_in_threadpool(authorize, state.engine, state.settings.token, authorization, scope)  # a query

    return check


ReadAccess = Depends(_require("read"))
WriteAccess = Depends(_require("write"))
AdminAccess = Depends(_require("admin"))
