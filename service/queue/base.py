"""What the queue's parts share: the user attributes it puts on trials, the statement
that writes them, a lease's end, and a worker's queue state (QueueBase)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import optuna
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from service import db
from service.spec import StudySpec
from service.storage import Storage
from service.tables import trial_leases, workers

log = logging.getLogger("service.queue")

# user attributes the queue puts on trials
ATTEMPT = "gat_tune_attempt"
RESUME_FROM = "gat_tune_resume_from"
RETRY_OF = "gat_tune_retry_of"
RUN_DIR = "run_dir"
FAIL_REASON = "fail_reason"

# A worker whose heartbeat is this many leases old is taken off gt_workers by the reaper
# (GET /workers shows it as lost from one lease on).
WORKER_PRUNE_LEASES = 10


AttrTable = Literal["trial_user_attributes", "trial_system_attributes"]


def upsert_attrs(table: AttrTable, prefix: str = "") -> str:
    """Trial attributes :{prefix}keys → :{prefix}values (JSON texts) of trial :tid in one
    statement, with Optuna's table, encoding and (trial_id, key) uniqueness; Optuna's own
    setter is a transaction per key."""
    return (
        f"INSERT INTO {table} (trial_id, key, value_json) "
        f"SELECT :tid, k, v FROM unnest(CAST(:{prefix}keys AS text[]), CAST(:{prefix}values AS text[])) AS u(k, v) "
        "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json"
    )


def attr_args(attrs: dict[str, Any], prefix: str = "") -> dict[str, list[str]]:
    return {f"{prefix}keys": list(attrs), f"{prefix}values": [json.dumps(v) for v in attrs.values()]}


EXPIRES = "now() + make_interval(secs => :lease)"  # a lease's end, :lease seconds on


class QueueBase:
    """A worker's queue state; TrialQueue (service/queue/__init__.py) adds claiming,
    leases and reaping to it."""

    def __init__(
        self,
        engine: Engine,
        storage: Storage,
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
        # tried again (the worker is shutting down); see db.retry.
        self.give_up: Callable[[], bool] = lambda: False

    def _expires(self) -> sa.TextClause:
        return sa.text(EXPIRES).bindparams(lease=float(self.lease_seconds))

    def abandon(self, trial_id: int) -> None:
        """Give up a trial this worker cannot go on with (an unexpected error): its lease is
        dropped, so that the reaper fails and re-queues it as a trial without a lease,
        instead of this worker's heartbeat keeping it RUNNING for good. Best effort."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    trial_leases.delete().where(
                        trial_leases.c.optuna_trial_id == trial_id, trial_leases.c.worker_id == self.worker_id
                    )
                )
                conn.execute(
                    workers.update().where(workers.c.id == self.worker_id).values(status="idle", current_trial_id=None)
                )
        except sa.exc.SQLAlchemyError as exc:  # the lease then runs out when the worker exits
            log.warning("trial %s: lease not dropped: %s", trial_id, db.unavailable(exc))

    @staticmethod
    def _requeued(conn: Connection, study_id: int, number: int) -> bool:
        """Whether trial ``number`` of the study already has a re-queued copy."""
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
