"""What an eval costs, by the features it is computed on, and what PRDC adds to it.

    .venv/bin/python -m bench.eval_cost [--repeats 3]

Two figures, each a ratio measured in this process (interleaved, best of N):

1. The 4-step 32 px folder run (6 random RGB images, a DCGAN at width 16, eval_samples 8:
   tests/trainer/test_data.py's case), whole ``train`` call with ``feature_extractor: raw``
   (what ``auto`` chose for unlabelled images before issue 13) against ``auto`` (now the
   fixed random CNN, ``randcnn1``). Caches warm: the real statistics are computed once.
2. One eval of a digits generator (classifier features, eval_samples 2,000, 1,797 real
   samples on PRDC's side) with FID alone against FID + precision/recall/density/coverage.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainer.config import TrainConfig
from trainer.data import load_dataset
from trainer.models import build_models
from trainer.train import _Evaluator, train


def best_of(repeats: int, fns: Mapping[str, Callable[[], object]]) -> dict[str, float]:
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="eval-cost-"))
    images, cache = root / "images", root / "cache"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(images / f"{i}.png")
    folder = TrainConfig.from_dict(
        {"dataset": f"folder:{images}", "model": "dcgan", "g_width": 16, "d_width": 16, "steps": 4,
         "eval_every": 4, "eval_samples": 8, "batch_size": 4}
    )  # fmt: skip
    runs = {fe: (lambda fe=fe: train(folder.replace(feature_extractor=fe), data_dir=cache)) for fe in ("raw", "auto")}
    for fn in runs.values():
        fn()  # warm: real statistics, PRDC's real side
    t = best_of(args.repeats, runs)
    print(f"4-step 32 px folder run: raw {t['raw']:.2f} s, auto (randcnn1) {t['auto']:.2f} s, "
          f"ratio raw/auto {t['raw'] / t['auto']:.1f}")  # fmt: skip

    config = TrainConfig.from_dict({"eval_samples": 2000})
    data = load_dataset("digits", data_dir=cache)
    with_prdc = _Evaluator(config, data, torch.device("cpu"), cache)
    fid_only = _Evaluator(config, data, torch.device("cpu"), cache)
    fid_only.real = None
    torch.manual_seed(0)
    g, _ = build_models(config, data.sample_shape)
    t = best_of(args.repeats, {"fid": lambda: fid_only(g), "prdc": lambda: with_prdc(g)})
    print(f"digits eval (classifier features, 2,000 samples): FID alone {t['fid'] * 1000:.0f} ms, "
          f"FID + PRDC {t['prdc'] * 1000:.0f} ms, ratio {t['prdc'] / t['fid']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
