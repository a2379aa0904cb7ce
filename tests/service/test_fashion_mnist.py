"""A short study on real Fashion-MNIST (28x28), over HTTP, trained by a worker pool."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import FASHION_MNIST_TIMEOUT, needs_fashion_mnist
from tests.service.conftest import load, stop_when_done, tiny


@needs_fashion_mnist
@pytest.mark.slow
@pytest.mark.timeout(FASHION_MNIST_TIMEOUT)
def test_a_worker_pool_tunes_a_dcgan_on_fashion_mnist(
    fashion_mnist_cache: Path,
    client: TestClient,
    start_pool: Callable[..., subprocess.Popen[str]],
    database_url: str,
) -> None:
    spec = tiny(
        name="fashion",
        n_trials=2,
        base={"dataset": "fashion-mnist", "model": "dcgan", "steps": 6, "eval_every": 3, "eval_samples": 64,
              "batch_size": 16, "g_width": 16, "d_width": 16},
    )  # fmt: skip
    assert client.post("/studies", json=spec).status_code == 201
    stop_when_done(start_pool("--per-device", "2"), client, "fashion")

    study = client.get("/studies/fashion").json()
    assert study["status"] == "completed" and study["trial_counts"]["COMPLETE"] == 2, study
    for trial in load(database_url, "fashion").trials:
        assert trial.value is not None and trial.value > 0
        assert sorted(trial.intermediate_values) == [3, 6]
    assert client.get("/studies/fashion/best").json()["dataset"] == "fashion-mnist"
