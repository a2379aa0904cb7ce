"""The read routes' JSON, rendered by PostgreSQL from our gt_studies and Optuna's tables
(json_build_object, json_agg) and passed on as bytes: on the API process, decoding rows and
re-encoding them in Python cost more than the queries themselves (bench/RESULTS.md, "API
latency"). tests/service/test_response_models.py checks the output against the response
models.

The cached ones select ``pg_current_snapshot()::text`` beside the body, the snapshot that
service/readcache.py's SnapshotCache compares with its own reading of it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.optuna_tables.studies import (
    BEST_TRIAL,
    LAST_FAILURE,
    failed,
    finished_trials,
    params_json,
    study_completed,
)

TRIAL_STATES = ("RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL")
# What a page of trials may be filtered by: the states as trial_counts counts them, FAIL
# (failed on its own) apart from INTERRUPTED (FAIL in Optuna too: paused, worker gone, stopped).
TRIAL_FILTERS = (*TRIAL_STATES, "INTERRUPTED")
_SNAPSHOT = "pg_current_snapshot()::text"


def _utc(column: str) -> str:
    """ISO 8601 of a naive UTC timestamp (Optuna stores those)."""
    return f"""to_char({column}, 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""


def _json(column: str) -> str:
    """A JSON text column as json. Optuna writes attributes with Python's json.dumps, which
    may hold NaN or Infinity; only those few take the slow, forgiving path (migration 0002)."""
    suspect = f"strpos({column}, 'NaN') > 0 OR strpos({column}, 'Infinity') > 0"
    return f"CASE WHEN {suspect} THEN gt_json({column}) ELSE {column}::json END"


def _number_attr(trial_id: str, key: str) -> str:
    """A trial's numeric user attribute; null when absent or not finite (NaN, Infinity)."""
    return f"""(SELECT CASE WHEN a.value_json ~ '^-?[0-9]' THEN a.value_json::float8 END
     FROM trial_user_attributes a WHERE a.trial_id = {trial_id} AND a.key = '{key}')"""


def _summary_sql(*, with_spec: bool) -> str:
    """One study's summary per row of gt_studies s: state, trial counts by state (interrupted
    apart from failed), the last failure, best so far."""
    spec = ", 'spec', s.spec" if with_spec else ""
    counts = ", ".join(f"'{st}', c.{st.lower()}" for st in TRIAL_STATES if st != "FAIL")
    return f"""
SELECT {_SNAPSHOT} AS snapshot, json_build_object(
  'id', s.name, 'name', s.name,
  'status', CASE WHEN s.status = 'running' AND c.completed THEN 'completed' ELSE s.status END,
  'n_trials', s.n_trials, 'max_parallel', s.max_parallel,
  'objectives', CASE jsonb_typeof(s.spec->'objective') WHEN 'array' THEN s.spec->'objective'
                  ELSE jsonb_build_array(s.spec->'objective') END,
  'sampler', s.spec->'sampler', 'pruner', s.spec->'pruner',
  'trial_counts', json_build_object({counts}, 'FAIL', c.fail - c.interrupted, 'INTERRUPTED', c.interrupted),
  'finished', c.finished,
  'last_failure', (SELECT row_to_json(lf) FROM ({LAST_FAILURE.format(sid="s.optuna_study_id")}) lf),
  'best', (SELECT json_build_object('trial', b.number, 'objective', o.first, 'value', b.value,
             'fid', CASE WHEN o.first = 'fid' THEN b.value ELSE {_number_attr("b.trial_id", "fid")} END,
             'features', (SELECT a.value_json::json #>> '{{}}' FROM trial_user_attributes a
                          WHERE a.trial_id = b.trial_id AND a.key = 'features'),
             'params', {params_json("b.trial_id")})
           FROM ({BEST_TRIAL.format(study_id="s.optuna_study_id")}) b),
  'optuna_study_id', s.optuna_study_id,
  'dashboard_url', CAST(:base_url AS text) || '/dashboard/studies/' || s.optuna_study_id,
  'created_at', {_utc("s.created_at AT TIME ZONE 'UTC'")}{spec}
)::text AS body
FROM gt_studies s CROSS JOIN LATERAL (
  SELECT CASE jsonb_typeof(s.spec->'objective') WHEN 'array' THEN s.spec->'objective'->>0
         ELSE s.spec->>'objective' END AS first) o
CROSS JOIN LATERAL (
  SELECT {", ".join(f"count(*) FILTER (WHERE state = '{st}') AS {st.lower()}" for st in TRIAL_STATES)},
         count(*) FILTER (WHERE t.state = 'FAIL' AND NOT ({failed("t", "s.optuna_study_id")})) AS interrupted,
         {finished_trials()} AS finished, {study_completed("s.n_trials")} AS completed
  FROM trials t WHERE study_id = s.optuna_study_id) c
"""


_STUDY_SQL = sa.text(_summary_sql(with_spec=True) + "WHERE s.name = :name")
_STUDIES_SQL = sa.text(_summary_sql(with_spec=False) + "ORDER BY s.created_at DESC, s.name LIMIT :limit OFFSET :offset")

# The study's id as a scalar subquery, not s.sid: its re-queued trials are then read once,
# not once per failed row (1.7 s → 15 ms a page on 4,000 trials).
_FAILED = failed("t", "(SELECT sid FROM s)")
_STATE_IS = f"""(CAST(:state AS text) IS NULL
  OR (CAST(:state AS text) = 'FAIL' AND {_FAILED})
  OR (CAST(:state AS text) = 'INTERRUPTED' AND t.state = 'FAIL' AND NOT ({_FAILED}))
  OR (CAST(:state AS text) NOT IN ('FAIL', 'INTERRUPTED') AND t.state::text = :state))"""
# A page of trials with everything it shows, and the count of all that match; sid is NULL
# for an unknown study. Non-finite values (Optuna stores NULL plus a type) become null.
_TRIALS_SQL = sa.text(
    f"""
WITH s AS (SELECT optuna_study_id AS sid FROM gt_studies WHERE name = :name),
page AS (SELECT t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete
         FROM trials t JOIN s ON t.study_id = s.sid WHERE {_STATE_IS} ORDER BY t.number LIMIT :limit OFFSET :offset)
SELECT {_SNAPSHOT} AS snapshot, (SELECT sid FROM s) AS sid, json_build_object(
  'items', (SELECT coalesce(json_agg(json_build_object(
      'number', p.number,
      'state', p.state::text,
      'params', {params_json("p.trial_id")},
      'values', (SELECT json_agg(CASE WHEN value_type = 'FINITE' THEN value END ORDER BY objective)
                 FROM trial_values WHERE trial_id = p.trial_id),
      'intermediate_values', (SELECT coalesce(json_agg(json_build_object('step', step, 'value',
            CASE WHEN intermediate_value_type = 'FINITE' THEN intermediate_value END) ORDER BY step), '[]')
         FROM trial_intermediate_values WHERE trial_id = p.trial_id),
      'user_attrs', (SELECT coalesce(json_object_agg(key, {_json("value_json")}), '{{}}')
                     FROM trial_user_attributes WHERE trial_id = p.trial_id),
      'datetime_start', {_utc("p.datetime_start")},
      'datetime_complete', {_utc("p.datetime_complete")},
      'duration_seconds', extract(epoch FROM p.datetime_complete - p.datetime_start)
    ) ORDER BY p.number), '[]') FROM page p),
  'total', (SELECT count(*) FROM trials t JOIN s ON t.study_id = s.sid WHERE {_STATE_IS}),
  'offset', :offset, 'limit', :limit)::text AS body
"""
)


def study_json(conn: Connection, name: str, base_url: str) -> tuple[str, bytes] | None:
    """Our study ``name``'s summary with its spec: (the snapshot it was read under, JSON),
    or None for no such study."""
    row: Any = conn.execute(_STUDY_SQL, {"name": name, "base_url": base_url}).first()
    return None if row is None else (row.snapshot, row.body.encode())


def studies_json(conn: Connection, base_url: str, *, offset: int, limit: int) -> list[str]:
    """A page of our studies' summaries (without their specs), newest first, as JSON texts."""
    rows = conn.execute(_STUDIES_SQL, {"base_url": base_url, "offset": offset, "limit": limit}).all()
    return [row.body for row in rows]


def trials_json(conn: Connection, name: str, *, state: str | None, offset: int, limit: int) -> tuple[str, bytes] | None:
    """A page of our study ``name``'s trials in ``state`` (one of TRIAL_FILTERS; None: any),
    oldest first, with the count of all that match: (the snapshot it was read under, JSON),
    or None for no such study. One statement whatever the page size."""
    args = {"name": name, "state": state, "offset": offset, "limit": limit}
    row: Any = conn.execute(_TRIALS_SQL, args).one()
    return None if row.sid is None else (row.snapshot, row.body.encode())
