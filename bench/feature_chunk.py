"""How many images the CNN feature extractors should take per forward pass.

    .venv/bin/python -m bench.feature_chunk [--repeats 3] [--n 10000] [--threads 1]

For each case, the same extractor over the same images with ``chunk`` set to each size,
interleaved, best of N, printed as a ratio to the old chunk (2,048 for the classifier,
1,024 for the random CNN; trainer.metrics.cnn_chunk's pick named beside), with the largest
difference from the old chunk's features (float reassociation only). Cases: the digits
classifier on an eval's 1,000 samples (8 px); the Fashion-MNIST classifier and the fixed
random CNN on ``--n`` real images (28 px), the pass that computes a data set's real
statistics. A worker runs one thread per slot with two CPU slots on two cores;
``--threads`` sets it (default: torch's).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from trainer.data import load_dataset
from trainer.metrics import ClassifierFeatures, FeatureExtractor, RandomCNNFeatures, cnn_chunk

CHUNKS = (2048, 1568, 1024, 512, 256, 128, 64)


def timed(extractor: FeatureExtractor, x: torch.Tensor, chunk: int) -> tuple[float, torch.Tensor]:
    extractor.chunk = chunk  # type: ignore[attr-defined]
    t = time.perf_counter()
    out = extractor(x)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=10_000, help="real Fashion-MNIST images per pass")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:  # the classifiers' caches (trained 1 step)
        run(args, Path(scratch))


def run(args: argparse.Namespace, scratch: Path) -> None:
    digits = load_dataset("digits")
    cases: list[tuple[str, FeatureExtractor, torch.Tensor, int]] = [
        ("digits classifier, 1,000 samples", ClassifierFeatures(digits, scratch, train_steps=1),
         torch.rand(1000, *digits.sample_shape) * 2 - 1, 2048),
    ]  # fmt: skip
    try:
        fashion = load_dataset("fashion-mnist")
    except Exception as exc:  # not installed: the digits case alone
        print(f"Fashion-MNIST cases skipped: {exc}")
    else:
        x = fashion.x[: args.n]
        classifier = ClassifierFeatures(fashion, scratch, train_steps=1)
        cases += [
            (f"Fashion-MNIST classifier, {len(x):,} images", classifier, x, 2048),
            (f"random CNN at 28 px, {len(x):,} images", RandomCNNFeatures(fashion.sample_shape, x.device), x, 1024),
        ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), best of {args.repeats}")
    for name, extractor, x, old in cases:
        best = dict.fromkeys(CHUNKS, float("inf"))
        reference = timed(extractor, x, old)[1]
        diff = dict.fromkeys(CHUNKS, 0.0)
        for _ in range(args.repeats):
            for chunk in CHUNKS:
                seconds, out = timed(extractor, x, chunk)
                best[chunk] = min(best[chunk], seconds)
                diff[chunk] = max(diff[chunk], float((out - reference).abs().max()))
        picked = cnn_chunk(tuple(x.shape[1:]), x.device, old)
        print(f"\n{name} (old chunk {old}: {best[old]:.3f} s; cnn_chunk picks {picked})")
        for chunk in CHUNKS:
            ratio = best[old] / best[chunk]
            print(f"  chunk {chunk:>5}: {best[chunk]:7.3f} s  {ratio:5.2f}x  max |diff| {diff[chunk]:.1e}")


if __name__ == "__main__":
    main()
