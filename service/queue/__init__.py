"""The trial queue on PostgreSQL: claim, lease, renew, finish, interrupt, reap.

Optuna's heartbeat only works inside ``study.optimize`` (optuna#3293), so a claimed trial
holds a row in ``gt_trial_leases`` whose ``expires_at`` a heartbeat pushes forward. Time is
always the database's ``now()``. Every change to a trial's end state happens while its lease
row is locked, so a worker and a reaper never both finish the same trial (optuna#5582).
"""

from service.queue.claim import Claim, Claiming
from service.queue.leases import Leases
from service.queue.reap import Reaping

__all__ = ["Claim", "TrialQueue"]


class TrialQueue(Claiming, Leases, Reaping):
    """Claims and leases for one worker (``worker_id``) over one database: claiming
    (service/queue/claim.py), reports, heartbeats and ends of trials (leases.py), and
    reaping (reap.py), over the state they share (base.py)."""
