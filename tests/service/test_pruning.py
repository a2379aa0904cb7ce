"""The far-above-best pruner, on real Optuna studies in PostgreSQL, and through a slot."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Literal

import optuna
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.pruning import FarAboveBestPruner
from service.spec import StudySpec, make_pruner, suggest_config
from service.worker import Slot
from tests.service.conftest import load, tiny


def _study(database_url: str, direction: Literal["minimize", "maximize"] = "minimize") -> optuna.Study:
    return optuna.create_study(storage=database_url, direction=direction, pruner=FarAboveBestPruner(ratio=3))


def _reported(study: optuna.Study, values: dict[int, float], end: float | None = None) -> optuna.trial.Trial:
    trial = study.ask()
    for step, value in values.items():
        trial.report(value, step)
    if end is not None:
        study.tell(trial, end)
    return trial


def _prunes(study: optuna.Study, trial: optuna.trial.Trial) -> bool:
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    return study.pruner.prune(study, frozen)


def test_a_trial_more_than_ratio_times_the_best_at_its_step_is_pruned(database_url: str) -> None:
    study = _study(database_url)
    _reported(study, {500: 40.0, 1000: 20.0}, end=15.0)  # finished
    _reported(study, {500: 30.0})  # running, the best at step 500
    assert _prunes(study, _reported(study, {500: 91.0}))  # > 3 x 30
    assert not _prunes(study, _reported(study, {500: 89.0}))
    assert not _prunes(study, _reported(study, {500: 30.0, 1000: 59.0}))  # at 1000 the best is 20
    assert _prunes(study, _reported(study, {500: 30.0, 1000: 61.0}))


def test_nothing_to_compare_with_prunes_nothing_but_a_non_finite_value_is_pruned(database_url: str) -> None:
    study = _study(database_url)
    assert not _prunes(study, _reported(study, {500: 1e9}))  # the first trial at its step
    assert not _prunes(study, _reported(study, {700: 1e9}))  # no other trial reported step 700
    assert _prunes(study, _reported(study, {500: math.inf}))


def test_a_maximised_objective_is_pruned_below_the_best_over_ratio(database_url: str) -> None:
    study = _study(database_url, direction="maximize")
    _reported(study, {500: 0.9}, end=0.9)
    assert _prunes(study, _reported(study, {500: 0.29}))
    assert not _prunes(study, _reported(study, {500: 0.31}))


def test_warmup_and_ratio_are_checked() -> None:
    with pytest.raises(ValueError, match="above 1"):
        FarAboveBestPruner(ratio=1.0)
    spec = StudySpec.model_validate(tiny(pruner="far-above-best"))
    assert isinstance(make_pruner(spec), FarAboveBestPruner)


@pytest.mark.slow
def test_a_slot_prunes_a_run_far_above_the_best_at_its_first_eval(
    client: TestClient, settings: Settings, digits_cache: Path
) -> None:
    r = client.post("/studies", json=tiny(pruner="far-above-best", n_trials=2, max_parallel=1))
    assert r.status_code == 201, r.text
    study = load(settings.database_url or "")
    trial = study.ask()  # a finished trial with an FID no real run reaches
    suggest_config(trial, StudySpec.model_validate(study.user_attrs["gat_tune_spec"]))
    for step in (20, 40, 60):
        trial.report(1e-6, step)
    study.tell(trial, 1e-6)
    for sub in ("features", "stats"):  # its own runs directory: the shared cache's would outlive the test
        shutil.copytree(digits_cache / sub, settings.data_dir / sub, dirs_exist_ok=True)
    Slot(settings.model_copy(update={"poll_seconds": 0.1}), "cpu", idle_exit=0.5).run()

    pruned = load(settings.database_url or "").trials[1]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert list(pruned.intermediate_values) == [20], "pruned at its first eval"
    assert pruned.value == pruned.intermediate_values[20] > 3e-6
