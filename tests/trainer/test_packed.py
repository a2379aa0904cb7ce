"""Trial packing: K members trained as one batched model compute what K solo runs compute."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from trainer.config import ConfigError, PackReplay, TrainConfig
from trainer.models import build_models
from trainer.packed import MemberEnded, PackRun, pack_key, pack_mlps, replay, train_packed
from trainer.train import Diverged, TrainResult, train

QUICK = {"steps": 60, "eval_every": 30, "eval_samples": 300}
# widths, λ, rates, betas and seeds all differ between members
MEMBERS = [
    {"seed": 0, "g_width": 64, "d_width": 128, "lambda": 10.0, "lr_g": 2e-4},
    {"seed": 1, "g_width": 128, "d_width": 64, "lambda": 1.0, "lr_d": 5e-4, "beta1": 0.0},
    {"seed": 2, "g_width": 96, "d_width": 96, "lambda": 5.0, "beta2": 0.99},
    {"seed": 3, "g_width": 64, "d_width": 64, "lambda": 20.0, "lr_g": 1e-4},
]


def configs(**shared: object) -> list[TrainConfig]:
    return [TrainConfig.from_dict({**QUICK, **m, **shared}) for m in MEMBERS]


def test_a_packed_member_starts_from_its_solo_weights() -> None:
    cs = configs()
    g, d = pack_mlps(cs, (1, 8, 8))
    z = torch.randn(len(cs), 16, 32)
    x = torch.rand(len(cs), 16, 1, 8, 8) * 2 - 1
    fake, logits = g(z), d(x)
    for k, c in enumerate(cs):
        torch.manual_seed(c.seed)
        g_solo, d_solo = build_models(c, (1, 8, 8))
        assert torch.allclose(fake[k], g_solo(z[k]), atol=1e-6)
        assert torch.allclose(logits[k], d_solo(x[k]), atol=1e-5)


@pytest.mark.parametrize(
    "aux_loss",
    ["r1", *(pytest.param(a, marks=pytest.mark.slow) for a in ("r2", "wgan-gp", "consensus", "r1-lazy", "none"))],
)
def test_packed_members_evaluate_as_their_solo_runs(aux_loss: str) -> None:
    # The same algorithm, batched: the first eval agrees closely. (Later evals drift apart
    # as GAN trajectories amplify float reassociation; bench/packing.py compares spreads.)
    cs = configs(aux_loss=aux_loss)
    packed = train_packed(cs)
    for c, outcome in zip(cs, packed, strict=True):
        assert isinstance(outcome, TrainResult), outcome
        solo = train(c)
        assert [m["step"] for m in outcome.history] == [30, 60]
        first, first_solo = outcome.history[0]["fid"], solo.history[0]["fid"]
        assert first == pytest.approx(first_solo, rel=1e-4), (c.seed, first, first_solo)


def test_a_member_ended_by_its_hook_leaves_and_the_rest_go_on() -> None:
    cs = configs()
    reference = train_packed(cs)

    def prune_at_first_eval(step: int, metrics: dict[str, object]) -> None:
        raise MemberEnded(f"pruned at {step}")

    outcomes = train_packed([cs[0], PackRun(cs[1], on_eval=prune_at_first_eval), *cs[2:]])
    assert isinstance(outcomes[1], MemberEnded) and str(outcomes[1]) == "pruned at 30"
    for k in (0, 2, 3):
        result, ref = outcomes[k], reference[k]
        assert isinstance(result, TrainResult) and isinstance(ref, TrainResult)
        assert result.steps == 60
        assert result.fid == pytest.approx(ref.fid, rel=1e-4)


def test_a_diverging_member_fails_alone() -> None:
    cs = configs()
    cs[2] = cs[2].replace(lr_g=1000.0, lr_d=1000.0, beta1=0.0, beta2=0.0)  # sign-SGD at lr 1000: overflows
    outcomes = train_packed(cs)
    assert isinstance(outcomes[2], Diverged), outcomes[2]
    with pytest.raises(Diverged) as solo:
        train(cs[2])
    assert outcomes[2].step == solo.value.step
    assert all(isinstance(outcomes[k], TrainResult) and outcomes[k].steps == 60 for k in (0, 1, 3))


def test_members_that_differ_in_more_than_the_searched_knobs_do_not_pack() -> None:
    a = TrainConfig.from_dict(QUICK)
    assert pack_key(a) == pack_key(a.replace(g_width=32, lr_g=1e-3, seed=7, **{"lambda": 3.0}))
    assert pack_key(a) != pack_key(a.replace(batch_size=32))
    assert pack_key(a) != pack_key(a.replace(**{"lambda": 0.0}))  # the plain GAN draws nothing for L_A
    with pytest.raises(ValueError, match="differ"):
        train_packed([a, a.replace(depth=3)])


def stop_after(n: int) -> Callable[[], bool]:
    """should_stop that says stop on its (n+1)-th poll (polled before every step)."""
    polls = iter(range(10**9))
    return lambda: next(polls) >= n


@pytest.mark.slow
def test_a_stopped_pack_resumes_exactly_and_its_checkpoints_resume_alone(tmp_path: Path) -> None:
    cs = configs()
    dirs = [tmp_path / f"m{k}" for k in range(len(cs))]
    whole = train_packed([PackRun(c, out_dir=tmp_path / f"whole{k}") for k, c in enumerate(cs)])
    first = train_packed([PackRun(c, should_stop=stop_after(40), out_dir=p) for c, p in zip(cs, dirs, strict=True)])
    assert all(isinstance(o, TrainResult) and o.stopped and o.steps == 40 for o in first)
    assert all((p / "checkpoint.pt").exists() for p in dirs)
    # The pack resumes from the members' checkpoints where it stopped, to the same end.
    resumed = train_packed([PackRun(c, out_dir=p) for c, p in zip(cs, dirs, strict=True)])
    for a, b in zip(whole, resumed, strict=True):
        assert isinstance(a, TrainResult) and isinstance(b, TrainResult)
        assert [m["step"] for m in b.history] == [30, 60]
        assert b.fid == a.fid
    # A member's checkpoint is train's: a retried member resumes alone from it.
    alone_dir = tmp_path / "alone"
    train_packed([PackRun(cs[0], should_stop=stop_after(40), out_dir=alone_dir), cs[1]])
    alone = train(cs[0], out_dir=alone_dir)
    assert [m["step"] for m in alone.history] == [30, 60]
    assert alone.history[0]["fid"] == whole[0].history[0]["fid"]  # the eval the pack made
    assert alone.fid == pytest.approx(whole[0].fid, rel=0.05)  # trained on alone from step 40
    assert (alone_dir / "generator.pt").exists() and (alone_dir / "samples.png").exists()


def test_a_replay_of_the_pack_reproduces_a_member_bit_for_bit(tmp_path: Path) -> None:
    # A member's numbers depend on which others share its kernels: the pack trains again,
    # each member leaving where it left, and the member's FID comes back exactly.
    cs = configs()
    ran = train_packed([cs[0], PackRun(cs[1], on_eval=prune_at_30), *cs[2:]])
    assert isinstance(ran[1], MemberEnded)
    for position in (0, 3):
        record = {
            "position": position,
            "members": [c.to_dict() for c in cs],
            "left": [None, 30, None, None],
            "cpu_threads": torch.get_num_threads(),
        }
        pack = PackReplay.from_dict(record, cs[position])
        again = replay(pack, out_dir=tmp_path / f"replay{position}")
        result = ran[position]
        assert isinstance(result, TrainResult)
        assert again.fid == result.fid and [m["fid"] for m in again.history] == [m["fid"] for m in result.history]
        assert (tmp_path / f"replay{position}" / "generator.pt").exists()


def prune_at_30(step: int, metrics: dict[str, object]) -> None:
    if step >= 30:
        raise MemberEnded("pruned")


def a_pack_refilled_at_30(**refill_dirs: Path) -> tuple[list[TrainResult | BaseException], list[tuple[int, int]]]:
    """Members 0 and 1 start (1 is pruned at its first eval); at pack step 30 members 2 (a
    width of its own) and 3 (member 0's widths) join the two free places of four."""
    cs, asked = configs(), []

    def refill(free: int, step: int) -> list[PackRun]:
        asked.append((free, step))
        if step != 30:
            return []
        return [PackRun(cs[k], out_dir=refill_dirs.get(f"m{k}")) for k in (2, 3)]

    outcomes = train_packed([cs[0], PackRun(cs[1], on_eval=prune_at_30)], refill=refill, capacity=4)
    return outcomes, asked


def test_runs_join_a_running_pack_at_its_evals_and_train_as_they_would_alone(tmp_path: Path) -> None:
    outcomes, asked = a_pack_refilled_at_30(m3=tmp_path / "m3")
    assert asked == [(3, 30), (2, 60)], "asked at every eval step with places free while members train"
    assert isinstance(outcomes[1], MemberEnded)
    cs = configs()
    for k in (0, 2, 3):  # outcomes in join order: 0, 1, then 2 and 3
        result = outcomes[k]
        assert isinstance(result, TrainResult), result
        assert [m["step"] for m in result.history] == [30, 60] and result.steps == 60
        first_solo = train(cs[k]).history[0]["fid"]
        assert result.history[0]["fid"] == pytest.approx(first_solo, rel=1e-4), k
    # A joined member's files are a run's: it resumes alone from its checkpoint.
    assert (tmp_path / "m3" / "generator.pt").exists()
    assert [m["step"] for m in train(cs[3], out_dir=tmp_path / "m3").history] == [30, 60]
    # A run with a checkpoint does not join (its step would not line up with the pack's).
    refused = train_packed(cs[:1], refill=lambda free, step: [PackRun(cs[3], out_dir=tmp_path / "m3")], capacity=2)
    assert isinstance(refused[1], ValueError) and "checkpoint" in str(refused[1])


def test_a_replay_reproduces_a_member_that_joined_bit_for_bit(tmp_path: Path) -> None:
    ran, _ = a_pack_refilled_at_30()
    cs = configs()
    for position in (0, 2):
        record = {
            "position": position,
            "members": [c.to_dict() for c in cs],
            "left": [None, 30, None, None],
            "joined": [0, 0, 30, 30],
            "cpu_threads": torch.get_num_threads(),
        }
        again = replay(PackReplay.from_dict(record, cs[position]), out_dir=tmp_path / f"replay{position}")
        result = ran[position]
        assert isinstance(result, TrainResult)
        assert [m["fid"] for m in again.history] == [m["fid"] for m in result.history], position


def test_a_pack_record_that_does_not_match_its_config_is_refused() -> None:
    cs = configs()
    record = {"position": 1, "members": [c.to_dict() for c in cs], "left": [None] * 4}
    with pytest.raises(ConfigError, match="member 1 is not this config"):
        PackReplay.from_dict(record, cs[0])
    with pytest.raises(ConfigError, match="position 7"):
        PackReplay.from_dict({**record, "position": 7}, cs[1])
    with pytest.raises(ConfigError, match="missing key 'left'"):
        PackReplay.from_dict({"position": 0, "members": []}, cs[0])
