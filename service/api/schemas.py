"""The JSON bodies the routes answer with, one read schema per resource, for /openapi.json.

The hot read routes pass on JSON that PostgreSQL rendered (service/studies.py): these models
describe it and are never run on the way out. tests/service/test_response_models.py
validates every route's actual body against its model, so a field the SQL adds, drops or
renames fails there (extra fields are forbidden, none has a default).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model

from service.spec import ObjectiveName, StudySpec
from trainer.config import TrainConfig

__all__ = [
    "BestConfig",
    "BestSoFar",
    "EnqueuedTrial",
    "IntermediateValue",
    "LastFailure",
    "QueueDemand",
    "StudyList",
    "StudyPublic",
    "StudySummary",
    "TrialCounts",
    "TrialPage",
    "TrialPublic",
    "TrialStateFilter",
    "TrialStateName",
    "WorkerList",
    "WorkerPublic",
]

TrialStateName = Literal["RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL"]  # Optuna's, as stored
# A trial list's filter: the states as TrialCounts counts them (FAIL without the interrupted).
TrialStateFilter = Literal["RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL", "INTERRUPTED"]
ParamValue = str | int | float | bool  # a trial's parameter: a number, or a categorical choice


class _Read(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- studies -------------------------------------------------------------------------------
class TrialCounts(_Read):
    """A study's trials by state; a trial is counted once."""

    RUNNING: int
    WAITING: int
    COMPLETE: int
    PRUNED: int
    FAIL: int = Field(description="failed on their own: an error, divergence, a refused config")
    INTERRUPTED: int = Field(
        description="FAIL in Optuna but not the trial's fault: paused, its worker gone (each re-queued), "
        "or ended by a stop"
    )


class LastFailure(_Read):
    trial: int = Field(description="the trial's number")
    reason: str | None = Field(description="its fail_reason; null when it has none (failed outside gat-tune)")


class BestSoFar(_Read):
    trial: int = Field(description="the trial's number")
    objective: ObjectiveName = Field(description="the study's first objective, which the best is by")
    value: float = Field(description="its value of the first objective: the best finite one, in its direction")
    fid: float | None = Field(description="its FID (null when not recorded or not finite)")
    features: str | None = Field(
        description="the features its FID and PRDC were computed on (classifier1-<hash>, randcnn1, inception, "
        "raw); FIDs on different features do not compare"
    )
    params: dict[str, ParamValue] = Field(description="Optuna's parameters, as `GET .../trials` shows them")


class StudySummary(_Read):
    """A study as `GET /studies` lists it."""

    id: str = Field(description="the study's name")
    name: str
    status: Literal["running", "paused", "stopped", "completed", "failed"] = Field(
        description="completed: COMPLETE + PRUNED reached n_trials; failed: its trials all failed alike, "
        "max_failures failed, or its Optuna study was deleted underneath"
    )
    n_trials: int
    max_parallel: int
    objectives: list[ObjectiveName] = Field(
        description="fid and train_seconds minimised; precision, recall, density, coverage maximised"
    )
    sampler: str
    pruner: str
    trial_counts: TrialCounts
    finished: int = Field(description="COMPLETE + PRUNED")
    last_failure: LastFailure | None = Field(description="the latest trial counted in FAIL; null when none")
    best: BestSoFar | None = Field(description="null before a trial completes with a finite FID")
    optuna_study_id: int
    dashboard_url: str
    created_at: AwareDatetime


class StudyPublic(StudySummary):
    """One study, with its spec (`GET /studies/{name}`, and what create and control return)."""

    spec: StudySpec = Field(description="the spec as stored, defaults filled in")


class StudyList(_Read):
    items: list[StudySummary] = Field(description="newest first")
    total: int
    offset: int
    limit: int


# -- trials --------------------------------------------------------------------------------
class IntermediateValue(_Read):
    step: int
    value: float | None = Field(description="the first objective's metric at that eval; null for NaN or ±inf")


class TrialPublic(_Read):
    number: int
    state: TrialStateName
    params: dict[str, ParamValue]
    values: list[float | None] | None = Field(
        description="one per objective (null for a non-finite one); null until the trial completes"
    )
    intermediate_values: list[IntermediateValue] = Field(description="the first objective at each eval, by step")
    user_attrs: dict[str, Any] = Field(
        description="the latest eval's features, fid, precision, recall, density, coverage; train_seconds, "
        "device, worker, fail_reason, ...; NaN/inf as null"
    )
    datetime_start: AwareDatetime | None = Field(description="null while WAITING")
    datetime_complete: AwareDatetime | None
    duration_seconds: float | None


class TrialPage(_Read):
    items: list[TrialPublic] = Field(description="oldest first")
    total: int = Field(description="trials that match the state filter, all pages")
    offset: int
    limit: int


class EnqueuedTrial(_Read):
    number: int = Field(description="the queued trial's number")
    params: dict[str, ParamValue] = Field(description="its fixed parameters, by Optuna's names")


class PackReplayPublic(_Read):
    """How a trial that trained in a pack trains again bit for bit (trainer.config.PackReplay)."""

    position: int = Field(description="this trial's place among the members")
    members: list[dict[str, Any]] = Field(description="the pack's members' complete configs, in pack order")
    left: list[int | None] = Field(description="per member: the eval step it left the pack at (pruned), or null")
    exact: bool = Field(description="false: a member was stopped between evals, which a replay does not redo")
    cpu_threads: int | None = Field(description="the slot's CPU threads; `gat-tune train` uses them")


def _config_model() -> type[BaseModel]:
    """The trainer config's keys, each of its default's type, read off TrainConfig; and
    ``pack``, present only for a trial that trained packed."""
    keys = TrainConfig().to_dict()
    fields: dict[str, Any] = {key: (type(value), ...) for key, value in keys.items()}
    # Only for a trial that trained packed: one that trained alone answers the config alone.
    fields["pack"] = (PackReplayPublic | None, Field(default=None, description="only when the trial trained packed"))
    return create_model(
        "BestConfig",
        __config__=ConfigDict(extra="forbid"),
        __doc__="A complete trainer config: what `gat-tune train --config` takes.",
        **fields,
    )


BestConfig = _config_model()


# -- workers -------------------------------------------------------------------------------
class WorkerPublic(_Read):
    id: str
    host: str
    pid: int
    device: str
    status: Literal["idle", "training", "lost"] = Field(
        description="lost: no heartbeat for a lease (GAT_TUNE_LEASE_SECONDS); it died or cannot reach the database"
    )
    current_trial_id: int | None = Field(description="Optuna's trial_id (not the number) it is training")
    started_at: AwareDatetime
    last_heartbeat: AwareDatetime
    seconds_since_heartbeat: float


class QueueDemand(_Read):
    """What the autoscaler sees (service/queue/demand.py; KEDA scales the workers on slots_wanted)."""

    running: int = Field(description="trials a worker holds the lease of")
    startable: int = Field(description="trials of running studies a claim could start now (max_parallel, n_trials)")
    slots_wanted: int = Field(description="running + startable: the worker slots that would all be busy")


class WorkerList(_Read):
    items: list[WorkerPublic] = Field(description="oldest first")
    demand: QueueDemand
