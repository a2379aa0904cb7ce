"""Trial packing: finished trials per hour at K = 1, 2, 4, 8, 16, as a ratio to K = 1.

    .venv/bin/python -m bench.packing [--steps 3000] [--trials 16] [--spaces 64 128 256 mixed]
                                      [--ks 1 2 4 8 16] [--device cpu] [--threads 1] [--rounds 1]

Trials are drawn at random (seeded) from the demo's search space (service.demo.DIGITS_DEMO:
λ, lr_g, lr_d log-uniform, widths from 64/128/256) on its base config (digits, MLP, R1,
eval every 500 steps with FID), the widths fixed for the spaces 64, 128 and 256, drawn for
``mixed``. For each K the same trials run, K at a time, as one slot trains them: with
trainer.train one by one at K = 1, with trainer.packed.train_packed above, each K
consecutive trials as one pack (grouped by width inside it). Evals and FID are included.
One slot's thread budget (``--threads``, the worker's default for a CPU slot on this
machine is 1). Each point runs in a fresh process (its peak memory is printed: the slot's
at that K), one after another, K = 1 first (the reference), then K = 2, ..., then again
with ``--rounds``, so machine noise falls on all.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import random
import resource
import statistics
import time
from typing import Any

import torch

from service.demo import DIGITS_DEMO
from service.worker import limit_threads
from trainer.config import TrainConfig
from trainer.packed import train_packed
from trainer.train import TrainResult, train


def draw(space: str, n: int, steps: int, device: str) -> list[TrainConfig]:
    """n trials of the demo's space; ``space`` fixes both widths, or ``mixed`` draws them."""
    rng = random.Random(0)
    search = DIGITS_DEMO["search_space"]
    out = []
    for i in range(n):
        params: dict[str, Any] = {"seed": i, "steps": steps, "eval_every": min(500, steps), "device": device}
        for key in ("lambda", "lr_g", "lr_d"):
            lo, hi = search[key]["low"], search[key]["high"]
            params[key] = 10 ** rng.uniform(math.log10(lo), math.log10(hi))
        for key in ("g_width", "d_width"):
            params[key] = rng.choice(search[key]["choices"]) if space == "mixed" else int(space)
        out.append(TrainConfig.from_dict({**DIGITS_DEMO["base"], **params}))
    return out


def run(configs: list[TrainConfig], k: int) -> tuple[float, list[float]]:
    """Seconds to finish every trial, K at a time, and the final FIDs in trial order."""
    t = time.perf_counter()
    fids: list[float] = [float("nan")] * len(configs)
    for start in range(0, len(configs), k):
        if k == 1:
            fids[start] = train(configs[start]).fid
            continue
        chunk = configs[start : start + k]
        for i, outcome in enumerate(train_packed(chunk), start):
            fids[i] = outcome.fid if isinstance(outcome, TrainResult) else float("nan")
    return time.perf_counter() - t, fids


def run_apart(configs: list[TrainConfig], k: int, threads: int, device: str) -> tuple[float, list[float], str]:
    """run() in a fresh process, so that its peak memory is its own: (seconds, FIDs, peak)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_child, (configs, k, threads, device))


def _child(configs: list[TrainConfig], k: int, threads: int, device: str) -> tuple[float, list[float], str]:
    limit_threads(threads)
    s, fids = run(configs, k)
    if device.startswith("cuda"):
        peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB GPU"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB RSS"
    return s, fids, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--spaces", nargs="+", default=["64", "128", "256", "mixed"])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the K sweep, interleaved")
    args = parser.parse_args()
    limit_threads(args.threads)
    train(draw("64", 1, 20, args.device)[0].replace(steps=20, eval_every=20))  # warm caches: classifier, stats
    print(f"{args.trials} trials x {args.steps} steps per point; device {args.device}, {args.threads} thread(s)")
    for space in args.spaces:
        configs = draw(space, args.trials, args.steps, args.device)
        seconds: dict[int, list[float]] = {k: [] for k in args.ks}
        fids: dict[int, list[float]] = {}
        for _ in range(args.rounds):
            for k in args.ks:
                s, fids[k], peak = run_apart(configs, k, args.threads, args.device)
                seconds[k].append(s)
                per_hour = args.trials / s * 3600
                print(f"space {space:>5} K={k:<2} {s:7.1f}s  {per_hour:7.0f} trials/h  peak {peak}", flush=True)
        base = statistics.median(seconds[args.ks[0]])
        ratios = "  ".join(f"K={k}: {base / statistics.median(seconds[k]):.2f}x" for k in args.ks)
        print(f"space {space:>5} ratio to K={args.ks[0]}: {ratios}", flush=True)
        finite = {k: [f for f in v if f == f] for k, v in fids.items()}
        spread = "  ".join(
            f"K={k}: {statistics.mean(v):.1f} (sd {statistics.pstdev(v):.1f})" for k, v in finite.items() if v
        )
        print(f"space {space:>5} final FID mean over trials: {spread}", flush=True)


if __name__ == "__main__":
    main()
