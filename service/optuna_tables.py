"""Statements on Optuna's own tables (trials, trial_*, studies, study_*) that gat-tune
writes itself, as functions over a Connection, and the SQL expressions over those tables
that the queue's and the studies service's statements are made of. Optuna's private API
stays in service/optuna_compat.py; the storage's trial hot paths in service/storage.py.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import optuna
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service import optuna_compat as compat

# user attributes the queue puts on trials
ATTEMPT = "gat_tune_attempt"
RESUME_FROM = "gat_tune_resume_from"
RETRY_OF = "gat_tune_retry_of"
RUN_DIR = "run_dir"
FAIL_REASON = "fail_reason"


def finished_trials(t: str = "t") -> str:
    """An aggregate over a study's trials (rows of ``trials`` named ``t``): how many have
    finished, which is what counts toward n_trials (COMPLETE and PRUNED, not FAIL)."""
    return f"count(*) FILTER (WHERE {t}.state IN ('COMPLETE', 'PRUNED'))"


def study_completed(n_trials: str, t: str = "t") -> str:
    """The rule "a study is completed when COMPLETE + PRUNED >= n_trials": a boolean
    aggregate over the study's trials (rows of ``trials`` named ``t``), ``n_trials`` an SQL
    expression. The claim, the release of a finished trial and the study's summary use it."""
    return f"({finished_trials(t)} >= {n_trials})"


def params_json(trial_id: str) -> str:
    """A trial's params as Optuna's external representation: the choice for a categorical
    (stored as its index), an integer for an int distribution, else the float. The kind is
    read off the distribution's JSON text ('{"name": "...", ...}') without parsing it."""
    return f"""(SELECT coalesce(json_object_agg(tp.param_name,
       CASE WHEN tp.distribution_json LIKE '{{"name": "CategoricalDistribution"%'
              THEN tp.distribution_json::jsonb->'attributes'->'choices'->(tp.param_value::int)
            WHEN tp.distribution_json LIKE '{{"name": "Int%' THEN to_jsonb(tp.param_value::bigint)
            ELSE to_jsonb(tp.param_value) END ORDER BY tp.param_id), '{{}}')
     FROM trial_params tp WHERE tp.trial_id = {trial_id})"""


# The best finished trial by the first objective, in its direction (for several objectives:
# the best on the front by the first).
BEST_TRIAL = """SELECT t.trial_id, t.number, v.value FROM trials t
  JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 AND v.value_type = 'FINITE'
  JOIN study_directions d ON d.study_id = t.study_id AND d.objective = 0
  WHERE t.study_id = {study_id} AND t.state = 'COMPLETE'
  ORDER BY CASE WHEN d.direction = 'MAXIMIZE' THEN -v.value ELSE v.value END ASC, t.number ASC LIMIT 1"""


# An interrupted trial is not a failed one: paused or a worker gone (FAIL in Optuna, with a
# fail_reason and a re-queued copy that names it in RETRY_OF), or ended by a stop.
_REQUEUED = """(SELECT (a.value_json)::int FROM trial_user_attributes a JOIN trials r ON r.trial_id = a.trial_id
  WHERE r.study_id = {sid} AND a.key = 'gat_tune_retry_of')"""
_STOPPED = """EXISTS (SELECT 1 FROM trial_user_attributes f WHERE f.trial_id = {t}.trial_id AND f.key = 'fail_reason'
  AND f.value_json LIKE '"study stopped%')"""


def failed(t: str, sid: str) -> str:
    """A trial that failed on its own (not interrupted)."""
    return f"{t}.state = 'FAIL' AND {t}.number NOT IN {_REQUEUED.format(sid=sid)} AND NOT {_STOPPED.format(t=t)}"


# The latest failed trial and its reason.
LAST_FAILURE = f"""SELECT t.number AS trial,
  (SELECT f.value_json::json #>> '{{{{}}}}' FROM trial_user_attributes f
   WHERE f.trial_id = t.trial_id AND f.key = 'fail_reason') AS reason
  FROM trials t WHERE t.study_id = {{sid}} AND {failed("t", "{sid}")} ORDER BY t.number DESC LIMIT 1"""

FAIL_FAST = 3  # failed trials, all with one reason and none finished: the study cannot succeed


def repeated_failure(conn: Connection, optuna_study_id: int) -> str | None:
    """The reason every failed trial of a study failed with, when at least FAIL_FAST failed
    alike (missing data, say) and none failed otherwise; else None. The caller checks that
    no trial finished."""
    row = conn.execute(
        sa.text(
            f"""SELECT count(*) AS n, count(DISTINCT r.reason) AS kinds, min(r.reason) AS reason FROM (
  SELECT (SELECT f.value_json FROM trial_user_attributes f WHERE f.trial_id = t.trial_id AND f.key = 'fail_reason')
    AS reason FROM trials t WHERE t.study_id = :sid AND {failed("t", ":sid")}) r"""
        ),
        {"sid": optuna_study_id},
    ).one()
    if row.n < FAIL_FAST or row.kinds != 1 or row.reason is None:
        return None
    return str(json.loads(row.reason))


def trial_count(conn: Connection, study_id: int) -> int:
    """How many trials the study has, in any state."""
    return int(
        conn.execute(sa.text("SELECT count(*) FROM trials WHERE study_id = :sid"), {"sid": study_id}).scalar_one()
    )


def best_trial(conn: Connection, study_id: int) -> dict[str, Any] | None:
    """The best finished trial (BEST_TRIAL) as {trial, value, params}, params in Optuna's
    external representation; None before one has completed."""
    best = conn.execute(sa.text(BEST_TRIAL.format(study_id=":sid")), {"sid": study_id}).first()
    if best is None:
        return None
    params = conn.execute(
        sa.text(
            "SELECT param_name, param_value, distribution_json FROM trial_params "
            "WHERE trial_id = :tid ORDER BY param_id"
        ),
        {"tid": best.trial_id},
    )
    to_dist = optuna.distributions.json_to_distribution
    values = {p.param_name: to_dist(p.distribution_json).to_external_repr(p.param_value) for p in params}
    return {"trial": best.number, "value": best.value, "params": values}


def study_artifact_ids(conn: Connection, study_id: int) -> list[str]:
    """The ids of the artifacts uploaded to a study and its trials, in one statement
    (optuna.artifacts.get_all_artifact_meta reads them a trial at a time)."""
    values = conn.execute(
        sa.text(
            "SELECT value_json FROM study_system_attributes WHERE study_id = :sid AND starts_with(key, :p) "
            "UNION ALL SELECT a.value_json FROM trial_system_attributes a JOIN trials t USING (trial_id) "
            "WHERE t.study_id = :sid AND starts_with(a.key, :p)"
        ),
        {"sid": study_id, "p": compat.ARTIFACT_ATTR_PREFIX},
    ).scalars()
    return [i for i in map(compat.artifact_id, values) if i is not None]


def has_requeued_copy(conn: Connection, study_id: int, number: int) -> bool:
    """Whether trial ``number`` of the study already has a re-queued copy (RETRY_OF)."""
    return (
        conn.execute(
            sa.text(
                "SELECT 1 FROM trial_user_attributes a JOIN trials t ON t.trial_id = a.trial_id "
                "WHERE t.study_id = :sid AND a.key = :key AND a.value_json = :number LIMIT 1"
            ),
            {"sid": study_id, "key": RETRY_OF, "number": json.dumps(number)},
        ).first()
        is not None
    )


AttrTable = Literal["trial_user_attributes", "trial_system_attributes"]


def upsert_attrs(table: AttrTable, prefix: str = "") -> str:
    """Trial attributes :{prefix}keys → :{prefix}values (JSON texts) of trial :tid in one
    statement, with Optuna's table, encoding and (trial_id, key) uniqueness; Optuna's own
    setter is a transaction per key. Bound with attr_args."""
    return (
        f"INSERT INTO {table} (trial_id, key, value_json) "
        f"SELECT :tid, k, v FROM unnest(CAST(:{prefix}keys AS text[]), CAST(:{prefix}values AS text[])) AS u(k, v) "
        "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json"
    )


def attr_args(attrs: dict[str, Any], prefix: str = "") -> dict[str, list[str]]:
    """The parameters of upsert_attrs(..., prefix) for ``attrs``."""
    return {f"{prefix}keys": list(attrs), f"{prefix}values": [json.dumps(v) for v in attrs.values()]}


_TRIAL_ATTRS_SQL = sa.text(
    f"WITH u AS ({upsert_attrs('trial_user_attributes')}), "
    f"s AS ({upsert_attrs('trial_system_attributes', 'system_')}) SELECT 1"
)


def set_trial_attrs(conn: Connection, trial_id: int, attrs: dict[str, Any], system_attrs: dict[str, Any]) -> None:
    """A trial's user attributes and system attributes, in one statement."""
    conn.execute(_TRIAL_ATTRS_SQL, {"tid": trial_id, **attr_args(attrs), **attr_args(system_attrs, "system_")})
