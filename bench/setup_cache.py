"""The race's per-slot caches as a lever on their own: a trial's wall time with the process's
data/extractor/statistics cache (trainer.train._SETUPS) kept, against the same trial with it
emptied first, interleaved in this process.

    .venv/bin/python -m bench.setup_cache [--trials 6] [--repeats 2] [--steps 3000]

Trials are drawn as bench.packing draws them (the demo's space, seeded) on the race's base
config (digits, MLP, R1, FID every 500 steps on 1,000 samples), one thread as a CPU slot has.
"Cold" is what a slot without the cache would pay per trial: the data set loaded and the
evaluator (extractor, real statistics, PRDC's real neighbours) rebuilt from the on-disk
caches, which are warm in both, as they are in a slot after its first trial. Printed: the
setup alone (cold and warm), each trial's wall time both ways, and the ratio of the sums
(above 1: the cache gains).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.packing import draw
from service.worker import limit_threads
from trainer import train as train_module
from trainer.train import _data_and_evaluator, train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    limit_threads(1)
    configs = draw("mixed", args.trials, args.steps, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        train(configs[0].replace(steps=1, eval_every=1), data_dir=data_dir)  # the on-disk caches
        setup = {"cold": float("inf"), "warm": float("inf")}
        for _ in range(5):
            train_module._SETUPS.clear()
            for kind in ("cold", "warm"):
                t = time.perf_counter()
                _data_and_evaluator(configs[0], torch.device("cpu"), data_dir)
                setup[kind] = min(setup[kind], time.perf_counter() - t)
        print(f"setup alone (best of 5): cold {setup['cold'] * 1e3:.0f} ms, warm {setup['warm'] * 1e3:.1f} ms")
        total = {"cold": 0.0, "warm": 0.0}
        for r in range(args.repeats):
            for i, config in enumerate(configs):
                order = ("cold", "warm") if (i + r) % 2 == 0 else ("warm", "cold")
                walls = {}
                for kind in order:
                    if kind == "cold":
                        train_module._SETUPS.clear()
                    t = time.perf_counter()
                    train(config, data_dir=data_dir)
                    walls[kind] = time.perf_counter() - t
                    total[kind] += walls[kind]
                print(f"trial {i} (g {config.g_width}, d {config.d_width}): "
                      f"cold {walls['cold']:.2f} s, warm {walls['warm']:.2f} s", flush=True)  # fmt: skip
    n = args.trials * args.repeats
    print(f"mean trial: cold {total['cold'] / n:.2f} s, warm {total['warm'] / n:.2f} s; "
          f"cold/warm = {total['cold'] / total['warm']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
