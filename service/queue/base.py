"""What the queue's parts share: a lease's end, re-queueing, and a worker's queue state
(QueueBase)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service import db
from service.optuna_tables import ATTEMPT, RESUME_FROM, RETRY_OF
from service.spec import StudySpec
from service.storage import OptunaStorage
from service.tables import gt_trial_leases, gt_workers

log = logging.getLogger("service.queue")

__all__ = ["WORKER_PRUNE_LEASES", "QueueBase", "log"]

# A worker whose heartbeat is this many leases old is taken off gt_workers by the reaper
# (GET /workers shows it as lost from one lease on).
WORKER_PRUNE_LEASES = 10


class QueueBase:
    """A worker's queue state; TrialQueue (service/queue/__init__.py) adds claiming,
    leases and reaping to it."""

    def __init__(
        self,
        engine: Engine,
        storage: OptunaStorage,
        worker_id: str,
        *,
        lease_seconds: float = 60,
        run_root: Path | None = None,
        lock_wait: float = 1.0,
    ) -> None:
        self.engine, self.storage, self.worker_id = engine, storage, worker_id
        self.lease_seconds = lease_seconds
        self.run_root = (run_root or Path(".gat-tune/runs")).resolve()
        # Each study loaded and its (immutable) spec parsed once per worker; sampler renewed per trial.
        self._studies: dict[str, tuple[optuna.Study, StudySpec]] = {}
        self.lock_wait = lock_wait
        self._said: set[str] = set()  # per-study errors already logged
        self.listed = True  # gt_workers had this worker at the last renew()
        # When true, a database call that the database's absence keeps failing stops being
        # tried again (the slot is shutting down); see db.retry.
        self.give_up: Callable[[], bool] = lambda: False

    def _expires(self) -> sa.TextClause:
        # A lease's end, a lease period on (a new lease's: service/optuna_tables/queue.py).
        return sa.text("now() + make_interval(secs => :lease)").bindparams(lease=float(self.lease_seconds))

    def abandon(self, trial_id: int) -> None:
        """Give up a trial this worker cannot go on with (an unexpected error): its lease is
        dropped, so that the reaper fails and re-queues it as a trial without a lease,
        instead of this worker's heartbeat keeping it RUNNING for good. Best effort."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    gt_trial_leases.delete().where(
                        gt_trial_leases.c.optuna_trial_id == trial_id, gt_trial_leases.c.worker_id == self.worker_id
                    )
                )
                conn.execute(
                    gt_workers.update()
                    .where(gt_workers.c.id == self.worker_id)
                    .values(status="idle", current_trial_id=None)
                )
        except sa.exc.SQLAlchemyError as exc:  # the lease then runs out when the slot exits
            log.warning("trial %s: lease not dropped: %s", trial_id, db.unavailable(exc))

    def _requeue(
        self,
        study: optuna.Study,
        number: int,
        params: dict[str, Any],
        attempt: int,
        max_retries: int,
        resume_from: str | None,
    ) -> str:
        if attempt > max_retries:
            return f"; not re-queued (max_retries={max_retries} spent)"
        attrs: dict[str, Any] = {ATTEMPT: attempt, RETRY_OF: number}
        if resume_from:
            attrs[RESUME_FROM] = resume_from
        study.enqueue_trial(params, user_attrs=attrs)
        return f"; re-queued (attempt {attempt})"
