"""What a study tries first, before the sampler's own proposals: a generic tuner starts from
random points; a GAN tuner can start from what is known to work.

- GAN priors (``priors: true``): the configurations GAN papers train with.
- A warm start (``warm_start``): the best configurations of earlier studies in the same
  database, on any data set; the service reads them (service/studies.py), this module moves
  them into the new space.

Each entry sets only the searched keys it has a value for, moved into the spec's space (a
float clipped to its range, a categorical to its nearest choice); the sampler fills in the
rest, as it does for any enqueued config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from service.spec import CategoricalParam, ConditionalParam, FloatParam, IntParam, StudySpec, split_param_name
from trainer.config import ConfigError, TrainConfig

__all__ = ["WarmSource", "gan_priors", "into_space", "r1_gamma_rule", "warm_start_entries"]

# Native resolution of the bundled and known data sets (a folder's is its image_size, or 32).
_RESOLUTION = {"digits": 8, "mnist": 28, "fashion-mnist": 28, "cifar10": 32}


def r1_gamma_rule(resolution: int, batch_size: int) -> float:
    """StyleGAN2-ADA's starting R1 weight: γ = 0.0002 · resolution² / batch size (Karras et
    al. 2020, appendix D)."""
    return 0.0002 * resolution**2 / batch_size


def _priors(base: TrainConfig) -> list[dict[str, Any]]:
    resolution = base.image_size or _RESOLUTION.get(base.dataset, 32)
    widest = {"g_width": float("inf"), "d_width": float("inf")}  # capacity: the widest on offer
    return [
        # R1 with γ = 10 (Mescheder et al. 2018) and the DCGAN Adam rate (Radford et al. 2016)
        {"aux_loss": "r1", "lambda": 10.0, "lr_g": 2e-4, "lr_d": 2e-4, **widest},
        # the two time-scale update rule: D learns 4x faster (Heusel et al. 2017)
        {"aux_loss": "r1", "lambda": 10.0, "lr_g": 1e-4, "lr_d": 4e-4, **widest},
        # StyleGAN2-ADA's γ heuristic with its learning rate 0.0025
        {"aux_loss": "r1", "lambda": r1_gamma_rule(resolution, base.batch_size), "lr_g": 2.5e-3, "lr_d": 2.5e-3,
         **widest},
        # WGAN-GP's λ = 10 (Gulrajani et al. 2017) where the space offers it
        {"aux_loss": "wgan-gp", "lambda": 10.0, "lr_g": 1e-4, "lr_d": 1e-4, **widest},
    ]  # fmt: skip


def _on_grid(value: float, low: float, high: float, step: float | None) -> float:
    """The value clipped to [low, high], on the grid low + k·step when there is one (a
    value on it already is kept as it is: low + k·step in floats can step past it)."""
    value = min(max(value, low), high)
    if step:
        k = (value - low) / step
        if abs(k - round(k)) > 1e-9:
            value = min(max(low + round(k) * step, low), high)
    return value


def _into(param: Any, value: Any) -> Any:
    """The value moved into the key's distribution, or None when it has none there (a
    choice the space lacks, a value of another kind)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if isinstance(param, FloatParam):
        return _on_grid(float(value), param.low, param.high, param.step) if number else None
    if isinstance(param, IntParam):
        return int(_on_grid(float(value), param.low, param.high, param.step)) if number else None
    if isinstance(param, CategoricalParam):
        if value in param.choices:
            return value
        numbers = [c for c in param.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if number and numbers:
            return max(numbers) if value == float("inf") else min(numbers, key=lambda c: abs(c - value))
    return None  # a choice the space lacks


def into_space(spec: StudySpec, values: dict[str, Any], base: TrainConfig) -> dict[str, Any]:
    """The values of the keys the spec searches, moved into its space ({} when they train
    another regulariser than the study can: their λ would mean something else). A
    conditional key whose values trained under another case than the entry's is left out."""
    searched_loss = spec.search_space.get("aux_loss")
    loss = values.get("aux_loss", base.aux_loss)
    if searched_loss is None and loss != base.aux_loss:
        return {}
    entry: dict[str, Any] = {}
    # Plain keys first: a conditional key reads the case of its `on` key in the entry.
    for key in sorted(values, key=lambda k: isinstance(spec.search_space.get(k), ConditionalParam)):
        param = spec.search_space.get(key)
        if isinstance(param, ConditionalParam):
            case = entry.get(param.on, getattr(base, param.on, None))
            if param.on in values and str(values[param.on]) != str(case):
                continue  # e.g. a DCGAN's rate, where this entry trains an MLP
            param = param.cases.get(str(case))
        moved = None if param is None else _into(param, values[key])
        if moved is not None:
            entry[key] = moved
    if searched_loss is not None and "aux_loss" in values and entry.get("aux_loss") != values["aux_loss"]:
        return {}  # the space does not offer this regulariser
    return entry


def gan_priors(spec: StudySpec) -> list[dict[str, Any]]:
    """The priors that fit this spec, as enqueue entries (searched keys only), without repeats.
    A prior for another regulariser than the study trains with is left out."""
    base = TrainConfig.from_dict(spec.base)
    out: list[dict[str, Any]] = []
    for prior in _priors(base):
        entry = into_space(spec, prior, base)
        if entry and entry not in out:
            out.append(entry)
    return out


@dataclass
class WarmSource:
    """A study a warm start reads: its best trials (optuna_tables.best_trials: best first)
    and, for a gat-tune study, the base its trials trained with (None: plain Optuna's,
    whose trials are taken to train what this study's base does besides their params)."""

    base: dict[str, Any] | None
    trials: list[dict[str, Any]]


def _trained(spec: StudySpec, source: WarmSource, params: dict[str, Any]) -> dict[str, Any]:
    """What a source's trial trained with, as far as it says: its params (a conditional
    name also says its case) over a gat-tune source's base. The trainer's defaults fill in
    only what decides what a value means (the regulariser, the keys this spec's conditional
    keys depend on); the rest stays the sampler's."""
    values: dict[str, Any] = {}
    for name, value in params.items():
        key, on, case = split_param_name(name)
        values[key] = value
        if on is not None:
            values.setdefault(on, case)
    if source.base is None:
        return values
    trained = {**source.base, **values}
    try:  # a trial of an unset aux_loss trained the default's
        full = TrainConfig.from_dict(trained).to_dict()
    except (ConfigError, TypeError, ValueError):  # stored by another version
        return trained
    deciding = {"aux_loss"} | {p.on for p in spec.search_space.values() if isinstance(p, ConditionalParam)}
    return {**{k: full[k] for k in deciding if k in full}, **trained}


def warm_start_entries(spec: StudySpec, sources: dict[str, WarmSource]) -> list[tuple[dict[str, Any], str]]:
    """The spec's warm start as enqueue entries, each with where it came from ("STUDY trial
    N (VALUE)"): each source's best trials moved into this space, taken rank by rank across
    the sources (their values, on other data sets, do not compare), without repeats, at
    most ``top``.

    Args:
        sources: the studies ``warm_start.studies`` names, by name.
    """
    assert spec.warm_start is not None
    base = TrainConfig.from_dict(spec.base)
    out: list[tuple[dict[str, Any], str]] = []
    for rank in range(max((len(s.trials) for s in sources.values()), default=0)):
        for name, source in sources.items():
            if rank < len(source.trials):
                trial = source.trials[rank]
                entry = into_space(spec, _trained(spec, source, trial["params"]), base)
                if entry and all(entry != kept for kept, _ in out):
                    out.append((entry, f"{name} trial {trial['trial']} ({trial['value']:.6g})"))
    return out[: spec.warm_start.top]
