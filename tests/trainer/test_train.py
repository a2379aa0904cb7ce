"""Short CPU runs of the training loop."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.plain_loop import plain_gan
from tests.conftest import FASHION_CLASSIFIER_STEPS, FASHION_MNIST_TIMEOUT, needs_fashion_mnist
from trainer import metrics
from trainer.config import PRDC_METRICS, TrainConfig
from trainer.data import load_dataset
from trainer.metrics import INCEPTION_WEIGHTS
from trainer.train import FINITE_CHECK_EVERY, CheckpointMismatch, Diverged, _check_finite, _Evaluator, train

QUICK = {"steps": 300, "eval_every": 150, "eval_samples": 500, "g_width": 128, "d_width": 128}


def quick(**changes: object) -> TrainConfig:
    return TrainConfig.from_dict({**QUICK, **changes})


def same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.slow
def test_r1_at_lambda_10_beats_the_plain_gan() -> None:
    plain = train(quick(**{"lambda": 0.0}))
    gat = train(quick(**{"lambda": 10.0}))
    assert gat.fid < plain.fid / 2, (gat.fid, plain.fid)


@pytest.mark.slow
def test_lambda_zero_is_the_plain_gan_bit_for_bit() -> None:
    config = quick(steps=60, eval_every=60, aux_loss="r1", **{"lambda": 0.0})
    reference = plain_gan(config, load_dataset("digits"))
    for aux in ("r1", "wgan-gp", "consensus", "none"):
        result = train(config.replace(aux_loss=aux))
        assert result.generator is not None
        assert same_params(result.generator, reference), aux


def test_same_seed_same_fid_and_evals_do_not_change_the_run() -> None:
    a = train(quick(steps=120, eval_every=40))
    b = train(quick(steps=120, eval_every=40))
    c = train(quick(steps=120, eval_every=120))
    assert a.fid == b.fid
    assert [m["fid"] for m in a.history] == [m["fid"] for m in b.history]
    assert a.fid == c.fid
    assert train(quick(steps=120, eval_every=120, seed=1)).fid != a.fid


def test_on_eval_sees_every_eval_and_may_stop_the_run() -> None:
    seen: list[tuple[int, float]] = []
    train(quick(steps=100, eval_every=40), on_eval=lambda step, m: seen.append((step, m["fid"])))
    assert [s for s, _ in seen] == [40, 80, 100]

    class Pruned(Exception):
        pass

    def prune(step: int, metrics: dict) -> None:
        raise Pruned(step)

    with pytest.raises(Pruned):
        train(quick(steps=100, eval_every=40), on_eval=prune)


def test_stop_and_resume_reach_the_same_result(tmp_path: Path) -> None:
    config = quick(steps=120, eval_every=40)
    whole = train(config, out_dir=tmp_path / "whole")

    calls = {"n": 0}

    def stop_after_50() -> bool:
        calls["n"] += 1
        return calls["n"] > 50

    first = train(config, out_dir=tmp_path / "split", should_stop=stop_after_50)
    assert first.stopped and first.steps == 50
    resumed = train(config, out_dir=tmp_path / "split")
    assert resumed.steps == 120 and not resumed.stopped
    assert resumed.fid == whole.fid
    assert resumed.generator is not None and whole.generator is not None
    assert same_params(resumed.generator, whole.generator)
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [40, 80, 120]


def test_an_eval_written_before_a_crash_beat_its_checkpoint_is_listed_once(tmp_path: Path) -> None:
    """kill -9 between an eval's line and its checkpoint: the resumed run trains that eval
    again; metrics.jsonl lists it once, as the checkpoint's history has it."""
    run = tmp_path / "run"
    train(quick(steps=80, eval_every=40), out_dir=run)  # checkpointed at 80
    with open(run / "metrics.jsonl", "a") as f:  # the eval at 120 written, its checkpoint never
        f.write(json.dumps({"step": 120, "fid": 1.0}) + "\n")
    resumed = train(quick(steps=160, eval_every=40), out_dir=run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [40, 80, 120, 160]
    assert json.loads(lines[2]) == resumed.history[2]  # the retrained eval, not the stale one


def test_r1_lazy_trains_finite_and_resumes_on_its_schedule(tmp_path: Path) -> None:
    # ring8 with small nets: seconds. The lazy schedule follows the step, so a resumed run
    # regularises on the same D steps as an uninterrupted one.
    config = quick(dataset="ring8", aux_loss="r1-lazy", d_steps=2, steps=50, eval_every=25, eval_samples=200)
    config = config.replace(g_width=32, d_width=32)
    whole = train(config, out_dir=tmp_path / "whole")
    assert all(math.isfinite(m[k]) for m in whole.history for k in ("fid", "loss_d", "loss_g", "loss_aux"))
    assert whole.fid != train(config.replace(aux_loss="r1")).fid != train(config.replace(aux_loss="none")).fid

    calls = {"n": 0}

    def stop_after_19() -> bool:
        calls["n"] += 1
        return calls["n"] > 19

    assert train(config, out_dir=tmp_path / "split", should_stop=stop_after_19).steps == 19
    resumed = train(config, out_dir=tmp_path / "split")
    assert resumed.fid == whole.fid


def test_run_directory_contents(tmp_path: Path) -> None:
    result = train(quick(steps=40, eval_every=20), out_dir=tmp_path)
    assert TrainConfig.load(tmp_path / "config.json") == result.config
    for name in ("checkpoint.pt", "samples.png", "samples/step-0000020.png", "samples/step-0000040.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "result.json").read_text())["fid"] == result.fid
    with pytest.raises(CheckpointMismatch, match="lr_g"):
        train(quick(steps=40, eval_every=20, lr_g=1e-3), out_dir=tmp_path)


def test_a_run_trains_on_from_its_checkpoint_with_more_steps(tmp_path: Path) -> None:
    train(quick(steps=40, eval_every=20), out_dir=tmp_path)
    longer = train(quick(steps=80, eval_every=20), out_dir=tmp_path)
    assert longer.steps == 80
    assert [m["step"] for m in longer.history] == [20, 40, 60, 80]
    assert longer.fid == train(quick(steps=80, eval_every=20)).fid


def test_every_eval_names_its_features_and_measures_prdc() -> None:
    result = train(quick(steps=40, eval_every=20))
    key = load_dataset("digits").key
    assert result.features == f"classifier1-{key}"
    for m in result.history:
        assert m["features"] == result.features
        assert all(0.0 <= m[name] <= 1.0 for name in ("precision", "recall", "coverage")), m
        assert m["density"] >= 0.0
    assert train(quick(steps=40, eval_every=40, feature_extractor="raw")).features == "raw"


def test_non_finite_samples_score_the_worst(data_dir: Path) -> None:
    config = quick(eval_samples=50)
    data = load_dataset("digits")
    evaluate = _Evaluator(config, data, torch.device("cpu"), data_dir)

    class Broken(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.full((len(z), *data.sample_shape), float("inf"))

    metrics, _ = evaluate(Broken())
    assert metrics == {"features": evaluate.features, "fid": math.inf, **dict.fromkeys(PRDC_METRICS, 0.0)}


def test_a_checkpoint_on_other_features_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """feature_extractor auto resolves anew at each start: Inception weights added since the
    checkpoint would put the resumed evals on other features than its history."""
    monkeypatch.delenv("GAT_TUNE_INCEPTION_WEIGHTS", raising=False)
    images, cache = tmp_path / "images", tmp_path / "cache"
    images.mkdir()
    for i in range(8):
        Image.fromarray(np.full((8, 8), 30 * i, dtype=np.uint8), "L").save(images / f"{i}.png")
    config = TrainConfig.from_dict(
        {"dataset": f"folder:{images}", "image_size": 8, "steps": 4, "eval_every": 2, "eval_samples": 8,
         "batch_size": 4, "g_width": 16, "d_width": 16}
    )  # fmt: skip
    first = train(config, out_dir=tmp_path / "run", data_dir=cache)
    assert {m["features"] for m in first.history} == {"randcnn1"}

    class Inception:  # pytorch-fid and its weights are not here; any fixed features do
        key = "inception"

        def __init__(self, data_dir: Path, device: torch.device) -> None:
            pass

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :8]

    monkeypatch.setattr(metrics, "InceptionFeatures", Inception)
    (cache / "weights").mkdir()
    (cache / "weights" / INCEPTION_WEIGHTS).write_bytes(b"weights")
    with pytest.raises(CheckpointMismatch, match="computed on randcnn1 features, this run's would be on inception"):
        train(config.replace(steps=8), out_dir=tmp_path / "run", data_dir=cache)
    assert train(config.replace(steps=8), out_dir=tmp_path / "fresh", data_dir=cache).features == "inception"


# Consensus with a huge learning rate overflows within a few steps (deterministic on CPU).
DIVERGING = {"aux_loss": "consensus", "lr_g": 1000.0, "lr_d": 1000.0, "beta1": 0.0, "g_width": 256, "d_width": 256}


def test_divergence_names_the_step() -> None:
    with pytest.raises(Diverged, match=r"diverged at step \d+: .* is not finite") as info:
        train(quick(**DIVERGING))
    assert 1 <= info.value.step <= 300


def test_divergence_reports_the_first_bad_step() -> None:
    losses = torch.zeros(FINITE_CHECK_EVERY, 3)
    losses[(70 - 1) % FINITE_CHECK_EVERY, 1] = float("nan")  # step 70, generator loss
    losses[(75 - 1) % FINITE_CHECK_EVERY, 0] = float("inf")
    with pytest.raises(Diverged, match="diverged at step 70: generator loss is not finite"):
        _check_finite(losses, 80)
    _check_finite(torch.zeros(FINITE_CHECK_EVERY, 3), 80)  # finite: no error


def test_ring8_reports_modes_and_quality() -> None:
    result = train(TrainConfig.from_dict({"dataset": "ring8", "steps": 200, "eval_every": 200, "eval_samples": 500}))
    assert set(result.metrics) >= {"fid", "modes", "hq_fraction", "precision", "coverage"}
    assert result.features == "raw"
    assert 0 <= result.metrics["modes"] <= 8
    assert 0.0 <= result.metrics["hq_fraction"] <= 1.0


def test_dcgan_on_digits() -> None:
    result = train(quick(model="dcgan", g_width=32, d_width=32, steps=20, eval_every=20, batch_size=16))
    assert result.fid > 0 and result.steps == 20


@needs_fashion_mnist
@pytest.mark.slow
@pytest.mark.timeout(FASHION_MNIST_TIMEOUT)
@pytest.mark.parametrize("model", ["mlp", "dcgan"])
def test_trains_on_real_fashion_mnist_at_28_px(model: str, tmp_path: Path, fashion_mnist_cache: Path) -> None:
    config = TrainConfig.from_dict(
        {"dataset": "fashion-mnist", "model": model, "g_width": 32, "d_width": 32, "steps": 4, "eval_every": 4,
         "eval_samples": 64, "batch_size": 16}
    )  # fmt: skip
    result = train(config, out_dir=tmp_path)
    assert result.steps == 4 and math.isfinite(result.fid) and result.fid > 0
    assert result.generator is not None
    assert result.generator(torch.zeros(2, config.z_dim)).shape == (2, 1, 28, 28)
    assert (tmp_path / "samples.png").is_file()
    # FID's features come from a classifier trained on the set's labels (cached once per session,
    # on FASHION_CLASSIFIER_STEPS steps): images and labels line up (chance is 10 %)
    saved = [json.loads(f.read_text()) for f in (fashion_mnist_cache / "features").glob("classifier*.json")]
    (record,) = [s for s in saved if s["dataset"] == "fashion-mnist"]
    assert record["train_steps"] == FASHION_CLASSIFIER_STEPS and record["accuracy"] > 0.75, record


def test_cli_json_last_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    quick(steps=30, eval_every=30).save(cfg)
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "train", "-c", str(cfg), "--steps", "20", "--out", str(tmp_path / "r"),
         "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["steps"] == 20 and last["fid"] > 0 and last["seconds"] > 0
    assert (tmp_path / "r" / "metrics.jsonl").is_file()


def test_cli_divergence_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    quick(**DIVERGING).save(cfg)
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "train", "-c", str(cfg), "--out", str(tmp_path / "r")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("gat-tune train: error: diverged at step")
    assert "Traceback" not in proc.stderr


def test_cli_off_a_terminal_prints_progress_lines(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    quick(dataset="ring8", steps=200, eval_every=100, eval_samples=200).save(cfg)  # no classifier to train
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "train", "-c", str(cfg), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert lines, "no progress at all when stderr is not a terminal"
    assert re.fullmatch(r"step 200/200 \(100%\), last FID \d+\.\d\d, \d+\.\d steps/s", lines[-1]), lines
    assert sum(line.startswith("step 200/200 ") for line in lines) == 1, lines  # not once before its eval too


def test_progress_lines_every_5_percent_and_at_every_eval(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from trainer import cli

    clock = iter(range(0, 10_000, 2))  # two seconds between calls: the rate limit never bites
    monkeypatch.setattr(cli.time, "monotonic", lambda: float(next(clock)))
    lines = cli._Lines(1000)
    for step in range(10, 1001, 10):
        lines(step, {"step": 330, "fid": 12.5} if step >= 330 else {})
    printed = capsys.readouterr().err.splitlines()
    steps = [int(line.split()[1].split("/")[0]) for line in printed]
    assert steps == sorted({*range(50, 1001, 50), 330}), printed
    assert printed[0].endswith("last FID -, 5.0 steps/s") and "last FID 12.50" in printed[-1]
