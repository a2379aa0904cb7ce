"""The GAT training loop: flat and linear, with an eval hook, an abort hook and checkpoints.

All training randomness (batches, noise, WGAN-GP mixing) comes from one ``torch.Generator``
whose state is checkpointed, and evaluation uses its own fixed noise, so how often a run
evaluates or resumes never changes its trajectory.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from trainer.config import PRDC_METRICS, TrainConfig
from trainer.data import Dataset, default_data_dir, load_dataset
from trainer.images import save_curve, save_samples
from trainer.losses import GATLoss
from trainer.metrics import (
    PRDC_K,
    frechet_distance,
    gaussian_stats,
    inception_weights,
    make_extractor,
    mode_coverage,
    prdc,
    real_neighbours,
    real_stats,
)
from trainer.models import build_models

__all__ = ["CheckpointMismatch", "Diverged", "TrainResult", "adam", "limit_threads", "resolve_device", "train"]

CHECKPOINT = "checkpoint.pt"
FINITE_CHECK_EVERY = 32  # steps between looks at the losses: a look syncs with the device

OnEval = Callable[[int, dict[str, Any]], None]


class Diverged(RuntimeError):
    """A loss became NaN or infinite. ``step`` is the first step where it did."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"diverged at step {step}: {what} is not finite")
        self.step = step


class CheckpointMismatch(RuntimeError):
    """The run directory holds a checkpoint of a different run."""


@dataclasses.dataclass
class TrainResult:
    """What a finished (or stopped) run produced.

    Attributes:
        fid: the FID at the last evaluation.
        steps: steps trained.
        seconds: wall time of this call, evaluations included.
        train_seconds: time spent in training steps only, across resumes.
        metrics: the last evaluation's metrics: features (the extractor's key: which
            features fid and PRDC were computed on), fid, precision, recall, density,
            coverage, and modes/hq_fraction for 2-D data.
        history: every evaluation's metrics, in order.
        stopped: True when ``should_stop`` ended the run early.
    """

    fid: float
    steps: int
    seconds: float
    train_seconds: float
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    config: TrainConfig
    out_dir: Path | None = None
    stopped: bool = False
    generator: torch.nn.Module | None = dataclasses.field(default=None, repr=False)

    @property
    def features(self) -> str | None:
        """The key of the features fid and PRDC were computed on (None before an eval)."""
        return self.metrics.get("features")

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest: what ``gat-tune train --json`` prints."""
        return {
            **self.metrics,
            "fid": self.fid,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "train_seconds": round(self.train_seconds, 3),
            "steps_per_second": round(self.steps / self.train_seconds, 2) if self.train_seconds else None,
            "stopped": self.stopped,
            "out_dir": str(self.out_dir) if self.out_dir else None,
        }


def limit_threads(threads: int) -> None:
    """A process's share of the CPU cores, for torch and for the BLAS/OpenMP pools numpy and
    scipy use (the FID's eigendecomposition): each would otherwise start a thread per core,
    and K worker slots on a machine would oversubscribe it K times. Float sums depend on the
    count, so `gat-tune train --threads` uses it to replay a slot's trial exactly."""
    import threadpoolctl

    torch.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads)


def adam(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """The optimiser of every run's G and D: Adam, fused (one kernel per parameter tensor
    for the whole update). These models are small, and the unfused update is a dozen tiny
    operations per tensor: fused, a step of the digits MLP's D takes 0.28 ms instead of
    1.0 ms on a 2-core CPU (bench/RESULTS.md). A checkpoint's state dict carries the flag,
    so a run resumes as it ran."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device: '{name}' asked for, but no CUDA device is visible (use 'cpu' or 'auto')")
    return device


class _Evaluator:
    """FID, precision, recall, density and coverage of a generator on fixed evaluation noise,
    all on one extractor's features (named in each result as ``features``); mode coverage
    too for 2-D data. PRDC needs more than k samples on each side, else it is left out."""

    def __init__(self, config: TrainConfig, data: Dataset, device: torch.device, data_dir: Path) -> None:
        self.data = data
        self.extract = make_extractor(config.feature_extractor, data, data_dir)
        self.features = self.extract.key
        self.mu, self.sigma = real_stats(data, self.extract, data_dir)
        self.real = None
        if min(config.eval_samples, len(data.x)) > PRDC_K:
            self.real = real_neighbours(data, self.extract, data_dir, config.eval_samples)
        self.z = self._noise(config, device)

    @staticmethod
    def _noise(config: TrainConfig, device: torch.device) -> torch.Tensor:
        noise = torch.Generator().manual_seed(config.seed + 1_000_003)
        return torch.randn(config.eval_samples, config.z_dim, generator=noise).to(device)

    def sibling(self, config: TrainConfig, device: torch.device) -> _Evaluator:
        """The evaluator of another run on the same data, features and eval_samples (a pack's
        member): the extractor and real statistics shared, the noise its own seed's."""
        other = copy.copy(self)
        other.z = self._noise(config, device)
        return other

    @torch.no_grad()
    def __call__(self, g: torch.nn.Module) -> tuple[dict[str, Any], torch.Tensor]:
        return self.measure(torch.cat([g(self.z[i : i + 1024]) for i in range(0, len(self.z), 1024)]))

    @torch.no_grad()
    def measure(
        self, samples: torch.Tensor, features: torch.Tensor | None = None
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """The metrics of samples generated from this evaluator's noise ``z``; ``features``:
        their features when already extracted (a pack extracts its members' in one call)."""
        if not torch.isfinite(samples).all():  # the worst on every measure
            worst = dict.fromkeys(PRDC_METRICS, 0.0) if self.real is not None else {}
            return {"features": self.features, "fid": float("inf"), **worst}, samples
        fake = (self.extract(samples) if features is None else features).double().cpu().numpy()
        mu, sigma = gaussian_stats(fake)
        metrics: dict[str, Any] = {"features": self.features, "fid": frechet_distance(mu, sigma, self.mu, self.sigma)}
        if self.real is not None:
            metrics.update(prdc(self.real.features, fake, PRDC_K, self.real.radii))
        if self.data.modes is not None and self.data.mode_std is not None:
            metrics.update(mode_coverage(samples, self.data.modes, self.data.mode_std))
        return metrics, samples


# A worker slot trains run after run on one data set: the data on its device, the feature
# extractor and the real statistics are kept between runs instead of loaded for each (a few
# most recent kinds; a run's own evaluation noise is made for it).
_SETUPS: dict[tuple[Any, ...], tuple[Dataset, _Evaluator]] = {}
_SETUPS_KEPT = 4


def _data_and_evaluator(config: TrainConfig, device: torch.device, data_dir: Path) -> tuple[Dataset, _Evaluator]:
    """The run's data on its device and its evaluator, from the process's cache when a run
    before it used the same data, features and eval_samples."""
    # "auto" features resolve anew at each start: Inception weights put in place since count
    key = (config.dataset, config.image_size, str(data_dir), config.feature_extractor, config.eval_samples,
           config.z_dim, str(device), inception_weights(data_dir))  # fmt: skip
    kept = _SETUPS.pop(key, None)
    if kept is None:
        data = load_dataset(config.dataset, image_size=config.image_size, data_dir=data_dir).to(device)
        kept = (data, _Evaluator(config, data, device, data_dir))
        while len(_SETUPS) >= _SETUPS_KEPT:
            _SETUPS.pop(next(iter(_SETUPS)))  # the least recently used
    _SETUPS[key] = kept  # most recent last
    data, evaluator = kept
    return data, evaluator.sibling(config, device)


def train(
    config: TrainConfig,
    *,
    on_eval: OnEval | None = None,
    should_stop: Callable[[], bool] | None = None,
    out_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train one GAT run.

    Args:
        config: the run.
        on_eval: called as ``on_eval(step, metrics)`` after every evaluation (every
            ``eval_every`` steps and at the end), after the checkpoint is written. It may
            raise to end the run (a pruner does); the exception propagates.
        should_stop: polled before every step; True ends the run early (checkpointed, and
            ``stopped`` set in the result).
        out_dir: the run directory: resolved config, metrics.jsonl, sample PNGs, checkpoint.
            A checkpoint already there resumes the run. None writes nothing.
        data_dir: caches (classifier, real statistics) and downloaded data sets;
            ``GAT_TUNE_DATA_DIR`` or ``.gat-tune`` by default.
        progress: called as ``progress(step, last_metrics)`` every few steps.

    Raises:
        Diverged: a loss became NaN or infinite.
        CheckpointMismatch: out_dir holds a checkpoint of a different config.
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    run_dir = Path(out_dir) if out_dir else None

    data, evaluate = _data_and_evaluator(config, device, data_dir)
    torch.manual_seed(config.seed)
    g, d = build_models(config, data.sample_shape)
    g, d = g.to(device), d.to(device)
    opt_g = adam(g.parameters(), config.lr_g, (config.beta1, config.beta2))
    opt_d = adam(d.parameters(), config.lr_d, (config.beta1, config.beta2))
    rng = torch.Generator(device).manual_seed(config.seed)
    loss = GATLoss(g, d, config.aux_loss, config.lam)
    g_params, d_params = list(g.parameters()), list(d.parameters())

    step, train_seconds, history = 0, 0.0, []
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        state = _load_checkpoint(run_dir, config, device, evaluate.features)
        if state is not None:
            g.load_state_dict(state["g"])
            d.load_state_dict(state["d"])
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            rng.set_state(state["rng"].cpu())
            step, train_seconds, history = state["step"], state["train_seconds"], state["history"]
        # The checkpoint's history is the record: an eval written just before a crash that
        # came ahead of its checkpoint is trained and written again, not listed twice.
        if history or (run_dir / "metrics.jsonl").exists():
            _rewrite_lines(run_dir / "metrics.jsonl", [json.dumps(m) for m in history])
        (run_dir / "config.json").write_text(config.to_json())

    n, batch = len(data.x), config.batch_size
    losses = torch.zeros(FINITE_CHECK_EVERY, 3, device=device)  # (L_D, L_G, L_A) per step
    last: dict[str, Any] = history[-1] if history else {}
    stopped = False
    tick = time.perf_counter()

    while step < config.steps:
        if should_stop is not None and should_stop():
            stopped = True
            break
        for i in range(config.d_steps):
            real = data.x[torch.randint(n, (batch,), device=device, generator=rng)]
            z = torch.randn(batch, config.z_dim, device=device, generator=rng)
            total_d, loss_d, reg = loss.discriminator(real, z, rng, index=step * config.d_steps + i)
            opt_d.zero_grad(set_to_none=True)
            total_d.backward(inputs=d_params)
            opt_d.step()
        if loss.generator_needs_real:
            real = data.x[torch.randint(n, (batch,), device=device, generator=rng)]
        z = torch.randn(batch, config.z_dim, device=device, generator=rng)
        total_g, loss_g = loss.generator(real, z)
        opt_g.zero_grad(set_to_none=True)
        total_g.backward(inputs=g_params)
        opt_g.step()

        losses[step % FINITE_CHECK_EVERY, 0] = loss_d
        losses[step % FINITE_CHECK_EVERY, 1] = loss_g
        losses[step % FINITE_CHECK_EVERY, 2] = reg
        step += 1
        is_eval = step % config.eval_every == 0 or step == config.steps
        if step % FINITE_CHECK_EVERY == 0 or is_eval:
            _check_finite(losses, step)
            if progress is not None and not is_eval:  # an eval step's comes with its new FID
                progress(step, last)
        if not is_eval:
            continue

        train_seconds += time.perf_counter() - tick
        measured, samples = evaluate(g)
        metrics = _eval_record(step, measured, loss_d, loss_g, reg, train_seconds)
        history.append(metrics)
        last = metrics
        if run_dir is not None:
            _write_eval(run_dir, metrics, samples, data, history)
            _save_checkpoint(
                run_dir, config, step, train_seconds, history, g, d, opt_g.state_dict(), opt_d.state_dict(), rng
            )
        if progress is not None:
            progress(step, last)
        if on_eval is not None:
            on_eval(step, metrics)
        tick = time.perf_counter()
    else:
        train_seconds += time.perf_counter() - tick

    if stopped:
        train_seconds += time.perf_counter() - tick
        if run_dir is not None and (not history or history[-1]["step"] != step):
            _save_checkpoint(
                run_dir, config, step, train_seconds, history, g, d, opt_g.state_dict(), opt_d.state_dict(), rng
            )

    result = TrainResult(
        fid=float(last.get("fid", float("nan"))),
        steps=step,
        seconds=time.perf_counter() - started,
        train_seconds=train_seconds,
        metrics=last,
        history=history,
        config=config,
        out_dir=run_dir,
        stopped=stopped,
        generator=g,
    )
    if run_dir is not None:
        torch.save({"g": g.state_dict(), "config": config.to_dict()}, run_dir / "generator.pt")
        (run_dir / "result.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
    return result


def _eval_record(
    step: int,
    measured: dict[str, Any],
    loss_d: torch.Tensor,
    loss_g: torch.Tensor,
    reg: torch.Tensor,
    train_seconds: float,
) -> dict[str, Any]:
    """One eval's line in the history and metrics.jsonl (a packed member's too)."""
    return {
        "step": step,
        **measured,
        "loss_d": float(loss_d),
        "loss_g": float(loss_g),
        "loss_aux": float(reg),
        "train_seconds": round(train_seconds, 3),
    }


def _check_finite(losses: torch.Tensor, step: int) -> None:
    bad = ~torch.isfinite(losses)
    if not bool(bad.any()):
        return
    # The buffer is a ring indexed by step; find the earliest bad step among the last ones.
    window = min(step, FINITE_CHECK_EVERY)
    for s in range(step - window, step):
        row = bad[s % FINITE_CHECK_EVERY]
        if bool(row.any()):
            what = ("discriminator loss", "generator loss", "regulariser")[int(row.nonzero()[0])]
            raise Diverged(s + 1, what)


def _write_eval(
    run_dir: Path, metrics: dict[str, Any], samples: torch.Tensor, data: Dataset, history: list[dict[str, Any]]
) -> None:
    _append_line(run_dir / "metrics.jsonl", json.dumps(metrics))
    (run_dir / "samples").mkdir(exist_ok=True)
    step_png = run_dir / "samples" / f"step-{metrics['step']:07d}.png"
    save_samples(samples, step_png, data.modes)
    save_samples(samples, run_dir / "samples.png", data.modes)
    save_curve(history, run_dir / "curve.png")


def _rewrite_lines(path: Path, lines: list[str]) -> None:
    """A run's file replaced by these lines: a new file renamed over it, so an uploaded
    (hard-linked) copy never changes and a crash leaves the old one or the new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def _append_line(path: Path, line: str) -> None:
    """Append a line to a run's file. A file the worker uploaded is hard-linked into the
    artifact store (service.artifacts): such a file gets a copy of its own first, so an
    uploaded artifact never changes. (The pictures are always written anew and renamed.)"""
    if path.exists() and path.stat().st_nlink > 1:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, path)
    with open(path, "a") as f:
        f.write(line + "\n")


# Keys that may differ between a checkpoint and the run that resumes it: the length of the
# run and how it is watched, not what it computes.
_RESUMABLE_CHANGES = {"steps", "eval_every", "eval_samples", "device"}


def _load_checkpoint(run_dir: Path, config: TrainConfig, device: torch.device, features: str) -> dict[str, Any] | None:
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None
    state: dict[str, Any] = torch.load(path, map_location=device, weights_only=False)
    saved = state["config"]
    for key, value in config.to_dict().items():
        if key not in _RESUMABLE_CHANGES and saved.get(key) != value:
            raise CheckpointMismatch(
                f"{run_dir}: holds a checkpoint of another run ({key}: {saved.get(key)!r} there, "
                f"{value!r} here); use another output directory or remove it"
            )
    # The same config may resolve to other features here (feature_extractor auto, with
    # Inception weights added since): its history's FIDs would not compare with the new ones.
    # A history from before features were recorded cannot tell, and is trusted.
    before = {m["features"] for m in state["history"] if "features" in m}
    if before - {features}:
        raise CheckpointMismatch(
            f"{run_dir}: its evaluations were computed on {', '.join(sorted(before))} features, this run's "
            f"would be on {features}; use another output directory, remove it, or set feature_extractor"
        )
    if state["step"] > config.steps:
        raise CheckpointMismatch(
            f"{run_dir}: checkpoint is at step {state['step']}, past steps={config.steps}; raise --steps"
        )
    return state


def _save_checkpoint(
    run_dir: Path,
    config: TrainConfig,
    step: int,
    train_seconds: float,
    history: list[dict[str, Any]],
    g: torch.nn.Module,
    d: torch.nn.Module,
    opt_g: dict[str, Any],
    opt_d: dict[str, Any],
    rng: torch.Generator,
) -> None:
    """The run's state in one file; the optimisers' as state dicts (a packed run writes a
    member's in torch.optim.Adam's format, so it resumes packed or alone)."""
    state = {
        "config": config.to_dict(),
        "step": step,
        "train_seconds": train_seconds,
        "history": history,
        "g": g.state_dict(),
        "d": d.state_dict(),
        "opt_g": opt_g,
        "opt_d": opt_d,
        "rng": rng.get_state(),
    }
    tmp = run_dir / f".{CHECKPOINT}.{os.getpid()}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, run_dir / CHECKPOINT)  # a crash mid-write leaves the previous checkpoint
