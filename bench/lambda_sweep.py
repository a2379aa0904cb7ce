"""λ sweep on digits (MLP, R1, 3,000 steps, 3 seeds) against the real-data floor.

    .venv/bin/python -m bench.lambda_sweep [--steps 3000] [--seeds 3]

The floor is the FID of held-out real digits (20 %) against the rest, with the same
classifier features: no generator can be expected to beat it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainer.config import TrainConfig
from trainer.data import default_data_dir, load_dataset
from trainer.metrics import ClassifierFeatures, frechet_distance, gaussian_stats
from trainer.train import train

LAMBDAS = (0.0, 0.1, 1.0, 10.0)


def real_floor() -> float:
    data = load_dataset("digits")
    extract = ClassifierFeatures(data, default_data_dir())
    order = torch.randperm(len(data.x), generator=torch.Generator().manual_seed(0))
    held = int(0.2 * len(order))
    a, b = extract(data.x[order[:held]]), extract(data.x[order[held:]])
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    floor = real_floor()
    print(f"real-data floor (held-out 20% vs rest): FID {floor:.2f}")
    means = {}
    for lam in LAMBDAS:
        fids = []
        for seed in range(args.seeds):
            t = time.perf_counter()
            config = TrainConfig.from_dict({"lambda": lam, "seed": seed, "steps": args.steps, "eval_every": args.steps})
            fids.append(train(config).fid)
            print(f"  lambda={lam:<5} seed={seed}  FID {fids[-1]:9.2f}  ({time.perf_counter() - t:.1f}s)", flush=True)
        means[lam] = statistics.mean(fids)
        print(f"lambda={lam:<5} FID mean {means[lam]:.2f}  min {min(fids):.2f}  max {max(fids):.2f}", flush=True)
    print(f"ratio FID(lambda=0) / FID(lambda=10) = {means[0.0] / means[10.0]:.1f}x (target >= 5x)")
    print(f"ratio FID(lambda=10) / real floor = {means[10.0] / floor:.1f}x")


if __name__ == "__main__":
    main()
