"""`gat-tune train`: one training run from a config file."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, TrainConfig
from trainer.data import DataError, default_data_dir
from trainer.metrics import FeatureError
from trainer.train import CheckpointMismatch, Diverged, train

__all__ = ["add_train_parser", "main", "run_train"]

# Errors a user can meet: one line, no stack trace.
USER_ERRORS = (ConfigError, DataError, FeatureError, Diverged, CheckpointMismatch)


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "train",
        help="train one GAT run from a config file",
        description="Train one GAT run. The run directory gets the resolved config, metrics.jsonl, "
        "sample PNGs and a checkpoint; running again with the same --out resumes.",
    )
    p.add_argument("--config", "-c", type=Path, help="YAML or JSON trainer config (default: the built-in defaults)")
    p.add_argument("--steps", type=int, help="train this many steps in all (overrides the config)")
    p.add_argument("--out", type=Path, help="run directory (default: $GAT_TUNE_DATA_DIR/runs/<time>)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the result as the last line")
    p.set_defaults(func=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    try:
        config = TrainConfig.load(args.config) if args.config else TrainConfig()
        if args.steps is not None:
            config = config.replace(steps=args.steps)
    except ConfigError as exc:
        print(f"gat-tune train: error: {exc}", file=sys.stderr)
        return 2
    out = args.out or default_data_dir() / "runs" / time.strftime("%Y%m%d-%H%M%S")
    bar = _progress_bar(config.steps)
    try:
        result = train(config, out_dir=out, progress=bar)
    except USER_ERRORS as exc:
        print(f"gat-tune train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"gat-tune train: interrupted; rerun with --out {out} to resume from the last checkpoint", file=sys.stderr
        )
        return 130
    finally:
        close = getattr(bar, "close", None)
        if close is not None:
            close()
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        extra = "".join(f", {k} {summary[k]}" for k in ("modes", "hq_fraction") if k in summary)
        print(f"FID {result.fid:.3f} after {result.steps} steps in {result.seconds:.1f}s{extra}; run in {out}")
    return 0


class _Bar:
    """A tqdm bar on a terminal, showing the last FID."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)

    def __call__(self, step: int, metrics: dict[str, Any]) -> None:
        self.bar.update(step - self.bar.n)
        if "fid" in metrics:
            self.bar.set_postfix(fid=f"{metrics['fid']:.2f}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def _progress_bar(total: int) -> _Bar | None:
    return _Bar(total) if sys.stderr.isatty() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gat-tune")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
