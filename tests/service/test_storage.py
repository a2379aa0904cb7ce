"""service.storage reads trials in one statement: it must read exactly what Optuna's own
RDBStorage reads, value types included, for every kind of trial Optuna can store."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from service import db
from service.config import Settings
from service.storage import OptunaStorage


def _fields(trial: FrozenTrial) -> str:
    """Every field of a trial, with types (repr tells 2 from 2.0 and shows nan), attribute
    order aside."""
    d = {k: sorted(v.items()) if isinstance(v, dict) else v for k, v in vars(trial).items()}
    assert len(d) >= 10  # params, attrs, values, intermediate values, dates, state...
    return repr(sorted(d.items()))


def _fill(storage: optuna.storages.BaseStorage) -> list[int]:
    """Two studies with every kind of value Optuna stores; the trial ids."""
    study = optuna.create_study(study_name="single", storage=storage)
    dists = {
        "log_lr": FloatDistribution(1e-5, 1e-1, log=True),
        "stepped": FloatDistribution(0.0, 4.0, step=0.5),
        "width": IntDistribution(8, 512, log=True),
        "layers": IntDistribution(1, 9, step=2),
        "choice": CategoricalDistribution([None, 1, "a", 2.5, True]),
    }
    params: list[dict[str, Any]] = [
        {"log_lr": 1e-3, "stepped": 2.0, "width": 64, "layers": 3, "choice": None},
        {"log_lr": 0.012345678901234567, "stepped": 0.5, "width": 8, "layers": 9, "choice": "a"},
        {"log_lr": 1e-5, "stepped": 4.0, "width": 511, "layers": 1, "choice": True},
        {"log_lr": 0.1, "stepped": 0.0, "width": 100, "layers": 5, "choice": 2.5},
    ]
    ends = [
        (TrialState.COMPLETE, 2.0),
        (TrialState.COMPLETE, math.inf),
        (TrialState.PRUNED, None),
        (TrialState.FAIL, None),
    ]
    for p, (state, value) in zip(params, ends, strict=True):
        trial = optuna.trial.create_trial(
            params=p,
            distributions=dists,
            value=value,
            state=state,
            intermediate_values={0: 3.0, 1: 0.1 + 0.2, 2: math.inf, 3: -math.inf, 4: math.nan},
            user_attrs={"device": "cpu", "note": "λ ünïcode ✓", "nested": {"a": [1, 2.5, None]}, "bad": math.nan},
            system_attrs={"artifacts:x": {"artifact_id": "x", "filename": "samples.png"}},
        )
        study.add_trial(trial)
    running = study.ask({"log_lr": dists["log_lr"]})  # RUNNING, one param, nothing else
    running.set_user_attr("run_dir", "/tmp/r")
    running.report(1.5, 10)
    study.ask()  # RUNNING, no params at all
    study.enqueue_trial({"width": 32}, user_attrs={"gat_tune_attempt": 1})  # WAITING

    pareto = optuna.create_study(study_name="pareto", storage=storage, directions=["minimize", "minimize"])
    pareto.add_trial(optuna.trial.create_trial(values=[1.0, -math.inf], params={}, distributions={}))
    pareto.add_trial(optuna.trial.create_trial(values=[0.25, 3.0], params={}, distributions={}))
    return [t._trial_id for s in (study, pareto) for t in s.get_trials(deepcopy=False)]


@pytest.fixture
def storages(settings: Settings, database_url: str) -> tuple[OptunaStorage, optuna.storages.RDBStorage]:
    ours = db.optuna_storage(settings)
    assert isinstance(ours, OptunaStorage)
    return ours, optuna.storages.RDBStorage(database_url, skip_table_creation=True)


def test_a_trial_reads_as_optunas_own_storage_reads_it(
    storages: tuple[OptunaStorage, optuna.storages.RDBStorage],
) -> None:
    ours, optunas = storages
    trial_ids = _fill(optunas)
    assert len(trial_ids) == 9
    for trial_id in trial_ids:
        assert _fields(ours.get_trial(trial_id)) == _fields(optunas.get_trial(trial_id))
    # the checks above can fail: a value read back as int 2, not 2.0, shows in the repr
    assert "2.0" in _fields(ours.get_trial(trial_ids[0]))
    with pytest.raises(KeyError):
        ours.get_trial(max(trial_ids) + 1)


def test_a_studys_trials_read_as_optunas_own_storage_reads_them(
    storages: tuple[OptunaStorage, optuna.storages.RDBStorage],
) -> None:
    ours, optunas = storages
    _fill(optunas)
    for name in ("single", "pareto"):
        sid = optunas.get_study_id_from_name(name)
        for states in (None, (TrialState.RUNNING, TrialState.WAITING), (TrialState.COMPLETE,)):
            mine = ours.get_all_trials(sid, deepcopy=False, states=states)
            theirs = optunas.get_all_trials(sid, deepcopy=False, states=states)
            assert [_fields(t) for t in mine] == [_fields(t) for t in theirs]
            assert mine or states == (TrialState.RUNNING, TrialState.WAITING)
        # the selection _CachedStorage makes: trials after the last finished one, plus the
        # ones it holds as unfinished
        all_ids = [t._trial_id for t in optunas.get_all_trials(sid)]
        for included, after in (({all_ids[0]}, all_ids[1]), (set(), all_ids[0]), ({all_ids[-1]}, -1)):
            mine = ours._get_trials(sid, None, included, after)
            theirs = optunas._get_trials(sid, None, included, after)
            assert [_fields(t) for t in mine] == [_fields(t) for t in theirs]
    # through Optuna's cached wrapper, as workers and the API use it
    study = optuna.load_study(study_name="single", storage=ours)
    assert [_fields(t) for t in study.trials] == [_fields(t) for t in optunas.get_all_trials(study._study_id)]
    with pytest.raises(KeyError):
        ours.get_all_trials(10_000)


def _write_everything(storage: optuna.storages.BaseStorage, name: str) -> list[str]:
    """The writes a worker makes (and the misuses Optuna refuses), on one storage; what
    each call returned or raised."""
    out: list[str] = []

    def attempt(what: str, call: Any) -> None:
        try:
            out.append(f"{what}: {call()!r}")
        except Exception as exc:  # the exception's type and message are the outcome
            out.append(f"{what}: {type(exc).__name__}: {exc}")

    study = optuna.create_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=1))
    for i, end in enumerate([2.0, math.inf, "pruned", "fail", 0.1 + 0.2]):
        trial = study.ask()
        trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        trial.suggest_int("width", 8, 64, step=8)
        trial.suggest_categorical("loss", ["r1", "r2", None])
        for step, value in enumerate([3.0, math.nan, math.inf, -math.inf, 0.5 * i]):
            trial.report(value, step)
        trial.report(7.0, 0)  # the same step again: Optuna keeps the first (and warns)
        storage.set_trial_intermediate_value(trial._trial_id, 1, 1.25)  # overwrite a step
        if end == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        elif end == "fail":
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, end)
    done = study.trials[0]._trial_id
    attempt("report to a finished trial", lambda: storage.set_trial_intermediate_value(done, 9, 1.0))
    attempt("param on a finished trial", lambda: storage.set_trial_param(done, "z", 0.0, FloatDistribution(0, 1)))
    attempt("state of a finished trial", lambda: storage.set_trial_state_values(done, TrialState.COMPLETE, [1.0]))
    attempt("unknown trial", lambda: storage.set_trial_intermediate_value(10_000_000, 0, 1.0))
    attempt("unknown trial's param", lambda: storage.set_trial_param(10_000_000, "z", 0.0, FloatDistribution(0, 1)))
    attempt("unknown trial's state", lambda: storage.set_trial_state_values(10_000_000, TrialState.FAIL))
    attempt("unknown study", lambda: storage.create_new_trial(10_000_000))
    trial = study.ask()
    attempt("incompatible distribution", lambda: trial.suggest_int("lr", 1, 3))
    attempt(
        "a param twice", lambda: storage.set_trial_param(trial._trial_id, "width", 16.0, IntDistribution(8, 64, step=8))
    )
    started = storage.get_trial(trial._trial_id).datetime_start
    attempt("RUNNING again", lambda: storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING))
    attempt("  its start unchanged", lambda: storage.get_trial(trial._trial_id).datetime_start == started)
    # with the study's distribution known, as Optuna's cache calls it
    lr = FloatDistribution(1e-5, 1e-1, log=True)
    set_param = storage._set_trial_param  # type: ignore[attr-defined]
    attempt("known distribution, finished trial", lambda: set_param(done, "z", 0.01, lr, lr))
    attempt("known distribution, unknown trial", lambda: set_param(10_000_000, "lr", 0.01, lr, lr))
    attempt("known distribution, new param", lambda: set_param(trial._trial_id, "lr", 0.01, lr, lr))
    attempt("known distribution, twice", lambda: set_param(trial._trial_id, "lr", 0.02, lr, lr))
    attempt("known and incompatible", lambda: set_param(trial._trial_id, "w", 1.0, lr, IntDistribution(1, 3)))
    study.enqueue_trial({"lr": 1e-3})
    attempt("a queued trial popped", lambda: study.ask().params)
    pareto = optuna.create_study(study_name=f"{name}-pareto", storage=storage, directions=["minimize", "maximize"])
    trial = pareto.ask()
    pareto.tell(trial, [1.0, -math.inf])
    for s in (study, pareto):
        for t in s.get_trials(deepcopy=False):
            dated = (t.datetime_start is not None, t.datetime_complete is not None)
            out.append(f"trial {_undated(t)} {dated}")
    return out


def _undated(t: FrozenTrial) -> str:
    """_fields of a trial without its dates and id (the clock's and the sequence's)."""
    return _fields(
        FrozenTrial(
            number=t.number,
            state=t.state,
            value=None,
            values=t.values,
            datetime_start=None,
            datetime_complete=None,
            params=t.params,
            distributions=t.distributions,
            user_attrs=t.user_attrs,
            system_attrs=t.system_attrs,
            intermediate_values=t.intermediate_values,
            trial_id=0,
        )
    )


def test_writes_store_what_optunas_own_storage_stores(
    storages: tuple[OptunaStorage, optuna.storages.RDBStorage],
) -> None:
    ours, optunas = storages
    with pytest.warns(UserWarning):  # the repeated report step
        mine = _write_everything(ours, "ours")
        theirs = _write_everything(optunas, "theirs")
    assert mine == theirs
    assert any("UpdateFinishedTrialError" in line for line in mine)  # the refusals did happen
    assert any("ValueError" in line for line in mine)
    # and Optuna's own reader reads our writes as it reads its own
    for name in ("ours", "theirs"):
        sid = optunas.get_study_id_from_name(name)
        assert len(optunas.get_all_trials(sid)) == 7
    read = {
        name: [_undated(t) for t in optunas.get_all_trials(optunas.get_study_id_from_name(name))]
        for name in ("ours", "theirs")
    }
    assert read["ours"] == read["theirs"]
