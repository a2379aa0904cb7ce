"""Trial packing: K MLP GANs trained as one batched model (HFTA, Wang et al. MLSys 2021).

Each member's weights are a slice of stacked tensors (K, fan_in, fan_out), and one
``baddbmm`` runs a layer for every member, so K small matrix products cost about one kernel
launch instead of K. Members may differ in width: the stacked tensors take the widest, and
a narrower member's extra units have zero weights in and out. Those units stay exactly zero
through training (their activations are 0, so every gradient into or out of them is 0, and
Adam moves no weight whose gradient has always been 0), so a member computes what it would
alone; only the order of float additions differs.

Every member keeps its own seed (its initial weights are built exactly as a solo run builds
them), its own random stream, λ, learning rates and betas, and its own Adam state.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.config import TrainConfig
from trainer.data import default_data_dir, load_dataset
from trainer.losses import GATLoss
from trainer.models import MLPDiscriminator, MLPGenerator, build_models
from trainer.train import FINITE_CHECK_EVERY, Diverged, OnEval, TrainResult, _check_finite, _Evaluator, resolve_device

__all__ = ["MemberEnded", "PackedAdam", "PackedLinear", "PackedMLP", "pack_key", "pack_mlps", "train_packed"]


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


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _stack(
    solos: Sequence[nn.Module], hidden: nn.Module, last: nn.Module | None, out_shape: tuple[int, ...]
) -> PackedMLP:
    """Stack K solo MLPs (same depth) into one PackedMLP, zero-padding to the widest."""
    per_member = [_linears(m) for m in solos]
    layers = []
    for depth_index in range(len(per_member[0])):
        members = [lin[depth_index] for lin in per_member]
        fan_in = max(m.in_features for m in members)
        fan_out = max(m.out_features for m in members)
        weight = torch.zeros(len(members), fan_in, fan_out)
        bias = torch.zeros(len(members), 1, fan_out)
        for k, m in enumerate(members):
            weight[k, : m.in_features, : m.out_features] = m.weight.detach().T
            bias[k, 0, : m.out_features] = m.bias.detach()
        layers.append(PackedLinear(weight, bias))
    return PackedMLP(layers, hidden, last, out_shape)


def pack_mlps(configs: Sequence[TrainConfig], sample_shape: tuple[int, ...]) -> tuple[PackedMLP, PackedMLP]:
    """The packed (generator, discriminator) of these members, each initialised exactly as a
    solo run with its config initialises it (``torch.manual_seed(seed)`` then build_models).

    The members must share model (mlp), depth and z_dim; widths may differ.
    """
    if any(c.model != "mlp" for c in configs):
        raise ValueError("pack_mlps: only model 'mlp' members")
    if len({(c.depth, c.z_dim) for c in configs}) != 1:
        raise ValueError("pack_mlps: members must share depth and z_dim")
    gs, ds = [], []
    with torch.random.fork_rng(devices=[]):
        for c in configs:
            torch.manual_seed(c.seed)
            g, d = build_models(c, sample_shape)
            assert isinstance(g, MLPGenerator) and isinstance(d, MLPDiscriminator)
            gs.append(g)
            ds.append(d)
    bounded = isinstance(gs[0].net[-1], nn.Tanh)
    g_packed = _stack(gs, nn.ReLU(), nn.Tanh() if bounded else None, sample_shape)
    d_packed = _stack(ds, nn.LeakyReLU(0.2), None, ())  # one logit per sample: (K, B)
    return g_packed, d_packed


class PackedAdam:
    """Adam over stacked parameters, each member with its own lr and betas, as
    torch.optim.Adam (eps 1e-8, no weight decay) computes it for that member alone.

    The bias corrections are computed per member in float64, as torch's Adam does with
    Python floats; the state per parameter is (exp_avg, exp_avg_sq), stacked like it.
    """

    def __init__(
        self, params: Sequence[nn.Parameter], lr: Sequence[float], betas: Sequence[tuple[float, float]]
    ) -> None:
        self.params = list(params)
        self.lr = [float(x) for x in lr]
        self.betas = [(float(b1), float(b2)) for b1, b2 in betas]
        self.eps = 1e-8
        self.t = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self._consts: torch.Tensor | None = None

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        if self._consts is None:  # (1 - β1, β2, 1 - β2) per member, shaped to broadcast
            b = torch.tensor(self.betas, dtype=torch.float64)
            self._consts = torch.stack([1 - b[:, 0], b[:, 1], 1 - b[:, 1]])
        step_size = torch.tensor([lr / (1 - b1**self.t) for lr, (b1, _) in zip(self.lr, self.betas, strict=True)])
        c2 = torch.tensor([math.sqrt(1 - b2**self.t) for _, b2 in self.betas])
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
        self.exp_avg = [m[members].clone() for m in self.exp_avg]
        self.exp_avg_sq = [v[members].clone() for v in self.exp_avg_sq]
        self._consts = None


class MemberEnded(Exception):
    """Raised by a member's ``on_eval`` hook to take it out of the pack (a pruner's verdict);
    the exception is that member's outcome and the rest of the pack trains on."""


@dataclasses.dataclass
class _Member:
    config: TrainConfig
    rng: torch.Generator
    on_eval: OnEval | None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    outcome: TrainResult | BaseException | None = None


def pack_key(config: TrainConfig) -> tuple[Any, ...]:
    """Configs with the same key can train in one pack: everything but the widths, λ, the
    learning rates, betas and seed must agree (a regularised member never packs with an
    unregularised one: λ = 0 is the plain GAN, which draws no random numbers for L_A)."""
    regulariser = config.aux_loss if config.lam != 0 else "none"
    shared = {k: v for k, v in config.to_dict().items() if k not in PER_MEMBER}
    return (regulariser, tuple(sorted(shared.items())))


PER_MEMBER = frozenset({"g_width", "d_width", "lambda", "lr_g", "lr_d", "beta1", "beta2", "seed", "aux_loss"})


def train_packed(
    configs: Sequence[TrainConfig],
    *,
    on_eval: Sequence[OnEval | None] | None = None,
    data_dir: str | Path | None = None,
) -> list[TrainResult | BaseException]:
    """Train these members as one pack; each member's outcome, in order: its TrainResult,
    or the exception that ended it (Diverged, or what its ``on_eval`` raised).

    A member is the run ``train(config)`` would make: its initial weights, its batches and
    noise, its evaluations; the pack only batches the arithmetic. A member that ends
    (pruned, diverged) leaves the pack, and the others go on without its cost.
    """
    if not configs:
        return []
    keys = {pack_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError("train_packed: the members differ in more than widths, λ, rates, betas and seed")
    started = time.perf_counter()
    first = configs[0]
    device = resolve_device(first.device)
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    data = load_dataset(first.dataset, image_size=first.image_size, data_dir=data_dir).to(device)
    evaluators = [_Evaluator(c, data, device, data_dir) for c in configs]
    g, d = pack_mlps(configs, data.sample_shape)
    g, d = g.to(device), d.to(device)
    members = [
        _Member(c, torch.Generator(device).manual_seed(c.seed), None if on_eval is None else on_eval[k])
        for k, c in enumerate(configs)
    ]
    live = list(range(len(members)))  # pack slot → member index

    def optimisers() -> tuple[PackedAdam, PackedAdam]:
        cs = [members[i].config for i in live]
        betas = [(c.beta1, c.beta2) for c in cs]
        return (
            PackedAdam(list(g.parameters()), [c.lr_g for c in cs], betas),
            PackedAdam(list(d.parameters()), [c.lr_d for c in cs], betas),
        )

    opt_g, opt_d = optimisers()
    lam = torch.tensor([c.lam for c in configs], device=device)
    loss = GATLoss(g, d, first.aux_loss if first.lam != 0 else "none", lam)
    n, batch, z_dim = len(data.x), first.batch_size, first.z_dim
    losses = torch.zeros(FINITE_CHECK_EVERY, 3, len(live), device=device)
    step, train_seconds = 0, 0.0
    tick = time.perf_counter()

    def draw_real() -> torch.Tensor:
        return torch.stack([data.x[torch.randint(n, (batch,), device=device, generator=members[i].rng)] for i in live])

    def draw_z() -> torch.Tensor:
        return torch.stack([torch.randn(batch, z_dim, device=device, generator=members[i].rng) for i in live])

    def drop(slots: list[int]) -> None:
        nonlocal live, lam, losses, loss
        keep = torch.tensor([s for s in range(len(live)) if s not in slots], dtype=torch.long)
        g.keep(keep.to(device))
        d.keep(keep.to(device))
        opt_g.keep(keep.to(device), list(g.parameters()))
        opt_d.keep(keep.to(device), list(d.parameters()))
        live = [live[s] for s in keep.tolist()]
        lam = lam[keep.to(device)]
        losses = losses[:, :, keep.to(device)]
        loss = GATLoss(g, d, loss.aux_loss, lam)

    while live and step < first.steps:
        rngs = [members[i].rng for i in live]
        for j in range(first.d_steps):
            real, z = draw_real(), draw_z()
            total_d, loss_d, reg = loss.discriminator(real, z, rngs, index=step * first.d_steps + j)
            opt_d.zero_grad()
            total_d.sum().backward(inputs=list(d.parameters()))
            opt_d.step()
        if loss.generator_needs_real:
            real = draw_real()
        z = draw_z()
        total_g, loss_g = loss.generator(real, z)
        opt_g.zero_grad()
        total_g.sum().backward(inputs=list(g.parameters()))
        opt_g.step()
        losses[step % FINITE_CHECK_EVERY, 0] = loss_d
        losses[step % FINITE_CHECK_EVERY, 1] = loss_g
        losses[step % FINITE_CHECK_EVERY, 2] = reg
        step += 1
        is_eval = step % first.eval_every == 0 or step == first.steps
        if step % FINITE_CHECK_EVERY == 0 or is_eval:
            bad = []
            for s, i in enumerate(live):
                try:
                    _check_finite(losses[:, :, s], step)
                except Diverged as exc:
                    members[i].outcome = exc
                    bad.append(s)
            if bad:
                drop(bad)
                if not live:
                    break
        if not is_eval:
            continue
        train_seconds += time.perf_counter() - tick
        with torch.no_grad():
            z_eval = torch.stack([evaluators[i].z for i in live])
            samples = torch.cat([g(z_eval[:, b : b + 1024]) for b in range(0, z_eval.shape[1], 1024)], dim=1)
        ended = []
        for s, i in enumerate(live):
            member = members[i]
            metrics, _ = evaluators[i].measure(samples[s])
            metrics = {
                "step": step,
                **metrics,
                "loss_d": float(loss_d[s]),
                "loss_g": float(loss_g[s]),
                "loss_aux": float(reg[s]),
                "train_seconds": round(train_seconds, 3),
            }
            member.history.append(metrics)
            if member.on_eval is not None:
                try:
                    member.on_eval(step, metrics)
                except Exception as exc:  # the hook's verdict on this member alone
                    member.outcome = exc
                    ended.append(s)
        if ended:
            drop(ended)
        tick = time.perf_counter()
    else:
        train_seconds += time.perf_counter() - tick

    for i in live:
        member = members[i]
        last = member.history[-1] if member.history else {}
        member.outcome = TrainResult(
            fid=float(last.get("fid", float("nan"))),
            steps=step,
            seconds=time.perf_counter() - started,
            train_seconds=train_seconds,
            metrics=last,
            history=member.history,
            config=member.config,
        )
    return [m.outcome if m.outcome is not None else RuntimeError("member never ran") for m in members]
