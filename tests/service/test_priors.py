"""GAN priors: the settings GAN papers train with, enqueued first when a spec asks."""

from __future__ import annotations

import optuna
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from service.demo import DIGITS_DEMO
from service.priors import gan_priors, r1_gamma_rule
from service.spec import EXAMPLE_SPEC, StudySpec


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
