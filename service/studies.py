"""Studies over Optuna: create, read, control. Writes go through Optuna's API; reads of
trial lists and counts go straight to Optuna's tables with a few indexed queries, so a page
of trials costs the same at trial 10 and at trial 10,000 (optuna#3053).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from typing import Any

import optuna
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from service.errors import Conflict, Invalid, NotFound
from service.spec import StudySpec, check_spec, config_from_params, enqueue_params, make_sampler
from service.tables import idempotency_keys, studies

__all__ = ["StudyService", "load_spec"]

TRIAL_STATES = ("RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL")

# A page of trials with everything it shows, read from Optuna's tables in one statement.
# Non-finite values (stored by Optuna as NULL plus a type) come out as JSON null.
_PAGE_SQL = """
SELECT p.number, p.state::text AS state, p.datetime_start, p.datetime_complete,
  (SELECT coalesce(json_agg(json_build_array(param_name, param_value, distribution_json) ORDER BY param_id), '[]')
     FROM trial_params WHERE trial_id = p.trial_id) AS params,
  (SELECT json_agg(CASE WHEN value_type = 'FINITE' THEN value END ORDER BY objective)
     FROM trial_values WHERE trial_id = p.trial_id) AS trial_values,
  (SELECT coalesce(json_agg(json_build_object('step', step, 'fid',
            CASE WHEN intermediate_value_type = 'FINITE' THEN intermediate_value END) ORDER BY step), '[]')
     FROM trial_intermediate_values WHERE trial_id = p.trial_id) AS intermediate,
  (SELECT coalesce(json_object_agg(key, value_json::json), '{{}}')
     FROM trial_user_attributes WHERE trial_id = p.trial_id) AS attrs
FROM (SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials
      WHERE {where} ORDER BY number LIMIT :limit OFFSET :offset) AS p
ORDER BY p.number
"""
CONTROL = {"stop": "stopped", "pause": "paused", "resume": "running"}


@functools.lru_cache(maxsize=4096)
def _distribution(distribution_json: str) -> optuna.distributions.BaseDistribution:
    # A study has few distinct distributions; parsing one per param per trial dominated a page.
    return optuna.distributions.json_to_distribution(distribution_json)


def load_spec(row: Any) -> StudySpec:
    return StudySpec.model_validate(row.spec)


class StudyService:
    """Study operations over one database: our tables plus Optuna's storage."""

    def __init__(self, engine: Engine, storage: optuna.storages.RDBStorage, *, max_trials: int, base_url: str) -> None:
        self.engine, self.storage = engine, storage
        self.max_trials, self.base_url = max_trials, base_url

    # -- create ---------------------------------------------------------------------------
    def create(self, spec: StudySpec, *, idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:
        """Create the study (or, for a repeated Idempotency-Key, return the one it made).

        Returns:
            (the study, True when it was created by this call).

        Raises:
            SpecIssue: the spec is invalid. Conflict: the name is taken, or the key was used
            for a different request.
        """
        check_spec(spec, max_trials=self.max_trials)
        spec_text = spec.model_dump_json()
        body_hash = hashlib.sha256(spec_text.encode()).hexdigest()
        if idempotency_key is not None:
            existing = self._by_idempotency_key(idempotency_key, body_hash)
            if existing is not None:
                return self.get(existing), False
        with self.engine.begin() as conn:
            # Serialise creations of one name across processes, so the check below holds.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:n))"), {"n": "study:" + spec.name})
            if conn.execute(sa.select(studies.c.name).where(studies.c.name == spec.name)).first() is not None:
                raise Conflict(f"a study named '{spec.name}' exists; choose another name")
            try:
                study = optuna.create_study(
                    storage=self.storage, study_name=spec.name, directions=spec.directions, sampler=make_sampler(spec)
                )
            except optuna.exceptions.DuplicatedStudyError:
                raise Conflict(f"an Optuna study named '{spec.name}' exists in this database") from None
            try:
                spec_json = json.loads(spec_text)
                study.set_user_attr("gat_tune_spec", spec_json)
                for params in spec.enqueue:
                    study.enqueue_trial(enqueue_params(spec, params), skip_if_exists=True)
                conn.execute(
                    studies.insert().values(
                        name=spec.name,
                        optuna_study_id=self.storage.get_study_id_from_name(spec.name),
                        spec=spec_json,
                        n_trials=spec.n_trials,
                        max_parallel=spec.max_parallel,
                    )
                )
                if idempotency_key is not None:
                    conn.execute(
                        idempotency_keys.insert().values(
                            key=idempotency_key, request_sha256=body_hash, study_name=spec.name
                        )
                    )
            except BaseException:
                optuna.delete_study(study_name=spec.name, storage=self.storage)
                raise
        return self.get(spec.name), True

    def _by_idempotency_key(self, key: str, body_hash: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(idempotency_keys).where(idempotency_keys.c.key == key)).first()
        if row is None:
            return None
        if row.request_sha256 != body_hash:
            raise Conflict("Idempotency-Key was already used for a different request")
        return str(row.study_name)

    # -- read -----------------------------------------------------------------------------
    def _row(self, conn: Connection, name: str) -> Any:
        row = conn.execute(sa.select(studies).where(studies.c.name == name)).first()
        if row is None:
            raise NotFound(f"no study named '{name}'")
        return row

    def _counts(self, conn: Connection, study_ids: list[int]) -> dict[int, dict[str, int]]:
        rows = conn.execute(
            sa.text(
                "SELECT study_id, state::text AS state, count(*) AS n FROM trials "
                "WHERE study_id = ANY(:ids) GROUP BY study_id, state"
            ),
            {"ids": study_ids},
        )
        counts = {sid: dict.fromkeys(TRIAL_STATES, 0) for sid in study_ids}
        for r in rows:
            counts[r.study_id][r.state] = int(r.n)
        return counts

    def _best(self, conn: Connection, row: Any) -> dict[str, Any] | None:
        """The best finished trial by FID (for two objectives: the lowest FID on the front)."""
        best = conn.execute(
            sa.text(
                "SELECT t.trial_id, t.number, v.value FROM trials t "
                "JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 AND v.value_type = 'FINITE' "
                "WHERE t.study_id = :sid AND t.state = 'COMPLETE' ORDER BY v.value ASC, t.number ASC LIMIT 1"
            ),
            {"sid": row.optuna_study_id},
        ).first()
        if best is None:
            return None
        params = self._params(conn, [best.trial_id])[best.trial_id]
        return {"trial": best.number, "fid": best.value, "params": params}

    def _status(self, row: Any, counts: dict[str, int]) -> str:
        finished = counts["COMPLETE"] + counts["PRUNED"]
        if row.status == "running" and finished >= row.n_trials:
            return "completed"
        return str(row.status)

    def _public(self, row: Any, counts: dict[str, int], best: dict[str, Any] | None) -> dict[str, Any]:
        spec = load_spec(row)
        return {
            "id": row.name,
            "name": row.name,
            "status": self._status(row, counts),
            "n_trials": row.n_trials,
            "max_parallel": row.max_parallel,
            "objectives": spec.objectives,
            "sampler": spec.sampler,
            "pruner": spec.pruner,
            "trial_counts": counts,
            "finished": counts["COMPLETE"] + counts["PRUNED"],
            "best": best,
            "optuna_study_id": row.optuna_study_id,
            "dashboard_url": f"{self.base_url}/dashboard/studies/{row.optuna_study_id}",
            "created_at": row.created_at.isoformat(),
            "spec": row.spec,
        }

    def get(self, name: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = self._row(conn, name)
            counts = self._counts(conn, [row.optuna_study_id])[row.optuna_study_id]
            return self._public(row, counts, self._best(conn, row))

    def list_studies(self, *, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(studies)).scalar_one()
            rows = conn.execute(
                sa.select(studies).order_by(studies.c.created_at.desc(), studies.c.name).offset(offset).limit(limit)
            ).all()
            counts = self._counts(conn, [r.optuna_study_id for r in rows])
            items = [self._public(r, counts[r.optuna_study_id], self._best(conn, r)) for r in rows]
        for item in items:
            item.pop("spec")
        return {"items": items, "total": total, "offset": offset, "limit": limit}

    def _params(self, conn: Connection, trial_ids: list[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {tid: {} for tid in trial_ids}
        rows = conn.execute(
            sa.text(
                "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
                "WHERE trial_id = ANY(:ids) ORDER BY param_id"
            ),
            {"ids": trial_ids},
        )
        for r in rows:
            dist = _distribution(r.distribution_json)
            out[r.trial_id][r.param_name] = dist.to_external_repr(r.param_value)
        return out

    def trials(self, name: str, *, offset: int = 0, limit: int = 50, state: str | None = None) -> dict[str, Any]:
        """A page of trials, oldest first: params, values, intermediate FIDs, state, duration.

        One query: PostgreSQL gathers each trial's rows into JSON (json_agg over the
        per-trial unique indexes), so a page costs one round trip whatever its size.
        """
        if state is not None and state.upper() not in TRIAL_STATES:
            raise Invalid(f"state: '{state}' is not one of {', '.join(TRIAL_STATES)}", field="state")
        with self.engine.connect() as conn:
            row = self._row(conn, name)
            where = "study_id = :sid" + (" AND state = CAST(:state AS trialstate)" if state else "")
            args: dict[str, Any] = {"sid": row.optuna_study_id, "state": state.upper() if state else None}
            total = conn.execute(sa.text(f"SELECT count(*) FROM trials WHERE {where}"), args).scalar_one()
            page = conn.execute(sa.text(_PAGE_SQL.format(where=where)), {**args, "limit": limit, "offset": offset})
            items = [self._trial_item(t) for t in page]
        return {"items": items, "total": total, "offset": offset, "limit": limit}

    @staticmethod
    def _trial_item(t: Any) -> dict[str, Any]:
        end = t.datetime_complete
        return {
            "number": t.number,
            "state": t.state,
            "params": {n: _distribution(d).to_external_repr(v) for n, v, d in t.params},
            "values": t.trial_values,
            "intermediate_values": t.intermediate,
            "user_attrs": t.attrs,
            "datetime_start": _iso(t.datetime_start),
            "datetime_complete": _iso(end),
            "duration_seconds": (end - t.datetime_start).total_seconds() if end and t.datetime_start else None,
        }

    def best_config(self, name: str) -> dict[str, Any]:
        """The best trial's complete trainer config.

        Raises:
            Conflict: no trial has completed yet.
        """
        with self.engine.connect() as conn:
            row = self._row(conn, name)
            best = self._best(conn, row)
        if best is None:
            raise Conflict(f"study '{name}' has no completed trial yet; try again when one has finished")
        return config_from_params(load_spec(row), best["params"])

    # -- control --------------------------------------------------------------------------
    def control(self, name: str, action: str) -> dict[str, Any]:
        """stop (final), pause, resume. Workers see the new status at their next eval."""
        new = CONTROL[action]
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(studies).where(studies.c.name == name).with_for_update()).first()
            if row is None:
                raise NotFound(f"no study named '{name}'")
            if row.status == "stopped" and new != "stopped":
                raise Conflict(f"study '{name}' is stopped; a stopped study cannot {action}")
            conn.execute(studies.update().where(studies.c.name == name).values(status=new, updated_at=sa.func.now()))
        return self.get(name)

    def enqueue(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        """Queue a (partial) config to be tried next; returns its trial number."""
        with self.engine.connect() as conn:
            row = self._row(conn, name)
        spec = load_spec(row)
        params = enqueue_params(spec, values)
        study = optuna.load_study(study_name=name, storage=self.storage, sampler=make_sampler(spec))
        study.enqueue_trial(params)
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        return {"number": max(t.number for t in waiting), "params": params}


def _iso(value: dt.datetime | None) -> str | None:
    # Optuna stores naive UTC datetimes.
    return None if value is None else value.replace(tzinfo=dt.timezone.utc).isoformat()
