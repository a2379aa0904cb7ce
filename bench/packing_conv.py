"""Would DCGAN trials pack? K DCGAN discriminators' R1 step, one by one against one model of
grouped convolutions (HFTA's way to fuse convolutions), on this machine's CPU.

    .venv/bin/python -m bench.packing_conv [--ks 1 4 8] [--repeats 20] [--threads 1]

For each case (8 px digits at width 64; 28 px Fashion-MNIST at widths 32 and 64; batch 64)
and K: the discriminator's R1 step as the trainer runs it (logits of a real batch, their
input gradient with create_graph, the penalty backpropagated into the weights), for K
models of trainer.models.DCGANDiscriminator one after another, and for the same K stacked
into one model whose convolutions have groups=K (members side by side in the channels) and
whose last linear layer is one batched matmul. Best of --repeats, interleaved; the ratio is
one-by-one time over grouped time (above 1: packing gains).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models import DCGANDiscriminator

CASES = [(8, 64), (28, 32), (28, 64)]  # (image size, width)
BATCH = 64


def best_of(repeats: int, fns: dict[str, Callable[[], None]]) -> dict[str, float]:
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def r1_step(d: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    grad.square().sum().backward()


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    assert conv.bias is not None  # the model's convolutions all have one
    return conv.bias


def grouped(ds: list[DCGANDiscriminator], size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The K discriminators as one: input (K, B, 1, H, W) → logits (K, B)."""
    k = len(ds)
    convs = [[m for m in d.net if isinstance(m, nn.Conv2d)] for d in ds]
    weights = [nn.Parameter(torch.cat([c[i].weight for c in convs]).detach()) for i in range(len(convs[0]))]
    biases = [nn.Parameter(torch.cat([_bias(c[i]) for c in convs]).detach()) for i in range(len(convs[0]))]
    shapes = [(c.stride, c.padding) for c in convs[0]]
    linears = [m for d in ds for m in d.net if isinstance(m, nn.Linear)]
    w = nn.Parameter(torch.stack([lin.weight.detach().T for lin in linears]))  # (K, features, 1)
    b = nn.Parameter(torch.stack([lin.bias.detach() for lin in linears])[:, None])  # (K, 1, 1)

    def forward(x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(0, 1).reshape(x.shape[1], k * x.shape[2], size, size)
        for weight, bias, (stride, padding) in zip(weights, biases, shapes, strict=True):
            h = F.leaky_relu(F.conv2d(h, weight, bias, stride, padding, groups=k), 0.2)
        h = h.reshape(h.shape[0], k, -1).transpose(0, 1)
        return torch.baddbmm(b, h, w).squeeze(-1)

    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| image, width | K | one by one (ms) | grouped (ms) | ratio |\n|---|---|---|---|---|")
    for size, width in CASES:
        for k in args.ks:
            torch.manual_seed(0)
            ds = [DCGANDiscriminator((1, size, size), width) for _ in range(k)]
            x = torch.rand(k, BATCH, 1, size, size) * 2 - 1
            packed = grouped(ds, size)

            def one_by_one(ds: list[DCGANDiscriminator] = ds, x: torch.Tensor = x) -> None:
                for d, xi in zip(ds, x, strict=True):
                    r1_step(d, xi)

            def together(packed: Callable[[torch.Tensor], torch.Tensor] = packed, x: torch.Tensor = x) -> None:
                r1_step(packed, x)

            t = best_of(args.repeats, {"solo": one_by_one, "grouped": together})
            ratio = t["solo"] / t["grouped"]
            print(f"| {size} px, {width} | {k} | {1e3 * t['solo']:.1f} | {1e3 * t['grouped']:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
