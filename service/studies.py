"""Studies over Optuna: create, read, control. Writes go through Optuna's API; reads of
trial lists and counts go straight to Optuna's tables with a few indexed queries
(service/optuna_tables/), so a page of trials costs the same at trial 10 and at trial
10,000 (optuna#3053).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import math
import numbers
from typing import Any

import numpy as np
import optuna
import orjson
import psycopg2.errors
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from service import optuna_tables
from service.config import DataRoots
from service.errors import Conflict, IncompatibleSpec, Invalid, NotFound
from service.optuna_tables import FAIL_FAST, TRIAL_FILTERS
from service.priors import WarmSource, warm_start_entries
from service.readcache import SnapshotCache
from service.spec import (
    SpecIssue,
    StudySpec,
    check_folders,
    check_spec,
    config_from_params,
    enqueue_params,
    load_stored_spec,
    make_sampler,
)
from service.storage import OptunaStorage
from service.tables import gt_idempotency_keys, gt_studies, gt_trial_leases
from trainer.config import ConfigError

__all__ = ["FAIL_FAST", "WARM_START_ATTR", "StudyService", "load_spec"]

SPEC_ATTR = "gat_tune_spec"  # a gat-tune study's user attribute: its spec, as submitted
WARM_START_ATTR = "warm_start_from"  # a warm-started trial's user attribute: "STUDY trial N (VALUE)"

METRIC_NAMES = {"fid": "FID"}  # the dashboard's names for the objectives, where not their own

CONTROL = {"stop": "stopped", "pause": "paused", "resume": "running"}


def load_spec(row: Any) -> StudySpec:
    """A gt_studies row's spec; IncompatibleSpec (409) when this version cannot read it."""
    return load_stored_spec(row.name, row.spec)


def _repeats(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Optuna's Study._should_skip_enqueue for one earlier entry: the same keys, each value
    of the earlier one's type and equal (numbers: np.isclose(new, old, atol=0))."""
    if new.keys() != old.keys():
        return False
    for name, value in new.items():
        before = old[name]
        if not isinstance(value, type(before)):
            return False
        if isinstance(value, numbers.Real):
            a, b = float(value), float(before)
            if math.isinf(a) or math.isinf(b):
                if a != b:
                    return False
            elif not (a == b or abs(a - b) <= 1e-5 * abs(b) or (math.isnan(a) and math.isnan(b))):
                return False
        elif value != before:
            return False
    return True


def _unrepeated(entries: list[dict[str, Any]]) -> list[int]:
    """The indices of the entries that ``enqueue_trial(params, skip_if_exists=True)`` one
    after the other would queue on a new study: each one that repeats no entry kept before
    it. Optuna compares each with every trial (quadratic); here entries are grouped by what
    must be equal (keys, value types, strings) and the numbers of a group compared at once."""
    # isinstance(new, type(old)) is symmetric for exact str/int/float values (the trainer
    # takes no others); any other value sends the lot down Optuna's one-by-one path.
    if not all(type(v) in (str, int, float) for entry in entries for v in entry.values()):
        kept: list[int] = []
        for i, entry in enumerate(entries):
            if not any(_repeats(entry, entries[old]) for old in kept):
                kept.append(i)
        return kept
    kept = []
    groups: dict[tuple[Any, ...], tuple[np.ndarray, list[int]]] = {}
    for i, entry in enumerate(entries):
        items = sorted(entry.items())
        exact = tuple((k, type(v).__name__, v if type(v) is str else None) for k, v in items)
        row = np.array([float(v) for _, v in items if type(v) is not str], dtype=float)
        rows, count = groups.setdefault(exact, (np.empty((len(entries), row.size)), [0]))
        before = rows[: count[0]]
        if count[0] and np.isclose(row, before, atol=0.0, equal_nan=True).all(axis=1).any():
            continue
        rows[count[0]] = row
        count[0] += 1
        kept.append(i)
    return kept


def _like(conn: Connection, name: str) -> str:
    """A hint at the studies a mistyped or shortened name may mean (the demo's names end in
    a timestamp), or ""."""
    like = optuna_tables.study_names(conn, starting=name, limit=3) or difflib.get_close_matches(
        name, optuna_tables.study_names(conn, limit=1000), n=3
    )
    return f" (did you mean {', '.join(repr(n) for n in like)}?)" if like else ""


class StudyService:
    """Study operations over one database: our tables plus Optuna's storage."""

    def __init__(
        self,
        engine: Engine,
        storage: OptunaStorage,
        *,
        max_trials: int,
        base_url: str,
        cache_entries: int = 256,
        artifact_store: Any = None,
        data_roots: DataRoots | None = None,
    ) -> None:
        self.engine, self.storage, self.artifact_store = engine, storage, artifact_store
        self.data_roots = data_roots  # where a folder: dataset may lie; None: anywhere
        self.max_trials, self.base_url = max_trials, base_url
        self.cache = SnapshotCache(cache_entries)  # a study's and a trial page's JSON

    # -- create ---------------------------------------------------------------------------
    def create(self, spec: StudySpec, *, idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:
        """Create the study (or, for a repeated Idempotency-Key, return the one it made).

        Returns:
            (the study, True when it was created by this call).

        Raises:
            SpecIssue: the spec is invalid. Conflict: the name is taken, or the key was used
            for a different request.
        """
        checked = check_spec(spec, max_trials=self.max_trials, data_roots=self.data_roots)
        spec_text = spec.model_dump_json()
        body_hash = hashlib.sha256(spec_text.encode()).hexdigest()
        made: list[int] = []  # the Optuna study's id, once made
        try:
            with self.engine.begin() as conn:
                if idempotency_key is not None:
                    # Requests with one key wait here for each other: the first creates,
                    # the others find its key once it has committed.
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(1, hashtext(:k))"), {"k": "idem:" + idempotency_key}
                    )
                    existing = self._by_idempotency_key(conn, idempotency_key, body_hash)
                    if existing is not None:
                        return self.get(existing), False
                self._create_in(conn, spec, spec_text, checked, made)
                if idempotency_key is not None:
                    conn.execute(
                        gt_idempotency_keys.insert().values(
                            key=idempotency_key, request_sha256=body_hash, study_name=spec.name
                        )
                    )
        except BaseException:
            # After our transaction has rolled back: it held the study's row lock (the
            # queued trials), which a delete from another connection would wait on forever.
            # By id: the name may be another request's by now. A process that dies here
            # leaves the empty study to _drop_orphan.
            if made:
                with contextlib.suppress(Exception):
                    self.storage.delete_study(made[0])
            raise
        return self.get(spec.name), True

    def _warm_start(self, conn: Connection, spec: StudySpec) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The spec's warm start (service/priors.py) as Optuna parameters to enqueue first,
        each with the user attribute that says where it came from.

        Raises:
            SpecIssue: a named study missing, without a completed trial, ranked by another
            objective than this spec's first (a gat-tune study), or none of their best
            trials fits this space.
        """
        if spec.warm_start is None:
            return []
        sources: dict[str, WarmSource] = {}
        for i, name in enumerate(spec.warm_start.studies):
            loc = ("warm_start", "studies", i)
            study_id = optuna_tables.study_id_by_name(conn, name)
            if study_id is None:
                raise SpecIssue(loc, f"no study named '{name}' in this database{_like(conn, name)}")
            # A gat-tune study says what its trials trained besides their params (its base,
            # the regulariser above all) and what its best is by; a plain Optuna one does not.
            stored = optuna_tables.study_user_attr(conn, study_id, SPEC_ATTR)
            base: dict[str, Any] | None = None
            if isinstance(stored, dict):
                base = stored["base"] if isinstance(stored.get("base"), dict) else {}
                objective = stored.get("objective", "fid")
                first = objective[0] if isinstance(objective, list) and objective else objective
                if isinstance(first, str) and first != spec.objectives[0]:
                    raise SpecIssue(
                        loc,
                        f"study '{name}' ranks its trials by {first}, this study by {spec.objectives[0]}",
                    )
            trials = optuna_tables.best_trials(conn, study_id, spec.warm_start.top)
            if not trials:
                raise SpecIssue(loc, f"study '{name}' has no completed trial with a finite value yet")
            sources[name] = WarmSource(base=base, trials=trials)
        entries = warm_start_entries(spec, sources)
        if not entries:
            names = ", ".join(f"'{n}'" for n in sources)
            keys = ", ".join(spec.search_space) or "none"
            raise SpecIssue(
                ("warm_start", "studies"),
                f"no best trial of {names} fits this space: they set none of its keys ({keys}), "
                "or trained another regulariser",
            )
        return [
            (enqueue_params(spec, entry, loc=("warm_start",)), {WARM_START_ATTR: origin}) for entry, origin in entries
        ]

    def _create_in(
        self, conn: Connection, spec: StudySpec, spec_text: str, checked: list[dict[str, Any]], made: list[int]
    ) -> None:
        # Serialise creations of one name across processes, so the check below holds.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(2, hashtext(:n))"), {"n": "study:" + spec.name})
        if conn.execute(sa.select(gt_studies.c.name).where(gt_studies.c.name == spec.name)).first() is not None:
            raise Conflict(f"a study named '{spec.name}' exists; choose another name")
        # After the name and Idempotency-Key checks: a repeated request gets its study even
        # when a source has gone since.
        warm = self._warm_start(conn, spec)
        entries = [*(params for params, _ in warm), *checked]
        attrs = [*(attr for _, attr in warm), *({} for _ in checked)]
        kept = _unrepeated(entries)
        enqueued, enqueued_attrs = [entries[i] for i in kept], [attrs[i] for i in kept]
        try:
            study = optuna.create_study(
                storage=self.storage, study_name=spec.name, directions=spec.directions, sampler=make_sampler(spec)
            )
        except optuna.exceptions.DuplicatedStudyError:
            self._drop_orphan(conn, spec.name)
            study = optuna.create_study(
                storage=self.storage, study_name=spec.name, directions=spec.directions, sampler=make_sampler(spec)
            )
        study_id = self.storage.get_study_id_from_name(spec.name)
        made.append(study_id)
        spec_json = json.loads(spec_text)
        study.set_user_attr(SPEC_ATTR, spec_json)
        study.set_metric_names([METRIC_NAMES.get(o, o) for o in spec.objectives])  # the dashboard's labels
        # In our transaction: the queued trials exist exactly when our row does.
        optuna_tables.enqueue_trials(conn, study_id, enqueued, enqueued_attrs)
        conn.execute(
            gt_studies.insert().values(
                name=spec.name,
                optuna_study_id=study_id,
                spec=spec_json,
                n_trials=spec.n_trials,
                max_parallel=spec.max_parallel,
            )
        )

    def _drop_orphan(self, conn: Connection, name: str) -> None:
        """An Optuna study of this name with no gt_studies row, found under the name's lock:
        left by a creation that died half way (its cleanup never ran) when it has no trials,
        so it is deleted and the name is free again. One with trials is someone's data."""
        try:
            study_id = self.storage.get_study_id_from_name(name)
        except KeyError:  # another request's cleanup took it meanwhile
            return
        n = optuna_tables.trial_count(conn, study_id)
        if n:
            raise Conflict(
                f"an Optuna study named '{name}' with {n} trials exists in this database outside gat-tune; "
                "choose another name (or delete it: optuna delete-study)"
            )
        with contextlib.suppress(KeyError):
            self.storage.delete_study(study_id)

    def _by_idempotency_key(self, conn: Connection, key: str, body_hash: str) -> str | None:
        row = conn.execute(sa.select(gt_idempotency_keys).where(gt_idempotency_keys.c.key == key)).first()
        if row is None:
            return None
        if row.request_sha256 != body_hash:
            raise Conflict(
                f"Idempotency-Key '{key}' was already used for a different spec (study '{row.study_name}'); "
                "send a new key with a new request"
            )
        return str(row.study_name)

    # -- read -----------------------------------------------------------------------------
    def _reader(self) -> Connection:
        # Reads are single statements: autocommit spares the BEGIN and ROLLBACK round trips.
        # A pool of its own: switching a pooled connection to autocommit and back costs a
        # SET round trip at each end.
        return self.storage.autocommit_engine.connect()

    def _row(self, conn: Connection, name: str) -> Any:
        row = conn.execute(sa.select(gt_studies).where(gt_studies.c.name == name)).first()
        if row is None:
            raise NotFound(f"no study named '{name}'")
        return row

    def study_json(self, name: str) -> bytes:
        """The study as JSON: state, trial counts by state, best so far, spec."""

        with self._reader() as conn:
            body = self.cache.read(conn, ("study", name), lambda c: optuna_tables.study_json(c, name, self.base_url))
        if body is None:
            raise NotFound(f"no study named '{name}'")
        return body

    def get(self, name: str) -> dict[str, Any]:
        return dict(orjson.loads(self.study_json(name)))

    def studies_json(self, *, offset: int = 0, limit: int = 50) -> bytes:
        """A page of study summaries (without their specs), newest first."""
        with self._reader() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(gt_studies)).scalar_one()
            items = ",".join(optuna_tables.studies_json(conn, self.base_url, offset=offset, limit=limit))
        return f'{{"items":[{items}],"total":{int(total)},"offset":{offset},"limit":{limit}}}'.encode()

    def trials_json(self, name: str, *, offset: int = 0, limit: int = 50, state: str | None = None) -> bytes:
        """A page of trials as JSON, oldest first: params, values, intermediate FIDs, user
        attributes, state, duration; one statement whatever the page size."""
        if state is not None and state.upper() not in TRIAL_FILTERS:
            raise Invalid(f"state: '{state}' is not one of {', '.join(TRIAL_FILTERS)}", field="state")
        wanted = state.upper() if state else None

        def query(conn: Connection) -> tuple[str, bytes] | None:
            return optuna_tables.trials_json(conn, name, state=wanted, offset=offset, limit=limit)

        with self._reader() as conn:
            body = self.cache.read(conn, ("trials", name, wanted, offset, limit), query)
        if body is None:
            raise NotFound(f"no study named '{name}'")
        return body

    def best_config(self, name: str) -> dict[str, Any]:
        """The best trial's complete trainer config; with ``pack`` (how to replay it) when it
        trained packed.

        Raises:
            Conflict: no trial has completed yet.
        """
        with self.engine.connect() as conn:
            row = self._row(conn, name)
            best = optuna_tables.best_trial(conn, row.optuna_study_id)
        if best is None:
            if row.status == "failed":  # no trial will finish: say so, not "try again"
                raise Conflict(f"study '{name}' failed with no completed trial; `gat-tune status {name}` says why")
            raise Conflict(f"study '{name}' has no completed trial yet; try again when one has finished")
        try:
            config = config_from_params(load_spec(row), best["params"])
        except ConfigError as exc:  # a trial run under another version's rules
            raise IncompatibleSpec(
                f"study '{name}': trial {best['trial']}'s config is refused by this version of gat-tune ({exc})"
            ) from None
        # A trial trained in a pack: how `gat-tune train` trains it again bit for bit. One
        # that trained alone answers the config alone, as DESIGN.md's interface says.
        return {**config, "pack": best["pack"]} if best["pack"] else config

    # -- control --------------------------------------------------------------------------
    def control(self, name: str, action: str) -> dict[str, Any]:
        """stop (final), pause, resume. Workers see the new status at their next eval."""
        new = CONTROL[action]
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(gt_studies).where(gt_studies.c.name == name).with_for_update()).first()
            if row is None:
                raise NotFound(f"no study named '{name}'")
            if row.status == "stopped" and new != "stopped":
                raise Conflict(f"study '{name}' is stopped; a stopped study cannot {action}")
            conn.execute(
                gt_studies.update().where(gt_studies.c.name == name).values(status=new, updated_at=sa.func.now())
            )
        return self.get(name)

    # -- delete ---------------------------------------------------------------------------
    def delete(self, name: str) -> None:
        """Delete a study for good: the Optuna study (trials, attributes, notes), our row with
        its leases and idempotency keys, and its artifacts. The one way a study is deleted:
        DELETE /studies/{name} and the dashboard's delete both come here.

        Raises:
            NotFound: no such study.
        """
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(gt_studies.c.optuna_study_id).where(gt_studies.c.name == name)).first()
        if row is None:
            raise NotFound(f"no study named '{name}'")
        self.delete_optuna_study(row.optuna_study_id)

    def delete_optuna_study(self, study_id: int) -> None:
        """Delete an Optuna study by its id, and our row for it when it is one of ours.

        Our row is locked first (as a worker's claim does), and both go in one transaction:
        a failed delete leaves both, and no worker claims a trial of the study meanwhile.

        Raises:
            NotFound: no Optuna study with this id.
        """
        artifact_ids = self._artifact_ids(study_id)
        try:
            with self.engine.begin() as conn:
                # A worker ending a trial holds its lease while it writes Optuna's rows on other
                # connections (which PostgreSQL cannot see waiting on this one): take the leases
                # first, as finish and reap do, so the delete waits for those trials to end
                # instead of deadlocking with them; and never wait forever.
                conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
                conn.execute(
                    sa.select(gt_trial_leases.c.optuna_trial_id)
                    .join(gt_studies, gt_studies.c.name == gt_trial_leases.c.study_name)
                    .where(gt_studies.c.optuna_study_id == study_id)
                    .with_for_update(of=gt_trial_leases)
                ).all()
                ours = conn.execute(
                    sa.select(gt_studies.c.name).where(gt_studies.c.optuna_study_id == study_id).with_for_update()
                ).first()
                if ours is not None:
                    conn.execute(gt_trial_leases.delete().where(gt_trial_leases.c.study_name == ours.name))
                try:
                    optuna_tables.delete_study(conn, study_id)
                except KeyError:
                    if ours is None:
                        raise NotFound(f"no study with id {study_id}") from None
                    # Optuna's study went another way (an older dashboard delete): drop our ghost row.
                if ours is not None:
                    conn.execute(gt_studies.delete().where(gt_studies.c.name == ours.name))
        except sa.exc.OperationalError as exc:
            if not isinstance(exc.orig, psycopg2.errors.LockNotAvailable):
                raise
            raise Conflict("the study is busy (a worker is ending one of its trials); try the delete again") from None
        if self.artifact_store is not None:
            for artifact_id in artifact_ids:
                with contextlib.suppress(Exception):  # already gone, or the store is away: left behind
                    self.artifact_store.remove(artifact_id)

    def _artifact_ids(self, study_id: int) -> list[str]:
        """The ids of the artifacts uploaded to a study and its trials, in one statement
        (optuna.artifacts.get_all_artifact_meta reads them a trial at a time)."""
        with self._reader() as conn:
            return optuna_tables.study_artifact_ids(conn, study_id)

    def enqueue(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        """Queue a (partial) config to be tried next; returns its trial number."""
        with self.engine.begin() as conn:
            row = self._row(conn, name)
            spec = load_spec(row)
            params = enqueue_params(spec, values)
            if self.data_roots is not None:
                check_folders(spec, self.data_roots, values)
            # The rows Study.enqueue_trial writes, without reading every waiting trial back.
            (number,) = optuna_tables.enqueue_trials(conn, row.optuna_study_id, [params])
        return {"number": number, "params": params}
