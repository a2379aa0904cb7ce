"""Optuna's RDBStorage with its per-trial hot paths in one or two SQL statements each.

A worker's dispatch is mostly Optuna storage calls: ``ask`` creates a trial and reads it
back, each suggestion and each ``report`` writes a row, ``tell`` writes the values and
state and reads the trial twice. Optuna's RDBStorage does each through the ORM: a trial
read is six queries (the trial, then its five child tables lazily), a write loads the
trial model, looks the child row up, then flushes. Here the same operations are one or
two statements on Optuna's own tables, with Optuna's rules: the same stored
representations (inf/NaN), trial numbering under the study's row lock, "finished trials
cannot be updated" (the same exceptions), the same integrity handling, and
StorageInternalError for other database errors. Everything else is Optuna's code.
The private RDBStorage hooks overridden here are listed, and checked against the installed
Optuna, in service/optuna_compat.py.
tests/service/test_storage.py runs both storages side by side and compares what they
store and read, field by field.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Container, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from optuna import distributions
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from service.optuna_compat import NOT_FOUND_MSG, IntermediateValueModel, ValueModel
from service.pool import ping_when_idle

__all__ = ["OptunaStorage"]

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


def _float(value: float | int | None) -> float | None:
    # JSON writes an integral double as 2, which would come back as an int.
    return None if value is None else float(value)


def _compatible(a: BaseDistribution, b: BaseDistribution) -> bool:
    try:
        distributions.check_distribution_compatibility(a, b)
    except ValueError:
        return False
    return True


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


_UPDATABLE = ("RUNNING", "WAITING")  # TrialState.is_finished() is False
_STUDY_STATUS = "(SELECT status FROM gt_studies WHERE name = :study_name)"  # our study's status, a scalar
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


class OptunaStorage(RDBStorage):
    """RDBStorage with one-statement trial reads and writes (see the module's docstring)."""

    def __init__(self, url: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        ping_when_idle(self.engine)

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)  # makes the engine again
        ping_when_idle(self.engine)

    @property
    def autocommit_engine(self) -> sa.Engine:
        """A second pool, in autocommit, for what is one statement: a read, or a write
        PostgreSQL makes atomic by itself. No BEGIN and COMMIT round trips around it (a
        third of a worker's round trips were those). Made on first use; not pickled."""
        engine = self.__dict__.get("_autocommit_engine")
        if engine is None:
            engine = ping_when_idle(sa.create_engine(self.url, isolation_level="AUTOCOMMIT", **self.engine_kwargs))
            self.__dict__["_autocommit_engine"] = engine
        return engine

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_autocommit_engine", None)
        return state

    def dispose(self) -> None:
        """Close both pools' connections (the autocommit pool only if it was made)."""
        self.engine.dispose()
        if "_autocommit_engine" in self.__dict__:
            self.__dict__["_autocommit_engine"].dispose()

    @contextlib.contextmanager
    def _transaction(self, *, ignore_integrity_error: bool = False, single: bool = False) -> Iterator[sa.Connection]:
        """A transaction committed at the end (``single``: one statement, in autocommit);
        errors as Optuna's scoped session raises them."""
        try:
            with self.autocommit_engine.connect() if single else self.engine.begin() as conn:
                yield conn
        except sa.exc.IntegrityError:
            if not ignore_integrity_error:
                raise
        except sa.exc.SQLAlchemyError as exc:
            raise StorageInternalError("An exception is raised during the commit.") from exc

    def _check_updatable(self, trial_id: int, state: str | None) -> None:
        if state is None:
            raise KeyError(NOT_FOUND_MSG)
        self.check_trial_is_updatable(trial_id, TrialState[state])

    # -- reads ----------------------------------------------------------------------------
    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._transaction(single=True) as conn:
            row = conn.execute(
                sa.text(_TRIAL_COLUMNS + "FROM trials t WHERE t.trial_id = :tid"), {"tid": trial_id}
            ).first()
        if row is None:
            raise KeyError(NOT_FOUND_MSG)
        return _frozen_trial(row)

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        # The same selection as RDBStorage._get_trials, which _CachedStorage calls to read
        # the trials that are new or were unfinished when last read.
        included = [i for i in included_trial_ids if i <= trial_id_greater_than]
        where, args = ["t.study_id = :sid"], {"sid": study_id, "ids": included, "gt": trial_id_greater_than}
        if states is not None:
            assert isinstance(states, Iterable)
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
        with self._transaction(single=True) as conn:
            rows = conn.execute(sa.text(sql), args).all()
        if not rows:
            raise KeyError(NOT_FOUND_MSG)
        return [_frozen_trial(row) for row in rows if row.trial_id is not None]

    # -- writes ---------------------------------------------------------------------------
    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        if template_trial is not None:  # add_trial / enqueue_trial: rare, Optuna's own path
            return super()._create_new_trial(study_id, template_trial)
        with self._transaction() as conn:
            trial_id, number, now = self.create_trial_in(conn, study_id)
        return FrozenTrial(
            number=number,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=now,
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=trial_id,
        )

    def delete_study_in(self, conn: sa.Connection, study_id: int) -> None:
        """Optuna's delete_study in the caller's transaction, a statement per table.

        Optuna's ORM cascade loads every trial and deletes row by row while holding the
        study's lock (bench/RESULTS.md, "Figures the code relies on").
        Optuna's foreign keys have no ON DELETE, so a table a later Optuna adds fails this
        loudly rather than being left.

        Raises:
            KeyError: no such study.
        """
        args = {"sid": study_id}
        if conn.execute(sa.text("SELECT 1 FROM studies WHERE study_id = :sid FOR UPDATE"), args).first() is None:
            raise KeyError(NOT_FOUND_MSG)
        for table in _TRIAL_CHILDREN:
            conn.execute(
                sa.text(f"DELETE FROM {table} WHERE trial_id IN (SELECT trial_id FROM trials WHERE study_id = :sid)"),
                args,
            )
        conn.execute(sa.text("DELETE FROM trials WHERE study_id = :sid"), args)
        for table in _STUDY_CHILDREN:
            conn.execute(sa.text(f"DELETE FROM {table} WHERE study_id = :sid"), args)
        conn.execute(sa.text("DELETE FROM studies WHERE study_id = :sid"), args)

    def create_trial_in(self, conn: sa.Connection, study_id: int) -> tuple[int, int, datetime]:
        """A new RUNNING trial of the study in the caller's transaction: (trial id, number, start)."""
        now = datetime.now()  # Optuna's clock: the client's local time, naive
        # The study's row lock makes the number (the count of the study's trials) unique;
        # the count is a statement of its own so that it sees what committed while we waited.
        if (
            conn.execute(sa.text("SELECT 1 FROM studies WHERE study_id = :sid FOR UPDATE"), {"sid": study_id}).first()
            is None
        ):
            raise KeyError(NOT_FOUND_MSG)
        trial_id, number = conn.execute(
            sa.text(
                "INSERT INTO trials (number, study_id, state, datetime_start) "
                "VALUES ((SELECT count(*) FROM trials WHERE study_id = :sid), :sid, 'RUNNING', :now) "
                "RETURNING trial_id, number"
            ),
            {"sid": study_id, "now": now},
        ).one()
        return trial_id, number, now

    def enqueue_trials_in(self, conn: sa.Connection, study_id: int, params: Sequence[dict[str, Any]]) -> list[int]:
        """WAITING trials, one per params dict, in the caller's transaction: the rows that
        ``Study.enqueue_trial(params)`` writes for each (a trial with no start or end, and
        the system attribute ``fixed_params``), in two statements whatever their count.
        The numbers, in the order given."""
        if not params:
            return []
        if (
            conn.execute(sa.text("SELECT 1 FROM studies WHERE study_id = :sid FOR UPDATE"), {"sid": study_id}).first()
            is None
        ):
            raise KeyError(NOT_FOUND_MSG)
        # Under the study's row lock, as create_trial_in: numbers follow the study's count,
        # and trial ids rise with them (rows are inserted in ordinality order).
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
        return [r.number for r in ordered]

    def pop_waiting_trial_in(self, conn: sa.Connection, study_id: int) -> tuple[int, int, dict[str, Any]] | None:
        """The study's first WAITING trial (by number) made RUNNING in the caller's
        transaction, as Study.ask pops a queued trial: (trial id, number, user attributes),
        or None. SKIP LOCKED: one being popped by another worker is left to it."""
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

    def _set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
        previous_distribution: BaseDistribution | None,
    ) -> None:
        args = {
            "tid": trial_id,
            "name": param_name,
            "value": param_value_internal,
            "dist": distributions.distribution_to_json(distribution),
        }
        if previous_distribution is not None and _compatible(previous_distribution, distribution):
            # The usual case (Optuna's cache knows the study's distribution): one statement.
            self._insert_if_updatable(
                trial_id,
                "trial_params (trial_id, param_name, param_value, distribution_json)",
                ":tid, :name, :value, :dist",
                "(trial_id, param_name) DO NOTHING",
                args,
            )
            return
        with self._transaction(ignore_integrity_error=True) as conn:
            # The trial's state and, unless the caller knows it, the distribution another trial
            # of the study has for this parameter (they must be compatible).
            row = conn.execute(
                sa.text(
                    "SELECT t.state::text AS state, CASE WHEN :look THEN (SELECT p.distribution_json "
                    "FROM trial_params p JOIN trials o ON o.trial_id = p.trial_id "
                    "WHERE o.study_id = t.study_id AND p.param_name = :name LIMIT 1) END AS previous "
                    "FROM trials t WHERE t.trial_id = :tid"
                ),
                {"tid": trial_id, "name": param_name, "look": previous_distribution is None},
            ).first()
            if row is None:
                raise KeyError(NOT_FOUND_MSG)
            self._check_updatable(trial_id, row.state)
            if previous_distribution is None and row.previous is not None:
                previous_distribution = json_to_distribution(row.previous)
            if previous_distribution is not None:
                distributions.check_distribution_compatibility(previous_distribution, distribution)
            conn.execute(
                sa.text(
                    "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
                    "VALUES (:tid, :name, :value, :dist)"
                ),
                args,
            )

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._set_intermediate_value(trial_id, step, intermediate_value)

    def report_and_read_status(self, trial_id: int, step: int, intermediate_value: float, study_name: str) -> Any:
        """set_trial_intermediate_value, and in the same statement the status of our study
        ``study_name`` (gt_studies; None if there is none): a worker sees a pause or a stop
        with each report at no extra round trip."""
        return self._set_intermediate_value(trial_id, step, intermediate_value, _STUDY_STATUS, study_name)

    def study_status(self, study_name: str) -> Any:
        """The status of our study ``study_name`` (gt_studies; None if there is none), in
        one autocommit statement."""
        with self.autocommit_engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT {_STUDY_STATUS}"), {"study_name": study_name}).scalar_one()

    def _set_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float, read: str = "NULL", study_name: str | None = None
    ) -> Any:
        value, kind = _Intermediate.intermediate_value_to_stored_repr(intermediate_value)
        return self._insert_if_updatable(
            trial_id,
            "trial_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type)",
            ":tid, :step, :value, CAST(:kind AS trialintermediatevaluetype)",
            "(trial_id, step) DO UPDATE SET intermediate_value = EXCLUDED.intermediate_value, "
            "intermediate_value_type = EXCLUDED.intermediate_value_type",
            {"step": step, "value": value, "kind": kind.name, "study_name": study_name},
            read,
        )

    def _insert_if_updatable(
        self, trial_id: int, table: str, values: str, on_conflict: str, args: dict[str, Any], read: str = "NULL"
    ) -> Any:
        """One statement: INSERT INTO ``table`` the row ``values`` (ON CONFLICT ``on_conflict``)
        only if the trial is not finished; Optuna's KeyError or UpdateFinishedTrialError
        otherwise. An integrity error is ignored, as Optuna's setters ignore it. Returns the
        value of the SQL expression ``read``, evaluated in the same statement."""
        with self._transaction(ignore_integrity_error=True, single=True) as conn:
            row = conn.execute(
                sa.text(
                    f"""
WITH t AS (SELECT state::text AS state FROM trials WHERE trial_id = :tid),
ins AS (INSERT INTO {table} SELECT {values} FROM t WHERE t.state IN {_UPDATABLE} ON CONFLICT {on_conflict})
SELECT (SELECT state FROM t) AS state, {read} AS read
"""
                ),
                {"tid": trial_id, **args},
            ).one()
            self._check_updatable(trial_id, row.state)
            return row.read

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        try:
            return self._set_state_values(trial_id, state, values)
        except sa.exc.IntegrityError:  # as Optuna: a trial deleted meanwhile, say
            return False

    def _set_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None) -> bool:
        # One statement: lock the trial (the locked row is its latest version), then write the
        # values and the state only if it is not finished; RUNNING only from WAITING (a
        # queued trial popped by one worker only).
        stored = [_Value.value_to_stored_repr(v) for v in values or ()]
        now = datetime.now()  # Optuna's clock
        with self._transaction(single=True) as conn:
            current = conn.execute(
                sa.text(
                    f"""
WITH t AS (SELECT trial_id, state::text AS state FROM trials WHERE trial_id = :tid FOR UPDATE),
vals AS (
  INSERT INTO trial_values (trial_id, objective, value, value_type)
  SELECT t.trial_id, u.o - 1, u.v, CAST(u.k AS trialvaluetype)
  FROM t, unnest(CAST(:values AS double precision[]), CAST(:kinds AS text[])) WITH ORDINALITY AS u(v, k, o)
  WHERE t.state IN {_UPDATABLE}
  ON CONFLICT (trial_id, objective) DO UPDATE SET value = EXCLUDED.value, value_type = EXCLUDED.value_type),
upd AS (
  UPDATE trials SET state = CAST(:state AS trialstate),
    datetime_start = CASE WHEN :running THEN :now ELSE trials.datetime_start END,
    datetime_complete = CASE WHEN :finished THEN :now ELSE trials.datetime_complete END
  FROM t WHERE trials.trial_id = t.trial_id AND t.state IN {_UPDATABLE} AND (NOT :running OR t.state = 'WAITING'))
SELECT state FROM t
"""
                ),
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
        self._check_updatable(trial_id, current)
        return not (state == TrialState.RUNNING and current != "WAITING")
