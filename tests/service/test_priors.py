"""What a study tries first: the settings GAN papers train with (priors) and the best of
earlier studies (warm_start), enqueued first when a spec asks."""

from __future__ import annotations

from typing import Any

import optuna
from fastapi.testclient import TestClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from service.demo import DIGITS_DEMO
from service.priors import gan_priors, into_space, r1_gamma_rule
from service.spec import EXAMPLE_SPEC, StudySpec
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


def _source_study(database_url: str, name: str, direction: str, rows: list[tuple[float, dict[str, Any]]]) -> None:
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


def test_a_warm_start_from_nothing_usable_is_a_clear_422(client: TestClient, database_url: str) -> None:
    optuna.create_study(study_name="empty", storage=database_url)
    _source_study(database_url, "elsewhere", "minimize", [])
    study = optuna.load_study(study_name="elsewhere", storage=database_url)
    study.add_trial(create_trial(value=1.0, params={"lr": 0.1}, distributions={"lr": FloatDistribution(0.01, 1)}))
    cases = [
        (["nope"], ["body", "warm_start", "studies", 0], "warm_start: no study named 'nope' in this database"),
        (["empty"], ["body", "warm_start", "studies", 0], "study 'empty' has no completed trial to start from yet"),
        (["elsewhere"], ["body", "warm_start"], "set none of this space's keys (lambda, lr_g, lr_d, g_width, d_width)"),
        ([], ["body", "warm_start", "studies"], "at least 1 item"),
    ]
    for studies, loc, message in cases:
        r = client.post("/studies", json={**DIGITS_DEMO, "name": "warm", "warm_start": {"studies": studies}})
        assert r.status_code == 422, r.text
        assert any(d["loc"] == loc and message in d["msg"] for d in r.json()["detail"]), r.json()
    assert client.get("/studies").json()["total"] == 0


def test_into_space_leaves_out_a_config_of_another_regulariser() -> None:
    spec = StudySpec.model_validate(DIGITS_DEMO)
    base = TrainConfig.from_dict(spec.base)
    assert into_space(spec, {"aux_loss": "wgan-gp", "lambda": 10.0}, base) == {}  # its λ means something else
    assert into_space(spec, {"aux_loss": "r1", "lambda": 10.0, "beta1": 0.5}, base) == {"lambda": 10.0}
    assert into_space(spec, {"g_width": 100, "lr_g": 1e-9}, base) == {"g_width": 128, "lr_g": 5e-5}
