"""optuna-dashboard behind the API, on the same port, read-only unless the token may write.

Its front end lives at /dashboard and calls /api/..., /static/..., /csv/... at the root, so
its WSGI app is mounted at "/" after the service's own routes. It has no auth of its own and
can delete studies: anything but GET/HEAD needs a token with the write scope.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import optuna
import optuna_dashboard
from a2wsgi import WSGIMiddleware
from sqlalchemy.engine import Engine

from service.auth import authorize
from service.errors import Forbidden, Unauthorized

__all__ = ["dashboard_app"]

StartResponse = Callable[..., Any]


def _guard(
    app: Any, engine: Engine, admin_token: str | None
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            try:
                authorize(engine, admin_token, environ.get("HTTP_AUTHORIZATION"), "write")
            except (Unauthorized, Forbidden) as exc:
                status = "401 Unauthorized" if isinstance(exc, Unauthorized) else "403 Forbidden"
                body = json.dumps({"detail": f"the dashboard is read-only without a write token: {exc}"}).encode()
                start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
                return [body]
        result: Iterable[bytes] = app(environ, start_response)
        return result

    return guarded


def dashboard_app(
    storage: optuna.storages.BaseStorage, artifact_store: Any, engine: Engine, admin_token: str | None
) -> WSGIMiddleware:
    """The ASGI app to mount at "/"."""
    wsgi = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)
    return WSGIMiddleware(_guard(wsgi, engine, admin_token))  # type: ignore[arg-type]
