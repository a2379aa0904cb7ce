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

from typing import Any

from service.spec import CategoricalParam, ConditionalParam, FloatParam, IntParam, StudySpec, param_key
from trainer.config import TrainConfig

__all__ = ["gan_priors", "into_space", "r1_gamma_rule", "warm_start_entries"]

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


def _into(param: Any, value: Any) -> Any:
    """The value moved into the key's distribution, or None when it has none there."""
    if isinstance(param, FloatParam):
        return min(max(float(value), param.low), param.high)
    if isinstance(param, IntParam):
        return int(min(max(value, param.low), param.high))
    if isinstance(param, CategoricalParam):
        if value in param.choices:
            return value
        numbers = [c for c in param.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if isinstance(value, (int, float)) and numbers:
            return max(numbers) if value == float("inf") else min(numbers, key=lambda c: abs(c - value))
    return None  # a choice the space lacks


def into_space(spec: StudySpec, values: dict[str, Any], base: TrainConfig) -> dict[str, Any]:
    """The values of the keys the spec searches, moved into its space ({} when they train
    another regulariser than the study can: their λ would mean something else)."""
    searched_loss = spec.search_space.get("aux_loss")
    loss = values.get("aux_loss", base.aux_loss)
    if searched_loss is None and loss != base.aux_loss:
        return {}
    entry: dict[str, Any] = {}
    # Plain keys first: a conditional key reads the case of its `on` key in the entry.
    for key in sorted(values, key=lambda k: isinstance(spec.search_space.get(k), ConditionalParam)):
        param = spec.search_space.get(key)
        if isinstance(param, ConditionalParam):
            param = param.cases.get(str(entry.get(param.on, getattr(base, param.on, None))))
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


def warm_start_entries(spec: StudySpec, sources: dict[str, list[dict[str, Any]]]) -> list[tuple[dict[str, Any], str]]:
    """The spec's warm start as enqueue entries, each with where it came from ("STUDY trial
    N (VALUE)"): each source's best trials (optuna_tables.best_trials: best first) moved
    into this space, taken rank by rank across the sources (their values, on other data
    sets, do not compare), without repeats, at most ``top``.

    Args:
        sources: the best trials of each study ``warm_start.studies`` names, by name.
    """
    assert spec.warm_start is not None
    base = TrainConfig.from_dict(spec.base)
    out: list[tuple[dict[str, Any], str]] = []
    for rank in range(max((len(s) for s in sources.values()), default=0)):
        for name, trials in sources.items():
            if rank < len(trials):
                trial = trials[rank]
                entry = into_space(spec, {param_key(k): v for k, v in trial["params"].items()}, base)
                if entry and all(entry != kept for kept, _ in out):
                    out.append((entry, f"{name} trial {trial['trial']} ({trial['value']:.6g})"))
    return out[: spec.warm_start.top]
