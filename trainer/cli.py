"""`gat-tune train`: one training run from a config file."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, TrainConfig, load_run

__all__ = ["add_train_parser", "main", "run_train"]

# torch, and the modules that import it, are imported by run_train only: the parser is built
# by every `gat-tune` command, and `gat-tune --help` must not wait seconds for torch.
PROGRESS_EVERY = 0.05  # off a terminal: a line every 5 % of the steps (and at every eval)
PROGRESS_MIN_SECONDS = 1.0  # ...but at most one a second, the last step always


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors a user can meet: one line, no stack trace."""
    from trainer.data import DataError
    from trainer.metrics import FeatureError
    from trainer.train import CheckpointMismatch, Diverged

    return (ConfigError, DataError, FeatureError, Diverged, CheckpointMismatch)


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
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: torch's); a trial's cpu_threads attribute, to reproduce its FID exactly",
    )
    p.set_defaults(func=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    from trainer.data import default_data_dir
    from trainer.train import limit_threads, train

    user_errors = _user_errors()
    try:
        config, pack = load_run(args.config) if args.config else (TrainConfig(), None)
        if args.steps is not None:
            if pack is not None:  # production training from a packed trial's config: alone
                print(f"gat-tune train: --steps {args.steps}: training this config alone (its pack replay "
                      "reproduces the trial only at its own steps)", file=sys.stderr)  # fmt: skip
                pack = None
            config = config.replace(steps=args.steps)
    except ConfigError as exc:
        print(f"gat-tune train: error: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print("gat-tune train: error: --threads must be at least 1", file=sys.stderr)
        return 2
    threads = args.threads or (pack.cpu_threads if pack is not None else None)
    if threads is not None:
        limit_threads(threads)  # as a worker slot limits itself
    out = args.out or default_data_dir() / "runs" / time.strftime("%Y%m%d-%H%M%S")
    bar = _progress_bar(config.steps)
    try:
        result = train(config, out_dir=out, progress=bar) if pack is None else _replay(pack, config, out, bar)
    except user_errors as exc:
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
        shown = ("precision", "recall", "density", "coverage", "modes", "hq_fraction")
        extra = "".join(f", {k} {summary[k]:.3g}" for k in shown if k in summary)
        where = f"after {result.steps} steps in {result.seconds:.1f}s{extra}; run in {out}"
        print(f"FID {result.fid:.3f} on {result.features} features {where}")
    return 0


def _replay(pack: Any, config: TrainConfig, out: Path, bar: Any) -> Any:
    """Train the pack a packed trial ran in again, to reproduce that trial exactly."""
    from trainer.packed import replay
    from trainer.train import CHECKPOINT

    if (out / CHECKPOINT).exists():
        raise ConfigError(f"--out {out}: holds a checkpoint; a pack replays from its first step: give a new --out")
    others = len(pack.members) - 1
    print(
        f"gat-tune train: this trial trained packed with {others} other(s); training the pack again "
        f"to reproduce it exactly{'' if pack.exact else ' (as near as it can: a member was stopped mid-run)'}",
        file=sys.stderr,
    )
    return replay(pack, out_dir=out, device=config.device, on_eval=bar)


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


class _Lines:
    """Off a terminal (a log, a pipe): one line per eval and every few percent of the steps,
    at most one a second, with the step, the last FID and the speed."""

    def __init__(self, total: int, *, every: float = PROGRESS_EVERY, min_seconds: float = PROGRESS_MIN_SECONDS) -> None:
        self.total, self.min_seconds = total, min_seconds
        self.stride = max(1, round(total * every))
        self.started = time.monotonic()
        self.first_step: int | None = None
        self.next_mark = 0
        self.last_eval: Any = None
        self.last_line = -float("inf")

    def __call__(self, step: int, metrics: dict[str, Any]) -> None:
        now = time.monotonic()
        if self.first_step is None:  # a resumed run starts counting where it resumed
            self.first_step, self.started = step, now
            self.next_mark = (step // self.stride + 1) * self.stride
        new_eval = metrics.get("step") != self.last_eval and "fid" in metrics
        due = step >= self.next_mark or new_eval
        if not due or (now - self.last_line < self.min_seconds and step < self.total):
            return
        self.last_eval = metrics.get("step")
        self.next_mark = (step // self.stride + 1) * self.stride
        self.last_line = now
        elapsed = now - self.started
        rate = (step - self.first_step) / elapsed if elapsed > 0 else 0.0
        fid = f"{metrics['fid']:.2f}" if "fid" in metrics else "-"
        print(
            f"step {step}/{self.total} ({100 * step / self.total:.0f}%), last FID {fid}, {rate:.1f} steps/s",
            file=sys.stderr,
            flush=True,
        )


def _progress_bar(total: int) -> _Bar | _Lines:
    return _Bar(total) if sys.stderr.isatty() else _Lines(total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gat-tune")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
