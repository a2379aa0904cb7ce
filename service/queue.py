"""The trial queue on PostgreSQL: claim, lease, renew, finish, interrupt, reap.

Optuna's heartbeat only works inside ``study.optimize`` (optuna#3293), so a claimed trial
holds a row in ``gt_trial_leases`` whose ``expires_at`` a heartbeat pushes forward. Time is
always the database's ``now()``. Every change to a trial's end state happens while its lease
row is locked, so a worker and a reaper never both finish the same trial (optuna#5582).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import psycopg2.errors
import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy.engine import Connection, Engine

from service import db
from service import optuna_compat as compat
from service.errors import IncompatibleSpec
from service.optuna_tables import finished_trials, study_completed
from service.spec import StudySpec, load_stored_spec, make_pruner, make_sampler
from service.storage import Storage
from service.studies import FAIL_FAST, repeated_failure
from service.tables import studies, trial_leases, workers

__all__ = ["Claim", "TrialQueue"]

log = logging.getLogger(__name__)

# user attributes the queue puts on trials
ATTEMPT = "gat_tune_attempt"
RESUME_FROM = "gat_tune_resume_from"
RETRY_OF = "gat_tune_retry_of"
RUN_DIR = "run_dir"
FAIL_REASON = "fail_reason"

# A worker whose heartbeat is this many leases old is taken off gt_workers by the reaper
# (GET /workers shows it as lost from one lease on).
WORKER_PRUNE_LEASES = 10


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


# The oldest running study not yet tried by this claim, locked (blocking, as it is here, or
# SKIP LOCKED); :tried is a text[] of study names.
_NEXT_STUDY = """
SELECT * FROM gt_studies WHERE status = 'running' AND name <> ALL(CAST(:tried AS text[]))
ORDER BY created_at LIMIT 1 FOR UPDATE"""

# The same study, skipping one another worker holds, in one row with the number of studies
# it could have been (so a claim that found none knows whether any is being claimed from).
_NEXT_STUDY_SQL = sa.text(
    f"""
SELECT c.candidates, s.* FROM (
  SELECT count(*) AS candidates FROM gt_studies
  WHERE status = 'running' AND name <> ALL(CAST(:tried AS text[]))) c
LEFT JOIN LATERAL ({_NEXT_STUDY} SKIP LOCKED) s ON true
"""
)


AttrTable = Literal["trial_user_attributes", "trial_system_attributes"]


def _upsert_attrs(table: AttrTable, prefix: str = "") -> str:
    """Trial attributes :{prefix}keys → :{prefix}values (JSON texts) of trial :tid in one
    statement, with Optuna's table, encoding and (trial_id, key) uniqueness; Optuna's own
    setter is a transaction per key."""
    return (
        f"INSERT INTO {table} (trial_id, key, value_json) "
        f"SELECT :tid, k, v FROM unnest(CAST(:{prefix}keys AS text[]), CAST(:{prefix}values AS text[])) AS u(k, v) "
        "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json"
    )


def _attr_args(attrs: dict[str, Any], prefix: str = "") -> dict[str, list[str]]:
    return {f"{prefix}keys": list(attrs), f"{prefix}values": [json.dumps(v) for v in attrs.values()]}


# A trial's closing user attributes and system attributes (artifact links), in one statement.
_END_ATTRS_SQL = sa.text(
    f"WITH u AS ({_upsert_attrs('trial_user_attributes')}), "
    f"s AS ({_upsert_attrs('trial_system_attributes', 'system_')}) SELECT 1"
)


_EXPIRES = "now() + make_interval(secs => :lease)"  # a lease's end, :lease seconds on

_LEASE_SQL = sa.text(
    f"""
WITH lease AS (
  INSERT INTO gt_trial_leases (optuna_trial_id, study_name, worker_id, attempt, expires_at)
  VALUES (:tid, :name, :worker, :attempt, {_EXPIRES})),
attr AS ({_upsert_attrs("trial_user_attributes")})
UPDATE gt_workers SET status = 'training', current_trial_id = :tid, last_heartbeat = now() WHERE id = :worker
"""
)


# Drop a lease, mark its worker idle, and (:mark, after a finished trial) the study completed.
_RELEASE_SQL = sa.text(
    f"""
WITH lease AS (DELETE FROM gt_trial_leases WHERE optuna_trial_id = :tid),
worker AS (UPDATE gt_workers SET status = 'idle', current_trial_id = NULL WHERE id = :worker)
UPDATE gt_studies s SET status = 'completed', updated_at = now()
WHERE :mark AND s.name = :name AND s.status = 'running' AND (
  SELECT {study_completed("s.n_trials")} FROM trials t WHERE t.study_id = s.optuna_study_id)
"""
)


@dataclass(frozen=True)
class Opened:
    """A trial a claim made RUNNING under this worker's lease, in the claim's transaction;
    the Trial object is made after the commit (see TrialQueue.claim)."""

    study_name: str
    spec: StudySpec
    study: optuna.Study
    trial_id: int
    attempt: int
    run_dir: str


@dataclass
class Claim:
    """A trial this worker holds the lease of."""

    study_name: str
    spec: StudySpec
    study: optuna.Study
    trial: optuna.Trial
    attempt: int
    run_dir: str
    waited: float = 0.0  # seconds spent waiting for another worker's claim from the study

    @property
    def trial_id(self) -> int:
        return compat.trial_id(self.trial)


class TrialQueue:
    """Claims and leases for one worker (``worker_id``) over one database."""

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
        return sa.text(_EXPIRES).bindparams(lease=float(self.lease_seconds))

    # -- claim ----------------------------------------------------------------------------
    def claim(self) -> Claim | None:
        """Take the next trial of the oldest running study with room, or None.

        In one transaction holding the study's row lock: the counts, the new RUNNING trial
        (a queued one popped, else a new one) and its lease, so max_parallel and n_trials
        hold however many workers race, and a trial never exists without its lease. The
        rest of Optuna's ask (the Trial object, the sampler's relative sampling) runs after
        the commit: the trial is RUNNING before its parameters are sampled, which is what
        lets TPE's constant_liar steer parallel workers apart, and the lock is held only
        for those few statements.

        A study another worker is claiming from is skipped (SKIP LOCKED), so a worker can
        take a trial of the next study; when every study it could take from is being claimed
        from, it waits its turn on the first one inside PostgreSQL (woken when the lock is
        freed: no polling, no CPU), at most ``lock_wait`` seconds.
        """
        waited = 0.0
        with self.engine.begin() as conn:
            opened, tried, busy = None, list[str](), 0
            while opened is None:
                row: Any = conn.execute(_NEXT_STUDY_SQL, {"tried": tried}).one()
                if row.name is None:  # none left that no other worker is claiming from
                    busy = row.candidates
                    break
                tried.append(row.name)
                opened = self._open_or_skip(conn, row)
            if opened is None and busy:
                # The rest are being claimed from: wait for the first one's lock. In a savepoint,
                # so that a timeout undoes the wait only, not what the loop above wrote.
                wait = f"SAVEPOINT claim_wait; SET LOCAL lock_timeout = {int(self.lock_wait * 1000)}; "
                started = time.perf_counter()
                try:
                    row = conn.execute(sa.text(wait + _NEXT_STUDY), {"tried": tried}).first()
                except sa.exc.OperationalError as exc:
                    if not isinstance(exc.orig, psycopg2.errors.LockNotAvailable):
                        raise
                    conn.execute(sa.text("ROLLBACK TO SAVEPOINT claim_wait"))
                    row = None
                waited = time.perf_counter() - started
                opened = None if row is None else self._open_or_skip(conn, row)
        if opened is None:
            return None
        study, trial_id = opened.study, opened.trial_id

        def ask() -> optuna.Trial:
            # The rest of Study.ask: what ask resets first, Optuna's cache told of the new
            # trial (its suggestions go through it), then the Trial, which samples the
            # relative params. Reads only: tried again while the database is away (the
            # trial is committed with its lease, which the heartbeat keeps).
            compat.forget_cached_trials(study)
            study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            return optuna.Trial(study, trial_id)

        try:
            trial = db.retry(ask, f"claim of trial {trial_id} of {opened.study_name}", give_up=self.give_up)
        except Exception:
            self.abandon(trial_id)
            raise
        return Claim(opened.study_name, opened.spec, study, trial, opened.attempt, opened.run_dir, waited)

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

    def _open_or_skip(self, conn: Connection, row: Any) -> Opened | None:
        """_open_in, where an error of this study's own (its spec, its Optuna study) skips it
        for the next study instead of failing every claim: logged once per study and error.
        Database errors are raised: the transaction is gone with them."""
        try:
            return self._open_in(conn, row)
        except (sa.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            raise
        except Exception as exc:
            said = f"{row.name}: {type(exc).__name__}: {exc}"
            if said not in self._said:
                self._said.add(said)
                log.exception("study %s cannot be claimed from; skipped", row.name)
            return None

    def _study_gone(self, conn: Connection, row: Any) -> None:
        """Optuna's study was deleted under our row (optuna.delete_study, the optuna CLI):
        the study is marked failed, so no claim tries it again."""
        conn.execute(
            studies.update().where(studies.c.name == row.name).values(status="failed", updated_at=sa.func.now())
        )
        self._studies.pop(f"{row.name}#{row.optuna_study_id}", None)
        log.warning("study %s: its Optuna study (id %s) no longer exists; marked failed", row.name, row.optuna_study_id)

    def _open_in(self, conn: Connection, row: Any) -> Opened | None:
        """Under the study's lock: a RUNNING trial with this worker's lease, if the study has
        room."""
        # After the lock, so the counts include every claim made before it (READ COMMITTED:
        # each statement sees what committed before it began).
        c = conn.execute(
            _COUNTS_SQL,
            {"sid": row.optuna_study_id, "name": row.name, "n_trials": row.n_trials, "retry_of": RETRY_OF},
        ).one()
        if not c.present:
            self._study_gone(conn, row)
            return None
        finished = c.finished
        if c.completed:
            conn.execute(studies.update().where(studies.c.name == row.name).values(status="completed"))
            return None
        key = f"{row.name}#{row.optuna_study_id}"  # a study deleted and made again is another study
        if key not in self._studies:
            try:
                loaded = optuna.load_study(study_name=row.name, storage=self.storage)
            except KeyError:  # deleted since the counts were read
                self._study_gone(conn, row)
                return None
            self._studies[key] = (loaded, load_stored_spec(row.name, row.spec))
        study, spec = self._studies[key]
        # A failure that was re-queued (crash, pause, shutdown) is not a failed trial; trials
        # that all fail alike (the data is missing, say) end the study without max_failures.
        alike = repeated_failure(conn, row.optuna_study_id) if not finished and c.fail >= FAIL_FAST else None
        if alike or c.fail - c.retries >= (spec.max_failures or row.n_trials):
            # Katib's maxFailedTrialCount: a study whose trials keep failing must not loop forever.
            conn.execute(studies.update().where(studies.c.name == row.name).values(status="failed"))
            why = f"every trial failed: {alike}" if alike else f"{c.fail - c.retries} failed trials"
            log.warning("study %s: %s; marked failed", row.name, why)
            return None
        if finished + c.active >= row.n_trials or c.active >= row.max_parallel:
            return None
        study.sampler = make_sampler(spec, offset=c.total)
        study.pruner = make_pruner(spec)
        # The first half of Study.ask, in this transaction: a queued trial first, as ask does.
        popped = self.storage.pop_waiting_trial_in(conn, row.optuna_study_id) if c.waiting else None
        if popped is not None:
            trial_id, number, user_attrs = popped
        else:
            trial_id, number, _ = self.storage.create_trial_in(conn, row.optuna_study_id)
            user_attrs = {}
        attempt = int(user_attrs.get(ATTEMPT, 0))
        run_dir = user_attrs.get(RESUME_FROM) or str(self.run_root / row.name / f"trial-{number:05d}")
        # The lease, where the run lives (a reaper resumes from it) and what this worker is
        # doing (GET /workers): in the claim's transaction, in one statement.
        conn.execute(
            _LEASE_SQL,
            {
                "tid": trial_id,
                "name": row.name,
                "worker": self.worker_id,
                "attempt": attempt,
                "lease": float(self.lease_seconds),
                **_attr_args({RUN_DIR: run_dir}),
            },
        )
        return Opened(row.name, spec, study, trial_id, attempt, run_dir)

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
                    trial_leases.update()
                    .where(trial_leases.c.worker_id == self.worker_id)
                    .values(expires_at=self._expires(), heartbeat_at=sa.func.now())
                    .returning(trial_leases.c.optuna_trial_id)
                ).scalars()
            )
            beat = workers.update().where(workers.c.id == self.worker_id).values(last_heartbeat=sa.func.now())
            self.listed = conn.execute(beat).rowcount > 0
            return held

    # -- end of a trial -------------------------------------------------------------------
    def _lock_lease(self, conn: Connection, trial_id: int) -> Any:
        return conn.execute(
            sa.select(trial_leases)
            .where(trial_leases.c.optuna_trial_id == trial_id, trial_leases.c.worker_id == self.worker_id)
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
                attrs_conn.execute(
                    _END_ATTRS_SQL,
                    {"tid": claim.trial_id, **_attr_args(attrs or {}), **_attr_args(system_attrs or {}, "system_")},
                )
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
                if self._requeued(conn, compat.study_id(claim.study), claim.trial.number)
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
        conn.execute(
            _RELEASE_SQL,
            {"tid": claim.trial_id, "worker": self.worker_id, "name": claim.study_name, "mark": mark_completed},
        )

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

    # -- reaper ---------------------------------------------------------------------------
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
                sa.select(trial_leases, studies.c.spec)
                .join(studies, studies.c.name == trial_leases.c.study_name)
                .where(
                    trial_leases.c.expires_at < sa.func.now(),
                    sa.func.pg_postmaster_start_time() < sa.func.now() - self._interval(1),
                )
                .with_for_update(of=trial_leases, skip_locked=True)
            ).all()
            for lease in expired:
                conn.execute(trial_leases.delete().where(trial_leases.c.optuna_trial_id == lease.optuna_trial_id))
                reason = f"lease expired: worker {lease.worker_id} stopped heartbeating"
                reaped += self._reap_one(conn, lease.optuna_trial_id, lease.study_name, lease.spec, reason)
            orphans = conn.execute(
                sa.text(
                    "SELECT t.trial_id, s.name, s.spec FROM trials t "
                    "JOIN gt_studies s ON s.optuna_study_id = t.study_id WHERE t.state = 'RUNNING' "
                    "AND t.datetime_start < (now() AT TIME ZONE 'UTC') - make_interval(secs => :grace) "
                    "AND NOT EXISTS (SELECT 1 FROM gt_trial_leases l WHERE l.optuna_trial_id = t.trial_id)"
                ),
                {"grace": 2 * self.lease_seconds},
            ).all()
            for trial_id, name, spec in orphans:
                if conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": 7_000_000 + trial_id}).scalar():
                    reaped += self._reap_one(conn, trial_id, name, spec, "no lease: its worker died while claiming it")
            conn.execute(
                workers.delete().where(
                    workers.c.last_heartbeat < sa.func.now() - self._interval(WORKER_PRUNE_LEASES),
                    workers.c.id != self.worker_id,
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
        already = self._requeued(conn, compat.study_id(study), trial.number)
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
