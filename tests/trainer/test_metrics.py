"""FID against pytorch-fid's method (scipy.linalg.sqrtm in float64), precision/recall/
density/coverage against hand-computed cases, the feature extractors, and mode coverage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.fid_speed import sqrtm_fid  # pytorch-fid's method, float64
from trainer import metrics
from trainer.data import Dataset
from trainer.metrics import (
    INCEPTION_WEIGHTS,
    RandomCNNFeatures,
    frechet_distance,
    gaussian_stats,
    knn_radii,
    make_extractor,
    mode_coverage,
    prdc,
)


def random_cov(rng: np.random.Generator, d: int, eigenvalues: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * eigenvalues) @ q.T


def cases() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    d = 64
    out = []
    a = rng.standard_normal((500, d))
    b = rng.standard_normal((500, d)) * 1.3 + 0.2
    out.append(("random", a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))
    ill1 = random_cov(rng, d, np.logspace(-8, 2, d))
    ill2 = random_cov(rng, d, np.logspace(-7, 1, d))
    out.append(("ill-conditioned", rng.standard_normal(d), ill1, rng.standard_normal(d), ill2))
    # rank 20 of 64: fewer samples than dimensions, as with a small eval set
    f1, f2 = rng.standard_normal((21, d)), rng.standard_normal((21, d)) + 0.5
    out.append(("singular", f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)))
    return out


@pytest.mark.parametrize("case", cases(), ids=lambda c: c[0])
def test_fid_matches_sqrtm_reference(case: tuple) -> None:
    _, mu1, s1, mu2, s2 = case
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = sqrtm_fid(mu1, s1, mu2, s2)
    assert abs(ours - ref) / abs(ref) <= 1e-6, (ours, ref)


def test_fid_of_a_set_against_itself_is_zero() -> None:
    feats = np.random.default_rng(1).standard_normal((300, 32))
    mu, sigma = gaussian_stats(feats)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_known_gaussians() -> None:
    # N(0, I) vs N(m, 4I) in d dims: ||m||² + d + 4d − 2·2d = ||m||² + d
    d = 10
    m = np.full(d, 0.5)
    assert frechet_distance(np.zeros(d), np.eye(d), m, 4 * np.eye(d)) == pytest.approx(2.5 + d, rel=1e-12)


def test_fid_accepts_tensors_and_rejects_mismatched_shapes() -> None:
    mu, sigma = torch.zeros(3), torch.eye(3)
    assert frechet_distance(mu, sigma, mu + 1, sigma) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="shapes differ"):
        frechet_distance(mu, sigma, torch.zeros(4), torch.eye(4))


def test_mode_coverage() -> None:
    modes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    on_two = torch.cat([modes[:2].repeat(50, 1), torch.tensor([[5.0, 5.0]] * 25)])
    result = mode_coverage(on_two + 0.001, modes, std=0.01)
    assert result == {"modes": 2, "hq_fraction": pytest.approx(100 / 125)}


def column(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)[:, None]


def test_prdc_by_hand() -> None:
    # Reals in two clusters {0, 1} and {10, 11} (k=1 radii all 1); fakes near the first
    # cluster and one between. Fake radii (k=1): 0.5, 0.5, 4.3.
    real, fake = column(0, 1, 10, 11), column(0.2, 0.7, 5)
    got = prdc(real, fake, k=1)
    assert got == pytest.approx(
        {
            "precision": 2 / 3,  # 5 lies in no real ball
            "recall": 1 / 2,  # 10 and 11 lie in no fake ball (5's radius is 4.3)
            "density": 4 / 3,  # 0.2 and 0.7 each in the balls of 0 and 1: 4 / (k·M = 3)
            "coverage": 1 / 2,  # 10 and 11: nearest fake 5 and 6 away, radius 1
        }
    )
    assert list(knn_radii(real, k=1)) == pytest.approx([1, 1, 1, 1])
    assert list(knn_radii(fake, k=1)) == pytest.approx([0.5, 0.5, 4.3])


def test_prdc_of_a_set_against_itself_and_against_a_far_one() -> None:
    a = np.random.default_rng(2).standard_normal((300, 16))
    same = prdc(a, a)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["density"] == pytest.approx(1.0, abs=0.02)  # each ball holds itself and k-1 others
    assert prdc(a, a + 1000.0) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_with_cached_radii_and_tensors() -> None:
    rng = np.random.default_rng(3)
    real, fake = rng.standard_normal((200, 8)), rng.standard_normal((150, 8)) * 1.5
    assert prdc(real, fake, real_radii=knn_radii(real)) == prdc(torch.from_numpy(real), fake)
    # a wider fake set: reals are well covered, fewer fakes lie among reals
    got = prdc(real, fake)
    assert got["recall"] > got["precision"]
    with pytest.raises(ValueError, match="shapes differ"):
        prdc(real, fake[:, :4])
    with pytest.raises(ValueError, match="need more than k=5"):
        knn_radii(real[:5])


def image_set(labels: torch.Tensor | None = None, shape: tuple[int, ...] = (3, 32, 32)) -> Dataset:
    x = torch.rand(12, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return Dataset("folder:x", x, labels, key="test")


def test_random_cnn_is_fixed_whatever_the_global_seed() -> None:
    x = image_set().x
    torch.manual_seed(1)
    a = RandomCNNFeatures((3, 32, 32), torch.device("cpu"))(x)
    torch.manual_seed(2)
    torch.rand(100)
    b = RandomCNNFeatures((3, 32, 32), torch.device("cpu"))(x)
    assert torch.equal(a, b) and a.shape == (12, 256)
    assert RandomCNNFeatures((1, 28, 28), torch.device("cpu"))(x[:, :1, :28, :28]).shape == (12, 256)
    assert RandomCNNFeatures.key == "randcnn1"


def test_auto_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GAT_TUNE_INCEPTION_WEIGHTS", raising=False)
    points = Dataset("ring8", torch.zeros(10, 2), None, key="p")
    assert make_extractor("auto", points, tmp_path).key == "raw"
    assert make_extractor("auto", image_set(), tmp_path).key == "randcnn1"  # no weights: no download
    assert make_extractor("raw", image_set(), tmp_path).key == "raw"  # still there when asked for

    class Inception:  # stands in for the network: pytorch-fid and its weights are not here
        key = "inception"

        def __init__(self, data_dir: Path, device: torch.device) -> None:
            pass

    monkeypatch.setattr(metrics, "InceptionFeatures", Inception)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / INCEPTION_WEIGHTS).write_bytes(b"weights")
    assert make_extractor("auto", image_set(), tmp_path).key == "inception"
    monkeypatch.setenv("GAT_TUNE_INCEPTION_WEIGHTS", str(tmp_path / "missing.pth"))
    assert make_extractor("auto", image_set(), tmp_path).key == "randcnn1"  # the named file wins
