"""Every statement gat-tune runs on Optuna's own tables (studies, study_*, trials,
trial_*), as functions over a sqlalchemy Connection. The storage (service/storage.py)
delegates its hot paths to them inside its own transactions and retries; the queue
(service/queue/) and the study service (service/studies.py) compose them in theirs.

Statements that join Optuna's tables with ours (gt_studies, gt_trial_leases, gt_workers)
live here too, whole, so that no SQL text leaves this package: callers pass values, never
fragments. Inside it, the SQL expressions the statements share (the completed rule, a
failed trial, params as JSON) are composed across its modules, by concern:

- trials.py: a trial's rows (reads, new and queued trials, params, reports, state and
  values, attributes);
- studies.py: a study's rows (counted and judged, best, artifacts, deletion);
- responses.py: the read routes' JSON, rendered by PostgreSQL;
- queue.py: the queue's statements over trials and its lease and worker rows;
- schema.py: the version of Optuna's schema.

Optuna's private API stays in service/optuna_compat.py.
"""

from service.optuna_tables.queue import (
    SLOTS_WANTED_SQL,
    claim_counts,
    open_lease,
    orphaned_trials,
    release,
    running_and_startable,
    spare_trials,
)
from service.optuna_tables.responses import TRIAL_FILTERS, TRIAL_STATES, studies_json, study_json, trials_json
from service.optuna_tables.schema import schema_version
from service.optuna_tables.studies import (
    FAIL_FAST,
    best_trial,
    best_trials,
    delete_study,
    repeated_failure,
    study_artifact_ids,
    study_id_by_name,
    study_names,
    study_user_attr,
    trial_count,
)
from service.optuna_tables.trials import (
    ATTEMPT,
    FAIL_REASON,
    PACK_REPLAY,
    RESUME_FROM,
    RETRY_OF,
    RUN_DIR,
    add_param,
    add_param_if_updatable,
    create_trial,
    enqueue_trials,
    get_trial,
    get_trials,
    has_requeued_copy,
    pop_waiting_trial,
    set_intermediate_value,
    set_state_values,
    set_trial_attrs,
    state_and_study_distribution,
    study_status,
)

__all__ = [
    "ATTEMPT",
    "FAIL_FAST",
    "FAIL_REASON",
    "PACK_REPLAY",
    "RESUME_FROM",
    "RETRY_OF",
    "RUN_DIR",
    "SLOTS_WANTED_SQL",
    "TRIAL_FILTERS",
    "TRIAL_STATES",
    "add_param",
    "add_param_if_updatable",
    "best_trial",
    "best_trials",
    "claim_counts",
    "create_trial",
    "delete_study",
    "enqueue_trials",
    "get_trial",
    "get_trials",
    "has_requeued_copy",
    "open_lease",
    "orphaned_trials",
    "pop_waiting_trial",
    "release",
    "repeated_failure",
    "running_and_startable",
    "schema_version",
    "set_intermediate_value",
    "set_state_values",
    "set_trial_attrs",
    "spare_trials",
    "state_and_study_distribution",
    "studies_json",
    "study_artifact_ids",
    "study_id_by_name",
    "study_json",
    "study_names",
    "study_status",
    "study_user_attr",
    "trial_count",
    "trials_json",
]
