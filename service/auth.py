"""Bearer tokens and the dashboard's browser sessions. The admin token comes from
GAT_TUNE_TOKEN; others are stored as SHA-256 digests (tokens are 256-bit random strings, so a
fast hash is the right one)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.errors import Conflict, Forbidden, Invalid, Unauthorized
from service.tables import gt_api_tokens

__all__ = ["SCOPES", "SESSION_SECONDS", "Sessions", "authorize", "create_token", "digest", "has_scope"]

SCOPES = ("read", "write", "admin")
SESSION_SECONDS = 12 * 3600  # a dashboard login lasts a working day


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(engine: Engine, name: str, scopes: list[str]) -> str:
    """Store a new token's digest; the token itself is returned once and never stored."""
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise Invalid(f"scopes: {bad or scopes} not allowed; choose from {', '.join(SCOPES)}", field="scopes")
    token = "gtt_" + secrets.token_urlsafe(32)
    try:
        with engine.begin() as conn:
            conn.execute(gt_api_tokens.insert().values(name=name, token_sha256=digest(token), scopes=" ".join(scopes)))
    except sa.exc.IntegrityError:
        raise Conflict(f"a token named '{name}' exists") from None
    return token


def _scopes_of(engine: Engine, admin_token: str | None, token: str) -> tuple[int, frozenset[str]]:
    """(token id, scopes) of a bearer token; id 0 is the admin token.

    Raises:
        Unauthorized: an unknown token.
    """
    if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return 0, frozenset(SCOPES)
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(gt_api_tokens.c.id, gt_api_tokens.c.scopes).where(gt_api_tokens.c.token_sha256 == digest(token))
        ).first()
    if row is None:
        raise Unauthorized("unknown token")
    return int(row.id), frozenset(row.scopes.split())


def has_scope(scopes: frozenset[str], scope: str) -> bool:
    return scope in scopes or "admin" in scopes


def authorize(engine: Engine, admin_token: str | None, header: str | None, scope: str) -> None:
    """Check an Authorization header for a scope.

    Raises:
        Unauthorized: no bearer token, or an unknown one. Forbidden: the token lacks the scope.
    """
    if not header or not header.lower().startswith("bearer "):
        raise Unauthorized(
            "this route needs a bearer token: Authorization: Bearer <token>, with the server's "
            "GAT_TUNE_TOKEN or a token from `gat-tune token create`"
        )
    _, scopes = _scopes_of(engine, admin_token, header[7:].strip())
    if not has_scope(scopes, scope):
        raise Forbidden(f"this token lacks the '{scope}' scope")


class Sessions:
    """Browser sessions of the dashboard: a signed cookie that names the token it was opened
    with (its id, never the token) and that token's scopes, for ``SESSION_SECONDS``.

    The key is derived from GAT_TUNE_TOKEN, so every server process (and the standalone
    dashboard) shares it and changing the admin token ends every session; without an admin
    token it is random per process. Each request re-reads a stored token's scopes, so
    deleting the token (or narrowing it) ends its sessions at once.
    """

    def __init__(self, engine: Engine, admin_token: str | None) -> None:
        self.engine, self.admin_token = engine, admin_token
        if admin_token:
            self.key = hmac.new(admin_token.encode(), b"gat-tune dashboard session", hashlib.sha256).digest()
        else:
            self.key = secrets.token_bytes(32)

    def open(self, token: str) -> tuple[str, frozenset[str]]:
        """A cookie value for a token, and its scopes.

        Raises:
            Unauthorized: an unknown token.
        """
        token_id, scopes = _scopes_of(self.engine, self.admin_token, token.strip())
        payload = json.dumps({"t": token_id, "s": sorted(scopes), "e": int(time.time()) + SESSION_SECONDS})
        body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        return f"{body}.{self._sign(body)}", scopes

    def scopes(self, cookie: str | None) -> frozenset[str] | None:
        """The scopes a cookie value grants now; None for a missing, forged, expired or
        revoked session."""
        if not cookie or cookie.count(".") != 1 or not cookie.isascii():  # compare_digest refuses non-ASCII str
            return None
        body, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            token_id, scopes, expires = int(payload["t"]), frozenset(payload["s"]), int(payload["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time():
            return None
        if token_id == 0:
            return scopes
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(gt_api_tokens.c.scopes).where(gt_api_tokens.c.id == token_id)).first()
        return None if row is None else scopes & frozenset(row.scopes.split())

    def _sign(self, body: str) -> str:
        mac = hmac.new(self.key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")
