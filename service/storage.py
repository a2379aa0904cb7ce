"""Optuna's RDBStorage with its per-trial hot paths in one or two SQL statements each.

A slot's dispatch (service/worker.py) is mostly Optuna storage calls: ``ask`` creates a trial and reads it
back, each suggestion and each ``report`` writes a row, ``tell`` writes the values and
state and reads the trial twice. Optuna's RDBStorage does each through the ORM: a trial
read is six queries (the trial, then its five child tables lazily), a write loads the
trial model, looks the child row up, then flushes. Here the same operations are one or
two statements on Optuna's own tables (service/optuna_tables/trials.py: the statements;
here: the transactions, the checks, Optuna's exceptions), with Optuna's rules: the same stored
representations (inf/NaN), trial numbering under the study's row lock, "finished trials
cannot be updated" (the same exceptions), the same integrity handling, and
StorageInternalError for other database errors. Everything else is Optuna's code.
Optuna calls them through its private RDBStorage hooks, which service/optuna_compat.py
(RDBStorageHooks) overrides and checks against the installed Optuna.
tests/service/test_storage.py runs both storages side by side and compares what they
store and read, field by field.
"""

from __future__ import annotations

import contextlib
from collections.abc import Container, Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from optuna import distributions
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.exceptions import StorageInternalError
from optuna.trial import FrozenTrial, TrialState

from service import optuna_compat as compat
from service import optuna_tables
from service.connection_pool import ping_when_idle
from service.optuna_compat import NOT_FOUND_MSG

__all__ = ["OptunaStorage"]


def _compatible(a: BaseDistribution, b: BaseDistribution) -> bool:
    try:
        distributions.check_distribution_compatibility(a, b)
    except ValueError:
        return False
    return True


class OptunaStorage(compat.RDBStorageHooks):
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
        third of a slot's round trips were those). Made on first use; not pickled."""
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
            trial = optuna_tables.get_trial(conn, trial_id)
        if trial is None:
            raise KeyError(NOT_FOUND_MSG)
        return trial

    def read_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        assert states is None or isinstance(states, Iterable)
        with self._transaction(single=True) as conn:
            trials = optuna_tables.get_trials(conn, study_id, states, included_trial_ids, trial_id_greater_than)
        if trials is None:
            raise KeyError(NOT_FOUND_MSG)
        return trials

    # -- writes ---------------------------------------------------------------------------
    def create_running_trial(self, study_id: int) -> FrozenTrial:
        with self._transaction() as conn:
            trial_id, number, now = optuna_tables.create_trial(conn, study_id)
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

    def write_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
        previous_distribution: BaseDistribution | None,
    ) -> None:
        dist_json = distributions.distribution_to_json(distribution)
        if previous_distribution is not None and _compatible(previous_distribution, distribution):
            # The usual case (Optuna's cache knows the study's distribution): one statement.
            with self._transaction(ignore_integrity_error=True, single=True) as conn:
                state = optuna_tables.add_param_if_updatable(
                    conn, trial_id, param_name, param_value_internal, dist_json
                )
                self._check_updatable(trial_id, state)
            return
        with self._transaction(ignore_integrity_error=True) as conn:
            # The trial's state and, unless the caller knows it, the distribution another trial
            # of the study has for this parameter (they must be compatible).
            row = optuna_tables.state_and_study_distribution(
                conn, trial_id, param_name, look=previous_distribution is None
            )
            if row is None:
                raise KeyError(NOT_FOUND_MSG)
            self._check_updatable(trial_id, row.state)
            if previous_distribution is None and row.previous is not None:
                previous_distribution = json_to_distribution(row.previous)
            if previous_distribution is not None:
                distributions.check_distribution_compatibility(previous_distribution, distribution)
            optuna_tables.add_param(conn, trial_id, param_name, param_value_internal, dist_json)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._set_intermediate_value(trial_id, step, intermediate_value)

    def report_and_read_status(self, trial_id: int, step: int, intermediate_value: float, study_name: str) -> Any:
        """set_trial_intermediate_value, and in the same statement the status of our study
        ``study_name`` (gt_studies; None if there is none): a worker sees a pause or a stop
        with each report at no extra round trip."""
        return self._set_intermediate_value(trial_id, step, intermediate_value, study_name)

    def study_status(self, study_name: str) -> Any:
        """The status of our study ``study_name`` (gt_studies; None if there is none), in
        one autocommit statement."""
        with self.autocommit_engine.connect() as conn:
            return optuna_tables.study_status(conn, study_name)

    def _set_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float, study_name: str | None = None
    ) -> Any:
        # An integrity error is ignored, as Optuna's setters ignore it.
        with self._transaction(ignore_integrity_error=True, single=True) as conn:
            row = optuna_tables.set_intermediate_value(conn, trial_id, step, intermediate_value, study_name)
            self._check_updatable(trial_id, row.state)
            return row.read

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        try:
            return self._set_state_values(trial_id, state, values)
        except sa.exc.IntegrityError:  # as Optuna: a trial deleted meanwhile, say
            return False

    def _set_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None) -> bool:
        with self._transaction(single=True) as conn:
            current = optuna_tables.set_state_values(conn, trial_id, state, values)
        self._check_updatable(trial_id, current)
        return not (state == TrialState.RUNNING and current != "WAITING")
