"""A claimed trial's life: its reports, the heartbeat that renews its lease, its end
(finish, interrupt), each end made while its lease row is locked."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy.engine import Connection

from service import optuna_compat as compat
from service import optuna_tables
from service.optuna_tables import FAIL_REASON
from service.queue.base import QueueBase, log
from service.queue.claim import Claim
from service.tables import gt_trial_leases, gt_workers


class Leases(QueueBase):
    """TrialQueue's reports, heartbeat and ends of trials."""

    # -- during a trial -------------------------------------------------------------------
    def report(self, claim: Claim, step: int, fid: float) -> str:
        """An eval's FID as the trial's intermediate value at ``step`` and the study's status
        now (to see a pause or stop), in one statement. As Trial.report: a step already
        reported is not written again. Also for a two-objective study, where Trial.report
        refuses (Optuna prunes single-objective studies only): no pruner reads it there, and
        the dashboard still shows the FID curve."""
        trial, fid = claim.trial, float(fid)
        reported = compat.reported_values(trial)
        if step in reported:
            return self.status(claim.study_name)
        status = self.storage.report_and_read_status(claim.trial_id, step, fid, claim.study_name)
        reported[step] = fid
        return str(status)

    def set_attrs(self, claim: Claim, attrs: dict[str, Any]) -> None:
        """User attributes of a running trial (an eval's metrics, for the dashboard), in one
        autocommit statement."""
        with self.storage.autocommit_engine.connect() as conn:
            optuna_tables.set_trial_attrs(conn, claim.trial_id, attrs, {})

    def reload(self, claim: Claim) -> None:
        """Read the trial back as stored. After a write whose reply was lost (the database
        went away), what the Trial object holds may differ from what committed: a suggestion
        tried again must find the stored value, not sample a new one."""
        compat.set_cached_trial(claim.trial, self.storage.get_trial(claim.trial_id))

    def status(self, study_name: str) -> str:
        return str(self.storage.study_status(study_name))

    # -- heartbeat ------------------------------------------------------------------------
    def renew(self) -> set[int]:
        """Push this worker's leases and its own heartbeat forward; the trial ids it still holds.
        ``listed`` tells afterwards whether gt_workers still has this worker (a reaper takes
        off a worker that was silent for long, e.g. while the database was away)."""
        with self.engine.begin() as conn:
            held = set(
                conn.execute(
                    gt_trial_leases.update()
                    .where(gt_trial_leases.c.worker_id == self.worker_id)
                    .values(expires_at=self._expires(), heartbeat_at=sa.func.now())
                    .returning(gt_trial_leases.c.optuna_trial_id)
                ).scalars()
            )
            beat = gt_workers.update().where(gt_workers.c.id == self.worker_id).values(last_heartbeat=sa.func.now())
            self.listed = conn.execute(beat).rowcount > 0
            return held

    # -- end of a trial -------------------------------------------------------------------
    def _lock_lease(self, conn: Connection, trial_id: int) -> Any:
        return conn.execute(
            sa.select(gt_trial_leases)
            .where(gt_trial_leases.c.optuna_trial_id == trial_id, gt_trial_leases.c.worker_id == self.worker_id)
            .with_for_update()
        ).first()

    def finish(
        self,
        claim: Claim,
        *,
        state: TrialState,
        values: list[float] | None = None,
        attrs: dict[str, Any] | None = None,
        system_attrs: dict[str, Any] | None = None,
    ) -> bool:
        """Tell Optuna the trial's end (COMPLETE, PRUNED or FAIL) if the lease is still ours,
        with its closing user attributes and system attributes (artifact links).

        Returns:
            False when the lease was lost (a reaper failed and re-queued the trial): the
            result is dropped, so it is never counted twice.

        Idempotent, so that it can be tried again after a database error: a tell that
        committed while the lease's transaction did not (the reply was lost) finds the
        trial already in ``state`` under our lease, which counts as told.
        """
        with self.engine.begin() as conn:
            if self._lock_lease(conn, claim.trial_id) is None:
                log.warning("trial %s: lease lost; result dropped", claim.trial.number)
                return False
            with self.storage.autocommit_engine.connect() as attrs_conn:
                # A statement of its own (autocommit), not in the lease's transaction: an
                # insert there would hold a key-share lock on the trial's row until the end,
                # which Optuna's tell (SELECT ... FOR UPDATE) would wait on.
                optuna_tables.set_trial_attrs(attrs_conn, claim.trial_id, attrs or {}, system_attrs or {})
            told = False
            try:
                claim.study.tell(claim.trial, values, state=state)
                told = True
            except (RuntimeError, ValueError) as exc:  # already finished elsewhere
                # Under our lease, only our own earlier try can have finished it.
                told = self.storage.get_trial(claim.trial_id).state == state
                if not told:
                    log.warning("trial %s: %s", claim.trial.number, exc)
            except KeyError:  # the trial or its study was deleted meanwhile
                log.warning("trial %s of %s: no longer exists; result dropped", claim.trial.number, claim.study_name)
            finally:
                self._release(conn, claim, mark_completed=told)
        return told

    def interrupt(self, claim: Claim, reason: str) -> None:
        """End a trial stopped before its end on purpose (pause, shutdown, lost lease): FAIL
        with the reason and re-queue its parameters to resume from its run directory. Not a
        failed attempt: the attempt count stays. Idempotent (a try whose reply was lost may
        have re-queued already: it is not re-queued twice)."""
        with self.engine.begin() as conn:
            if self._lock_lease(conn, claim.trial_id) is None:
                return
            requeued = (
                "; re-queued"
                if optuna_tables.has_requeued_copy(conn, compat.study_id(claim.study), claim.trial.number)
                else self._requeue(
                    claim.study,
                    claim.trial.number,
                    claim.trial.params,
                    claim.attempt,
                    claim.spec.max_retries,
                    claim.run_dir,
                )
            )
            self.storage.set_trial_user_attr(claim.trial_id, FAIL_REASON, reason + requeued)
            claim.study.tell(claim.trial, state=TrialState.FAIL, skip_if_finished=True)
            self._release(conn, claim)

    def _release(self, conn: Connection, claim: Claim, *, mark_completed: bool = False) -> None:
        """In one statement: drop the lease, mark this worker idle, and (after a finished
        trial) mark the study completed once n_trials trials have finished."""
        optuna_tables.release(
            conn,
            trial_id=claim.trial_id,
            worker_id=self.worker_id,
            study_name=claim.study_name,
            mark_completed=mark_completed,
        )
