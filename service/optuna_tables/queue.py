"""The trial queue's statements (service/queue/) that join Optuna's trials with our
gt_studies, gt_trial_leases and gt_workers: a claim's counts, a new lease, a release, the
trials no lease covers. Each is one statement, so a claim and an end of a trial cost no
more round trips than before the split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.optuna_tables.studies import finished_trials, study_completed
from service.optuna_tables.trials import RETRY_OF, attr_args, upsert_attrs

# What a claim needs to know about a study, in one statement.
_COUNTS_SQL = sa.text(
    f"""
SELECT EXISTS (SELECT 1 FROM studies WHERE study_id = :sid) AS present,
  count(*) AS total, {finished_trials()} AS finished, {study_completed(":n_trials")} AS completed,
  count(*) FILTER (WHERE state = 'WAITING') AS waiting, count(*) FILTER (WHERE state = 'FAIL') AS fail,
  (SELECT count(*) FROM gt_trial_leases WHERE study_name = :name) AS active,
  (SELECT count(*) FROM trial_user_attributes a JOIN trials r ON r.trial_id = a.trial_id
   WHERE r.study_id = :sid AND a.key = :retry_of) AS retries
FROM trials t WHERE study_id = :sid
"""
)


def claim_counts(conn: Connection, optuna_study_id: int, study_name: str, n_trials: int) -> Any:
    """The study's counts as a claim needs them, in one row: present (Optuna's study still
    exists), total, finished, completed (the rule), waiting, fail, active (leases held),
    retries (re-queued copies)."""
    return conn.execute(
        _COUNTS_SQL, {"sid": optuna_study_id, "name": study_name, "n_trials": n_trials, "retry_of": RETRY_OF}
    ).one()


# The lease (its end :lease seconds on, by the database's clock), the trial's user
# attributes and what the slot is doing, in one statement.
_LEASE_SQL = sa.text(
    f"""
WITH lease AS (
  INSERT INTO gt_trial_leases (optuna_trial_id, study_name, worker_id, attempt, expires_at)
  VALUES (:tid, :name, :worker, :attempt, now() + make_interval(secs => :lease))),
attr AS ({upsert_attrs("trial_user_attributes")})
UPDATE gt_workers SET status = 'training', current_trial_id = :tid, last_heartbeat = now() WHERE id = :worker
"""
)


def open_lease(
    conn: Connection,
    *,
    trial_id: int,
    study_name: str,
    worker_id: str,
    attempt: int,
    lease_seconds: float,
    user_attrs: dict[str, Any],
) -> None:
    """The lease of trial ``trial_id`` held by ``worker_id`` (a gt_workers row), the trial's
    ``user_attrs``, and the worker row marked training it, in one statement."""
    conn.execute(
        _LEASE_SQL,
        {
            "tid": trial_id,
            "name": study_name,
            "worker": worker_id,
            "attempt": attempt,
            "lease": float(lease_seconds),
            **attr_args(user_attrs),
        },
    )


# Drop a lease, mark its worker idle, and (:mark, after a finished trial) the study completed.
_RELEASE_SQL = sa.text(
    f"""
WITH lease AS (DELETE FROM gt_trial_leases WHERE optuna_trial_id = :tid),
-- idle unless the worker trains other trials still (a packed slot); the DELETE above is
-- not visible to this statement, hence the trial excluded by hand
others AS (SELECT min(optuna_trial_id) AS tid FROM gt_trial_leases
           WHERE worker_id = :worker AND optuna_trial_id <> :tid),
worker AS (UPDATE gt_workers SET status = CASE WHEN others.tid IS NULL THEN 'idle' ELSE 'training' END,
           current_trial_id = others.tid FROM others WHERE id = :worker)
UPDATE gt_studies s SET status = 'completed', updated_at = now()
WHERE :mark AND s.name = :name AND s.status = 'running' AND (
  SELECT {study_completed("s.n_trials")} FROM trials t WHERE t.study_id = s.optuna_study_id)
"""
)


def release(conn: Connection, *, trial_id: int, worker_id: str, study_name: str, mark_completed: bool) -> None:
    """In one statement: drop the trial's lease, mark ``worker_id`` idle (or training the
    next trial it holds, in a pack), and (after a
    finished trial, ``mark_completed``) mark the study completed once n_trials trials have
    finished."""
    conn.execute(_RELEASE_SQL, {"tid": trial_id, "worker": worker_id, "name": study_name, "mark": mark_completed})


def orphaned_trials(conn: Connection, grace_seconds: float) -> Sequence[Any]:
    """RUNNING trials of our studies with no lease that started over ``grace_seconds`` ago
    (a worker died between creating the trial and leasing it): rows (trial_id, name, spec)."""
    return conn.execute(
        sa.text(
            "SELECT t.trial_id, s.name, s.spec FROM trials t "
            "JOIN gt_studies s ON s.optuna_study_id = t.study_id WHERE t.state = 'RUNNING' "
            "AND t.datetime_start < (now() AT TIME ZONE 'UTC') - make_interval(secs => :grace) "
            "AND NOT EXISTS (SELECT 1 FROM gt_trial_leases l WHERE l.optuna_trial_id = t.trial_id)"
        ),
        {"grace": grace_seconds},
    ).all()


# -- the queue's demand, as service/queue/demand.py and the autoscaler read it ----------
# One row per running study, d: its limits, its leased (running) and finished trials.
_RUNNING_STUDIES = f"""WITH d AS (
  SELECT s.n_trials, s.max_parallel,
    (SELECT count(*) FROM gt_trial_leases l WHERE l.study_name = s.name) AS running,
    (SELECT {finished_trials()} FROM trials t WHERE t.study_id = s.optuna_study_id) AS finished
  FROM gt_studies s WHERE s.status = 'running')
"""

# Trials the running studies could start now; a study's count is never below 0 (one over
# its limits, e.g. whose max_parallel was lowered, waits for its running trials to end).
_STARTABLE = (
    "(SELECT CAST(coalesce(sum(GREATEST(0, LEAST(d.max_parallel - d.running, d.n_trials - d.finished - d.running)))"
    ", 0) AS bigint) FROM d)"
)

# Every leased trial, whatever its study's status: a paused or stopped study's trial keeps
# its worker busy until it checkpoints and lets go.
_RUNNING = "(SELECT count(*) FROM gt_trial_leases)"

# The worker slots a pool needs now: those running trials plus those that could start. An
# autoscaler needs this sum, not the startable count alone: scaled on that, it would stop
# busy workers as soon as every startable trial had been claimed. One column, one row, no
# parameters, as KEDA's PostgreSQL scaler reads it.
SLOTS_WANTED_SQL = f"{_RUNNING_STUDIES}SELECT {_RUNNING}\n  + {_STARTABLE} AS slots_wanted"

_DEMAND_SQL = sa.text(f"{_RUNNING_STUDIES}SELECT {_RUNNING} AS running, {_STARTABLE} AS startable")


# What a packing slot may still take: startable trials beyond one for each other idle
# worker (a slot that could train one alone gets it before a pack grows).
_SPARE_SQL = sa.text(
    f"""{_RUNNING_STUDIES}SELECT {_STARTABLE} - (SELECT count(*) FROM gt_workers w
  WHERE w.status = 'idle' AND w.id <> :worker AND w.last_heartbeat > now() - make_interval(secs => :lease))"""
)


def spare_trials(conn: Connection, worker_id: str, lease_seconds: float) -> int:
    """Trials of running studies a claim could start now, less one for each other idle
    worker that beat within a lease: what a slot may add to its pack without keeping an
    idle slot waiting."""
    return int(conn.execute(_SPARE_SQL, {"worker": worker_id, "lease": float(lease_seconds)}).scalar_one())


def running_and_startable(conn: Connection) -> tuple[int, int]:
    """The queue's demand (service/queue/demand.py): trials leased, and trials of running
    studies that a claim could start now."""
    row = conn.execute(_DEMAND_SQL).one()
    return int(row.running), int(row.startable)
