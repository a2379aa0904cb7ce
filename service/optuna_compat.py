"""Every use of Optuna's private API, in one place, checked when gat-tune starts.

gat-tune overrides RDBStorage's private trial hooks (RDBStorageHooks, for
service/storage.py), reads a few private attributes of Study and Trial (service/queue/)
and Optuna's ORM models' stored representations (service/optuna_tables/). Those change between Optuna
releases (their signatures differ in 4.0), so an Optuna outside the tested range, or one
whose private hooks no longer look as expected, fails here with one line that says so,
instead of misbehaving somewhere in a worker.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Container
from typing import Any

import optuna
from optuna.artifacts._list_artifact_meta import ARTIFACTS_ATTR_PREFIX
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "ARTIFACT_ATTR_PREFIX",
    "NOT_FOUND_MSG",
    "TESTED",
    "IntermediateValueModel",
    "OptunaMismatch",
    "RDBStorageHooks",
    "ValueModel",
    "artifact_id",
    "check",
    "forget_cached_trials",
    "reported_values",
    "set_cached_trial",
    "study_id",
    "trial_id",
]

TESTED = (5, 0)  # the major.minor of Optuna the code is tested with (pyproject.toml: optuna>=5.0,<5.1)

# The private RDBStorage hooks RDBStorageHooks overrides, with their parameters.
OVERRIDDEN: dict[str, tuple[str, ...]] = {
    "_get_trials": ("self", "study_id", "states", "included_trial_ids", "trial_id_greater_than"),
    "_create_new_trial": ("self", "study_id", "template_trial"),
    "_set_trial_param": (
        "self",
        "trial_id",
        "param_name",
        "param_value_internal",
        "distribution",
        "previous_distribution",
    ),
}

# Optuna's ORM models: the stored representation of values (inf and NaN) and its error text.
ValueModel = models.TrialValueModel
IntermediateValueModel = models.TrialIntermediateValueModel
NOT_FOUND_MSG = models.NOT_FOUND_MSG


class OptunaMismatch(ImportError):
    """The installed Optuna is not the one gat-tune's private-API uses were written for."""


def check(version: str = optuna.__version__) -> None:
    """Raise OptunaMismatch unless ``version`` is in the tested range and every overridden
    hook still has the parameters it is overridden with."""
    found = tuple(int(part) for part in version.split(".")[:2])
    if found != TESTED:
        raise OptunaMismatch(
            f"gat-tune is tested with optuna {TESTED[0]}.{TESTED[1]}.x, found {version}: "
            f"pip install 'optuna>={TESTED[0]}.{TESTED[1]},<{TESTED[0]}.{TESTED[1] + 1}'"
        )
    for name, expected in OVERRIDDEN.items():
        hook = getattr(RDBStorage, name, None)
        params = tuple(inspect.signature(hook).parameters) if hook is not None else None
        if params != expected:
            raise OptunaMismatch(
                f"optuna {version}: RDBStorage.{name} is {params}, gat-tune overrides it as {expected}"
            )


class RDBStorageHooks(RDBStorage):
    """RDBStorage whose private trial hooks (OVERRIDDEN) call the methods a subclass
    defines: read_trials, create_running_trial, write_param (service/storage.py)."""

    # What the subclass defines: the selection of RDBStorage._get_trials (_CachedStorage
    # reads with it the trials that are new or were unfinished when last read); a new
    # RUNNING trial (_create_new_trial without a template); _set_trial_param.
    read_trials: Callable[[int, Container[TrialState] | None, set[int], int], list[FrozenTrial]]
    create_running_trial: Callable[[int], FrozenTrial]
    write_param: Callable[[int, str, float, BaseDistribution, BaseDistribution | None], None]

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        return self.read_trials(study_id, states, included_trial_ids, trial_id_greater_than)

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        if template_trial is not None:  # add_trial / enqueue_trial: rare, Optuna's own path
            return super()._create_new_trial(study_id, template_trial)
        return self.create_running_trial(study_id)

    def _set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
        previous_distribution: BaseDistribution | None,
    ) -> None:
        self.write_param(trial_id, param_name, param_value_internal, distribution, previous_distribution)


def trial_id(trial: optuna.Trial) -> int:
    """The storage's id of a trial (Optuna keeps it private; numbers are per study)."""
    return int(trial._trial_id)


def study_id(study: optuna.Study) -> int:
    return int(study._study_id)


def forget_cached_trials(study: optuna.Study) -> None:
    """What Study.ask resets before it creates a trial: the thread's cached trial list."""
    study._thread_local.cached_all_trials = None


def reported_values(trial: optuna.Trial) -> dict[int, Any]:
    """The trial's intermediate values as its own cache holds them (Trial.report reads and
    writes this copy, so a report made around it must keep it in step)."""
    values: dict[int, Any] = trial._cached_frozen_trial.intermediate_values
    return values


def set_cached_trial(trial: optuna.Trial, frozen: optuna.trial.FrozenTrial) -> None:
    """Replace the trial's own cached copy (after a write whose reply was lost)."""
    trial._cached_frozen_trial = frozen


# How optuna.artifacts.upload_artifact links an artifact to its study or trial: a system
# attribute "artifacts:<id>" whose value is a JSON string of the metadata's JSON.
ARTIFACT_ATTR_PREFIX = ARTIFACTS_ATTR_PREFIX


def artifact_id(value_json: str) -> str | None:
    """The artifact id in such an attribute's stored value (None: not one of Optuna's)."""
    try:
        return str(json.loads(json.loads(value_json))["artifact_id"])
    except (ValueError, TypeError, KeyError):
        return None


check()
