"""How early a GAN run shows it cannot win: FID trajectories of random configurations of the
demo's space, and the far-above-best pruner (service/pruning.py) replayed on them.

    .venv/bin/python -m bench.early_fid [--trials 24] [--procs 2] [--ratios 2 3 5 10]
                                        [--orders 200] [--out bench/early_fid.json]

Draws ``--trials`` configurations per process at random from service.demo.DIGITS_DEMO's space
(λ, lr_g, lr_d log-uniform, widths 64/128/256; digits, MLP, R1, 3,000 steps, an eval every
500), each process a different seed, and trains each process's draws as one pack
(trainer.packed.train_packed, one thread). Prints the FID at every eval, the Spearman rank
correlation of each eval's FID with the final one, and, for each ratio, the pruner's rule
replayed on the trajectories in ``--orders`` random arrival orders: a run stops at the first
eval where its FID is above ratio x the best FID any earlier run had at that step. Reported:
the fraction of the steps the runs trained, and how often the best final run survived.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import statistics
from typing import Any

from service.demo import DIGITS_DEMO
from service.worker import limit_threads


def trajectories(seed: int, n: int) -> list[list[float]]:
    """The FIDs at every eval of n random draws of the demo's space, trained as one pack."""
    limit_threads(1)
    from trainer.config import TrainConfig
    from trainer.packed import train_packed
    from trainer.train import TrainResult

    rng, search, configs = random.Random(seed), DIGITS_DEMO["search_space"], []
    for i in range(n):
        params: dict[str, Any] = {"seed": seed * 1000 + i}
        for key in ("lambda", "lr_g", "lr_d"):
            lo, hi = search[key]["low"], search[key]["high"]
            params[key] = 10 ** rng.uniform(math.log10(lo), math.log10(hi))
        for key in ("g_width", "d_width"):
            params[key] = rng.choice(search[key]["choices"])
        configs.append(TrainConfig.from_dict({**DIGITS_DEMO["base"], **params}))
    out = []
    for outcome in train_packed(configs):
        if isinstance(outcome, TrainResult):  # a diverged run has no trajectory to replay
            out.append([float(h["fid"]) for h in outcome.history])
    return out


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(xs: list[float]) -> list[float]:
        order = sorted(range(len(xs)), key=xs.__getitem__)
        r = [0.0] * len(xs)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    return statistics.correlation(ranks(a), ranks(b))


def replay(runs: list[list[float]], ratio: float, orders: int) -> tuple[float, float]:
    """The fraction of evals trained and how often the best final run survived, over random
    arrival orders, with the rule: stop at the first eval above ratio x the best so far there."""
    best_final = min(r[-1] for r in runs)
    trained, kept = 0.0, 0
    for order in range(orders):
        shuffled = runs[:]
        random.Random(order).shuffle(shuffled)
        seen: list[list[float]] = []
        evals = 0
        finals = []
        for run in shuffled:
            reached = []
            for i, fid in enumerate(run):
                reached.append(fid)
                if i == len(run) - 1:
                    finals.append(fid)
                    break
                others = [s[i] for s in seen if len(s) > i]
                if others and fid > ratio * min(others):
                    break
            evals += len(reached)
            seen.append(reached)
        trained += evals / sum(len(r) for r in runs)
        kept += best_final in finals
    return trained / orders, kept / orders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=24, help="draws per process")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--ratios", type=float, nargs="+", default=[2, 3, 5, 10])
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--out", default="bench/early_fid.json")
    args = parser.parse_args()
    with mp.get_context("spawn").Pool(args.procs) as pool:
        parts = pool.starmap(trajectories, [(seed + 1, args.trials) for seed in range(args.procs)])
    runs = [r for part in parts for r in part if len(r) == len(parts[0][0])]
    with open(args.out, "w") as f:
        json.dump(runs, f)
    runs.sort(key=lambda r: r[-1])
    steps = [DIGITS_DEMO["base"]["eval_every"] * (i + 1) for i in range(len(runs[0]))]
    print(f"{len(runs)} runs; FID at steps {steps}:")
    for r in runs:
        print("  " + " ".join(f"{f:7.1f}" for f in r))
    finals = [r[-1] for r in runs]
    for i, step in enumerate(steps[:-1]):
        print(f"Spearman(FID at {step}, final) = {spearman([r[i] for r in runs], finals):.2f}")
    for ratio in args.ratios:
        trained, kept = replay(runs, ratio, args.orders)
        print(f"ratio {ratio:g}: trains {100 * trained:.0f} % of the evals; the best run survives {100 * kept:.0f} %")


if __name__ == "__main__":
    main()
