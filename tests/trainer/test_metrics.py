"""FID against pytorch-fid's method (scipy.linalg.sqrtm in float64), and mode coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.fid_speed import sqrtm_fid  # pytorch-fid's method, float64
from trainer.metrics import frechet_distance, gaussian_stats, mode_coverage


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
