"""GAN priors: the configurations GAN papers train with, tried first when a spec asks
(``priors: true``), before the sampler's own proposals. A generic tuner starts from random
points; a GAN tuner can start from what is known to work.

Each prior sets only the searched keys it has an opinion on, moved into the spec's space (a
float clipped to its range, a categorical to its nearest choice); the sampler fills in the
rest, as it does for any enqueued config.
"""

from __future__ import annotations

from typing import Any

from service.spec import CategoricalParam, ConditionalParam, FloatParam, IntParam, StudySpec
from trainer.config import TrainConfig

__all__ = ["gan_priors", "r1_gamma_rule"]

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


def gan_priors(spec: StudySpec) -> list[dict[str, Any]]:
    """The priors that fit this spec, as enqueue entries (searched keys only), without repeats.
    A prior for another regulariser than the study trains with is left out."""
    base = TrainConfig.from_dict(spec.base)
    out: list[dict[str, Any]] = []
    for prior in _priors(base):
        searched_loss = spec.search_space.get("aux_loss")
        if searched_loss is None and prior["aux_loss"] != base.aux_loss:
            continue
        entry: dict[str, Any] = {}
        for key, value in prior.items():
            param = spec.search_space.get(key)
            if isinstance(param, ConditionalParam):  # the case of the value the entry has for `on`
                param = param.cases.get(str(entry.get(param.on, getattr(base, param.on, None))))
            moved = None if param is None else _into(param, value)
            if moved is not None:
                entry[key] = moved
        if searched_loss is not None and entry.get("aux_loss") != prior["aux_loss"]:
            continue  # the space does not offer this regulariser
        if entry and entry not in out:
            out.append(entry)
    return out
