"""The read cache (service.readcache): a stored response is served only while PostgreSQL's
snapshot is unchanged, so no read ever shows less than what was committed before it began."""

from __future__ import annotations

import threading
from typing import Any

import optuna
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service import db
from service.config import Settings
from service.readcache import SNAPSHOT, SnapshotCache
from service.spec import StudySpec, suggest_config
from tests.service.conftest import example as spec


def _served_again(client: TestClient, path: str) -> bool:
    """Whether a repeated read comes from the cache, with the same bytes. Three tries: a
    background transaction of the server (autovacuum) may end between two reads."""
    cache = client.app.state.gat_tune.study_service.cache  # type: ignore[attr-defined]
    for _ in range(3):
        first, hits = client.get(path), cache.hits
        again = client.get(path)
        if cache.hits == hits + 1:
            return bool(again.content == first.content)
    return False


def test_every_write_shows_in_the_next_read(client: TestClient, database_url: str) -> None:
    client.post("/studies", json=spec(enqueue=[], sampler="random", pruner="none"))
    study = optuna.load_study(study_name="digits-gat", storage=database_url)
    study_spec = StudySpec.model_validate(study.user_attrs["gat_tune_spec"])
    study_path, trials_path = "/studies/digits-gat", "/studies/digits-gat/trials"
    for i in range(3):
        assert _served_again(client, study_path) and _served_again(client, trials_path)
        trial = study.ask()  # each write a worker makes, each followed by a read
        assert client.get(trials_path).json()["items"][-1]["state"] == "RUNNING"
        params = suggest_config(trial, study_spec) and trial.params
        assert client.get(trials_path).json()["items"][-1]["params"] == params
        trial.report(20.0 + i, step=200)
        assert client.get(trials_path).json()["items"][-1]["intermediate_values"] == [{"step": 200, "value": 20.0 + i}]
        trial.set_user_attr("device", "cpu")
        assert client.get(trials_path).json()["items"][-1]["user_attrs"] == {"device": "cpu"}
        assert client.get(study_path).json()["trial_counts"]["COMPLETE"] == i
        study.tell(trial, 10.0 - i)
        got = client.get(study_path).json()
        assert got["trial_counts"]["COMPLETE"] == i + 1 and got["best"]["fid"] == 10.0 - i
        assert client.get(trials_path).json()["items"][-1]["values"] == [10.0 - i]
    client.post("/studies/digits-gat/pause")  # our own table too
    assert client.get(study_path).json()["status"] == "paused"
    assert client.get("/studies/nothing-here").status_code == 404  # not stored
    assert client.get("/studies/nothing-here/trials").status_code == 404


def test_readers_never_go_back_while_trials_end(client: TestClient, database_url: str) -> None:
    client.post("/studies", json=spec(enqueue=[], sampler="random", pruner="none"))
    study = optuna.load_study(study_name="digits-gat", storage=database_url)
    study_spec = StudySpec.model_validate(study.user_attrs["gat_tune_spec"])
    n, done = 12, threading.Event()
    seen: list[list[int]] = [[] for _ in range(3)]
    errors: list[Any] = []

    def reader(out: list[int]) -> None:
        try:
            while not done.is_set():
                out.append(client.get("/studies/digits-gat").json()["trial_counts"]["COMPLETE"])
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(out,)) for out in seen]
    for t in threads:
        t.start()
    for i in range(n):
        trial = study.ask()
        suggest_config(trial, study_spec)
        study.tell(trial, float(i))
    done.set()
    for t in threads:
        t.join()
    assert not errors
    for out in seen:
        assert out == sorted(out), "a reader saw a count go back"
    assert client.get("/studies/digits-gat").json()["trial_counts"]["COMPLETE"] == n


def test_least_recently_used_goes_first_and_zero_turns_it_off(settings: Settings) -> None:
    calls: list[str] = []

    def query(key: str, size: int = 1) -> Any:
        def run(conn: sa.Connection) -> tuple[str, bytes]:
            calls.append(key)
            return conn.execute(sa.text(f"SELECT {SNAPSHOT}")).scalar_one(), key.encode() * size

        return run

    cache = SnapshotCache(max_entries=2, max_bytes=10)
    with db.engine(settings).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for key in ("a", "b", "a", "c", "a", "b"):  # c drops b (a was used since), then b drops c
            assert cache.read(conn, key, query(key)) == key.encode()
        assert cache.keys() == ["a", "b"]
        assert cache.read(conn, "big", query("big", 4)) == b"big" * 4  # 12 bytes: served, not kept
        assert cache.keys() == ["a", "b"]
        assert cache.read(conn, "d", query("d", 9)) == b"d" * 9  # kept; a goes, to stay within 10 bytes
        assert cache.keys() == ["b", "d"]

        off, calls[:] = SnapshotCache(max_entries=0), []
        for _ in range(2):
            assert off.read(conn, "a", query("a")) == b"a"
        assert calls == ["a", "a"] and off.keys() == []
