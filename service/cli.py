"""`gat-tune`: train | serve | submit | status | best | control | db upgrade|stop | token create.

Commands import what they use inside their function: the ones that only talk HTTP (submit,
status, best, stop, pause, resume, --help, --version) must start in well under a second, so
nothing here imports torch, Optuna, SQLAlchemy or pydantic at module level.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from trainer.cli import add_train_parser

__all__ = ["main"]

TOKEN_HELP = "needs a token with the write scope in GAT_TUNE_TOKEN (reads need one only off loopback)"


def _fail(message: str, code: int = 1) -> int:
    print(f"gat-tune: error: {message}", file=sys.stderr)
    return code


def _public_without_token(settings: Any) -> str | None:
    """Why a server (the API or the dashboard) may not listen where it was asked: off
    loopback, every read and write would be open without a token."""
    from service.config import is_loopback

    if is_loopback(settings.host) or settings.token:
        return None
    return f"refusing to listen on {settings.host} with no token: set GAT_TUNE_TOKEN, or serve on 127.0.0.1"


def _default_url() -> str:
    """Where the client commands find the API: GAT_TUNE_URL, else where `gat-tune serve`
    listens with the same environment (GAT_TUNE_HOST, GAT_TUNE_PORT)."""
    if os.environ.get("GAT_TUNE_URL"):
        return os.environ["GAT_TUNE_URL"]
    host = os.environ.get("GAT_TUNE_HOST", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{os.environ.get('GAT_TUNE_PORT', '8000')}"


def cmd_serve(args: argparse.Namespace) -> int:
    from service.config import Settings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings().model_copy(update=overrides)
    refused = _public_without_token(settings)
    if refused:
        return _fail(refused, 2)
    busy = port_problem(settings.host, settings.port)
    if busy:  # before the database is started or migrated, and before the slow imports
        return _fail(busy, 2)
    import uvicorn

    from service import db
    from service.app import create_app

    db.upgrade(settings)
    if args.workers > 1:
        # Several processes: uvicorn imports the factory in each; settings come from the environment.
        os.environ.update({"GAT_TUNE_HOST": settings.host, "GAT_TUNE_PORT": str(settings.port)})
        uvicorn.run("service.app:create_served_app", factory=True, host=settings.host, port=settings.port,
                    workers=args.workers, log_config=None)  # fmt: skip
    else:
        # log_config=None: uvicorn's loggers go through ours (JSON lines off a terminal).
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)
    return 0


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on, or None. uvicorn binds with SO_REUSEADDR too,
    so a port that passes here is one uvicorn can bind (barring a race)."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {host}: {exc.strerror}; pass another --host"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is in use: choose another with --port"
            return f"cannot listen on {host}:{port}: {exc.strerror}; pass another --host or --port"
    return None


def cmd_worker(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.pool import resolve_devices, run_pool

    try:
        devices = resolve_devices(args.devices)
    except ValueError as exc:
        return _fail(str(exc), 2)
    if args.per_device < 1:
        return _fail("--per-device must be at least 1", 2)
    settings = Settings()
    if args.max_pack is not None:
        if args.max_pack < 1:
            return _fail("--max-pack must be at least 1", 2)
        settings = settings.model_copy(update={"max_pack": args.max_pack})
    return run_pool(settings, devices, args.per_device, idle_exit=args.exit_when_idle)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from wsgiref.simple_server import make_server

    from service import db
    from service.config import Settings
    from service.dashboard import dashboard_wsgi

    settings = Settings().model_copy(update={"host": args.host, "port": args.port})
    refused = _public_without_token(settings)
    if refused:
        return _fail(refused, 2)
    db.upgrade(settings)
    app = dashboard_wsgi(settings)  # the same guard as the one `serve` mounts
    print(f"optuna-dashboard on http://{args.host}:{args.port}/dashboard", flush=True)
    server = make_server(args.host, args.port, app)
    # Not SystemExit from the handler (main's): wsgiref's request handler catches every
    # exception, so a SIGTERM that lands while a request is served would be lost.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    server.serve_forever()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from service.demo import DEMO_SPECS, run_demo
    from trainer.data import DataError

    if args.dataset not in DEMO_SPECS:
        return _fail(f"demo: --dataset '{args.dataset}' is not one of {', '.join(DEMO_SPECS)}")
    try:
        return run_demo(out=args.out, keep_serving=args.keep_serving, dataset=args.dataset)
    except (RuntimeError, DataError) as exc:
        return _fail(f"demo: {exc}")


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from service import db
    from service.config import Settings

    db.upgrade(Settings())
    print("database up to date")
    return 0


def cmd_db_stop(args: argparse.Namespace) -> int:
    from service import db
    from service.config import Settings

    settings = Settings()
    if settings.database_url:
        return _fail("DATABASE_URL is set: that server is not gat-tune's to stop", 2)
    print(db.stop_embedded(settings.data_dir, force=args.force))
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from service import db
    from service.auth import create_token
    from service.config import Settings

    settings = Settings()
    db.upgrade(settings)
    print(create_token(db.engine(settings), args.name, args.scope))
    return 0


def _client(args: argparse.Namespace) -> Any:
    from service.client import Client

    return Client(args.url)


def cmd_submit(args: argparse.Namespace) -> int:
    study = _client(args).submit(args.spec, idempotency_key=args.idempotency_key)
    print(json.dumps({k: study[k] for k in ("id", "status", "n_trials", "dashboard_url")}))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from service.client import describe_best

    study = _client(args).study(args.study)
    counts = ", ".join(f"{k.lower()} {v}" for k, v in study["trial_counts"].items() if v)
    best_text = describe_best(study["best"])
    progress = f"{study['finished']}/{study['n_trials']} finished ({counts or 'none'})"
    failure = study.get("last_failure")
    why = f"; last failure (trial {failure['trial']}): {failure['reason']}" if failure else ""
    print(f"{study['name']}: {study['status']}, {progress}; {best_text}{why}")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    text = _client(args).best(args.study, format="yaml")
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    study = _client(args).control(args.study, args.command)
    print(f"{study['name']}: {study['status']}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gat-tune")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gat-tune",
        description="Tune GAT (GAN + λ·L_A) training on Optuna.",
        epilog="Environment: DATABASE_URL (unset: an embedded PostgreSQL under GAT_TUNE_DATA_DIR, stopped when "
        "the last gat-tune process using it exits, or by `gat-tune db stop`), GAT_TUNE_DATA_DIR (default "
        ".gat-tune), GAT_TUNE_TOKEN (the bearer token the client commands send; submit, stop, pause and "
        "resume need one).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(sub)

    p = sub.add_parser("serve", help="run the HTTP API (migrates the database first)")
    p.add_argument("--host", help="address (default GAT_TUNE_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default GAT_TUNE_PORT or 8000)")
    p.add_argument("--workers", type=int, default=1, help="HTTP server processes (default 1)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a worker pool: one process per device slot")
    p.add_argument("--devices", default="auto", help="auto (every GPU, else the CPU), cpu, or cuda:0,cuda:1,...")
    p.add_argument("--per-device", type=int, default=1, help="slots (processes) per device (default 1)")
    p.add_argument(
        "--max-pack",
        type=int,
        metavar="K",
        help="trials a slot trains at once as one packed model, at most (default GAT_TUNE_MAX_PACK or the "
        "device's: 8 on a CPU, 16 on a GPU; 1: no packing)",
    )
    p.add_argument(
        "--exit-when-idle", type=float, metavar="SECONDS", help="exit once no trial was claimable for this long"
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("dashboard", help="run optuna-dashboard alone over the same storage and artifacts")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("demo", help="embedded database, API, a pool of 2 CPU slots, a study, the best config")
    p.add_argument("--dataset", default="digits", help="digits (bundled, the default) or fashion-mnist (real, 28x28)")
    p.add_argument("--out", type=Path, default=Path("best.yaml"), help="where to write the best config")
    p.add_argument(
        "--keep-serving",
        action="store_true",
        help="keep the API and dashboard up afterwards (on GAT_TUNE_PORT, default 8000, else a free port)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("db", help="database maintenance")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    dbsub.add_parser("upgrade", help="create or upgrade Optuna's tables and ours").set_defaults(func=cmd_db_upgrade)
    d = dbsub.add_parser(
        "stop",
        help="stop the embedded PostgreSQL of GAT_TUNE_DATA_DIR (it also stops when the last process using it exits)",
    )
    d.add_argument("--force", action="store_true", help="stop it even while gat-tune processes still use it")
    d.set_defaults(func=cmd_db_stop)

    p = sub.add_parser("token", help="API tokens")
    tsub = p.add_subparsers(dest="token_command", required=True)
    t = tsub.add_parser("create", help="create a token and print it (stored hashed)")
    t.add_argument("name", help="a label for the token (unique), e.g. who or what uses it")
    t.add_argument(
        "--scope",
        action="append",
        choices=["read", "write", "admin"],
        default=None,
        help="repeat for several (default: read and write)",
    )
    t.set_defaults(func=cmd_token_create)

    def client_parser(name: str, help: str, *, writes: bool = False) -> argparse.ArgumentParser:
        cp: argparse.ArgumentParser = sub.add_parser(
            name,
            help=f"{help} ({TOKEN_HELP.split(' (')[0]})" if writes else help,
            description=f"{help[0].upper()}{help[1:]} over the HTTP API; {TOKEN_HELP}."
            if writes
            else f"{help[0].upper()}{help[1:]} over the HTTP API (sends GAT_TUNE_TOKEN when set).",
        )
        cp.add_argument(
            "--url",
            default=_default_url(),
            help="the API (default GAT_TUNE_URL, else http://GAT_TUNE_HOST:GAT_TUNE_PORT: %(default)s)",
        )
        cp.set_defaults(client=True)
        return cp

    study_help = "the study's name (as in its spec)"
    p = client_parser("submit", "create a study from a YAML or JSON spec", writes=True)
    p.add_argument("spec", type=Path, help="the study spec: a YAML or JSON file (see README, 'A study spec')")
    p.add_argument("--idempotency-key", help="retrying with the same key returns the same study")
    p.set_defaults(func=cmd_submit)
    p = client_parser("status", "a study's state, counts and best trial")
    p.add_argument("study", help=study_help)
    p.set_defaults(func=cmd_status)
    p = client_parser("best", "the best trial's trainer config (YAML)")
    p.add_argument("study", help=study_help)
    p.add_argument("-o", "--output", help="write to this file")
    p.set_defaults(func=cmd_best)
    for action in ("stop", "pause", "resume"):
        p = client_parser(action, f"{action} a study", writes=True)
        p.add_argument("study", help=study_help)
        p.set_defaults(func=cmd_control)
    return parser


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # SIGTERM's default action kills the process without its atexit hooks, and the embedded
    # PostgreSQL is stopped by one (uvicorn re-raises SIGTERM after its graceful shutdown).
    sys.exit(128 + signum)


def _user_error(exc: BaseException) -> int | None:
    """The exit code for an error a user can meet (after printing it as one line), or None.
    Only modules already imported are consulted: an HTTP command never loads SQLAlchemy."""
    from service.client import ApiError
    from service.errors import GatTuneError

    if isinstance(exc, (ApiError, GatTuneError)):
        return _fail(str(exc))
    if "pydantic" in sys.modules:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):  # a bad environment variable
            first = exc.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else "setting"
            env = name.upper() if name == "DATABASE_URL" else "GAT_TUNE_" + name.upper()
            return _fail(f"{env}: {first['msg']}", 2)
    if "sqlalchemy" in sys.modules:
        import sqlalchemy as sa

        if isinstance(exc, sa.exc.OperationalError):
            from service import db

            return _fail(db.unavailable(exc))
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "token" and not args.scope:
        args.scope = ["read", "write"]
    if not getattr(args, "client", False) and args.command != "train":
        from service.logs import configure_logging

        # The demo tells its story on stdout for a person: its own few log lines in plain text,
        # without the INFO ones its stages already say ("starting the database...").
        demo = args.command == "demo"
        configure_logging(json_lines=False if demo else None)
        if demo:
            logging.getLogger("service").setLevel(logging.WARNING)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        code = _user_error(exc)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
