"""The worker pool's slots: one process per device slot, each claiming and training trials
(the supervisor that starts them is service/pool.py).

Terms, alike in the code, the logs and the docs: a *pool* is the `gat-tune worker` process
tree on one machine (a supervisor and its slots); a *slot* is one training process in it
(devices × per_device of them), running one trial at a time; a *worker* is a slot as the
database and the API know it: one gt_workers row per slot (its id ``worker_id``, host-pid),
holding the leases of the slot's trials, listed by GET /workers. Pools of database
connections are called connection pools (service/connection_pool.py).

supervisor (gat-tune worker, service/pool.py)  restarts a slot that dies, forwards SIGTERM
  └─ slot process × (devices × per_device)
       heartbeat thread: renew leases, record the worker's liveness
       loop: reap expired leases → claim → train (report every eval, prune) → tell

A database error is never a trial's fault: the slot waits for the database and tries again
(db.retry), training goes on while it is away (the evals' reports are kept and sent when it
is back), and a supervisor restarts a slot that died, later each time it keeps dying.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy as sa
import torch
from optuna.trial import TrialState

from service import db
from service.artifacts import artifact_store
from service.config import Settings
from service.optuna_tables import PACK_REPLAY
from service.pool import StartLine
from service.queue import Claim, TrialQueue
from service.spec import folder_refused, suggest_config
from service.tables import gt_workers
from trainer.config import PRDC_K, PRDC_METRICS, ConfigError, TrainConfig
from trainer.data import DataError
from trainer.metrics import FeatureError
from trainer.packed import PackRun, pack_key, train_packed
from trainer.train import CHECKPOINT, Diverged, TrainResult, limit_threads, train

__all__ = ["Interrupted", "limit_threads", "preload", "run_slot"]

log = logging.getLogger(__name__)
T = TypeVar("T")


# Trials a slot packs into one model when the spec does not say (an MLP study): measured
# with bench/packing.py (bench/RESULTS.md, "Trial packing"); the pool's max_pack caps it.
PACK_DEFAULT = {"cpu": 8, "cuda": 16}


class Interrupted(Exception):
    """The trial must stop before its end (study paused or stopped, the pool shutting down)."""

    def __init__(self, reason: str, *, requeue: bool) -> None:
        super().__init__(reason)
        self.requeue = requeue


class Slot:
    """One training process of a pool: its queue, its heartbeat, and the trial it runs;
    registered as the worker ``worker_id`` (a gt_workers row)."""

    def __init__(self, settings: Settings, device: str, *, idle_exit: float | None = None) -> None:
        self.settings, self.device, self.idle_exit = settings, device, idle_exit
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}"
        self.engine = db.engine(settings)
        self.queue = TrialQueue(
            self.engine,
            db.optuna_storage(settings),
            self.worker_id,
            lease_seconds=settings.lease_seconds,
            run_root=settings.data_dir / "runs",
        )
        self.artifacts = artifact_store(settings, link_files=True)  # once: an S3 store builds a boto3 client
        self.shutdown = threading.Event()
        self.lost: set[int] = set()  # trials whose lease a reaper took
        self.current: list[Claim] = []  # the trials it trains (more than one: a pack)
        self._claimed: list[TrialRun] = []  # the runs claimed for the pack it trains
        self._stopping_since: float | None = None
        self._reaped_at = 0.0  # when this slot last reaped expired leases
        self.queue.give_up = self._giving_up
        self._said: set[str] = set()  # errors of the loop already logged
        # The pool's start line and this slot's place on it (service.pool.StartLine): waited
        # at once registered, so that no first slot claims (and packs) before its siblings can
        # be seen.
        self.start_line: tuple[StartLine, int] | None = None

    def _giving_up(self) -> bool:
        """Database calls are tried again until they succeed, except after a shutdown began:
        then the database gets one lease period to come back. After that the lease has run
        out, and a reaper re-queues what this slot could not tell."""
        if not self.shutdown.is_set():
            return False
        if self._stopping_since is None:
            self._stopping_since = time.monotonic()
        return time.monotonic() - self._stopping_since > self.settings.lease_seconds

    def retry(self, fn: Callable[[], T], what: str) -> T:
        """fn, tried again while the database is away (db.retry), until a shutdown gives up."""
        return db.retry(fn, what, give_up=self._giving_up)

    # -- liveness -------------------------------------------------------------------------
    def register(self) -> None:
        values = {"host": socket.gethostname(), "pid": os.getpid(), "device": self.device, "status": "idle"}
        stmt = sa.dialects.postgresql.insert(gt_workers).values(id=self.worker_id, **values)
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=[gt_workers.c.id], set_=values))

    def _heartbeat(self) -> None:
        period, wait, away = self.settings.lease_seconds / 3, self.settings.lease_seconds / 3, False
        while not self.shutdown.wait(wait):
            try:
                self.beat()
            except sa.exc.SQLAlchemyError as exc:
                # The database is away: beat again soon (backing off), so that the leases
                # are renewed as soon as it is back, before any reaper may take them.
                if not away:
                    log.warning("heartbeat failed: %s", db.unavailable(exc))
                away, wait = True, min(period, 0.2 if not away else wait * 2)
                continue
            if away:
                log.warning("heartbeat: database back")
            away, wait = False, period

    def beat(self) -> None:
        """Renew the leases; a running trial whose lease a reaper took is lost."""
        # The trial is read before renewing: one claimed while renew() runs has a lease that
        # renew() did not see, and must not count as lost.
        current = list(self.current)
        held = self.queue.renew()
        self.lost.update(c.trial_id for c in current if c.trial_id not in held)
        if not self.queue.listed:  # taken off GET /workers while silent: listed again
            self.register()

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.retry(self.register, "worker registration")
        except Exception as exc:
            if not db.is_transient(exc):
                raise
            return  # shut down before the database came back
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        if self.start_line is not None:
            line, place = self.start_line
            line.arrive_and_wait(place, stop=self.shutdown)
        idle_since = time.monotonic()
        away: float | None = None  # since when the database is away
        try:
            while not self.shutdown.is_set():
                try:
                    self._reap_when_due()
                    claim = self.queue.claim()
                    if away is not None:
                        log.warning("claim: database back after %.1f s", time.monotonic() - away)
                        away = None
                except Exception as exc:
                    if db.is_transient(exc):
                        if away is None:
                            log.warning("claim: %s; trying again", db.unavailable(exc))
                            away = time.monotonic()
                    else:  # not the database's absence, nor one study's error (skipped in claim)
                        self._log_once("claim failed", exc)
                    claim = None
                if claim is None:
                    if self.idle_exit is not None and time.monotonic() - idle_since > self.idle_exit:
                        break
                    self.shutdown.wait(self.settings.poll_seconds)
                    continue
                try:
                    self.run_claims(claim)
                except Exception as exc:  # the slot outlives any trial and any study
                    self._log_once(f"study {claim.study_name}", exc)
                    self.queue.abandon(claim.trial_id)
                idle_since = time.monotonic()
        finally:
            self.shutdown.set()
            with contextlib.suppress(sa.exc.SQLAlchemyError), self.engine.begin() as conn:
                conn.execute(gt_workers.delete().where(gt_workers.c.id == self.worker_id))

    def _reap_when_due(self) -> None:
        """Reap expired leases, at most once a third of a lease period (a lease cannot expire
        faster): before every claim, a pack's refills included, so a slot whose pack keeps
        refilling still re-queues the trials of workers that died."""
        if time.monotonic() - self._reaped_at > self.settings.lease_seconds / 3:
            self._reaped_at = time.monotonic()
            self._reap()

    def _reap(self) -> None:
        """Reap expired leases; an error other than the database's absence is logged and
        never keeps this slot from claiming."""
        try:
            self.queue.reap()
        except Exception as exc:
            if db.is_transient(exc):
                raise
            self._log_once("reap failed", exc)

    def _log_once(self, what: str, exc: Exception) -> None:
        said = f"{what}: {type(exc).__name__}: {exc}"
        if said in self._said:
            log.debug("%s: %s", what, _one_line(exc))
            return
        self._said.add(said)
        log.exception("%s", what)

    def pack_size(self, run: TrialRun) -> int:
        """How many trials to train with this one as one packed model: the spec's ``pack``,
        else this device's default (PACK_DEFAULT), capped by the pool's max_pack; 1 for what
        does not pack (a DCGAN, a run resuming from its checkpoint)."""
        if not run.packs:
            return 1
        wanted = run.claim.spec.pack or PACK_DEFAULT["cuda" if self.device.startswith("cuda") else "cpu"]
        return max(1, min(wanted, self.settings.max_pack or wanted))

    def run_claims(self, claim: Claim) -> None:
        """Train a claimed trial, packed with more trials claimed from its study when it
        packs (each claimed as a slot alone would claim it: the sampler sees the ones before
        as running), the pack kept full as members leave. Never raises for the trials' own
        failures."""
        first = TrialRun(self, claim)
        self.current = [claim]
        self._claimed = [first]  # every run claimed here, told or not
        try:
            if not first.prepare():
                return
            waiting = _pack_groups([first, *self._claim_more(claim.study_name, self.pack_size(first) - 1)])
            while waiting:
                waiting += _pack_groups(self._train(waiting.pop(0)))
        finally:
            self.current = []
            # An unexpected error left these untold: their leases dropped, so a reaper fails
            # and re-queues them instead of this slot's heartbeat keeping them RUNNING.
            for run in self._claimed[1:]:
                if run.outcome is None:
                    self.queue.abandon(run.claim.trial_id)

    def _claim_more(self, study_name: str, n: int) -> list[TrialRun]:
        """Up to n more trials of this study for a pack, each claimed as a slot alone would
        claim it and prepared (those that ended in preparing are told, not returned)."""
        runs: list[TrialRun] = []
        while len(runs) < n and not self.shutdown.is_set():
            try:
                self._reap_when_due()
                # A trial an idle slot could train alone is left to it: a second core gains
                # more than a bigger pack.
                more = self.queue.claim(from_study=study_name) if self.queue.spare() > 0 else None
            except Exception as exc:  # the pack goes on with what it has
                self._log_once("claim for a pack", exc)
                break
            if more is None:
                break
            self.current.append(more)
            run = TrialRun(self, more)
            self._claimed.append(run)
            if run.prepare():
                runs.append(run)
        return runs

    def _train(self, runs: list[TrialRun]) -> list[TrialRun]:
        """Train these trials, alone or as one pack (kept at its size by trials claimed as
        members leave), and tell each one's end; returns the trials claimed for the pack
        that cannot join it (they train next)."""
        if len(runs) == 1:
            (run,) = runs
            assert run.config is not None
            try:
                outcome: TrainResult | BaseException = train(
                    run.config,
                    on_eval=run.on_eval,
                    should_stop=run.should_stop,
                    out_dir=run.run_dir,
                    data_dir=self.settings.data_dir,
                )
            except Exception as exc:
                outcome = exc
            run.end(outcome)
            return []
        # runs grows as trials join; left and joined grow with it, one entry per member
        left: list[int | None] = [None] * len(runs)  # the step each member left at, when cut short
        joined = [0] * len(runs)  # the pack's step when each member joined
        size, later = len(runs), []

        def config(j: int) -> TrainConfig:
            c = runs[j].config
            assert c is not None  # every run here is prepared; positions must line up with runs
            return c

        def configs() -> list[TrainConfig]:
            return [config(j) for j in range(len(runs))]

        key = pack_key(config(0))

        def on_end(j: int) -> Callable[[TrainResult | BaseException, int], None]:
            def ended(outcome: TrainResult | BaseException, step: int) -> None:
                run = runs[j]
                trials = [r.claim.trial.number for r in runs]
                run.pack = {"size": size, "trials": trials, "position": j, "joined": joined[j]}
                if isinstance(outcome, TrainResult) and not outcome.stopped:
                    # How to train this member again bit for bit: the whole pack, each
                    # member leaving where it left (gat-tune train replays it).
                    run.replay = {
                        "position": j,
                        "members": [c.to_dict() for c in configs()],
                        "left": list(left),
                        "joined": list(joined),
                        "exact": not any(isinstance(r.outcome, TrainResult) and r.outcome.stopped for r in runs),
                        "cpu_threads": torch.get_num_threads(),
                    }
                elif not isinstance(outcome, Diverged):  # a divergence happens again by itself
                    left[j] = step
                run.end(outcome)

            return ended

        def member(j: int) -> PackRun:
            run = runs[j]
            return PackRun(config(j), run.on_eval, run.should_stop, run.run_dir, on_end(j))

        def refill(free: int, step: int) -> list[PackRun]:
            """Trials claimed into the places members left: fresh ones of the pack's kind
            join, from their own step 0; any other trains after the pack."""
            joining = []
            for run in self._claim_more(runs[0].claim.study_name, free):
                assert run.config is not None
                if not (run.packs and pack_key(run.config) == key):
                    later.append(run)
                    continue
                runs.append(run)
                left.append(None)
                joined.append(step)
                joining.append(member(len(runs) - 1))
            return joining

        try:
            train_packed(
                [member(j) for j in range(len(runs))],
                data_dir=self.settings.data_dir,
                refill=refill,
                capacity=self.pack_size(runs[0]),
            )
        except Exception as exc:  # the pack's own failure (its data, its device): every member's
            for run in runs:
                if run.outcome is None:
                    run.end(exc)
        return later


class TrialRun:
    """One claimed trial in a slot: its config, its hooks for the trainer (each eval reported,
    pruning, the study's pause or stop, a lost lease) and its end, told to Optuna. A trial
    lives the same life alone or as a member of a pack."""

    def __init__(self, slot: Slot, claim: Claim) -> None:
        self.slot, self.claim, self.trial = slot, claim, claim.trial
        self.run_dir = Path(claim.run_dir)
        self.started = time.perf_counter()
        self.where = {"device": slot.device, "worker": slot.worker_id}
        self.pending: list[tuple[int, float]] = []  # evals not yet reported (the database was away)
        self.shown: dict[str, Any] = {}  # the latest eval's metrics, as trial user attributes
        self.config: TrainConfig | None = None
        self.outcome: TrainResult | BaseException | None = None
        self.pack: dict[str, Any] | None = None  # the pack it trained in (a user attribute)
        self.replay: dict[str, Any] | None = None  # how to train it again bit for bit, when packed
        # Optuna prunes single-objective studies only; "none" has nothing to ask.
        self.prunes = len(claim.spec.objectives) == 1 and not isinstance(claim.study.pruner, optuna.pruners.NopPruner)
        self.first = claim.spec.objectives[0]  # what the intermediate values are, and pruners read

    @property
    def resumes(self) -> bool:
        return (self.run_dir / CHECKPOINT).exists()

    @property
    def packs(self) -> bool:
        """Whether it may train in a pack: an MLP (trainer.packed packs no DCGAN), starting
        from step 0 (members of a pack resume at one step; a resumed run trains alone)."""
        assert self.config is not None
        return self.config.model == "mlp" and not self.resumes

    def prepare(self) -> bool:
        """The trial's config, checked, and a resumed run's evals reported again (the pruner
        reads them); False when the trial ended here (a bad config, data refused: told)."""
        try:
            config = TrainConfig.from_dict({**self._suggest(self.claim), "device": self.slot.device})
            refused = folder_refused(config.dataset, self.slot.settings.folder_roots)
            if refused:
                raise DataError(refused)
            self.slot.retry(
                lambda: self._replay_history(self.claim, self.run_dir), f"trial {self.trial.number}: replay"
            )
        except Exception as exc:
            self.end(exc)
            return False
        self.config = config
        return True

    def on_eval(self, step: int, metrics: dict[str, Any]) -> None:
        slot, claim, first = self.slot, self.claim, self.first
        self.pending.append((step, objective_value(metrics, first)))
        self.shown.update(eval_attrs(metrics))
        try:
            status = self._send(claim, self.pending)
            slot.queue.set_attrs(claim, self.shown)
            # A trial that trained to its end is complete: its last FID is its result.
            assert self.config is not None
            prune = self.prunes and step < self.config.steps and self.trial.should_prune()
        except Exception as exc:
            if not db.is_transient(exc):
                raise
            # Train on; the reports are sent at the next eval, no pruning until then.
            if len(self.pending) == 1:  # once per outage, not at every eval
                log.warning(
                    "trial %s of %s: %s; training on, its reports kept until it is back",
                    self.trial.number, claim.study_name, db.unavailable(exc),
                )  # fmt: skip
            return
        self._check_interrupt(status)
        if prune:
            raise optuna.TrialPruned(f"pruned at step {step} ({first} {objective_value(metrics, first):.3f})")

    def should_stop(self) -> bool:
        return self.slot.shutdown.is_set() or self.claim.trial_id in self.slot.lost

    def end(self, outcome: TrainResult | BaseException) -> None:
        """Tell Optuna how the trial ended. Never raises for the trial's own failures: the
        slot goes on. The database's absence is not a failure: the end is told once it is back."""
        self.outcome = outcome
        try:
            self._tell(outcome)
        finally:
            # Its lease is gone: the heartbeat must not count it lost, nor a long pack keep it.
            with contextlib.suppress(ValueError):
                self.slot.current.remove(self.claim)

    def _tell(self, outcome: TrainResult | BaseException) -> None:
        slot, claim, trial, where = self.slot, self.claim, self.trial, self.where
        packed = {"pack": self.pack} if self.pack else {}
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome.stopped:
                reason = "lease lost" if claim.trial_id in slot.lost else "worker shut down"
                raise Interrupted(f"{reason} at step {outcome.steps}; checkpointed", requeue=True)
            slot.retry(lambda: self._send(claim, self.pending), f"trial {trial.number}: reports")
            attrs = {
                **where,
                **packed,
                "train_seconds": round(outcome.train_seconds, 3),
                "steps_per_second": round(outcome.steps / outcome.train_seconds, 2) if outcome.train_seconds else None,
                # float sums depend on the thread count: `gat-tune train --threads N` replays it exactly
                "cpu_threads": torch.get_num_threads(),
                **eval_attrs(outcome.metrics),
            }
            links = self._upload_artifacts(claim, self.run_dir)
            if self.replay is not None:
                links[PACK_REPLAY] = self.replay
            final = {**outcome.metrics, "train_seconds": outcome.train_seconds}  # unrounded
            values = [objective_value(final, name) for name in claim.spec.objectives]
            self._end(
                claim,
                lambda: slot.queue.finish(
                    claim, state=TrialState.COMPLETE, values=values, attrs=attrs, system_attrs=links
                ),
            )
        except optuna.TrialPruned:
            self._end(claim, lambda: self._send(claim, self.pending))
            links = self._upload_artifacts(claim, self.run_dir)
            attrs = {**where, **packed, "train_seconds": round(time.perf_counter() - self.started, 3)}
            self._end(claim, lambda: slot.queue.finish(claim, state=TrialState.PRUNED, attrs=attrs, system_attrs=links))
        except Interrupted as exc:
            said = str(exc)
            if exc.requeue:
                log.info("trial %s of %s: %s; re-queued", trial.number, claim.study_name, said)
                self._end(claim, lambda: slot.queue.interrupt(claim, said))
            else:
                fail = {**where, **packed, "fail_reason": said}
                self._end(claim, lambda: slot.queue.finish(claim, state=TrialState.FAIL, attrs=fail))
        except Exception as exc:  # the slot must outlive any trial
            if db.is_transient(exc):  # not the trial's fault: re-queued, to resume from its checkpoint
                reason = f"{db.unavailable(exc)}; checkpointed"
                log.warning("trial %s of %s: %s; re-queued", trial.number, claim.study_name, reason)
                self._end(claim, lambda: slot.queue.interrupt(claim, reason))
            else:
                fail = {**where, **packed, "fail_reason": self._fail_reason(claim, exc)}
                self._end(claim, lambda: slot.queue.finish(claim, state=TrialState.FAIL, attrs=fail))

    def _suggest(self, claim: Claim) -> dict[str, Any]:
        """The trial's parameters (written as they are sampled), tried again while the
        database is away; each try after a failed one first reads back what committed."""
        failed = False

        def attempt() -> dict[str, Any]:
            nonlocal failed
            if failed:
                self.slot.queue.reload(claim)
            failed = True
            return suggest_config(claim.trial, claim.spec)

        return self.slot.retry(attempt, f"trial {claim.trial.number}: parameters")

    def _send(self, claim: Claim, pending: list[tuple[int, float]]) -> str:
        """Report the kept evals in order (each removed once stored); the study's status
        after the last, or "running" when there was none to send."""
        status = "running"
        while pending:
            step, fid = pending[0]
            status = self.slot.queue.report(claim, step, fid)
            pending.pop(0)
        return status

    def _end(self, claim: Claim, fn: Callable[[], Any]) -> None:
        """A trial's ending call, tried again while the database is away. Given up only when
        a shutdown outlasted the lease: the reaper then re-queues the trial."""
        try:
            self.slot.retry(fn, f"trial {claim.trial.number} of {claim.study_name}")
        except Exception as exc:
            if not db.is_transient(exc):
                raise
            log.warning(
                "trial %s of %s: %s; not told, a reaper will re-queue it",
                claim.trial.number, claim.study_name, db.unavailable(exc),
            )  # fmt: skip

    @staticmethod
    def _fail_reason(claim: Claim, exc: Exception) -> str:
        """One line for the trial's fail_reason; a traceback in the log only for the unexpected."""
        if isinstance(exc, Diverged):
            return str(exc)
        if isinstance(exc, ConfigError):
            return f"bad config: {exc}"
        if isinstance(exc, (DataError, FeatureError)):  # the user's data or weights
            log.warning("trial %s of %s: %s", claim.trial.number, claim.study_name, exc)
        else:
            log.exception("trial %s of %s failed", claim.trial.number, claim.study_name)
        return _one_line(exc)

    @staticmethod
    def _check_interrupt(status: str) -> None:
        """The study's status, read with each eval's report: a pause or stop ends the trial."""
        if status == "stopped":
            raise Interrupted("study stopped", requeue=False)
        if status == "paused":
            raise Interrupted("study paused; checkpointed", requeue=True)

    def _replay_history(self, claim: Claim, run_dir: Path) -> None:
        """A resumed trial reports the evals its checkpoint already has, so the pruner sees them."""
        metrics = run_dir / "metrics.jsonl"
        if not metrics.exists():
            return
        first = claim.spec.objectives[0]
        for line in metrics.read_text().splitlines():
            if line.strip():
                m = json.loads(line)
                self.slot.queue.report(claim, int(m["step"]), objective_value(m, first))

    def _upload_artifacts(self, claim: Claim, run_dir: Path) -> dict[str, Any]:
        """Write the trial's files to the artifact store; returns the trial system attributes
        that link them, for finish() to write with the trial's end in one statement."""
        links = _ArtifactLinks()
        for name, mimetype in (
            ("samples.png", "image/png"),
            ("curve.png", "image/png"),
            ("metrics.jsonl", "text/plain"),
        ):
            path = run_dir / name
            if path.exists():
                optuna.artifacts.upload_artifact(
                    artifact_store=self.slot.artifacts,
                    file_path=str(path),
                    study_or_trial=claim.trial,
                    storage=links,  # type: ignore[arg-type]
                    mimetype=mimetype,
                )
        return links.attrs


def _pack_groups(runs: list[TrialRun]) -> list[list[TrialRun]]:
    """The claimed trials in groups that train as one pack each (trainer.packed.pack_key),
    in claim order; one that does not pack (TrialRun.packs) trains alone."""
    groups: dict[Any, list[TrialRun]] = {}
    for i, run in enumerate(runs):
        assert run.config is not None
        key = pack_key(run.config) if run.packs else ("alone", i)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


class _ArtifactLinks:
    """Stands in for the storage in optuna.artifacts.upload_artifact: Optuna names and writes
    the artifact; the trial attribute that links it is kept here instead of costing a
    transaction of its own."""

    def __init__(self) -> None:
        self.attrs: dict[str, Any] = {}

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.attrs[key] = value


# An eval's metrics shown as trial user attributes (the dashboard's trial table): which
# features they were computed on, and their values; modes/hq_fraction for 2-D data.
EVAL_ATTRS = ("features", "fid", *PRDC_METRICS, "modes", "hq_fraction")


def eval_attrs(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics of an eval that a trial shows as user attributes (EVAL_ATTRS)."""
    return {k: metrics[k] for k in EVAL_ATTRS if k in metrics}


def objective_value(metrics: dict[str, Any], name: str) -> float:
    """An objective's value in an eval's metrics (each objective is one of their keys)."""
    if name not in metrics:
        raise ConfigError(f"objective {name}: not measured by this run (PRDC needs eval_samples > {PRDC_K})")
    return float(metrics[name])


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if type(exc).__name__ == "OutOfMemoryError":
        return f"CUDA out of memory: {text}"[:500]
    return f"{type(exc).__name__}: {text}"[:500]


def preload() -> None:
    """Import what a slot's first training step would import lazily: torch's optimizers
    pull in torch._dynamo (with sympy) on their first step. Done before the slot registers,
    so that import is not charged to its first trial's train_seconds and steps/s, nor taken
    from the trials of the other slots."""
    import PIL.PngImagePlugin  # noqa: F401  (the sample grids)
    import torch._dynamo  # noqa: F401


def run_slot(
    device: str, settings_json: str, threads: int, idle_exit: float | None, *, start: tuple[StartLine, int] | None
) -> None:
    """A slot process's entry point (spawned, so nothing is shared with the supervisor).
    ``start``: the pool's start line and this slot's place on it (Slot.start_line), None for
    a restarted slot."""
    if device.startswith("cuda:"):
        # Pin the process to its GPU before CUDA starts: inside, it is cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        device = "cuda:0"
    limit_threads(threads)
    preload()
    from service.logs import configure_logging

    configure_logging(f"[slot {os.getpid()} {device}] ")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = Settings.model_validate_json(settings_json)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:  # Optuna's storage reads its schema version when made: the database must answer
        slot = db.retry(lambda: Slot(settings, device, idle_exit=idle_exit), "slot start-up", give_up=stop.is_set)
    except Exception as exc:
        if not db.is_transient(exc):
            raise
        return  # shut down before the database came back
    slot.shutdown = stop
    slot.start_line = start
    slot.run()
