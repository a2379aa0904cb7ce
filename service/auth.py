"""Bearer tokens. The admin token comes from GAT_TUNE_TOKEN; others are stored as SHA-256
digests (tokens are 256-bit random strings, so a fast hash is the right one)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.errors import Conflict, Forbidden, Invalid, Unauthorized
from service.tables import api_tokens

__all__ = ["SCOPES", "authorize", "create_token", "digest"]

SCOPES = ("read", "write", "admin")


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
            conn.execute(api_tokens.insert().values(name=name, token_sha256=digest(token), scopes=" ".join(scopes)))
    except sa.exc.IntegrityError:
        raise Conflict(f"a token named '{name}' exists") from None
    return token


def authorize(engine: Engine, admin_token: str | None, header: str | None, scope: str) -> None:
    """Check an Authorization header for a scope.

    Raises:
        Unauthorized: no bearer token, or an unknown one. Forbidden: the token lacks the scope.
    """
    if not header or not header.lower().startswith("bearer "):
        raise Unauthorized("this route needs a bearer token: Authorization: Bearer <token>")
    token = header[7:].strip()
    if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return
    with engine.connect() as conn:
        row = conn.execute(sa.select(api_tokens.c.scopes).where(api_tokens.c.token_sha256 == digest(token))).first()
    if row is None:
        raise Unauthorized("unknown token")
    scopes = set(row.scopes.split())
    if scope not in scopes and "admin" not in scopes:
        raise Forbidden(f"this token lacks the '{scope}' scope")
