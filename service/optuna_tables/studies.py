"""A study's rows in Optuna's tables: its trials counted and judged (the completed rule,
failures, the best trial), its artifacts, its deletion.

The SQL expressions here (finished_trials, study_completed, failed, params_json,
BEST_TRIAL, LAST_FAILURE) are composed only by the statements of this package.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service import optuna_compat as compat
from service.optuna_tables.trials import PACK_REPLAY, lock_study


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


# The best finished trials by the first objective, in its direction, best first (for several
# objectives: by the first alone), as {columns} of trials t and trial_values v; BEST_TRIAL is
# the first of them.
_BEST_TRIALS = """SELECT {columns} FROM trials t
  JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 AND v.value_type = 'FINITE'
  JOIN study_directions d ON d.study_id = t.study_id AND d.objective = 0
  WHERE t.study_id = {study_id} AND t.state = 'COMPLETE'
  ORDER BY CASE WHEN d.direction = 'MAXIMIZE' THEN -v.value ELSE v.value END ASC, t.number ASC LIMIT {limit}"""
BEST_TRIAL = _BEST_TRIALS.format(columns="t.trial_id, t.number, v.value", study_id="{study_id}", limit=1)


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
    """The best finished trial (BEST_TRIAL) as {trial, value, params, pack}, params in
    Optuna's external representation, pack its replay record when it trained packed (else
    None); None before one has completed."""
    best = best_trials(conn, study_id, 1, strict=True)
    if not best:
        return None
    (trial,) = best
    pack = conn.execute(
        sa.text("SELECT value_json FROM trial_system_attributes WHERE trial_id = :tid AND key = :key"),
        {"tid": trial.pop("trial_id"), "key": PACK_REPLAY},
    ).scalar()
    return {**trial, "pack": json.loads(pack) if pack else None}


def study_id_by_name(conn: Connection, name: str) -> int | None:
    """The Optuna study id of a study of any origin (gat-tune's or plain Optuna's), or None."""
    row = conn.execute(sa.text("SELECT study_id FROM studies WHERE study_name = :n"), {"n": name}).first()
    return None if row is None else int(row.study_id)


def study_names(conn: Connection, *, starting: str | None = None, limit: int) -> list[str]:
    """Study names, newest first: up to ``limit``, those starting with ``starting`` if given."""
    return list(
        conn.execute(
            sa.text(
                "SELECT study_name FROM studies WHERE (CAST(:p AS text) IS NULL OR starts_with(study_name, :p)) "
                "ORDER BY study_id DESC LIMIT :limit"
            ),
            {"p": starting, "limit": limit},
        ).scalars()
    )


def study_user_attr(conn: Connection, study_id: int, key: str) -> Any:
    """A study's user attribute, decoded; None when it has none of that key."""
    value = conn.execute(
        sa.text("SELECT value_json FROM study_user_attributes WHERE study_id = :sid AND key = :key"),
        {"sid": study_id, "key": key},
    ).scalar()
    return None if value is None else json.loads(value)


def best_trials(conn: Connection, study_id: int, limit: int, *, strict: bool = False) -> list[dict[str, Any]]:
    """Up to ``limit`` best finished trials with a finite value, best first, as {trial_id,
    trial, value, params}, params in Optuna's external representation. Decoded here, not in
    SQL: a distribution's JSON may hold what jsonb refuses (a choice of NaN or Infinity). A
    param whose distribution this Optuna cannot read is left out, or with ``strict``
    raises (a study's best config must be whole)."""
    best = conn.execute(
        sa.text(_BEST_TRIALS.format(columns="t.trial_id, t.number, v.value", study_id=":sid", limit=":limit")),
        {"sid": study_id, "limit": limit},
    ).all()
    params: dict[int, dict[str, Any]] = {b.trial_id: {} for b in best}
    if best:
        rows = conn.execute(
            sa.text(
                "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
                "WHERE trial_id = ANY(:ids) ORDER BY param_id"
            ),
            {"ids": list(params)},
        )
        for r in rows:
            try:
                dist = optuna.distributions.json_to_distribution(r.distribution_json)
                params[r.trial_id][r.param_name] = dist.to_external_repr(r.param_value)
            except (ValueError, TypeError, KeyError, IndexError):
                if strict:
                    raise
                continue
    return [{"trial_id": b.trial_id, "trial": b.number, "value": b.value, "params": params[b.trial_id]} for b in best]


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


# Optuna's tables that hang off a trial and off a study (foreign keys without ON DELETE).
_TRIAL_CHILDREN = (
    "trial_params",
    "trial_values",
    "trial_intermediate_values",
    "trial_user_attributes",
    "trial_system_attributes",
    "trial_heartbeats",
)
_STUDY_CHILDREN = ("study_directions", "study_user_attributes", "study_system_attributes")


def delete_study(conn: Connection, study_id: int) -> None:
    """Optuna's delete_study in the caller's transaction, a statement per table.

    Optuna's ORM cascade loads every trial and deletes row by row while holding the
    study's lock (bench/RESULTS.md, "Figures the code relies on").
    Optuna's foreign keys have no ON DELETE, so a table a later Optuna adds fails this
    loudly rather than being left.

    Raises:
        KeyError: no such study.
    """
    lock_study(conn, study_id)
    args = {"sid": study_id}
    for table in _TRIAL_CHILDREN:
        conn.execute(
            sa.text(f"DELETE FROM {table} WHERE trial_id IN (SELECT trial_id FROM trials WHERE study_id = :sid)"),
            args,
        )
    conn.execute(sa.text("DELETE FROM trials WHERE study_id = :sid"), args)
    for table in _STUDY_CHILDREN:
        conn.execute(sa.text(f"DELETE FROM {table} WHERE study_id = :sid"), args)
    conn.execute(sa.text("DELETE FROM studies WHERE study_id = :sid"), args)
