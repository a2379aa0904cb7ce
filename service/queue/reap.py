"""Reaping: trials whose lease ran out or that never got one are failed and re-queued;
workers long silent are taken off gt_workers."""

from __future__ import annotations

from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy.engine import Connection

from service import db, optuna_tables
from service import optuna_compat as compat
from service.errors import IncompatibleSpec
from service.optuna_tables import ATTEMPT, FAIL_REASON, RUN_DIR
from service.queue.base import WORKER_PRUNE_LEASES, QueueBase, log
from service.spec import load_stored_spec
from service.tables import gt_studies, gt_trial_leases, gt_workers


class Reaping(QueueBase):
    """TrialQueue's reaper."""

    def reap(self) -> int:
        """Fail and re-queue trials whose lease expired (their worker died or hung), and
        RUNNING trials that never got a lease (a worker died between ask and lease).

        Any worker, or the server, may run this; SKIP LOCKED and a per-trial advisory lock
        keep two reapers apart. Returns the number of trials reaped.

        No lease is taken in the first lease period after the database server started: the
        leases that ran out while it was down (a restart) belong to workers that are alive
        and renew them as soon as it is back. Workers whose heartbeat is WORKER_PRUNE_LEASES
        leases old are taken off gt_workers.
        """
        reaped = 0
        with self.engine.begin() as conn:
            expired = conn.execute(
                sa.select(gt_trial_leases, gt_studies.c.spec)
                .join(gt_studies, gt_studies.c.name == gt_trial_leases.c.study_name)
                .where(
                    gt_trial_leases.c.expires_at < sa.func.now(),
                    sa.func.pg_postmaster_start_time() < sa.func.now() - self._interval(1),
                )
                .with_for_update(of=gt_trial_leases, skip_locked=True)
            ).all()
            for lease in expired:
                conn.execute(gt_trial_leases.delete().where(gt_trial_leases.c.optuna_trial_id == lease.optuna_trial_id))
                reason = f"lease expired: worker {lease.worker_id} stopped heartbeating"
                reaped += self._reap_one(conn, lease.optuna_trial_id, lease.study_name, lease.spec, reason)
            orphans = optuna_tables.orphaned_trials(conn, 2 * self.lease_seconds)
            for trial_id, name, spec in orphans:
                if conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": 7_000_000 + trial_id}).scalar():
                    reaped += self._reap_one(conn, trial_id, name, spec, "no lease: its worker died while claiming it")
            conn.execute(
                gt_workers.delete().where(
                    gt_workers.c.last_heartbeat < sa.func.now() - self._interval(WORKER_PRUNE_LEASES),
                    gt_workers.c.id != self.worker_id,
                )
            )
        return reaped

    def _interval(self, leases: float) -> sa.ColumnElement[Any]:
        """``leases`` lease periods as an SQL interval."""
        return sa.func.make_interval(0, 0, 0, 0, 0, 0, float(leases * self.lease_seconds))

    def _reap_one(self, conn: Connection, trial_id: int, study_name: str, spec_json: Any, reason: str) -> int:
        """_fail_and_requeue, kept to its trial: an error of one study's own (its Optuna study
        deleted behind our back) is logged and the pass goes on, so one broken study never
        keeps every worker from reaping and claiming. The database's absence is raised."""
        try:
            with conn.begin_nested():
                return self._fail_and_requeue(conn, trial_id, study_name, spec_json, reason)
        except KeyError:  # the trial or its Optuna study is gone: nothing is left to re-queue
            return 0
        except Exception as exc:
            if db.is_transient(exc):
                raise
            log.warning("reaping trial %s of %s: %s: %s", trial_id, study_name, type(exc).__name__, exc)
            return 0

    def _fail_and_requeue(self, conn: Connection, trial_id: int, study_name: str, spec_json: Any, reason: str) -> int:
        trial = self.storage.get_trial(trial_id)
        if trial.state != TrialState.RUNNING:
            return 0
        max_retries = _stored_max_retries(study_name, spec_json)
        study = optuna.load_study(study_name=study_name, storage=self.storage)
        already = optuna_tables.has_requeued_copy(conn, compat.study_id(study), trial.number)
        attempt = int(trial.user_attrs.get(ATTEMPT, 0)) + 1
        resume = trial.user_attrs.get(RUN_DIR)
        requeued = (
            "; already re-queued"
            if already
            else self._requeue(study, trial.number, trial.params, attempt, max_retries, resume)
        )
        self.storage.set_trial_user_attr(trial_id, FAIL_REASON, reason + requeued)
        try:
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return 0
        log.warning("trial %s of %s: %s", trial.number, study_name, reason + requeued)
        return 1


def _stored_max_retries(study_name: str, spec_json: Any) -> int:
    """The study's max_retries; from a spec this version no longer reads, its raw value (a
    dead worker's trial is re-queued all the same), else none."""
    try:
        return load_stored_spec(study_name, spec_json).max_retries
    except IncompatibleSpec:
        try:
            return max(0, int(spec_json["max_retries"]))
        except (KeyError, TypeError, ValueError):
            return 0
