"""The study routes over real PostgreSQL: the life of a study, idempotency, Optuna compatibility."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import yaml
from fastapi.testclient import TestClient

from service.config import Settings
from service.spec import EXAMPLE_SPEC, StudySpec, suggest_config
from tests.service.conftest import example as spec
from trainer.config import TrainConfig


def test_create_get_best_before_any_trial_then_stop(client: TestClient) -> None:
    r = client.post("/studies", json=spec())
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"] == "digits-gat" and body["status"] == "running"
    assert body["dashboard_url"].endswith(f"/dashboard/studies/{body['optuna_study_id']}")

    got = client.get("/studies/digits-gat").json()
    assert got["trial_counts"] == {"RUNNING": 0, "WAITING": 1, "COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "INTERRUPTED": 0}
    assert got["best"] is None and got["finished"] == 0

    best = client.get("/studies/digits-gat/best")
    assert best.status_code == 409
    assert "no completed trial yet" in best.json()["detail"]

    trials = client.get("/studies/digits-gat/trials").json()
    assert trials["total"] == 1
    assert trials["items"][0]["state"] == "WAITING"
    assert trials["items"][0]["params"] == {}  # Optuna keeps enqueued params aside until the trial runs

    assert client.post("/studies/digits-gat/pause").json()["status"] == "paused"
    assert client.post("/studies/digits-gat/resume").json()["status"] == "running"
    assert client.post("/studies/digits-gat/stop").json()["status"] == "stopped"
    again = client.post("/studies/digits-gat/resume")
    assert again.status_code == 409 and "stopped" in again.json()["detail"]

    listed = client.get("/studies").json()
    assert [s["name"] for s in listed["items"]] == ["digits-gat"] and listed["total"] == 1


def test_yaml_body(client: TestClient) -> None:
    r = client.post(
        "/studies", content=yaml.safe_dump(spec(name="from-yaml")), headers={"Content-Type": "application/yaml"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "from-yaml"


def test_idempotent_create(client: TestClient) -> None:
    first = client.post("/studies", json=spec(), headers={"Idempotency-Key": "k1"})
    retry = client.post("/studies", json=spec(), headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201 and retry.status_code == 200
    assert retry.json()["optuna_study_id"] == first.json()["optuna_study_id"]
    other = client.post("/studies", json=spec(n_trials=3), headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    taken = client.post("/studies", json=spec())
    assert taken.status_code == 409 and "exists" in taken.json()["detail"]
    assert client.get("/studies").json()["total"] == 1


def run_trials(settings: Settings, database_url: str, name: str, fids: list[float]) -> None:
    """What a worker does, through Optuna's own API on the same database."""
    study = optuna.load_study(study_name=name, storage=database_url)
    study_spec = StudySpec.model_validate(study.user_attrs["gat_tune_spec"])
    for fid in fids:
        trial = study.ask()
        config = suggest_config(trial, study_spec)
        TrainConfig.from_dict(config)
        trial.report(fid * 2, step=200)
        study.tell(trial, fid)


def test_best_is_a_complete_trainer_config(client: TestClient, settings: Settings, database_url: str) -> None:
    client.post("/studies", json=spec(enqueue=[]))
    run_trials(settings, database_url, "digits-gat", [50.0, 20.0, 35.0])
    study = client.get("/studies/digits-gat").json()
    assert study["best"]["fid"] == study["best"]["value"] == 20.0 and study["best"]["trial"] == 1
    assert study["best"]["objective"] == "fid"
    assert study["trial_counts"]["COMPLETE"] == 3

    best = client.get("/studies/digits-gat/best").json()
    config = TrainConfig.from_dict(best)
    assert config.to_dict() == best
    assert best["steps"] == 600 and best["dataset"] == "digits"
    assert best["aux_loss"] in ("r1", "wgan-gp", "none")
    params = study["best"]["params"]
    assert best["lr_g"] == params["lr_g"]

    as_yaml = client.get("/studies/digits-gat/best", params={"format": "yaml"})
    assert as_yaml.headers["content-type"].startswith("application/yaml")
    assert TrainConfig.from_text(as_yaml.text).to_dict() == best

    page = client.get("/studies/digits-gat/trials", params={"offset": 1, "limit": 1}).json()
    assert page["total"] == 3 and len(page["items"]) == 1
    item = page["items"][0]
    assert item["number"] == 1 and item["state"] == "COMPLETE" and item["values"] == [20.0]
    assert item["intermediate_values"] == [{"step": 200, "value": 40.0}]
    assert item["duration_seconds"] >= 0
    completed = client.get("/studies/digits-gat/trials", params={"state": "COMPLETE"}).json()
    assert completed["total"] == 3


def test_conditional_lambda_per_aux_loss(client: TestClient, settings: Settings, database_url: str) -> None:
    client.post("/studies", json=spec(enqueue=[], sampler="random", seed=1))
    run_trials(settings, database_url, "digits-gat", [float(i) for i in range(8)])
    items = client.get("/studies/digits-gat/trials").json()["items"]
    for item in items:
        aux = item["params"]["aux_loss"]
        lam_names = [k for k in item["params"] if k.startswith("lambda")]
        if aux == "none":
            assert lam_names == []
        else:
            assert lam_names == [f"lambda[aux_loss={aux}]"]


def test_enqueue_route(client: TestClient) -> None:
    client.post("/studies", json=spec(enqueue=[]))
    r = client.post("/studies/digits-gat/enqueue", json={"aux_loss": "wgan-gp", "lambda": 5.0})
    assert r.status_code == 201, r.text
    assert r.json()["params"] == {"aux_loss": "wgan-gp", "lambda[aux_loss=wgan-gp]": 5.0}
    bad = client.post("/studies/digits-gat/enqueue", json={"z_dim": 8})
    assert bad.status_code == 422 and "not in search_space" in bad.text


def test_a_study_is_a_plain_optuna_study(client: TestClient, database_url: str) -> None:
    client.post("/studies", json=spec())
    study = optuna.load_study(study_name="digits-gat", storage=database_url)
    assert study.user_attrs["gat_tune_spec"]["name"] == "digits-gat"
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    optuna_cli = Path(sys.executable).with_name("optuna")
    listed = subprocess.run(
        [str(optuna_cli), "studies", "--storage", database_url, "-f", "yaml"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "digits-gat" in listed.stdout


def test_two_objectives_make_a_pareto_study(client: TestClient, database_url: str) -> None:
    r = client.post("/studies", json=spec(objective=["fid", "train_seconds"], pruner="none", sampler="nsga2"))
    assert r.status_code == 201, r.text
    study = optuna.load_study(study_name="digits-gat", storage=database_url)
    assert len(study.directions) == 2


def test_health_and_workers(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    empty = {"running": 0, "startable": 0, "slots_wanted": 0}
    assert client.get("/workers").json() == {"items": [], "demand": empty}
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "StudySpec" in schema["components"]["schemas"]


def finite_or_none(value: Any) -> Any:
    """What JSON can show of a value: NaN and ±inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value


def test_pages_are_optunas_view_of_the_trials(client: TestClient, database_url: str) -> None:
    """The read routes render JSON in PostgreSQL; every field must match what Optuna reads."""
    space = {**EXAMPLE_SPEC["search_space"], "z_dim": {"type": "int", "low": 8, "high": 64, "step": 8}}
    client.post("/studies", json=spec(search_space=space, enqueue=[], sampler="random", seed=3, pruner="none"))
    study = optuna.load_study(study_name="digits-gat", storage=database_url)
    study_spec = StudySpec.model_validate(study.user_attrs["gat_tune_spec"])
    for i, end in enumerate(["complete", "complete", "pruned", "fail", "running", "complete"]):
        trial = study.ask()
        suggest_config(trial, study_spec)
        trial.report(float("nan") if i == 1 else 30.0 + i, step=200)
        trial.report(float("inf") if i == 1 else 20.0 + i, step=400)
        trial.set_user_attr("device", "cpu")
        trial.set_user_attr("curve", {"fid": [1.5, 2.0], "note": 'ünïcode "quoted"'})
        if i == 1:  # Python's json.dumps writes these as NaN and Infinity, which are not JSON
            trial.set_user_attr("loss", float("nan"))
            trial.set_user_attr("fids", [1.0, float("inf"), -float("inf")])
            trial.set_user_attr("label", "NaN and Infinity, as words")
        if end == "complete":
            study.tell(trial, float("inf") if i == 1 else 10.0 - i)
        elif end != "running":
            study.tell(trial, state=getattr(optuna.trial.TrialState, end.upper()))
    study.enqueue_trial({"aux_loss": "none"})

    page = client.get("/studies/digits-gat/trials", params={"limit": 500}).json()
    trials = study.get_trials()
    assert page["total"] == len(trials) == 7 and page["offset"] == 0 and page["limit"] == 500
    for item, trial in zip(page["items"], trials, strict=True):
        assert item["number"] == trial.number and item["state"] == trial.state.name
        assert item["params"] == trial.params and list(item["params"]) == list(trial.params)
        for name, value in trial.params.items():
            assert type(item["params"][name]) is type(value) or isinstance(value, float)
        finite = [v if v is not None and abs(v) != float("inf") else None for v in (trial.values or [])]
        assert item["values"] == (finite or None)
        expected = [
            {"step": s, "value": v if v == v and abs(v) != float("inf") else None}
            for s, v in sorted(trial.intermediate_values.items())
        ]
        assert item["intermediate_values"] == expected
        assert item["user_attrs"] == finite_or_none(trial.user_attrs)
        start = trial.datetime_start
        assert item["datetime_start"] == (start.isoformat(timespec="microseconds") + "+00:00" if start else None)
        if trial.datetime_complete is not None and start is not None:
            assert item["duration_seconds"] == (trial.datetime_complete - start).total_seconds()
        else:
            assert item["duration_seconds"] is None

    only = client.get("/studies/digits-gat/trials", params={"state": "PRUNED"}).json()
    assert only["total"] == 1 and [t["number"] for t in only["items"]] == [2]
    second = client.get("/studies/digits-gat/trials", params={"offset": 5, "limit": 1}).json()
    assert second["total"] == 7 and [t["number"] for t in second["items"]] == [5]

    got = client.get("/studies/digits-gat").json()
    counts = {state.name: sum(t.state == state for t in trials) for state in optuna.trial.TrialState}
    assert got["trial_counts"] == {**counts, "INTERRUPTED": 0} and got["finished"] == 4
    best = {"trial": 5, "objective": "fid", "value": 5.0, "fid": 5.0, "features": None}
    assert got["best"] == {**best, "params": study.best_trial.params}
    assert got["objectives"] == ["fid"] and got["status"] == "running"
    listed = client.get("/studies").json()
    assert listed["total"] == 1 and "spec" not in listed["items"][0]
    assert {k: v for k, v in got.items() if k != "spec"} == listed["items"][0]


def test_the_best_of_a_maximised_first_objective_is_its_highest(
    client: TestClient, settings: Settings, database_url: str
) -> None:
    """objective: [coverage, fid]: the best is by coverage, highest first, whatever its FID;
    it names the features its FID was computed on (a trial user attribute the worker sets)."""
    body = spec(name="cov", objective=["coverage", "fid"], pruner="none", sampler="nsga2", enqueue=[])
    assert client.post("/studies", json=body).status_code == 201
    study = optuna.load_study(study_name="cov", storage=database_url)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    study_spec = StudySpec.model_validate(study.user_attrs["gat_tune_spec"])
    for coverage, fid in [(0.2, 10.0), (0.9, 80.0), (0.5, 5.0)]:
        trial = study.ask()
        suggest_config(trial, study_spec)
        trial.set_user_attr("fid", fid)
        trial.set_user_attr("features", "randcnn1")
        study.tell(trial, [coverage, fid])
    got = client.get("/studies/cov").json()
    assert got["objectives"] == ["coverage", "fid"]
    best = {"trial": 1, "objective": "coverage", "value": 0.9, "fid": 80.0, "features": "randcnn1"}
    assert {k: v for k, v in got["best"].items() if k != "params"} == best
    assert client.get("/studies/cov/best").status_code == 200
    assert optuna.load_study(study_name="cov", storage=database_url).metric_names == ["coverage", "FID"]


def test_objectives_are_named_for_the_dashboard(client: TestClient, settings: Settings) -> None:
    assert client.post("/studies", json=spec()).status_code == 201
    pareto = spec(name="pareto", objective=["fid", "train_seconds"], pruner="none", sampler="nsga2", enqueue=[])
    r = client.post("/studies", json=pareto)
    assert r.status_code == 201, r.text
    url = str(settings.database_url)
    assert optuna.load_study(study_name="digits-gat", storage=url).metric_names == ["FID"]
    assert optuna.load_study(study_name="pareto", storage=url).metric_names == ["FID", "train_seconds"]


def test_a_new_regulariser_is_a_study_choice_with_no_service_change(client: TestClient) -> None:
    # r1-lazy is one entry in trainer.losses.REGULARISERS; the service learns of it from there.
    body = spec(name="lazy", base={**EXAMPLE_SPEC["base"], "aux_loss": "r1-lazy"})
    body["search_space"]["aux_loss"]["choices"] = ["r1", "wgan-gp", "r1-lazy"]
    body["search_space"]["lambda"]["cases"]["r1-lazy"] = {"type": "float", "low": 0.01, "high": 100, "log": True}
    body["enqueue"] = [{"aux_loss": "r1-lazy", "lambda": 10.0}]
    r = client.post("/studies", json=body)
    assert r.status_code == 201, r.text
    typo = client.post("/studies", json=spec(name="typo", base={"aux_loss": "r1-lazzy"}))
    assert typo.status_code == 422 and "'r1-lazzy' is not one of" in typo.text and "r1-lazy" in typo.text
    schema = client.get("/openapi.json").json()["components"]["schemas"]["StudySpec"]
    assert "r1-lazy" in schema["properties"]["base"]["properties"]["aux_loss"]["enum"]
