"""How much work the queue holds for a pool: the trials that could start now, and the worker
slots that would keep busy. The autoscaler's query (KEDA's PostgreSQL trigger, in
service/kubernetes/base/worker-scaledobject.yaml) is SLOTS_WANTED_SQL, copied there verbatim
and checked equal by tests/test_kubernetes.py; `python -m service.queue.demand` prints it.

The rule is the claim's (service/queue/claim.py): a running study has room while its leased
trials stay under max_parallel and its finished (COMPLETE + PRUNED) plus leased trials stay
under n_trials; a queued (WAITING) trial takes the same room as a new one. What a claim may
still decide on its own, a study marked failed for its failures, is not foreseen here: the
worker that scaled up for it finds nothing, and the count drops with the study's status.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.optuna_tables import finished_trials

__all__ = ["SLOTS_WANTED_SQL", "Demand", "demand"]

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


@dataclass(frozen=True)
class Demand:
    """The queue's demand on a pool, at one moment."""

    running: int  # trials leased by a worker
    startable: int  # trials of running studies that a claim could start now

    @property
    def slots_wanted(self) -> int:
        """Worker slots that would all be busy: what SLOTS_WANTED_SQL returns."""
        return self.running + self.startable


def demand(conn: Connection) -> Demand:
    """The running and startable trial counts, in one statement."""
    row = conn.execute(_DEMAND_SQL).one()
    return Demand(running=int(row.running), startable=int(row.startable))


if __name__ == "__main__":
    print(SLOTS_WANTED_SQL)
