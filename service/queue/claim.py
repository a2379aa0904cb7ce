"""Claiming a trial: the next study with room, under its row lock, a RUNNING trial and
its lease in one transaction; the rest of Optuna's ask after the commit."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import optuna
import psycopg2.errors
import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy.engine import Connection

from service import db, optuna_tables
from service import optuna_compat as compat
from service.optuna_tables import ATTEMPT, FAIL_FAST, RESUME_FROM, RUN_DIR
from service.queue.base import QueueBase, log
from service.spec import StudySpec, load_stored_spec, make_pruner, make_sampler
from service.tables import gt_studies

# The oldest running study not yet tried by this claim (and :only, when not null: a packed
# slot adding members from its first one's study), locked (blocking, as it is here, or SKIP
# LOCKED); :tried is a text[] of study names.
_RUNNING = """status = 'running' AND name <> ALL(CAST(:tried AS text[]))
  AND (CAST(:only AS text) IS NULL OR name = CAST(:only AS text))"""
_NEXT_STUDY = f"""
SELECT * FROM gt_studies WHERE {_RUNNING}
ORDER BY created_at LIMIT 1 FOR UPDATE"""

# The same study, skipping one another worker holds, in one row with the number of gt_studies
# it could have been (so a claim that found none knows whether any is being claimed from).
_NEXT_STUDY_SQL = sa.text(
    f"""
SELECT c.candidates, s.* FROM (
  SELECT count(*) AS candidates FROM gt_studies WHERE {_RUNNING}) c
LEFT JOIN LATERAL ({_NEXT_STUDY} SKIP LOCKED) s ON true
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


class Claiming(QueueBase):
    """TrialQueue's claim."""

    def claim(self, from_study: str | None = None) -> Claim | None:
        """Take the next trial of the oldest running study with room (of ``from_study``
        only, when given: a packing slot adding members), or None.

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
                row: Any = conn.execute(_NEXT_STUDY_SQL, {"tried": tried, "only": from_study}).one()
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
                    row = conn.execute(sa.text(wait + _NEXT_STUDY), {"tried": tried, "only": from_study}).first()
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

    def spare(self) -> int:
        """Trials a packing slot may add to its pack now (optuna_tables.spare_trials)."""
        with self.engine.connect() as conn:
            return optuna_tables.spare_trials(conn, self.worker_id, self.lease_seconds)

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
            gt_studies.update().where(gt_studies.c.name == row.name).values(status="failed", updated_at=sa.func.now())
        )
        self._studies.pop(f"{row.name}#{row.optuna_study_id}", None)
        log.warning("study %s: its Optuna study (id %s) no longer exists; marked failed", row.name, row.optuna_study_id)

    def _open_in(self, conn: Connection, row: Any) -> Opened | None:
        """Under the study's lock: a RUNNING trial with this worker's lease, if the study has
        room."""
        # After the lock, so the counts include every claim made before it (READ COMMITTED:
        # each statement sees what committed before it began).
        c = optuna_tables.claim_counts(conn, row.optuna_study_id, row.name, row.n_trials)
        if not c.present:
            self._study_gone(conn, row)
            return None
        finished = c.finished
        if c.completed:
            conn.execute(gt_studies.update().where(gt_studies.c.name == row.name).values(status="completed"))
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
        alike = (
            optuna_tables.repeated_failure(conn, row.optuna_study_id) if not finished and c.fail >= FAIL_FAST else None
        )
        if alike or c.fail - c.retries >= (spec.max_failures or row.n_trials):
            # Katib's maxFailedTrialCount: a study whose trials keep failing must not loop forever.
            conn.execute(gt_studies.update().where(gt_studies.c.name == row.name).values(status="failed"))
            why = f"every trial failed: {alike}" if alike else f"{c.fail - c.retries} failed trials"
            log.warning("study %s: %s; marked failed", row.name, why)
            return None
        if finished + c.active >= row.n_trials or c.active >= row.max_parallel:
            return None
        study.sampler = make_sampler(spec, offset=c.total)
        study.pruner = make_pruner(spec)
        # The first half of Study.ask, in this transaction: a queued trial first, as ask does.
        popped = optuna_tables.pop_waiting_trial(conn, row.optuna_study_id) if c.waiting else None
        if popped is not None:
            trial_id, number, user_attrs = popped
        else:
            trial_id, number, _ = optuna_tables.create_trial(conn, row.optuna_study_id)
            user_attrs = {}
        attempt = int(user_attrs.get(ATTEMPT, 0))
        run_dir = user_attrs.get(RESUME_FROM) or str(self.run_root / row.name / f"trial-{number:05d}")
        # The lease, where the run lives (a reaper resumes from it) and what this worker is
        # doing (GET /workers): in the claim's transaction, in one statement.
        optuna_tables.open_lease(
            conn,
            trial_id=trial_id,
            study_name=row.name,
            worker_id=self.worker_id,
            attempt=attempt,
            lease_seconds=self.lease_seconds,
            user_attrs={RUN_DIR: run_dir},
        )
        return Opened(row.name, spec, study, trial_id, attempt, run_dir)
