"""A trial's rows in Optuna's tables (trials, trial_params, trial_values,
trial_intermediate_values, trial_user_attributes, trial_system_attributes): the statements
behind service/storage.py's one-statement reads and writes, and the queue's attribute writes.

Each function runs one or two statements on the caller's Connection, with Optuna's stored
representations (inf/NaN) and its rules ("finished trials cannot be updated" is decided by
the state a statement returns; the caller raises Optuna's exceptions).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from optuna.distributions import json_to_distribution
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Connection

from service.optuna_compat import NOT_FOUND_MSG, IntermediateValueModel, ValueModel

# user attributes the queue puts on trials
ATTEMPT = "gat_tune_attempt"
RESUME_FROM = "gat_tune_resume_from"
RETRY_OF = "gat_tune_retry_of"
RUN_DIR = "run_dir"
FAIL_REASON = "fail_reason"
# a trial system attribute: how a packed trial trains again bit for bit (GET /best's "pack")
PACK_REPLAY = "gat_tune_pack_replay"

_Value = ValueModel
_Intermediate = IntermediateValueModel

# A trial row with its children as JSON arrays, ordered as they were written (their ids),
# as a lazy load from the heap returns them; followed by a FROM clause that names trials t.
_TRIAL_COLUMNS = """
SELECT t.trial_id, t.number, t.state::text AS state, t.datetime_start, t.datetime_complete,
  (SELECT json_agg(json_build_array(v.objective, v.value, v.value_type::text) ORDER BY v.objective)
     FROM trial_values v WHERE v.trial_id = t.trial_id) AS vals,
  (SELECT json_agg(json_build_array(p.param_name, p.param_value, p.distribution_json) ORDER BY p.param_id)
     FROM trial_params p WHERE p.trial_id = t.trial_id) AS params,
  (SELECT json_agg(json_build_array(a.key, a.value_json) ORDER BY a.trial_user_attribute_id)
     FROM trial_user_attributes a WHERE a.trial_id = t.trial_id) AS user_attrs,
  (SELECT json_agg(json_build_array(a.key, a.value_json) ORDER BY a.trial_system_attribute_id)
     FROM trial_system_attributes a WHERE a.trial_id = t.trial_id) AS system_attrs,
  (SELECT json_agg(json_build_array(i.step, i.intermediate_value, i.intermediate_value_type::text)
                   ORDER BY i.trial_intermediate_value_id)
     FROM trial_intermediate_values i WHERE i.trial_id = t.trial_id) AS intermediate
"""

UPDATABLE = ("RUNNING", "WAITING")  # TrialState.is_finished() is False
_STUDY_STATUS = "(SELECT status FROM gt_studies WHERE name = :study_name)"  # our study's status, a scalar


def _float(value: float | int | None) -> float | None:
    # JSON writes an integral double as 2, which would come back as an int.
    return None if value is None else float(value)


def _frozen_trial(row: Any) -> FrozenTrial:
    values: list[float] | None = None
    if row.vals:
        values = [0.0] * len(row.vals)
        for objective, value, kind in row.vals:
            values[objective] = _Value.stored_repr_to_value(_float(value), _Value.TrialValueType[kind])
    params, dists = {}, {}
    for name, value, dist_json in row.params or ():
        dist = json_to_distribution(dist_json)
        params[name], dists[name] = dist.to_external_repr(float(value)), dist
    return FrozenTrial(
        number=row.number,
        state=TrialState[row.state],
        value=None,
        values=values,
        datetime_start=row.datetime_start,
        datetime_complete=row.datetime_complete,
        params=params,
        distributions=dists,
        user_attrs={key: json.loads(value) for key, value in row.user_attrs or ()},
        system_attrs={key: json.loads(value) for key, value in row.system_attrs or ()},
        intermediate_values={
            step: _Intermediate.stored_repr_to_intermediate_value(
                _float(value),
                _Intermediate.TrialIntermediateValueType[kind],
            )
            for step, value, kind in row.intermediate or ()
        },
        trial_id=row.trial_id,
    )


# -- reads ------------------------------------------------------------------------------
def get_trial(conn: Connection, trial_id: int) -> FrozenTrial | None:
    """The trial with its params, values, attributes and intermediate values, in one
    statement; None if there is none."""
    row = conn.execute(sa.text(_TRIAL_COLUMNS + "FROM trials t WHERE t.trial_id = :tid"), {"tid": trial_id}).first()
    return None if row is None else _frozen_trial(row)


def get_trials(
    conn: Connection,
    study_id: int,
    states: Iterable[TrialState] | None,
    included_trial_ids: set[int],
    trial_id_greater_than: int,
) -> list[FrozenTrial] | None:
    """The selection of RDBStorage._get_trials in one statement: the study's trials in
    ``states`` (None: all) that are in ``included_trial_ids`` or have a greater id than
    ``trial_id_greater_than`` (-1: all); None if the study does not exist."""
    included = [i for i in included_trial_ids if i <= trial_id_greater_than]
    where, args = ["t.study_id = :sid"], {"sid": study_id, "ids": included, "gt": trial_id_greater_than}
    if states is not None:
        where.append("t.state::text = ANY(:states)")
        args["states"] = [s.name for s in states]
    if included and trial_id_greater_than > -1:
        where.append("(t.trial_id = ANY(:ids) OR t.trial_id > :gt)")
    elif trial_id_greater_than > -1:
        where.append("t.trial_id > :gt")
    # The study's existence rides along as a row with no trial (a LEFT JOIN from studies).
    sql = (
        _TRIAL_COLUMNS
        + f"FROM studies s LEFT JOIN trials t ON t.study_id = s.study_id AND {' AND '.join(where)} "
        + "WHERE s.study_id = :sid ORDER BY t.trial_id"
    )
    rows = conn.execute(sa.text(sql), args).all()
    if not rows:
        return None
    return [_frozen_trial(row) for row in rows if row.trial_id is not None]


def study_status(conn: Connection, study_name: str) -> Any:
    """The status of our study ``study_name`` (gt_studies; None if there is none)."""
    return conn.execute(sa.text(f"SELECT {_STUDY_STATUS}"), {"study_name": study_name}).scalar_one()


# -- new trials -------------------------------------------------------------------------
def lock_study(conn: Connection, study_id: int) -> None:
    """The study's row lock, which makes trial numbers (the count of its trials) unique."""
    if (
        conn.execute(sa.text("SELECT 1 FROM studies WHERE study_id = :sid FOR UPDATE"), {"sid": study_id}).first()
        is None
    ):
        raise KeyError(NOT_FOUND_MSG)


def create_trial(conn: Connection, study_id: int) -> tuple[int, int, datetime]:
    """A new RUNNING trial of the study: (trial id, number, start). KeyError: no such study."""
    now = datetime.now()  # Optuna's clock: the client's local time, naive
    # Under the study's row lock; the count is a statement of its own so that it sees what
    # committed while we waited.
    lock_study(conn, study_id)
    trial_id, number = conn.execute(
        sa.text(
            "INSERT INTO trials (number, study_id, state, datetime_start) "
            "VALUES ((SELECT count(*) FROM trials WHERE study_id = :sid), :sid, 'RUNNING', :now) "
            "RETURNING trial_id, number"
        ),
        {"sid": study_id, "now": now},
    ).one()
    return trial_id, number, now


def enqueue_trials(
    conn: Connection,
    study_id: int,
    params: Sequence[dict[str, Any]],
    user_attrs: Sequence[dict[str, Any]] | None = None,
) -> list[int]:
    """WAITING trials, one per params dict: the rows that ``Study.enqueue_trial(params,
    user_attrs)`` writes for each (a trial with no start or end, the system attribute
    ``fixed_params``, the user attributes: one dict per params dict, or None for none), in
    two or three statements whatever their count. The numbers, in the order given.
    KeyError: no such study."""
    if not params:
        return []
    lock_study(conn, study_id)
    # Under the study's row lock, as create_trial: numbers follow the study's count, and
    # trial ids rise with them (rows are inserted in ordinality order).
    rows = conn.execute(
        sa.text(
            "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
            "SELECT (SELECT count(*) FROM trials WHERE study_id = :sid) + g.i - 1, :sid, 'WAITING', NULL, NULL "
            "FROM generate_series(1, :n) AS g(i) ORDER BY g.i RETURNING trial_id, number"
        ),
        {"sid": study_id, "n": len(params)},
    ).all()
    ordered = sorted(rows, key=lambda r: r.number)
    conn.execute(
        sa.text(
            "INSERT INTO trial_system_attributes (trial_id, key, value_json) "
            "SELECT unnest(CAST(:ids AS int[])), 'fixed_params', unnest(CAST(:values AS text[]))"
        ),
        {"ids": [r.trial_id for r in ordered], "values": [json.dumps(p) for p in params]},
    )
    attrs_each = user_attrs if user_attrs is not None else [{} for _ in params]
    attr_rows = [
        (r.trial_id, k, json.dumps(v)) for r, attrs in zip(ordered, attrs_each, strict=True) for k, v in attrs.items()
    ]
    if attr_rows:
        ids, keys, values = zip(*attr_rows, strict=True)
        conn.execute(
            sa.text(
                "INSERT INTO trial_user_attributes (trial_id, key, value_json) "
                "SELECT unnest(CAST(:ids AS int[])), unnest(CAST(:keys AS text[])), unnest(CAST(:values AS text[]))"
            ),
            {"ids": list(ids), "keys": list(keys), "values": list(values)},
        )
    return [r.number for r in ordered]


def pop_waiting_trial(conn: Connection, study_id: int) -> tuple[int, int, dict[str, Any]] | None:
    """The study's first WAITING trial (by number) made RUNNING, as Study.ask pops a queued
    trial: (trial id, number, user attributes), or None. SKIP LOCKED: one being popped by
    another transaction is left to it."""
    row = conn.execute(
        sa.text(
            """
WITH popped AS (
  UPDATE trials SET state = 'RUNNING', datetime_start = :now
  WHERE trial_id = (SELECT trial_id FROM trials WHERE study_id = :sid AND state = 'WAITING'
                    ORDER BY number LIMIT 1 FOR UPDATE SKIP LOCKED)
  RETURNING trial_id, number)
SELECT p.trial_id, p.number,
  (SELECT json_agg(json_build_array(a.key, a.value_json)) FROM trial_user_attributes a
   WHERE a.trial_id = p.trial_id) AS user_attrs
FROM popped p
"""
        ),
        {"sid": study_id, "now": datetime.now()},
    ).first()
    if row is None:
        return None
    return row.trial_id, row.number, {key: json.loads(value) for key, value in row.user_attrs or ()}


# -- writes to an unfinished trial --------------------------------------------------------
def _insert_if_updatable(
    conn: Connection,
    trial_id: int,
    table: str,
    values: str,
    on_conflict: str,
    args: dict[str, Any],
    read: str = "NULL",
) -> Any:
    """One statement: INSERT INTO ``table`` the row ``values`` (ON CONFLICT ``on_conflict``)
    only if the trial is not finished. The row (state, read): the trial's state (None: no
    such trial) and the value of the SQL expression ``read``, evaluated in the same statement."""
    return conn.execute(
        sa.text(
            f"""
WITH t AS (SELECT state::text AS state FROM trials WHERE trial_id = :tid),
ins AS (INSERT INTO {table} SELECT {values} FROM t WHERE t.state IN {UPDATABLE} ON CONFLICT {on_conflict})
SELECT (SELECT state FROM t) AS state, {read} AS read
"""
        ),
        {"tid": trial_id, **args},
    ).one()


def add_param_if_updatable(conn: Connection, trial_id: int, name: str, value: float, dist_json: str) -> str | None:
    """The param, unless the trial already has it or is finished, in one statement; the
    trial's state (None: no such trial)."""
    row = _insert_if_updatable(
        conn,
        trial_id,
        "trial_params (trial_id, param_name, param_value, distribution_json)",
        ":tid, :name, :value, :dist",
        "(trial_id, param_name) DO NOTHING",
        {"name": name, "value": value, "dist": dist_json},
    )
    return row.state


def state_and_study_distribution(conn: Connection, trial_id: int, name: str, *, look: bool) -> Any:
    """The trial's state and (``look``) the distribution another trial of its study has for
    param ``name`` (JSON, or None); None if there is no such trial."""
    return conn.execute(
        sa.text(
            "SELECT t.state::text AS state, CASE WHEN :look THEN (SELECT p.distribution_json "
            "FROM trial_params p JOIN trials o ON o.trial_id = p.trial_id "
            "WHERE o.study_id = t.study_id AND p.param_name = :name LIMIT 1) END AS previous "
            "FROM trials t WHERE t.trial_id = :tid"
        ),
        {"tid": trial_id, "name": name, "look": look},
    ).first()


def add_param(conn: Connection, trial_id: int, name: str, value: float, dist_json: str) -> None:
    """The param, as Optuna inserts it (an integrity error if the trial has it)."""
    conn.execute(
        sa.text(
            "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
            "VALUES (:tid, :name, :value, :dist)"
        ),
        {"tid": trial_id, "name": name, "value": value, "dist": dist_json},
    )


def set_intermediate_value(
    conn: Connection, trial_id: int, step: int, intermediate_value: float, study_name: str | None = None
) -> Any:
    """The intermediate value at ``step`` unless the trial is finished, in one statement.
    The row (state, read): the trial's state (None: no such trial) and, for ``study_name``,
    the status of our study of that name (gt_studies; None if there is none): a worker sees
    a pause or a stop with each report at no extra round trip."""
    value, kind = _Intermediate.intermediate_value_to_stored_repr(intermediate_value)
    return _insert_if_updatable(
        conn,
        trial_id,
        "trial_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type)",
        ":tid, :step, :value, CAST(:kind AS trialintermediatevaluetype)",
        "(trial_id, step) DO UPDATE SET intermediate_value = EXCLUDED.intermediate_value, "
        "intermediate_value_type = EXCLUDED.intermediate_value_type",
        {"step": step, "value": value, "kind": kind.name, "study_name": study_name},
        "NULL" if study_name is None else _STUDY_STATUS,
    )


_STATE_VALUES_SQL = sa.text(
    f"""
WITH t AS (SELECT trial_id, state::text AS state FROM trials WHERE trial_id = :tid FOR UPDATE),
vals AS (
  INSERT INTO trial_values (trial_id, objective, value, value_type)
  SELECT t.trial_id, u.o - 1, u.v, CAST(u.k AS trialvaluetype)
  FROM t, unnest(CAST(:values AS double precision[]), CAST(:kinds AS text[])) WITH ORDINALITY AS u(v, k, o)
  WHERE t.state IN {UPDATABLE}
  ON CONFLICT (trial_id, objective) DO UPDATE SET value = EXCLUDED.value, value_type = EXCLUDED.value_type),
upd AS (
  UPDATE trials SET state = CAST(:state AS trialstate),
    datetime_start = CASE WHEN :running THEN :now ELSE trials.datetime_start END,
    datetime_complete = CASE WHEN :finished THEN :now ELSE trials.datetime_complete END
  FROM t WHERE trials.trial_id = t.trial_id AND t.state IN {UPDATABLE} AND (NOT :running OR t.state = 'WAITING'))
SELECT state FROM t
"""
)


def set_state_values(conn: Connection, trial_id: int, state: TrialState, values: Sequence[float] | None) -> str | None:
    """In one statement: lock the trial (the locked row is its latest version), then write
    the values and the state only if it is not finished; RUNNING only from WAITING (a
    queued trial popped by one worker only). The state it had (None: no such trial)."""
    stored = [_Value.value_to_stored_repr(v) for v in values or ()]
    now = datetime.now()  # Optuna's clock
    return conn.execute(
        _STATE_VALUES_SQL,
        {
            "tid": trial_id,
            "values": [v for v, _ in stored],
            "kinds": [k.name for _, k in stored],
            "state": state.name,
            "now": now,
            "running": state == TrialState.RUNNING,
            "finished": state.is_finished(),
        },
    ).scalar()


# -- attributes -------------------------------------------------------------------------
AttrTable = Literal["trial_user_attributes", "trial_system_attributes"]


def upsert_attrs(table: AttrTable, prefix: str = "") -> str:
    """Trial attributes :{prefix}keys → :{prefix}values (JSON texts) of trial :tid in one
    statement, with Optuna's table, encoding and (trial_id, key) uniqueness; Optuna's own
    setter is a transaction per key. Bound with attr_args. Composed only inside this package."""
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
