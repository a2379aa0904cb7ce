"""Trainer speed against a minimal plain PyTorch loop, and the peak memory of one run.

    .venv/bin/python -m bench.trainer_speed [--steps 2000] [--repeats 3]

Both loops train the same MLP pair with R1 (λ = 10) on digits in this process, interleaved,
best of N each; ``train`` is timed by its own ``train_seconds`` (evaluation excluded, as the
plain loop has none). The plain loop also runs with torch's default (unfused) Adam, the
reference for the fused update ``train`` uses (trainer.train.adam). Peak RSS is ru_maxrss
of a child process running one default digits run (3,000 steps, evals included) through the CLI.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time

from bench.plain_loop import plain_gan
from trainer.config import TrainConfig
from trainer.data import load_dataset
from trainer.train import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = TrainConfig.from_dict({"steps": args.steps, "eval_every": args.steps, "eval_samples": 100})
    data = load_dataset("digits")
    train(config.replace(steps=50, eval_every=50))  # warm caches (classifier, statistics)
    plain_best, unfused_best, ours_best = float("inf"), float("inf"), float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        plain_gan(config, data)
        plain_best = min(plain_best, time.perf_counter() - t)
        t = time.perf_counter()
        plain_gan(config, data, fused=False)
        unfused_best = min(unfused_best, time.perf_counter() - t)
        ours_best = min(ours_best, train(config).train_seconds)
    plain_rate, unfused_rate, ours_rate = (args.steps / s for s in (plain_best, unfused_best, ours_best))
    print(f"plain loop: {plain_rate:.1f} steps/s   train(): {ours_rate:.1f} steps/s")
    print(f"ratio train/plain = {ours_rate / plain_rate:.3f} (target >= 0.95)")
    print(f"plain loop with torch's default Adam: {unfused_rate:.1f} steps/s; fused/default = "
          f"{plain_rate / unfused_rate:.2f}x")  # fmt: skip

    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "trainer.cli", "train", "--out", out, "--json"], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of one default digits run (3000 steps): {peak_mb:.0f} MB (target <= 600 MB)")


if __name__ == "__main__":
    main()
