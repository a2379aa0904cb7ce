"""Read responses kept while PostgreSQL shows exactly what it showed when they were made.

A study's page is a few milliseconds of PostgreSQL work (planning most of it) for a body
that, once the study has finished or between a worker's writes, is the same for every
reader. Each body is stored with the snapshot its statement ran under
(``pg_current_snapshot()``: the transactions that were finished, in progress, not yet
begun). A later read first asks for the current snapshot, a trivial statement; if it is
the same, no transaction has ended since (a snapshot changes whenever one that wrote
anything ends, in any database of the server), so the same statement would see the same
rows and the stored body is served. Otherwise the statement runs again. Nothing is ever
served that the statement would not return now; under steady writes this only costs the
one trivial statement per read of a key already stored.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["SNAPSHOT", "SnapshotCache"]

# The current snapshot as text ('xmin:xmax:xip,...'); a cached statement selects this
# beside its body, so both come from the one snapshot the statement ran under.
SNAPSHOT = "pg_current_snapshot()::text"
_SNAPSHOT_SQL = sa.text(f"SELECT {SNAPSHOT}")


class SnapshotCache:
    """Bodies by key (route and arguments), least recently used dropped first."""

    def __init__(self, max_entries: int = 256, max_bytes: int = 64 << 20) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[Hashable, tuple[str, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # routes run in a thread pool
        self.hits = self.misses = 0

    def read(
        self, conn: Connection, key: Hashable, query: Callable[[Connection], tuple[str, bytes] | None]
    ) -> bytes | None:
        """The body for ``key``: the stored one if the snapshot is unchanged, else
        ``query(conn)``'s, which returns (the snapshot it ran under, body), or None for
        nothing to show (not stored)."""
        entry = self._entries.get(key) if self.max_entries else None
        if entry is not None and conn.execute(_SNAPSHOT_SQL).scalar_one() == entry[0]:
            with self._lock:
                self.hits += 1
                if key in self._entries:
                    self._entries.move_to_end(key)
            return entry[1]
        result = query(conn)
        with self._lock:
            self.misses += 1
        if result is None:
            return None
        snapshot, body = result
        if self.max_entries and len(body) <= self.max_bytes:
            self._put(key, snapshot, body)
        return body

    def keys(self) -> list[Hashable]:
        """The stored keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def _put(self, key: Hashable, snapshot: str, body: bytes) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._entries[key] = (snapshot, body)
            self._bytes += len(body)
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= len(dropped)
