"""λ sweep (R1, 3 seeds) against the real-data floor, on digits (MLP) or a real image set.

    .venv/bin/python -m bench.lambda_sweep [--steps 3000] [--seeds 3]
    .venv/bin/python -m bench.lambda_sweep --dataset fashion-mnist --model dcgan --steps 1000 --width 64

The floor is the FID of held-out real images against the training images, with the same
classifier features: no generator can be expected to beat it. For digits the held-out
images are 20 % of the set (against the other 80 %); for mnist, fashion-mnist and cifar10
they are the test split (10,000 images, never trained on) against the whole training split,
which is also what a run's FID compares its samples with.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainer.config import TrainConfig
from trainer.data import DATASETS, default_data_dir, load_dataset
from trainer.metrics import ClassifierFeatures, frechet_distance, gaussian_stats
from trainer.train import train

LAMBDAS = (0.0, 0.1, 1.0, 10.0)


def real_floor(dataset: str) -> float:
    data = load_dataset(dataset)
    extract = ClassifierFeatures(data, default_data_dir())
    if DATASETS[dataset].files is not None:
        held_out, rest = load_dataset(dataset, split="test").x, data.x
    else:
        order = torch.randperm(len(data.x), generator=torch.Generator().manual_seed(0))
        held = int(0.2 * len(order))
        held_out, rest = data.x[order[:held]], data.x[order[held:]]
    print(f"classifier accuracy (held out from its training): {extract.accuracy:.4f}")
    return frechet_distance(*gaussian_stats(extract(held_out)), *gaussian_stats(extract(rest)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--width", type=int, default=256, help="g_width and d_width")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS), help="the ratios need 0 and 10")
    args = parser.parse_args()
    floor = real_floor(args.dataset)
    print(f"real-data floor (held-out images vs the training images): FID {floor:.2f}")
    means = {}
    for lam in args.lambdas:
        fids = []
        for seed in range(args.seeds):
            t = time.perf_counter()
            config = TrainConfig.from_dict(
                {"dataset": args.dataset, "model": args.model, "g_width": args.width, "d_width": args.width,
                 "lambda": lam, "seed": seed, "steps": args.steps, "eval_every": args.steps}
            )  # fmt: skip
            fids.append(train(config).fid)
            print(f"  lambda={lam:<5} seed={seed}  FID {fids[-1]:9.2f}  ({time.perf_counter() - t:.1f}s)", flush=True)
        means[lam] = statistics.mean(fids)
        print(f"lambda={lam:<5} FID mean {means[lam]:.2f}  min {min(fids):.2f}  max {max(fids):.2f}", flush=True)
    if 0.0 in means and 10.0 in means:
        print(f"ratio FID(lambda=0) / FID(lambda=10) = {means[0.0] / means[10.0]:.1f}x (target >= 5x)")
    if 10.0 in means:
        print(f"ratio FID(lambda=10) / real floor = {means[10.0] / floor:.1f}x")


if __name__ == "__main__":
    main()
