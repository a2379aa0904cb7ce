"""Study creation: the enqueue list in bulk (the rows Optuna's enqueue_trial writes), a name
left behind by a creation that died half way, Idempotency-Key under concurrency, and specs
stored by another version."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service import db, optuna_tables
from service.config import Settings
from service.spec import EXAMPLE_SPEC, StudySpec, check_spec

LONGEST = 1000  # the most entries StudySpec.enqueue takes


def spec(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(EXAMPLE_SPEC)
    out.update(changes)
    return out


SPACE = {
    "aux_loss": {"type": "categorical", "choices": ["r1", "wgan-gp", "none"]},
    "lambda": {
        "type": "conditional",
        "on": "aux_loss",
        "cases": {
            "r1": {"type": "float", "low": 0.01, "high": 100},
            "wgan-gp": {"type": "float", "low": 0.1, "high": 20},
        },
    },
    "g_width": {"type": "int", "low": 8, "high": 512},
    "lr_g": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
}
# What skip_if_exists=True makes of a list: exact repeats, numbers within np.isclose's
# rtol (1e-5, of the earlier value), the same keys in another order, an int beside a float
# (not a repeat: the types differ), the same lambda under another aux_loss (another param).
ENQUEUE: list[dict[str, Any]] = [
    {"aux_loss": "r1", "lambda": 10.0},
    {"aux_loss": "r1", "lambda": 10.0},
    {"lambda": 10.0, "aux_loss": "r1"},
    {"aux_loss": "r1", "lambda": 10.00001},
    {"aux_loss": "r1", "lambda": 10.001},
    {"aux_loss": "wgan-gp", "lambda": 10.0},
    {"aux_loss": "r1", "lambda": 10},
    {"g_width": 64},
    {"g_width": 64.0},
    {"g_width": 64},
    {"aux_loss": "none"},
    {"aux_loss": "none", "g_width": 128, "lr_g": 0.001},
    {"aux_loss": "none", "g_width": 128, "lr_g": 0.0010000001},
    {"aux_loss": "none", "g_width": 128, "lr_g": 0.0011},
    {"lr_g": 1e-5},
]


def _rows(engine: sa.Engine, study: str) -> list[tuple[Any, ...]]:
    """Every stored field of a study's trials and their children, ids aside."""
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    """
SELECT t.number, t.state::text, t.datetime_start, t.datetime_complete,
  (SELECT json_agg(json_build_array(a.key, a.value_json) ORDER BY a.trial_system_attribute_id)
   FROM trial_system_attributes a WHERE a.trial_id = t.trial_id)::text,
  (SELECT count(*) FROM trial_user_attributes a WHERE a.trial_id = t.trial_id),
  (SELECT count(*) FROM trial_params p WHERE p.trial_id = t.trial_id),
  (SELECT count(*) FROM trial_values v WHERE v.trial_id = t.trial_id),
  (SELECT count(*) FROM trial_intermediate_values i WHERE i.trial_id = t.trial_id),
  rank() OVER (ORDER BY t.trial_id) - 1
FROM trials t JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = :name ORDER BY t.number"""
                ),
                {"name": study},
            )
        ]


def test_enqueue_list_stores_what_optunas_enqueue_trial_stores(
    client: TestClient, settings: Settings, database_url: str
) -> None:
    body = spec(name="ours", search_space=SPACE, enqueue=ENQUEUE)
    assert client.post("/studies", json=body).status_code == 201
    # Optuna's own path, as creation did it before: one enqueue_trial per entry.
    storage = optuna.storages.RDBStorage(database_url, skip_table_creation=True)
    theirs = optuna.create_study(study_name="theirs", storage=storage)
    for params in check_spec(StudySpec.model_validate(body), max_trials=settings.max_trials):
        theirs.enqueue_trial(params, skip_if_exists=True)
    engine = db.engine(settings)
    ours, optunas = _rows(engine, "ours"), _rows(engine, "theirs")
    assert len(optunas) == 10  # five of the fifteen entries repeat an earlier one
    assert ours == optunas
    # And read back through Optuna, field by field, trial ids aside.
    read = optuna.load_study(study_name="ours", storage=storage).get_trials(deepcopy=False)
    for mine, its in zip(read, theirs.get_trials(deepcopy=False), strict=True):
        assert {k: v for k, v in vars(mine).items() if k != "_trial_id"} == {
            k: v for k, v in vars(its).items() if k != "_trial_id"
        }
    # The queue pops them in order, as Optuna's ask does.
    study = optuna.load_study(study_name="ours", storage=storage)
    assert study.ask().params == {}  # fixed params are applied at suggest time
    first = study.get_trials(deepcopy=False)[0]
    assert first.state == optuna.trial.TrialState.RUNNING and first.system_attrs["fixed_params"] == {
        "aux_loss": "r1",
        "lambda[aux_loss=r1]": 10.0,
    }


@pytest.fixture
def statements(settings: Settings) -> Iterator[list[str]]:
    """Every SQL statement any engine of this process runs while the fixture is active."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)
    yield seen
    sa.event.remove(sa.engine.Engine, "before_cursor_execute", count)


def test_the_longest_enqueue_list_costs_what_a_short_one_does(client: TestClient, statements: list[str]) -> None:
    """1,000 entries took 35 s (each enqueue_trial read every trial back): now a fixed
    number of statements, whatever the count, and well under a second on an idle machine."""
    short = spec(name="short", enqueue=[{"aux_loss": "r1", "lambda": 1.0 + i} for i in range(2)])
    assert client.post("/studies", json=short).status_code == 201
    n_short = len(statements)
    statements.clear()
    longest = spec(name="longest", enqueue=[{"aux_loss": "r1", "lambda": 0.01 + i * 0.05} for i in range(LONGEST)])
    started = time.perf_counter()
    r = client.post("/studies", json=longest)
    seconds = time.perf_counter() - started
    assert r.status_code == 201, r.text
    assert r.json()["trial_counts"]["WAITING"] == LONGEST
    assert len(statements) <= n_short, statements[n_short:]
    assert seconds < 5, seconds  # generous for a loaded 2-core test machine; 0.15 s idle


def test_enqueue_route_numbers_the_trial(client: TestClient) -> None:
    client.post("/studies", json=spec(enqueue=[{"aux_loss": "r1", "lambda": 3.0}, {"aux_loss": "none"}]))
    r = client.post("/studies/digits-gat/enqueue", json={"aux_loss": "wgan-gp", "lambda": 5.0})
    assert r.status_code == 201, r.text
    assert r.json() == {"number": 2, "params": {"aux_loss": "wgan-gp", "lambda[aux_loss=wgan-gp]": 5.0}}


def test_an_optuna_study_left_by_a_creation_that_died_does_not_take_the_name(
    client: TestClient, database_url: str
) -> None:
    """A creation killed between Optuna's create_study and our row left the name taken for
    good (409 'an Optuna study named ... exists'). An empty orphan is taken over."""
    storage = optuna.storages.RDBStorage(database_url, skip_table_creation=True)
    orphan = optuna.create_study(study_name="digits-gat", storage=storage)
    orphan.set_user_attr("gat_tune_spec", {"name": "digits-gat"})
    r = client.post("/studies", json=spec())
    assert r.status_code == 201, r.text
    assert r.json()["trial_counts"]["WAITING"] == 1
    assert optuna.load_study(study_name="digits-gat", storage=storage)._study_id != orphan._study_id
    # An Optuna study with trials is somebody's data: it stays, and the answer says why.
    someone = optuna.create_study(study_name="someones", storage=storage)
    someone.enqueue_trial({"x": 1})
    r = client.post("/studies", json=spec(name="someones"))
    assert r.status_code == 409
    assert "with 1 trials exists in this database outside gat-tune" in r.json()["detail"]
    assert len(optuna.load_study(study_name="someones", storage=storage).trials) == 1


@pytest.mark.timeout(60)
def test_a_creation_that_fails_half_way_leaves_the_name_free(
    client: TestClient, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cleanup deletes the Optuna study after our transaction has rolled back: that
    transaction holds the study's row lock, and a delete waiting on it would never end."""
    real = optuna_tables.enqueue_trials

    def fails_after_writing(conn: sa.Connection, study_id: int, params: Any, user_attrs: Any = None) -> list[int]:
        real(conn, study_id, params, user_attrs)
        raise RuntimeError("the database went away")

    monkeypatch.setattr(optuna_tables, "enqueue_trials", fails_after_writing)
    with pytest.raises(RuntimeError, match="went away"):
        client.post("/studies", json=spec())
    monkeypatch.undo()
    storage = optuna.storages.RDBStorage(database_url, skip_table_creation=True)
    assert optuna.study.get_all_study_names(storage) == []
    assert client.post("/studies", json=spec()).status_code == 201


def test_twenty_concurrent_posts_with_one_key_get_one_study(client: TestClient) -> None:
    """Before: 1x201, 15x200 and 4x409 (the late ones met the name taken before the key)."""
    body = spec(name="raced")
    barrier = threading.Barrier(20)
    answers: list[Any] = [None] * 20

    def post(i: int) -> None:
        barrier.wait()
        answers[i] = client.post("/studies", json=body, headers={"Idempotency-Key": "same-key"})

    threads = [threading.Thread(target=post, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 19 + [201], [(r.status_code, r.text) for r in answers if r.status_code not in (200, 201)]
    assert len({r.text for r in answers}) == 1  # the same study, the same body
    other = client.post("/studies", json=spec(name="raced", n_trials=3), headers={"Idempotency-Key": "same-key"})
    assert other.status_code == 409
    assert other.json()["detail"] == (
        "Idempotency-Key 'same-key' was already used for a different spec (study 'raced'); "
        "send a new key with a new request"
    )


@pytest.mark.parametrize(
    "change",
    ["spec || '{\"trials\": 3}'::jsonb", "jsonb_set(spec, '{base,width}', '3')"],
    ids=["a top-level key since removed", "a trainer key since removed"],
)
def test_a_spec_stored_by_another_version_is_a_409_not_the_requests_fault(
    client: TestClient, settings: Settings, change: str
) -> None:
    assert client.post("/studies", json=spec()).status_code == 201
    study = optuna.load_study(study_name="digits-gat", storage=db.optuna_storage(settings))
    choice = optuna.distributions.CategoricalDistribution(["r1", "wgan-gp", "none"])
    study.add_trial(optuna.trial.create_trial(params={"aux_loss": "none"}, distributions={"aux_loss": choice}, value=5))
    assert client.get("/studies/digits-gat/best").status_code == 200
    with db.engine(settings).begin() as conn:
        conn.execute(sa.text(f"UPDATE gt_studies SET spec = {change}"))
    for r in (
        client.get("/studies/digits-gat/best"),
        client.post("/studies/digits-gat/enqueue", json={"aux_loss": "r1", "lambda": 1.0}),
    ):
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail
        assert detail.startswith("study 'digits-gat' was stored by an incompatible version of gat-tune (")
        assert "trials" in detail or "width" in detail
    assert client.get("/studies/digits-gat").status_code == 200  # the study itself still reads


def test_a_best_trial_that_this_version_refuses_is_a_409(client: TestClient, settings: Settings) -> None:
    assert client.post("/studies", json=spec()).status_code == 201
    study = optuna.load_study(study_name="digits-gat", storage=db.optuna_storage(settings))
    wide = optuna.distributions.IntDistribution(1, 10**6)  # z_dim's range was wider once
    study.add_trial(optuna.trial.create_trial(params={"z_dim": 10**5}, distributions={"z_dim": wide}, value=5))
    r = client.get("/studies/digits-gat/best")
    assert r.status_code == 409, r.text
    assert r.json()["detail"].startswith("study 'digits-gat': trial 1's config is refused by this version")
