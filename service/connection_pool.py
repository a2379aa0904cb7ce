"""Connection pools that survive idle drops and server restarts, pinging only what sat idle.

SQLAlchemy's ``pool_pre_ping`` pings a connection at every checkout: one round trip each
time, a third of a slot's round trips per trial. A connection handed back less than
``IDLE_PING`` seconds ago was working then; as HikariCP's ``aliveBypassWindowMs`` (500 ms)
does, it is not pinged again. One idle longer is pinged, and a dead one makes the pool
replace it and every connection older than it (a restart drops them all).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

__all__ = ["IDLE_PING", "ping_when_idle"]

IDLE_PING = 0.5  # seconds
_RETURNED = "gat_tune_returned"  # monotonic time the connection was last handed back


def ping_when_idle(engine: sa.Engine) -> sa.Engine:
    """Install the idle-connection ping on ``engine`` (made with ``pool_pre_ping=False``)."""
    dialect = engine.dialect

    def alive_now(dbapi_conn: Any, record: Any) -> None:  # just opened, or just handed back
        record.info[_RETURNED] = time.monotonic()

    def checked_out(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if time.monotonic() - record.info.get(_RETURNED, 0.0) <= IDLE_PING:
            return
        try:
            dialect.do_ping(dbapi_conn)
        except dialect.loaded_dbapi.Error as exc:
            # The pool reconnects and retries the checkout; invalidate_pool: the others
            # opened before it are dropped too.
            raise sa.exc.InvalidatePoolError() from exc

    sa.event.listen(engine, "connect", alive_now)
    sa.event.listen(engine, "checkin", alive_now)
    sa.event.listen(engine, "checkout", checked_out)
    return engine
