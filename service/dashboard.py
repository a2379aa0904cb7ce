"""optuna-dashboard behind the same access rules as the API.

Its front end lives at /dashboard and calls /api/..., /static/..., /csv/... and /artifacts/...
at the root, so `gat-tune serve` mounts its WSGI app at "/" after the service's own routes, and
`gat-tune dashboard` serves it alone; both wrap it in ``DashboardGuard``. optuna-dashboard
has no auth of its own, so the guard applies the API's rule to every request: reads need the
read scope unless the server listens on loopback only, writes the write scope, and deleting a
study the admin scope (and goes through ``StudyService.delete``, the one path a study is
deleted by). A browser cannot send a bearer header: /dashboard/login takes a token in a form
and sets an HttpOnly, SameSite=Strict session cookie (``service.auth.Sessions``).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import bottle
import optuna_dashboard
import sqlalchemy as sa
from a2wsgi import WSGIMiddleware

from service import db
from service.artifacts import artifact_store
from service.auth import SESSION_SECONDS, Sessions, authorize, has_scope
from service.config import Settings, is_loopback
from service.errors import Forbidden, NotFound, Unauthorized
from service.studies import StudyService

__all__ = ["SESSION_COOKIE", "DashboardGuard", "dashboard_app", "dashboard_wsgi"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

SESSION_COOKIE = "gat_tune_session"
LOGIN, LOGOUT = "/dashboard/login", "/dashboard/logout"
_OPEN = re.compile(r"/static/.*|/favicon\.ico")  # the front end's own files: no study data
_DELETE_STUDY = re.compile(r"/api/studies/(-?\d+)")  # bottle's <id:int> takes a sign too
_RENAME_STUDY = re.compile(r"/api/studies/(-?\d+)/rename")
_MAX_FORM_BYTES = 8192


class DashboardGuard:
    """WSGI middleware: the API's access rule, the login and logout pages, and study deletion
    through the service."""

    def __init__(self, app: WSGIApp, studies: StudyService, sessions: Sessions, *, open_reads: bool) -> None:
        self.app, self.study_service, self.sessions, self.open_reads = app, studies, sessions, open_reads

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The API's answer to a database that is down or restarting, a 503 with one line,
        where the dashboard would give a 500: raised here (the guard's token check, the
        dashboard's schema check) or caught by the dashboard's JSON views, which answer 500
        to any error (so a 500 from them is followed by one ping of the database)."""
        started: list[Any] = []

        def defer(*args: Any) -> Callable[[bytes], None]:  # start_response, held until the status is known
            started[:] = [args]
            return _no_write

        try:
            body = self._route(environ, defer)
        except Exception as exc:
            if not db.is_transient(exc):
                raise
            return _json(start_response, 503, {"detail": db.unavailable(exc)})
        if started and str(started[0][0]).startswith("500") and (down := self._database_down()):
            if hasattr(body, "close"):
                body.close()
            return _json(start_response, 503, {"detail": down})
        if not started:  # legal WSGI: a response started by the body's first item
            return _started_late(body, start_response, started)
        start_response(*started[0])
        return body

    def _database_down(self) -> str | None:
        """None when the database answers, else why not in one line."""
        try:
            with self.study_service.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            if db.is_transient(exc):
                return db.unavailable(exc)
        return None

    def _route(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "").rstrip("/") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if path == LOGIN:
            return self._login(environ, start_response)
        if path == LOGOUT:
            return _redirect(start_response, LOGIN, cookie=_cookie(environ, "", 0))
        if _OPEN.fullmatch(path):
            return self.app(environ, start_response)
        reading = method in ("GET", "HEAD")
        delete = _DELETE_STUDY.fullmatch(path) if method == "DELETE" else None
        scope = "read" if reading else "admin" if delete or path == "/incompatible-rdb-schema" else "write"
        if not (reading and self.open_reads):
            try:
                self._check(environ, scope)
            except (Unauthorized, Forbidden) as exc:
                if reading and "text/html" in environ.get("HTTP_ACCEPT", ""):  # a person at a browser
                    return _redirect(start_response, f"{LOGIN}?next={quote(environ.get('PATH_INFO', ''))}")
                return _json(start_response, 401 if isinstance(exc, Unauthorized) else 403, _denied(reading, exc))
        if delete:
            try:
                self.study_service.delete_optuna_study(int(delete.group(1)))
            except NotFound as exc:
                return _json(start_response, 404, {"reason": str(exc)})
            start_response("204 No Content", [("Content-Length", "0")])
            return [b""]
        rename = _RENAME_STUDY.fullmatch(path) if method == "POST" else None
        if rename:
            # Optuna's rename copies the study and deletes the original: gat-tune's workers
            # know a study by its name and would lose it.
            message = "renaming a study is not supported: gat-tune knows studies by name; create a new study instead"
            return _json(start_response, 409, {"reason": message, "detail": message})
        return self.app(environ, start_response)

    def _check(self, environ: dict[str, Any], scope: str) -> None:
        """A bearer header, else the session cookie, must grant the scope.

        Raises:
            Unauthorized: neither, or an unknown token or a dead session. Forbidden: no scope.
        """
        header = environ.get("HTTP_AUTHORIZATION")
        if header:
            authorize(self.sessions.engine, self.sessions.admin_token, header, scope)
            return
        scopes = self.sessions.scopes(_read_cookie(environ))
        if scopes is None:
            raise Unauthorized(f"log in at {LOGIN}, or send Authorization: Bearer <token>")
        if not _same_origin(environ):
            raise Forbidden("a cross-site request cannot use the dashboard session")
        if not has_scope(scopes, scope):
            raise Forbidden(f"this session's token lacks the '{scope}' scope")

    def _login(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        method = environ.get("REQUEST_METHOD", "GET")
        if method in ("GET", "HEAD"):
            return _page(start_response, 200, _next(query.get("next", [""])[0]), "")
        if method != "POST":
            return _json(start_response, 405, {"detail": f"{LOGIN} takes GET and POST"})
        form = _form(environ)
        target = _next(form.get("next", [""])[0])
        if not _same_origin(environ):
            return _page(start_response, 403, target, "log in from this server's own page")
        try:
            cookie, scopes = self.sessions.open(form.get("token", [""])[0])
        except Unauthorized:
            unknown = "unknown token: paste GAT_TUNE_TOKEN or one from `gat-tune token create`"
            return _page(start_response, 401, target, unknown)
        if not self.open_reads and not has_scope(scopes, "read"):
            return _page(start_response, 403, target, "this token lacks the 'read' scope the dashboard needs")
        return _redirect(start_response, target, cookie=_cookie(environ, cookie, SESSION_SECONDS))


def _started_late(body: Iterable[bytes], start_response: StartResponse, started: list[Any]) -> Iterator[bytes]:
    """``body``, with the start_response call it makes while iterated passed on first."""
    try:
        for chunk in body:
            if started:
                start_response(*started.pop())
            yield chunk
        if started:
            start_response(*started.pop())
    finally:
        if hasattr(body, "close"):
            body.close()


def _no_write(data: bytes) -> None:
    raise RuntimeError("the dashboard's WSGI app returns its body; it does not write() it")


def _denied(reading: bool, exc: Exception) -> dict[str, str]:
    what = "reading the dashboard needs a token" if reading else "the dashboard is read-only without a write token"
    message = f"{what}: {exc}"
    return {"detail": message, "reason": message}  # the front end shows "reason"


def _read_cookie(environ: dict[str, Any]) -> str | None:
    for part in environ.get("HTTP_COOKIE", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == SESSION_COOKIE:
            return value
    return None


def _cookie(environ: dict[str, Any], value: str, max_age: int) -> str:
    secure = "; Secure" if environ.get("wsgi.url_scheme") == "https" else ""
    return f"{SESSION_COOKIE}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict{secure}"


def _same_origin(environ: dict[str, Any]) -> bool:
    """A request with an Origin header (every cross-site POST has one) must come from here."""
    origin = environ.get("HTTP_ORIGIN")
    # Behind a proxy that rewrites Host, the host the browser used is X-Forwarded-Host.
    hosts = {environ.get("HTTP_HOST", ""), *environ.get("HTTP_X_FORWARDED_HOST", "").replace(" ", "").split(",")}
    return not origin or urlsplit(origin).netloc in hosts - {""}


def _next(target: str) -> str:
    """Where to go after logging in: a dashboard page of this server, never elsewhere."""
    return (
        target
        if re.fullmatch(r"/dashboard(/[^\\\x00-\x1f\x7f]*)?", target) and not target.startswith(LOGIN)
        else "/dashboard"
    )


def _form(environ: dict[str, Any]) -> dict[str, list[str]]:
    try:
        length = min(int(environ.get("CONTENT_LENGTH") or 0), _MAX_FORM_BYTES)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    return parse_qs(body.decode("utf-8", "replace"))


def _json(start_response: StartResponse, status: int, body: dict[str, str]) -> Iterable[bytes]:
    data = json.dumps(body).encode()
    reason = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
              503: "Service Unavailable"}  # fmt: skip
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    if status == 401:
        headers.append(("WWW-Authenticate", "Bearer"))
    start_response(f"{status} {reason[status]}", headers)
    return [data]


def _redirect(start_response: StartResponse, location: str, *, cookie: str | None = None) -> Iterable[bytes]:
    headers = [("Location", location), ("Content-Length", "0"), ("Cache-Control", "no-store")]
    if cookie is not None:
        headers.append(("Set-Cookie", cookie))
    start_response("303 See Other", headers)
    return [b""]


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gat-tune: log in</title>
<style>body{{font-family:sans-serif;max-width:28em;margin:4em auto}}input{{width:100%;padding:.4em;margin:.4em 0}}
.error{{color:#b00020}}</style></head>
<body><h1>gat-tune dashboard</h1>
<p>Paste an API token: <code>GAT_TUNE_TOKEN</code>, or one from <code>gat-tune token create</code>.
A read token can look; a write token can also edit notes and mark trials.</p>
{error}<form method="post" action="{action}">
<input type="hidden" name="next" value="{next}">
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus>
<input type="submit" value="Log in"></form>
<form method="post" action="{logout}"><input type="submit" value="Log out"></form></body></html>
"""


def _page(start_response: StartResponse, status: int, target: str, error: str) -> Iterable[bytes]:
    body = _PAGE.format(
        error=f'<p class="error">{html.escape(error)}</p>' if error else "",
        action=LOGIN,
        logout=LOGOUT,
        next=html.escape(target),
    ).encode()
    reason = {200: "OK", 401: "Unauthorized", 403: "Forbidden"}
    start_response(
        f"{status} {reason[status]}",
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
        ],
    )
    return [body]


def dashboard_wsgi(settings: Settings, studies: StudyService | None = None) -> DashboardGuard:
    """The guarded dashboard over the settings' storage: reads open only when the settings'
    host is a loopback address, as for the API."""
    if studies is None:
        studies = StudyService(
            db.engine(settings),
            db.optuna_storage(settings),
            max_trials=settings.max_trials,
            base_url=settings.base_url,
            artifact_store=artifact_store(settings),
            data_roots=settings.folder_roots,
        )
    app = optuna_dashboard.wsgi(studies.storage, artifact_store=studies.artifact_store)
    if isinstance(app, bottle.Bottle):
        # Errors reach DashboardGuard (a database down is a 503) and the server's JSON log,
        # instead of bottle's 500 page and a plain traceback on stderr.
        app.catchall = False
    sessions = Sessions(studies.engine, settings.token)
    return DashboardGuard(app, studies, sessions, open_reads=is_loopback(settings.host))


def dashboard_app(settings: Settings, studies: StudyService) -> WSGIMiddleware:
    """The ASGI app `gat-tune serve` mounts at "/"."""
    return WSGIMiddleware(dashboard_wsgi(settings, studies))  # type: ignore[arg-type]
