"""How much work the queue holds for a pool: the trials that could start now, and the worker
slots that would keep busy. The autoscaler's query (KEDA's PostgreSQL trigger, in
service/kubernetes/base/worker-scaledobject.yaml) is SLOTS_WANTED_SQL (written in
service/optuna_tables/queue.py with the queue's other statements), copied there verbatim
and checked equal by tests/test_kubernetes.py; `python -m service.queue.demand` prints it.

The rule is the claim's (service/queue/claim.py): a running study has room while its leased
trials stay under max_parallel and its finished (COMPLETE + PRUNED) plus leased trials stay
under n_trials; a queued (WAITING) trial takes the same room as a new one. What a claim may
still decide on its own, a study marked failed for its failures, is not foreseen here: the
worker that scaled up for it finds nothing, and the count drops with the study's status.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Connection

from service.optuna_tables import SLOTS_WANTED_SQL, running_and_startable

__all__ = ["SLOTS_WANTED_SQL", "Demand", "demand"]


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
    running, startable = running_and_startable(conn)
    return Demand(running=running, startable=startable)


if __name__ == "__main__":
    print(SLOTS_WANTED_SQL)
