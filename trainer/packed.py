"""Trial packing: K MLP GANs trained as one batched model (HFTA, Wang et al. MLSys 2021).

Each member's weights are a slice of stacked tensors (K, fan_in, fan_out), and one
``baddbmm`` runs a layer for every member, so K small matrix products cost about one kernel
launch instead of K. Members may differ in width: the generators are grouped by width and
the discriminators too, each group one stack, so a layer costs one ``baddbmm`` per width in
the pack and no member pays for a wider one's arithmetic (padding every member to the
widest costs a 256-wide member's arithmetic for each, more than the demo's widths cost
alone: bench/RESULTS.md). A member computes what it would alone; only the order of float additions
differs (and, the batched kernels being what they are, a member's numbers depend on which
others share its pack: a pack is replayed whole to reproduce one member bit for bit).

Every member keeps its own seed (its initial weights are built exactly as a solo run builds
them), its own random stream, λ, learning rates and betas, and its own Adam state. Members
leave at any step (pruned, diverged, stopped) and fresh runs join at eval steps, so a pack
can stay full while a study has trials to give it.

DCGANs do not pack: on a CPU, K discriminators fused with grouped convolutions take longer
than the same K one after another (bench/packing_conv.py, bench/RESULTS.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.config import PackReplay, TrainConfig
from trainer.data import default_data_dir
from trainer.losses import R1_LAZY_INTERVAL, GATLoss
from trainer.models import MLPDiscriminator, MLPGenerator, build_models
from trainer.train import (
    FINITE_CHECK_EVERY,
    CheckpointMismatch,
    Diverged,
    OnEval,
    TrainResult,
    _check_finite,
    _data_and_evaluator,
    _eval_record,
    _Evaluator,
    _load_checkpoint,
    _save_checkpoint,
    _write_eval,
    adam,
    resolve_device,
)

__all__ = [
    "GroupedAdam",
    "GroupedMLP",
    "MemberEnded",
    "PackRun",
    "PackedAdam",
    "PackedLinear",
    "PackedMLP",
    "Refill",
    "pack_key",
    "pack_mlps",
    "replay",
    "train_packed",
]


class PackedLinear(nn.Module):
    """K linear layers: x (K, B, fan_in) → (K, B, fan_out), one batched matmul."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (K, fan_in, fan_out): x @ W, not W x
        self.bias = nn.Parameter(bias)  # (K, 1, fan_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class PackedMLP(nn.Module):
    """K MLPs of one depth: linear layers with an activation between them, and an optional
    one at the end. Input (K, B, *in_shape) is flattened; output (K, B, *out_shape)."""

    def __init__(
        self, layers: Sequence[PackedLinear], hidden: nn.Module, last: nn.Module | None, out_shape: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.layers: Sequence[PackedLinear] = nn.ModuleList(layers)  # type: ignore[assignment]
        self.hidden, self.last, self.out_shape = hidden, last, out_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(2)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.hidden(h)
        if self.last is not None:
            h = self.last(h)
        return h.view(h.shape[0], h.shape[1], *self.out_shape)

    @torch.no_grad()
    def keep(self, members: torch.Tensor) -> None:
        """Keep only these members (indices into the pack), dropping the rest."""
        for layer in self.layers:
            layer.weight = nn.Parameter(layer.weight[members].clone())
            layer.bias = nn.Parameter(layer.bias[members].clone())

    @torch.no_grad()
    def append(self, other: PackedMLP) -> None:
        """Add other's members after these (the same shapes but the leading dimension)."""
        for layer, more in zip(self.layers, other.layers, strict=True):
            layer.weight = nn.Parameter(torch.cat([layer.weight, more.weight.to(layer.weight.device)]))
            layer.bias = nn.Parameter(torch.cat([layer.bias, more.bias.to(layer.bias.device)]))


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _stack(
    solos: Sequence[nn.Module], hidden: nn.Module, last: nn.Module | None, out_shape: tuple[int, ...]
) -> PackedMLP:
    """Stack solo MLPs of one shape into one PackedMLP."""
    layers = []
    for members in zip(*(_linears(m) for m in solos), strict=True):
        weight = torch.stack([m.weight.detach().T for m in members]).contiguous()  # (K, fan_in, fan_out)
        bias = torch.stack([m.bias.detach() for m in members])[:, None, :].contiguous()
        layers.append(PackedLinear(weight, bias))
    return PackedMLP(layers, hidden, last, out_shape)


def _grouped(
    solos: Sequence[nn.Module],
    widths: Sequence[int],
    hidden: nn.Module,
    last: nn.Module | None,
    out_shape: tuple[int, ...],
) -> GroupedMLP:
    """Stack solo MLPs into a GroupedMLP: one PackedMLP per width, its members in pack order."""
    by_width: dict[int, list[int]] = {}
    for s, w in enumerate(widths):
        by_width.setdefault(w, []).append(s)
    slots = list(by_width.values())
    groups = [_stack([solos[s] for s in group], hidden, last, out_shape) for group in slots]
    return GroupedMLP(groups, slots, list(by_width), (hidden, last, out_shape))


def _initial_models(config: TrainConfig, sample_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """A member's (generator, discriminator) as a solo run with its config initialises them
    (``torch.manual_seed(seed)`` then build_models), the global random state left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_models(config, sample_shape)


def pack_mlps(configs: Sequence[TrainConfig], sample_shape: tuple[int, ...]) -> tuple[GroupedMLP, GroupedMLP]:
    """The packed (generator, discriminator) of these members, each initialised exactly as a
    solo run with its config initialises it (``torch.manual_seed(seed)`` then build_models),
    grouped by width (the generators by g_width, the discriminators by d_width).

    The members must share model (mlp), depth and z_dim; widths may differ.
    """
    if any(c.model != "mlp" for c in configs):
        raise ValueError("pack_mlps: only model 'mlp' members")
    if len({(c.depth, c.z_dim) for c in configs}) != 1:
        raise ValueError("pack_mlps: members must share depth and z_dim")
    gs, ds = [], []
    for c in configs:
        g, d = _initial_models(c, sample_shape)
        assert isinstance(g, MLPGenerator) and isinstance(d, MLPDiscriminator)
        gs.append(g)
        ds.append(d)
    bounded = isinstance(gs[0].net[-1], nn.Tanh)
    g_packed = _grouped(gs, [c.g_width for c in configs], nn.ReLU(), nn.Tanh() if bounded else None, sample_shape)
    d_packed = _grouped(ds, [c.d_width for c in configs], nn.LeakyReLU(0.2), None, ())  # one logit per sample
    return g_packed, d_packed


class PackedAdam:
    """Adam over stacked parameters, each member with its own lr and betas: the update
    torch.optim.Adam (eps 1e-8, no weight decay) makes for that member alone, up to the
    order of float operations (a solo run's Adam is fused: trainer.train.adam).

    The bias corrections are computed per member in float64, as torch's Adam does with
    Python floats, from the member's own step count ``t`` (a member may join a running
    pack); the state per parameter is (exp_avg, exp_avg_sq), stacked like it.
    """

    def __init__(
        self, params: Sequence[nn.Parameter], lr: Sequence[float], betas: Sequence[tuple[float, float]]
    ) -> None:
        self.params = list(params)
        self.lr = [float(x) for x in lr]
        self.betas = [(float(b1), float(b2)) for b1, b2 in betas]
        self.eps = 1e-8
        self.t = [0] * len(self.lr)  # each member's steps taken
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self._consts: torch.Tensor | None = None

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t = [t + 1 for t in self.t]
        if self._consts is None:  # (1 - β1, β2, 1 - β2) per member, shaped to broadcast
            b = torch.tensor(self.betas, dtype=torch.float64)
            self._consts = torch.stack([1 - b[:, 0], b[:, 1], 1 - b[:, 1]])
        step_size = torch.tensor([lr / (1 - b1**t) for lr, (b1, _), t in zip(self.lr, self.betas, self.t, strict=True)])
        c2 = torch.tensor([math.sqrt(1 - b2**t) for (_, b2), t in zip(self.betas, self.t, strict=True)])
        per_step = torch.cat([self._consts, step_size[None], c2[None]])
        shaped: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            if p.grad is None:
                continue
            key = (p.dim(), p.dtype, p.device)
            if key not in shaped:
                shaped[key] = per_step.to(p.device, p.dtype).view(5, -1, *([1] * (p.dim() - 1)))
            one_minus_b1, b2, one_minus_b2, size, bias2 = shaped[key]
            g = p.grad
            m.lerp_(g, one_minus_b1)
            v.mul_(b2).addcmul_(g, g * one_minus_b2)
            denom = (v.sqrt() / bias2).add_(self.eps)
            p.addcdiv_(m * size, denom, value=-1.0)

    def keep(self, members: torch.Tensor, params: Sequence[nn.Parameter]) -> None:
        """Keep these members' state; ``params`` are the pack's new parameters, same order."""
        idx = members.tolist()
        self.params = list(params)
        self.lr = [self.lr[i] for i in idx]
        self.betas = [self.betas[i] for i in idx]
        self.t = [self.t[i] for i in idx]
        self.exp_avg = [m[members].clone() for m in self.exp_avg]
        self.exp_avg_sq = [v[members].clone() for v in self.exp_avg_sq]
        self._consts = None

    def append(self, params: Sequence[nn.Parameter], lr: float, betas: tuple[float, float]) -> None:
        """A member joins, last: ``params`` are the pack's new parameters (one more row
        each), same order; its state starts at zero, as a fresh Adam's does."""
        self.params = list(params)
        self.lr.append(float(lr))
        self.betas.append((float(betas[0]), float(betas[1])))
        self.t.append(0)
        self.exp_avg = [torch.cat([m, m.new_zeros(1, *m.shape[1:])]) for m in self.exp_avg]
        self.exp_avg_sq = [torch.cat([v, v.new_zeros(1, *v.shape[1:])]) for v in self.exp_avg_sq]
        self._consts = None


class GroupedMLP(nn.Module):
    """A pack's generators or discriminators, grouped by width: each group is one PackedMLP
    whose members share a width, so a layer costs one ``baddbmm`` per width in the pack and
    no member pays for a wider one. Input and output are in pack-slot order (K, B, ...)."""

    def __init__(
        self,
        groups: Sequence[PackedMLP],
        slots: Sequence[Sequence[int]],
        widths: Sequence[int],
        shape: tuple[nn.Module, nn.Module | None, tuple[int, ...]],
    ) -> None:
        super().__init__()
        self.groups: Sequence[PackedMLP] = nn.ModuleList(groups)  # type: ignore[assignment]
        self.slots = [list(s) for s in slots]  # each group's members, as pack slots in order
        self.widths = list(widths)  # each group's width
        self.shape = shape  # (hidden activation, last activation, output shape): a new group's
        self.device = groups[0].layers[0].weight.device if groups else torch.device("cpu")
        self._index()

    def _index(self) -> None:
        self.where = {s: (j, p) for j, slots in enumerate(self.slots) for p, s in enumerate(slots)}
        if not self.groups:  # every member has left
            return
        device = self.device = self.groups[0].layers[0].weight.device
        self._take = [torch.tensor(s, device=device) for s in self.slots]
        order = torch.tensor([s for slots in self.slots for s in slots], device=device)
        self._back = torch.argsort(order)

    def _apply(self, fn: Any, recurse: bool = True) -> GroupedMLP:  # .to(device) moves the indices too
        super()._apply(fn, recurse)
        self._index()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.groups) == 1:
            return self.groups[0](x)
        parts = [group(x.index_select(0, take)) for group, take in zip(self.groups, self._take, strict=True)]
        return torch.cat(parts).index_select(0, self._back)

    def param_slots(self) -> list[torch.Tensor]:
        """For each of parameters(), the pack slots its leading dimension holds."""
        return [take for group, take in zip(self.groups, self._take, strict=True) for _ in group.parameters()]

    def keep(self, kept: Sequence[int]) -> list[list[int]]:
        """Keep these pack slots (sorted; they are numbered 0.. after), dropping the rest;
        returns each group's kept positions (empty for a group now gone)."""
        renumber = {s: i for i, s in enumerate(kept)}
        local = [[p for p, s in enumerate(slots) if s in renumber] for slots in self.slots]
        groups, slots, widths = [], [], []
        for group, old, width, positions in zip(self.groups, self.slots, self.widths, local, strict=True):
            if positions:
                group.keep(torch.tensor(positions, device=group.layers[0].weight.device))
                groups.append(group)
                slots.append([renumber[old[p]] for p in positions])
                widths.append(width)
        self.groups = nn.ModuleList(groups)  # type: ignore[assignment]
        self.slots, self.widths = slots, widths
        self._index()
        return local

    def append(self, solo: nn.Module, width: int) -> tuple[int, bool]:
        """A solo MLP of this width joins as the next pack slot, last in its width's group
        or alone in a new one; returns the group's index and whether it is new."""
        slot = sum(len(s) for s in self.slots)
        single = _stack([solo], *self.shape).to(self.device)
        new = width not in self.widths
        if new:
            self.groups.append(single)  # type: ignore[attr-defined]
            self.slots.append([slot])
            self.widths.append(width)
            j = len(self.groups) - 1
        else:
            j = self.widths.index(width)
            self.groups[j].append(single)
            self.slots[j].append(slot)
        self._index()
        return j, new


class GroupedAdam:
    """PackedAdam for a GroupedMLP: one per width group, each member with its own lr and betas."""

    def __init__(self, model: GroupedMLP, lr: Sequence[float], betas: Sequence[tuple[float, float]]) -> None:
        self.opts = [
            PackedAdam(list(group.parameters()), [lr[s] for s in slots], [betas[s] for s in slots])
            for group, slots in zip(model.groups, model.slots, strict=True)
        ]

    def zero_grad(self) -> None:
        for opt in self.opts:
            opt.zero_grad()

    def step(self) -> None:
        for opt in self.opts:
            opt.step()

    def keep(self, local: Sequence[Sequence[int]], model: GroupedMLP) -> None:
        """Follow ``model.keep``: ``local`` is what it returned."""
        kept = [(opt, positions) for opt, positions in zip(self.opts, local, strict=True) if positions]
        for (opt, positions), group in zip(kept, model.groups, strict=True):
            opt.keep(torch.tensor(positions, device=group.layers[0].weight.device), list(group.parameters()))
        self.opts = [opt for opt, _ in kept]

    def append(self, model: GroupedMLP, joined: tuple[int, bool], lr: float, betas: tuple[float, float]) -> None:
        """Follow ``model.append``: ``joined`` is what it returned."""
        j, new = joined
        params = list(model.groups[j].parameters())
        if new:
            self.opts.append(PackedAdam(params, [lr], [betas]))
        else:
            self.opts[j].append(params, lr, betas)


OnEnd = Callable[[TrainResult | BaseException, int], None]


class MemberEnded(Exception):
    """Raised by a member's ``on_eval`` hook to take it out of the pack (a pruner's verdict);
    the exception is that member's outcome and the rest of the pack trains on."""


# What may differ between the members of a pack: the searched knobs of the demo's space and
# the seed. Everything else (data, model shape family, steps, batch, evals) is the pack's.
PER_MEMBER = frozenset({"g_width", "d_width", "lambda", "lr_g", "lr_d", "beta1", "beta2", "seed", "aux_loss"})


def pack_key(config: TrainConfig) -> tuple[Any, ...]:
    """Configs with the same key can train in one pack. A regularised member never packs
    with an unregularised one: λ = 0 is the plain GAN, which draws no random numbers for L_A."""
    regulariser = config.aux_loss if config.lam != 0 else "none"
    shared = {k: v for k, v in config.to_dict().items() if k not in PER_MEMBER}
    return (regulariser, tuple(sorted(shared.items())))


@dataclasses.dataclass
class PackRun:
    """One run of a pack, as ``train_packed`` takes its first members and ``refill``
    returns those that join: its config and the hooks ``train`` would take for it."""

    config: TrainConfig
    on_eval: OnEval | None = None
    should_stop: Callable[[], bool] | None = None
    out_dir: str | Path | None = None
    on_end: OnEnd | None = None


# Called as refill(free places, pack step) when members may join; returns those that join.
Refill = Callable[[int, int], Sequence[PackRun]]


@dataclasses.dataclass
class _Member:
    config: TrainConfig
    rng: torch.Generator
    evaluator: _Evaluator
    g: nn.Module  # the solo modules a checkpoint is written from and read into
    d: nn.Module
    on_eval: OnEval | None = None
    should_stop: Callable[[], bool] | None = None
    out_dir: Path | None = None
    on_end: OnEnd | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0  # before this call (a resumed member's)
    outcome: TrainResult | BaseException | None = None
    offset: int = 0  # the pack's step when it joined: its own step is the pack's minus this
    since: float = 0.0  # the pack's training seconds in this call when it joined
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def settle(self, outcome: TrainResult | BaseException, step: int) -> None:
        """The member's end: its outcome kept and told."""
        self.outcome = outcome
        if self.on_end is not None:
            self.on_end(outcome, step)


def _pairs(
    packed: PackedMLP, solo: nn.Module, s: int
) -> list[tuple[torch.Tensor, int, Callable[[torch.Tensor], torch.Tensor]]]:
    """For each parameter of the solo module: the parameter, its index in the packed
    module's parameters, and a function giving member s's part of a stacked tensor shaped
    like it (the weight's (fan_in, fan_out) slice transposed to (out, in); the bias's row)."""

    def weight(fan_in: int, fan_out: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda t: t[s, :fan_in, :fan_out].T

    def bias(fan_out: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda t: t[s, 0, :fan_out]

    out = []
    for j, lin in enumerate(_linears(solo)):
        out.append((lin.weight, 2 * j, weight(lin.in_features, lin.out_features)))
        out.append((lin.bias, 2 * j + 1, bias(lin.out_features)))
    return out


def _member(packed: GroupedMLP, opt: GroupedAdam, s: int) -> tuple[PackedMLP, PackedAdam, int]:
    """Pack slot s's width group, that group's optimiser, and its position in the group."""
    j, position = packed.where[s]
    return packed.groups[j], opt.opts[j], position


def _to_solo(
    packed: GroupedMLP, opt: GroupedAdam, s: int, solo: nn.Module, lr: float, betas: tuple[float, float]
) -> dict[str, Any]:
    """Member s's slice of a packed model and its Adam state, written into the solo module
    and returned as a solo run's optimiser state dict (torch.optim.Adam's format)."""
    group, group_opt, position = _member(packed, opt, s)
    solo_opt = adam(solo.parameters(), lr, betas)  # a solo run's optimiser: its state dict resumes as one
    stacked = list(group.parameters())
    with torch.no_grad():
        for p, i, part in _pairs(group, solo, position):
            p.copy_(part(stacked[i]))
            solo_opt.state[p] = {
                "step": torch.tensor(float(group_opt.t[position])),
                "exp_avg": part(group_opt.exp_avg[i]).clone(),
                "exp_avg_sq": part(group_opt.exp_avg_sq[i]).clone(),
            }
    return solo_opt.state_dict()


def _from_solo(
    packed: GroupedMLP, opt: GroupedAdam, s: int, solo: nn.Module, model: dict[str, Any], opt_state: dict[str, Any]
) -> None:
    """Load a solo run's module and Adam state dicts into member s's slice, and its Adam
    step count (0 before the first step)."""
    group, group_opt, position = _member(packed, opt, s)
    solo.load_state_dict(model)
    solo_opt = torch.optim.Adam(solo.parameters())
    solo_opt.load_state_dict(opt_state)
    stacked = list(group.parameters())
    t = 0
    with torch.no_grad():
        for p, i, part in _pairs(group, solo, position):
            part(stacked[i]).copy_(p)
            state = solo_opt.state.get(p)
            if state:
                t = int(state["step"])
                part(group_opt.exp_avg[i]).copy_(state["exp_avg"])
                part(group_opt.exp_avg_sq[i]).copy_(state["exp_avg_sq"])
    group_opt.t[position] = t


def _draw_real(x: torch.Tensor, rngs: Sequence[torch.Generator], batch: int) -> torch.Tensor:
    """Each member's batch of real samples from its own stream, as its solo run draws it;
    one gather for the pack."""
    return x[torch.stack([torch.randint(len(x), (batch,), device=x.device, generator=r) for r in rngs])]


def _draw_noise(rngs: Sequence[torch.Generator], batch: int, z_dim: int) -> torch.Tensor:
    """Each member's noise from its own stream, as its solo run draws it, written in place."""
    z = torch.empty(len(rngs), batch, z_dim, device=rngs[0].device)
    for zi, r in zip(z, rngs, strict=True):
        torch.randn(batch, z_dim, device=z.device, generator=r, out=zi)
    return z


def train_packed(
    runs: Sequence[TrainConfig | PackRun],
    *,
    data_dir: str | Path | None = None,
    refill: Refill | None = None,
    capacity: int | None = None,
) -> list[TrainResult | BaseException]:
    """Train these runs as one pack (a bare config is a run without hooks or files); each
    member's outcome, in order: its TrainResult (``stopped`` set when its ``should_stop``
    ended it), or the exception that ended it (Diverged, CheckpointMismatch, or what its
    ``on_eval`` raised). A member's ``on_end`` is called with its outcome and the step it
    left at as soon as it leaves (its files written), while the others train on: a pruned
    trial is told at once.

    A member is the run ``train(config, on_eval=..., should_stop=..., out_dir=...)`` would
    make: its initial weights, batches, noise and evaluations, and the same files in its
    out_dir (checkpoint included, in train's format: a member resumes packed or alone). The
    pack only batches the arithmetic. A member that ends leaves the pack; the others go on
    without its cost. Members resumed from checkpoints must all be at the same step.

    With ``refill``, the pack stays full: at every eval step of the pack with fewer than
    ``capacity`` members (default: as many as it started with), ``refill(free, step)`` is
    asked for new runs, which join from their own step 0 (fresh runs only: a checkpoint in a
    joining run's out_dir ends it with a ValueError). Joining at eval steps keeps every
    member's evals on the same pack steps. The outcomes of joined runs follow in join order.
    """
    if not runs:
        return []
    starting = [r if isinstance(r, PackRun) else PackRun(r) for r in runs]
    configs = [r.config for r in starting]
    key = pack_key(configs[0])
    if any(pack_key(c) != key for c in configs):
        raise ValueError("train_packed: the members differ in more than widths, λ, rates, betas and seed")
    k_all = len(configs)
    capacity = k_all if capacity is None else capacity
    first = configs[0]
    device = resolve_device(first.device)
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    data, evaluator = _data_and_evaluator(first, device, data_dir)  # the extractor and real statistics, once
    g, d = pack_mlps(configs, data.sample_shape)
    g, d = g.to(device), d.to(device)
    betas = [(c.beta1, c.beta2) for c in configs]
    opt_g = GroupedAdam(g, [c.lr_g for c in configs], betas)
    opt_d = GroupedAdam(d, [c.lr_d for c in configs], betas)

    def member(run: PackRun, solo: tuple[nn.Module, nn.Module] | None = None) -> _Member:
        c = run.config
        solo_g, solo_d = solo if solo is not None else build_models(c, data.sample_shape)
        out_dir = Path(run.out_dir) if run.out_dir else None
        return _Member(
            c, torch.Generator(device).manual_seed(c.seed), evaluator.sibling(c, device),
            solo_g.to(device), solo_d.to(device), run.on_eval, run.should_stop, out_dir, run.on_end,
        )  # fmt: skip

    members = [member(run) for run in starting]

    # Resume: every member's checkpoint (train's format) into its slice.
    steps = set()
    for s, m in enumerate(members):
        if m.out_dir is None:
            steps.add(0)
            continue
        m.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            state = _load_checkpoint(m.out_dir, m.config, device, m.evaluator.features)
        except CheckpointMismatch as exc:
            m.settle(exc, 0)
            continue
        if state is None:
            steps.add(0)
        else:
            _from_solo(g, opt_g, s, m.g, state["g"], state["opt_g"])
            _from_solo(d, opt_d, s, m.d, state["d"], state["opt_d"])
            m.rng.set_state(state["rng"].cpu())
            m.history, m.train_seconds = state["history"], state["train_seconds"]
            steps.add(state["step"])
        (m.out_dir / "config.json").write_text(m.config.to_json())
    if len(steps) > 1:
        raise ValueError(f"train_packed: members resume from different steps {sorted(steps)}; pack them apart")
    clock = steps.pop() if steps else 0  # the pack's step; a member's own is clock - its offset

    live = [s for s, m in enumerate(members) if m.outcome is None]  # pack slot → member index
    lam = torch.tensor([c.lam for c in configs], device=device)
    regulariser = first.aux_loss if first.lam != 0 else "none"
    losses = torch.zeros(FINITE_CHECK_EVERY, 3, k_all, device=device)
    # Made again only when the pack changes (a GATLoss over a tensor λ syncs to check it).
    loss = GATLoss(g, d, regulariser, lam)
    g_params, d_params = list(g.parameters()), list(d.parameters())
    every, last = first.eval_every, first.steps

    def changed() -> None:
        nonlocal loss, g_params, d_params
        g_params, d_params = list(g.parameters()), list(d.parameters())
        loss = GATLoss(g, d, regulariser, lam)

    def keep(slots: list[int]) -> None:
        """Keep these pack slots (sorted), dropping the others' weights, state and cost."""
        nonlocal live, lam, losses
        idx = torch.tensor(slots, dtype=torch.long, device=device)
        opt_g.keep(g.keep(slots), g)
        opt_d.keep(d.keep(slots), d)
        live = [live[s] for s in slots]
        lam, losses = lam[idx], losses[:, :, idx]
        changed()

    def joinable() -> bool:
        """Whether members may join at this pack step: an eval step (every member's evals
        stay on the same steps), and for lazy R1 a step where its interval lines up."""
        lazy_ok = regulariser != "r1-lazy" or clock * first.d_steps % R1_LAZY_INTERVAL == 0
        return clock % every == 0 and lazy_ok

    def join(run: PackRun) -> None:
        """A fresh run joins as the last pack slot, initialised as it would be alone."""
        nonlocal lam, losses
        c = run.config
        solo = _initial_models(c, data.sample_shape)
        m = member(run, solo)
        m.offset, m.since = clock, elapsed
        members.append(m)
        if pack_key(c) != key:
            m.settle(ValueError("train_packed: a joining run differs in more than widths, λ, rates, betas and seed"), 0)
            return
        if m.out_dir is not None:
            m.out_dir.mkdir(parents=True, exist_ok=True)
            if (m.out_dir / "checkpoint.pt").exists():
                m.settle(ValueError("train_packed: a run with a checkpoint cannot join a running pack"), 0)
                return
            (m.out_dir / "config.json").write_text(c.to_json())
        opt_g.append(g, g.append(solo[0], c.g_width), c.lr_g, (c.beta1, c.beta2))
        opt_d.append(d, d.append(solo[1], c.d_width), c.lr_d, (c.beta1, c.beta2))
        live.append(len(members) - 1)
        lam = torch.cat([lam, torch.tensor([c.lam], device=device)])
        losses = torch.cat([losses, losses.new_zeros(FINITE_CHECK_EVERY, 3, 1)], dim=2)
        changed()

    if len(live) < k_all:
        keep([s for s in range(k_all) if members[s].outcome is None])
    batch, z_dim = first.batch_size, first.z_dim
    tick = time.perf_counter()
    elapsed = 0.0  # training seconds of this call

    def own_step(slot: int) -> int:
        return clock - members[live[slot]].offset

    def checkpoint(slot: int) -> None:
        m = members[live[slot]]
        if m.out_dir is None:
            return
        adam_g = _to_solo(g, opt_g, slot, m.g, m.config.lr_g, (m.config.beta1, m.config.beta2))
        adam_d = _to_solo(d, opt_d, slot, m.d, m.config.lr_d, (m.config.beta1, m.config.beta2))
        _save_checkpoint(
            m.out_dir, m.config, own_step(slot), m.train_seconds + elapsed - m.since, m.history,
            m.g, m.d, adam_g, adam_d, m.rng,
        )  # fmt: skip

    def finish(slot: int, stopped: bool) -> None:
        m = members[live[slot]]
        last_eval = m.history[-1] if m.history else {}
        if m.out_dir is not None:
            _to_solo(g, opt_g, slot, m.g, m.config.lr_g, (m.config.beta1, m.config.beta2))
        result = TrainResult(
            fid=float(last_eval.get("fid", float("nan"))), steps=own_step(slot),
            seconds=time.perf_counter() - m.started, train_seconds=m.train_seconds + elapsed - m.since,
            metrics=last_eval, history=m.history, config=m.config, out_dir=m.out_dir, stopped=stopped,
            generator=m.g,
        )  # fmt: skip
        if m.out_dir is not None:
            torch.save({"g": m.g.state_dict(), "config": m.config.to_dict()}, m.out_dir / "generator.pt")
            (m.out_dir / "result.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
        m.settle(result, own_step(slot))

    def due() -> list[int]:
        """The pack slots that evaluate at this pack step."""
        return [s for s in range(len(live)) if own_step(s) % every == 0 or own_step(s) == last]

    while live:
        stopping = [s for s in range(len(live)) if (stop := members[live[s]].should_stop) is not None and stop()]
        if stopping:
            elapsed += time.perf_counter() - tick
            tick = time.perf_counter()
            for s in stopping:
                m = members[live[s]]
                if not m.history or m.history[-1]["step"] != own_step(s):
                    checkpoint(s)
                finish(s, stopped=True)
            keep([s for s in range(len(live)) if s not in stopping])
            continue
        rngs = [members[i].rng for i in live]
        index = own_step(0) * first.d_steps  # the same modulo R1_LAZY_INTERVAL for every member (joinable)
        for j in range(first.d_steps):
            real, z = _draw_real(data.x, rngs, batch), _draw_noise(rngs, batch, z_dim)
            total_d, loss_d, reg = loss.discriminator(real, z, rngs, index=index + j)
            opt_d.zero_grad()
            total_d.sum().backward(inputs=d_params)
            opt_d.step()
        if loss.generator_needs_real:
            real = _draw_real(data.x, rngs, batch)
        z = _draw_noise(rngs, batch, z_dim)
        total_g, loss_g = loss.generator(real, z)
        opt_g.zero_grad()
        total_g.sum().backward(inputs=g_params)
        opt_g.step()
        losses[clock % FINITE_CHECK_EVERY, 0] = loss_d
        losses[clock % FINITE_CHECK_EVERY, 1] = loss_g
        losses[clock % FINITE_CHECK_EVERY, 2] = reg
        clock += 1
        evaluating = due()
        if clock % FINITE_CHECK_EVERY == 0 or evaluating:
            diverged = []
            for s in range(len(live)):
                try:
                    _check_finite(losses[:, :, s], own_step(s))
                except Diverged as exc:
                    members[live[s]].settle(exc, own_step(s))
                    diverged.append(s)
            if diverged:
                keep([s for s in range(len(live)) if s not in diverged])
                if not live:
                    break
                evaluating = due()  # the slots are numbered anew
        if not evaluating:
            continue

        elapsed += time.perf_counter() - tick
        with torch.no_grad():
            z_eval = torch.stack([members[i].evaluator.z for i in live])
            samples = torch.cat([g(z_eval[:, b : b + 1024]) for b in range(0, z_eval.shape[1], 1024)], dim=1)
            if len(evaluating) < len(live):  # members that joined later end on a step the others do not
                samples = samples[torch.tensor(evaluating, device=device)]
            # The evaluating members' features in one batched call of the shared extractor.
            features = evaluator.extract(samples.flatten(0, 1)).view(len(evaluating), samples.shape[1], -1)
        ended = []
        step_losses = losses[(clock - 1) % FINITE_CHECK_EVERY]  # this step's, in the slots as they are now
        for e, s in enumerate(evaluating):
            m = members[live[s]]
            measured, _ = m.evaluator.measure(samples[e], features[e])
            loss_d_s, loss_g_s, reg_s = step_losses[:, s]
            metrics = _eval_record(
                own_step(s), measured, loss_d_s, loss_g_s, reg_s, m.train_seconds + elapsed - m.since
            )
            m.history.append(metrics)
            if m.out_dir is not None:
                _write_eval(m.out_dir, metrics, samples[e], data, m.history)
                checkpoint(s)
            if m.on_eval is not None:
                try:
                    m.on_eval(own_step(s), metrics)
                except Exception as exc:  # the hook's verdict on this member alone
                    m.settle(exc, own_step(s))
                    ended.append(s)
                    continue
            if own_step(s) == last:
                finish(s, stopped=False)
                ended.append(s)
        if ended:
            keep([s for s in range(len(live)) if s not in ended])
        if refill is not None and live and len(live) < capacity and joinable():
            for run in refill(capacity - len(live), clock):
                join(run)
        tick = time.perf_counter()

    return [m.outcome if m.outcome is not None else RuntimeError("member never ran") for m in members]


def replay(
    pack: PackReplay,
    *,
    out_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str | None = None,
    on_eval: OnEval | None = None,
) -> TrainResult:
    """Train a pack again as it ran, and return its member ``pack.position``'s result: the
    trial's, bit for bit (on the same thread count). Only that member writes to out_dir;
    the others stop when it ends."""
    configs = [m.replace(device=device) if device else m for m in pack.members]
    joined = pack.joined or (0,) * len(configs)
    ended = False

    def leave_at(at: int) -> OnEval:
        def hook(step: int, metrics: dict[str, Any]) -> None:
            if step >= at:
                raise MemberEnded(f"left the pack at step {at}")

        return hook

    def mine_ended(outcome: TrainResult | BaseException, step: int) -> None:
        nonlocal ended
        ended = True

    runs = [
        PackRun(c, None if at is None else leave_at(at), lambda: ended, None)
        for c, at in zip(configs, pack.left, strict=True)
    ]
    runs[pack.position] = PackRun(configs[pack.position], on_eval, None, out_dir, mine_ended)
    at_start = [j for j in range(len(runs)) if joined[j] == joined[0]]

    def refill(free: int, step: int) -> list[PackRun]:
        return [runs[j] for j in range(len(runs)) if joined[j] == step and j not in at_start]

    outcome = train_packed([runs[j] for j in at_start], data_dir=data_dir, refill=refill, capacity=len(runs))[
        pack.position
    ]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
