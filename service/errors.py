"""One exception hierarchy for the service. Only the HTTP layer maps these to status codes."""

from __future__ import annotations

__all__ = ["Conflict", "Forbidden", "GatTuneError", "IncompatibleSpec", "Invalid", "NotFound", "Unauthorized"]


class GatTuneError(Exception):
    """The root of every error the service raises on purpose; the message is one line."""


class NotFound(GatTuneError):
    """No such study (or trial, or worker)."""


class Conflict(GatTuneError):
    """The request clashes with the current state: a name taken, no finished trial yet…"""


class IncompatibleSpec(Conflict):
    """A study's stored spec that this version no longer accepts (stored by another one)."""


class Invalid(GatTuneError):
    """A request that is well-formed but not acceptable; ``field`` names the culprit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Unauthorized(GatTuneError):
    """No token, or an unknown one."""


class Forbidden(GatTuneError):
    """A known token without the scope the route needs."""
