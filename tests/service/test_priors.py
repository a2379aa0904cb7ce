"""What a study tries first: the settings GAN papers train with (priors) and the best of
earlier studies (warm_start), enqueued first when a spec asks."""

from __future__ import annotations

from typing import Any, Literal

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from service.demo import DIGITS_DEMO
from service.priors import WarmSource, gan_priors, into_space, r1_gamma_rule, warm_start_entries
from service.spec import EXAMPLE_SPEC, StudySpec, WarmStart
from service.studies import WARM_START_ATTR
from trainer.config import TrainConfig


def test_the_priors_are_moved_into_the_space() -> None:
    entries = gan_priors(StudySpec.model_validate(DIGITS_DEMO))
    assert entries[0] == {"lambda": 10.0, "lr_g": 2e-4, "lr_d": 2e-4, "g_width": 256, "d_width": 256}
    assert entries[1]["lr_d"] == 4e-4 and entries[1]["lr_g"] == 1e-4  # TTUR
    # StyleGAN2-ADA's γ for 8x8 digits at batch 64 is 2e-4, below the space's 0.01; its
    # rate 0.0025 above the space's 0.002: both clipped
    assert r1_gamma_rule(8, 64) == 0.0002
    assert entries[2]["lambda"] == 0.01 and entries[2]["lr_g"] == 2e-3
    assert all(e.get("aux_loss", "r1") == "r1" for e in entries), "the study trains R1: no WGAN-GP prior"


def test_a_conditional_lambda_takes_its_case_and_a_searched_regulariser_gets_its_own() -> None:
    entries = gan_priors(StudySpec.model_validate(EXAMPLE_SPEC))
    assert entries[-1]["aux_loss"] == "wgan-gp" and entries[-1]["lambda"] == 10.0  # in wgan-gp's range
    assert entries[2]["aux_loss"] == "r1" and entries[2]["lambda"] == 0.01  # γ rule, clipped to r1's range


def test_a_study_with_priors_tries_them_first(client: TestClient, database_url: str) -> None:
    spec = {**DIGITS_DEMO, "name": "priors", "priors": True}
    assert client.post("/studies", json=spec).status_code == 201
    waiting = optuna.load_study(study_name="priors", storage=database_url).get_trials(states=(TrialState.WAITING,))
    expected = [*gan_priors(StudySpec.model_validate(spec)), *DIGITS_DEMO["enqueue"]]
    assert [t.system_attrs["fixed_params"] for t in sorted(waiting, key=lambda t: t.number)] == expected
    assert len(expected) == 5


def _source_study(
    database_url: str, name: str, direction: Literal["minimize", "maximize"], rows: list[tuple[float, dict[str, Any]]]
) -> None:
    """A study as plain Optuna writes one: completed trials with these values and params,
    its own ranges and a conditional name as gat-tune writes it, and one pruned trial."""
    study = optuna.create_study(study_name=name, storage=database_url, direction=direction)
    dists = {
        "lambda[aux_loss=r1]": FloatDistribution(1e-3, 1e3, log=True),
        "lr_d": FloatDistribution(1e-5, 1e-2, log=True),
        "d_width": CategoricalDistribution([32, 64, 512]),
    }
    for value, params in rows:
        study.add_trial(create_trial(value=value, params=params, distributions={k: dists[k] for k in params}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"lr_d": 1e-3}, distributions={"lr_d": dists["lr_d"]}))


def test_a_warm_start_tries_the_best_of_earlier_studies_first(client: TestClient, database_url: str) -> None:
    _source_study(
        database_url,
        "fmnist",
        "minimize",
        [
            (60.0, {"lambda[aux_loss=r1]": 500.0, "lr_d": 3e-3, "d_width": 512}),  # the best: moved into range
            (90.0, {"lambda[aux_loss=r1]": 1.0, "lr_d": 1e-3, "d_width": 32}),
            (70.0, {"lambda[aux_loss=r1]": 20.0, "lr_d": 1e-3}),
        ],
    )
    _source_study(database_url, "recall", "maximize", [(0.2, {"lr_d": 1e-4}), (0.9, {"lr_d": 5e-4})])
    spec = {**DIGITS_DEMO, "name": "warm", "warm_start": {"studies": ["fmnist", "recall"], "top": 4}}
    assert client.post("/studies", json=spec).status_code == 201, client.get("/studies").text
    waiting = optuna.load_study(study_name="warm", storage=database_url).get_trials(states=(TrialState.WAITING,))
    waiting.sort(key=lambda t: t.number)
    assert [t.system_attrs["fixed_params"] for t in waiting] == [
        {"lambda": 100.0, "lr_d": 2e-3, "d_width": 256},  # fmnist's best, clipped to the space, widest choice
        {"lr_d": 5e-4},  # recall's best: it maximises
        {"lambda": 20.0, "lr_d": 1e-3},  # fmnist's second
        {"lr_d": 1e-4},  # recall's second; fmnist's third (FID 90) is past top
        *DIGITS_DEMO["enqueue"],
    ]
    # where each came from, on its page in the dashboard; the spec's own entries say nothing
    assert [t.user_attrs.get(WARM_START_ATTR) for t in waiting] == [
        "fmnist trial 0 (60)",
        "recall trial 1 (0.9)",
        "fmnist trial 2 (70)",
        "recall trial 0 (0.2)",
        None,
        None,
    ]


def _waiting(database_url: str, name: str) -> list[tuple[dict[str, Any], str | None]]:
    trials = optuna.load_study(study_name=name, storage=database_url).get_trials(states=(TrialState.WAITING,))
    return [
        (t.system_attrs["fixed_params"], t.user_attrs.get(WARM_START_ATTR))
        for t in sorted(trials, key=lambda t: t.number)
    ]


def test_a_warm_start_from_nothing_usable_is_a_clear_422(client: TestClient, database_url: str) -> None:
    optuna.create_study(study_name="empty", storage=database_url)
    _source_study(database_url, "elsewhere", "minimize", [])
    study = optuna.load_study(study_name="elsewhere", storage=database_url)
    study.add_trial(create_trial(value=1.0, params={"lr": 0.1}, distributions={"lr": FloatDistribution(0.01, 1)}))
    infinite = optuna.create_study(study_name="infinite", storage=database_url)
    infinite.add_trial(create_trial(value=float("inf"), params={"lr_d": 1e-3}, distributions=_LR_D))
    # a gat-tune study that trains WGAN-GP: its λ would mean something else under R1
    wgan = {
        "name": "wgan",
        "base": {"aux_loss": "wgan-gp"},
        "search_space": {"lambda": DIGITS_DEMO["search_space"]["lambda"]},
    }
    assert client.post("/studies", json=wgan).status_code == 201
    optuna.load_study(study_name="wgan", storage=database_url).add_trial(
        create_trial(
            value=5.0, params={"lambda": 10.0}, distributions={"lambda": FloatDistribution(0.01, 100, log=True)}
        )
    )
    fast = {**wgan, "name": "fast", "objective": "train_seconds"}
    assert client.post("/studies", json=fast).status_code == 201
    studies_loc = ["body", "warm_start", "studies"]
    cases = [
        (["nope"], [*studies_loc, 0], "no study named 'nope' in this database"),
        (["emp"], [*studies_loc, 0], "no study named 'emp' in this database (did you mean 'empty'?)"),
        (["empty"], [*studies_loc, 0], "study 'empty' has no completed trial with a finite value yet"),
        (["infinite"], [*studies_loc, 0], "study 'infinite' has no completed trial with a finite value yet"),
        (["fast"], [*studies_loc, 0], "study 'fast' ranks its trials by train_seconds, this study by fid"),
        (["elsewhere"], studies_loc, "no best trial of 'elsewhere' fits this space: they set none of its keys"),
        (["wgan"], studies_loc, "no best trial of 'wgan' fits this space"),
        ([], studies_loc, "at least 1 item"),
    ]
    r = client.post("/studies", json={**DIGITS_DEMO, "name": "warm", "warm_start": "empty"})
    assert (
        r.status_code == 422 and r.json()["detail"][0]["msg"] == "warm_start: a mapping, {studies: [NAME, ...], top: N}"
    )
    for studies, loc, message in cases:
        r = client.post("/studies", json={**DIGITS_DEMO, "name": "warm", "warm_start": {"studies": studies}})
        assert r.status_code == 422, r.text
        assert any(d["loc"] == loc and message in d["msg"] for d in r.json()["detail"]), r.json()
    assert client.get("/studies").json()["total"] == 2  # the two sources: nothing more stored


def test_a_gat_tune_source_gives_what_its_trials_trained_with(client: TestClient, database_url: str) -> None:
    """Its base too, not only its params; the defaults only decide what a value means."""
    source = {"name": "src", "base": {"g_width": 64}, "search_space": {"lambda": DIGITS_DEMO["search_space"]["lambda"]}}
    assert client.post("/studies", json=source).status_code == 201
    optuna.load_study(study_name="src", storage=database_url).add_trial(
        create_trial(
            value=5.0, params={"lambda": 3.0}, distributions={"lambda": FloatDistribution(0.01, 100, log=True)}
        )
    )
    assert (
        client.post("/studies", json={**DIGITS_DEMO, "name": "warm", "warm_start": {"studies": ["src"]}}).status_code
        == 201
    )
    assert _waiting(database_url, "warm")[0] == ({"lambda": 3.0, "g_width": 64}, "src trial 0 (5)")  # base's width


def test_labels_stay_with_their_trials_when_entries_repeat(client: TestClient, database_url: str) -> None:
    """Optuna's repeat rule (numbers within 1e-5) drops a near-copy; each label stays on its own trial."""
    _source_study(
        database_url, "src", "minimize", [(1.0, {"lr_d": 1e-3}), (2.0, {"lr_d": 1.000001e-3}), (3.0, {"lr_d": 5e-4})]
    )
    spec = {
        **DIGITS_DEMO,
        "name": "warm",
        "warm_start": {"studies": ["src"], "top": 3},
        "enqueue": [{"lr_d": 5e-4}, {"lambda": 10.0}],
    }
    assert client.post("/studies", json=spec).status_code == 201
    assert _waiting(database_url, "warm") == [
        ({"lr_d": 1e-3}, "src trial 0 (1)"),
        ({"lr_d": 5e-4}, "src trial 2 (3)"),  # the spec's own {lr_d: 5e-4} repeats it: dropped
        ({"lambda": 10.0}, None),
    ]


def test_a_repeated_request_gets_its_study_though_the_source_has_gone(client: TestClient, database_url: str) -> None:
    _source_study(database_url, "src", "minimize", [(1.0, {"lr_d": 1e-3})])
    spec = {**DIGITS_DEMO, "name": "warm", "warm_start": {"studies": ["src"]}}
    key = {"Idempotency-Key": "k1"}
    assert client.post("/studies", json=spec, headers=key).status_code == 201
    optuna.delete_study(study_name="src", storage=database_url)
    assert client.post("/studies", json=spec, headers=key).status_code == 200
    assert client.post("/studies", json=spec).status_code == 409  # the name is taken: that, not the source


def test_a_source_choice_jsonb_cannot_hold_is_read(client: TestClient, database_url: str) -> None:
    """A categorical choice of Infinity is valid in Optuna's JSON and invalid in jsonb."""
    study = optuna.create_study(study_name="src", storage=database_url)
    widths = CategoricalDistribution([float("inf"), 128.0])
    study.add_trial(
        create_trial(
            value=1.0, params={"d_width": float("inf"), "lr_d": 1e-3}, distributions={"d_width": widths, **_LR_D}
        )
    )
    assert (
        client.post("/studies", json={**DIGITS_DEMO, "name": "warm", "warm_start": {"studies": ["src"]}}).status_code
        == 201
    )
    assert _waiting(database_url, "warm")[0] == ({"d_width": 256, "lr_d": 1e-3}, "src trial 0 (1)")


_LR_D: dict[str, BaseDistribution] = {"lr_d": FloatDistribution(1e-5, 1e-2, log=True)}


def test_into_space_leaves_out_what_does_not_fit() -> None:
    spec = StudySpec.model_validate(DIGITS_DEMO)
    base = TrainConfig.from_dict(spec.base)
    assert into_space(spec, {"aux_loss": "wgan-gp", "lambda": 10.0}, base) == {}  # its λ means something else
    assert into_space(spec, {"aux_loss": "r1", "lambda": 10.0, "beta1": 0.5}, base) == {"lambda": 10.0}
    assert into_space(spec, {"g_width": 100, "lr_g": 1e-9}, base) == {"g_width": 128, "lr_g": 5e-5}
    # values of another kind are left out, never an error
    assert into_space(spec, {"lr_d": "auto", "lambda": None, "g_width": "64", "lr_g": float("nan")}, base) == {}
    # an int lands on the space's grid
    stepped = StudySpec.model_validate(
        {"name": "s", "search_space": {"batch_size": {"type": "int", "low": 32, "high": 256, "step": 32}}}
    )
    assert into_space(stepped, {"batch_size": 100}, base) == {"batch_size": 96}
    assert into_space(stepped, {"batch_size": 1000}, base) == {"batch_size": 256}
    # a float too, never past high: 0.1 + 6 * 0.1 is 0.7000000000000001 in floats
    tenths = StudySpec.model_validate(
        {"name": "t", "search_space": {"lambda": {"type": "float", "low": 0.1, "high": 0.7, "step": 0.1}}}
    )
    assert into_space(tenths, {"lambda": 0.7}, base) == {"lambda": 0.7}
    assert into_space(tenths, {"lambda": 0.69}, base)["lambda"] <= 0.7
    assert into_space(tenths, {"lambda": 0.34}, base)["lambda"] == pytest.approx(0.3)


def test_a_conditional_value_keeps_its_case() -> None:
    spec = StudySpec.model_validate(EXAMPLE_SPEC)  # lambda conditional on a searched aux_loss
    source = WarmSource(
        base=None,
        trials=[
            {"trial": 0, "value": 1.0, "params": {"aux_loss": "wgan-gp", "lambda[aux_loss=wgan-gp]": 15.0}},
            {"trial": 1, "value": 2.0, "params": {"lambda[aux_loss=r1]": 5.0}},  # the name says its case
            {"trial": 2, "value": 3.0, "params": {"aux_loss": "hinge", "lambda[aux_loss=hinge]": 1.0}},  # not offered
        ],
    )
    spec.warm_start = WarmStart(studies=["src"], top=4)
    entries = [entry for entry, _ in warm_start_entries(spec, {"src": source})]
    assert entries == [{"aux_loss": "wgan-gp", "lambda": 15.0}, {"aux_loss": "r1", "lambda": 5.0}]
    # a value trained under another case than the entry's is left out, not moved into its case
    rates = {
        "type": "conditional",
        "on": "model",
        "cases": {
            "mlp": {"type": "float", "low": 1e-4, "high": 1e-2},
            "dcgan": {"type": "float", "low": 1e-5, "high": 1e-3},
        },
    }
    by_model = StudySpec.model_validate(
        {"name": "m", "search_space": {"lr_d": rates, "lambda": {"type": "float", "low": 1, "high": 100}}}
    )
    mlp = TrainConfig.from_dict({})
    assert into_space(by_model, {"model": "dcgan", "lr_d": 5e-3, "lambda": 7.0}, mlp) == {"lambda": 7.0}
    by_model.warm_start = WarmStart(studies=["src"])
    named = WarmSource(
        base=None, trials=[{"trial": 0, "value": 1.0, "params": {"lr_d[model=dcgan]": 5e-4, "lambda": 7.0}}]
    )
    assert warm_start_entries(by_model, {"src": named}) == [({"lambda": 7.0}, "src trial 0 (1)")]
