"""service/kubernetes: every overlay rendered with `kubectl kustomize` and validated offline,
strictly (an unknown field fails): Kubernetes' own kinds against their schemas
(kubernetes-validate), KEDA's ScaledObject against the schema we wrote from KEDA's
documentation (tests/kubernetes_schemas.py) and, where GAT_TUNE_KEDA_CRD names KEDA's published
CRD file, against that too. Then what the manifests must say: the worker's GPU, grace period,
environment and command, the probes, and the autoscaler's query, which must be the project's own."""

from __future__ import annotations

import base64
import copy
import os
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.cli import build_parser
from service.config import Settings
from service.queue.demand import SLOTS_WANTED_SQL
from tests.conftest import settings_variables
from tests.kubernetes_schemas import OPEN_OBJECTS, SCALED_OBJECT, scaled_object_errors

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZE = ROOT / "service" / "kubernetes"
OVERLAYS = ("gpu", "cpu")
# The oldest Kubernetes the manifests are meant for (sidecar-free, batch/v1, apps/v1 only).
K8S_VERSION = "1.29.0"
# Seconds a worker needs after SIGTERM beyond one lease (the retries of its re-queue while the
# database is away): the step or eval in progress and the checkpoint.
CHECKPOINT_SECONDS = 60
SECRET_VARIABLES = {"DATABASE_URL", "GAT_TUNE_TOKEN"}
# KEDA's published CRD file (keda.sh_scaledobjects.yaml or a release's keda-X.Y.Z-crds.yaml),
# for the optional check against it; README, "Kubernetes".
KEDA_CRD = os.environ.get("GAT_TUNE_KEDA_CRD")
SCALED_OBJECT_VERSION = "v1alpha1"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (it renders -k)")

Objects = list[dict[str, Any]]


@cache
def _render(overlay: str) -> tuple[str, str]:
    proc = subprocess.run(
        ["kubectl", "kustomize", str(KUSTOMIZE / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def render(overlay: str) -> Objects:
    return [copy.deepcopy(o) for o in yaml.safe_load_all(_render(overlay)[0]) if o]


def one(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    return found


def container(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    (c,) = one(objects, kind, name)["spec"]["template"]["spec"]["containers"]
    return c


# -- strict validation ----------------------------------------------------------------------
@cache
def keda_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(SCALED_OBJECT)


def _hpa_with(behavior: dict[str, Any]) -> dict[str, Any]:
    """An HPA around a ScaledObject's behavior: KEDA passes it to the HPA it makes, as it is."""
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "target"}
    spec = {"scaleTargetRef": target, "maxReplicas": 1, "behavior": behavior}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "hpa"},
        "spec": spec,
    }


def validate(obj: dict[str, Any]) -> None:
    """Raises on any field the kind's schema does not know, or a value it does not allow."""
    if obj["kind"] != "ScaledObject":
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        return
    keda_validator().validate(obj)
    errors = scaled_object_errors(obj)
    assert not errors, "; ".join(errors)
    behavior = obj["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:
        kubernetes_validate.validate(_hpa_with(behavior), K8S_VERSION, strict=True)


def _subschemas(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every schema under this one with its field path (an array's items as '[]'), through
    properties, items and the branches of allOf/if/then."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _subschemas(sub, (*path, name))
    if isinstance(schema.get("items"), dict):
        yield from _subschemas(schema["items"], (*path, "[]"))
    for branch in schema.get("allOf", []):
        for key in ("if", "then"):
            if key in branch:
                yield from _subschemas(branch[key], path)


def test_the_scaledobject_schema_closes_every_object() -> None:
    jsonschema.Draft202012Validator.check_schema(SCALED_OBJECT)
    for path, schema in _subschemas(SCALED_OBJECT):
        if schema.get("type") != "object" or path in OPEN_OBJECTS:
            continue
        if "properties" in schema:
            assert schema.get("additionalProperties") is False, path
        else:  # a map: values typed, keys free
            assert schema.get("additionalProperties") == {"type": "string"}, path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_without_warnings_and_validates(overlay: str) -> None:
    _, warnings = _render(overlay)
    assert warnings == ""
    objects = render(overlay)
    for obj in objects:
        validate(obj)  # raises: the failing field in the message
    kinds = {
        (
            o["kind"],
            o["metadata"]["name"].rsplit("-", 1)[0] if o["kind"] in ("ConfigMap", "Secret") else o["metadata"]["name"],
        )
        for o in objects
    }
    ours = {
        ("Namespace", "gat-tune"),
        ("PersistentVolumeClaim", "gat-tune-data"),
        ("Job", "gat-tune-migrate"),
        ("Deployment", "gat-tune-api"),
        ("Service", "gat-tune-api"),
        ("Deployment", "gat-tune-worker"),
        ("ScaledObject", "gat-tune-worker"),
        ("ConfigMap", "gat-tune-settings"),
    }
    trial = {
        ("Secret", "gat-tune-secrets"),
        ("Secret", "gat-tune-postgres"),
        ("Service", "gat-tune-postgres"),
        ("StatefulSet", "gat-tune-postgres"),
    }
    assert kinds == (ours | trial if overlay == "cpu" else ours)
    assert all(o["metadata"].get("namespace") == "gat-tune" for o in objects if o["kind"] != "Namespace")


def test_validation_fails_on_an_unknown_field() -> None:
    objects = render("cpu")
    worker = one(objects, "Deployment", "gat-tune-worker")
    worker["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="gpus"):
        validate(worker)

    def scaled_object() -> dict[str, Any]:
        return copy.deepcopy(one(objects, "ScaledObject", "gat-tune-worker"))

    def places(scaled: dict[str, Any]) -> dict[str, dict[str, Any]]:
        spec = scaled["spec"]
        return {
            "root": scaled,
            "metadata": scaled["metadata"],
            "spec": spec,
            "scaleTargetRef": spec["scaleTargetRef"],
            "advanced": spec["advanced"],
            "horizontalPodAutoscalerConfig": spec["advanced"]["horizontalPodAutoscalerConfig"],
            "trigger": spec["triggers"][0],
            # KEDA reads only the keys its scaler knows: a typo would be dropped in silence.
            "trigger metadata": spec["triggers"][0]["metadata"],
        }

    for where in places(scaled_object()):
        scaled = scaled_object()
        places(scaled)[where]["maxReplicas"] = "3"
        with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
            validate(scaled)
    scaled = scaled_object()
    scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilisationWindow"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="stabilisationWindow"):
        validate(scaled)
    for field, value in [("minReplicaCount", "zero"), ("idleReplicaCount", 1), ("pollingInterval", -1)]:
        scaled = scaled_object()
        scaled["spec"][field] = value
        with pytest.raises(jsonschema.ValidationError):
            validate(scaled)
    scaled = scaled_object()
    scaled["spec"]["minReplicaCount"] = scaled["spec"]["maxReplicaCount"] + 1
    with pytest.raises(AssertionError, match="minReplicaCount"):
        validate(scaled)
    validate(scaled_object())  # and the object as rendered passes


# -- KEDA's published CRD (optional) ----------------------------------------------------------
def _strict(schema: Any) -> Any:
    """A CRD's OpenAPI v3 schema as a JSON schema that rejects unknown fields: a CRD leaves
    additionalProperties out (the API server drops unknown fields, silently), so every object
    that lists its properties gets additionalProperties: false, unless it says it keeps
    unknown fields (x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        schema.get("type") == "object"
        and isinstance(schema.get("properties"), dict)
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def published_schema(path: Path) -> dict[str, Any]:
    """The ScaledObject's openAPIV3Schema from a CRD file (one CRD, or a release's several)."""
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "CustomResourceDefinition" and doc["spec"]["names"]["kind"] == "ScaledObject":
            (version,) = [v for v in doc["spec"]["versions"] if v["name"] == SCALED_OBJECT_VERSION]
            schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
            return schema
    raise AssertionError(f"{path} has no ScaledObject CRD: take keda-X.Y.Z-crds.yaml from KEDA's release")


def fields(schema: dict[str, Any]) -> set[tuple[str, ...]]:
    """The field paths a schema names, but inside ObjectMeta, the open objects and a trigger's
    metadata (to the CRD any strings; our keys come from the scaler's docs)."""
    opaque = OPEN_OBJECTS | {("spec", "triggers", "[]", "metadata")}
    return {p for p, _ in _subschemas(schema) if not (p[:1] == ("metadata",) or p[:-1] in opaque)}


@pytest.mark.skipif(
    not KEDA_CRD, reason="GAT_TUNE_KEDA_CRD is not set: the path of KEDA's published CRD file (README, Kubernetes)"
)
def test_the_scaledobject_against_kedas_published_crd() -> None:
    published = published_schema(Path(str(KEDA_CRD)))
    schema = _strict(published)
    # The CRD leaves metadata to the API server (type: object); here the fields a manifest sets.
    schema["properties"] |= {name: SCALED_OBJECT["properties"][name] for name in ("apiVersion", "kind", "metadata")}
    validator = jsonschema.Draft202012Validator(schema)
    for overlay in OVERLAYS:
        scaled = one(render(overlay), "ScaledObject", "gat-tune-worker")
        validator.validate(scaled)
        for where in (scaled, scaled["spec"], scaled["spec"]["triggers"][0]):
            where["maxReplicas"] = 3
            with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
                validator.validate(scaled)
            del where["maxReplicas"]
    unknown = fields(SCALED_OBJECT) - fields(published)
    assert not unknown, f"tests/kubernetes_schemas.py allows fields KEDA's CRD does not have: {sorted(unknown)}"


# -- what the manifests say -------------------------------------------------------------------
def environment(objects: Objects, c: dict[str, Any]) -> dict[str, str]:
    """A container's environment: its env, and the keys of the ConfigMaps it takes whole.
    Values from a Secret read as its (decoded) value where the overlay makes the Secret, else
    as 'secret:NAME/KEY'."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env |= one(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
    for var in c.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            env[var["name"]] = var["value"]
            continue
        made = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == ref["name"]]
        value = base64.b64decode(made[0]["data"][ref["key"]]).decode() if made else f"secret:{ref['name']}/{ref['key']}"
        env[var["name"]] = value
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a process with exactly this environment reads (secrets the overlay
    leaves to the operator stand in as plausible values)."""
    for name in settings_variables():
        monkeypatch.delenv(name, raising=False)
    stand_in = {"DATABASE_URL": "postgresql://gat@db:5432/gat_tune", "GAT_TUNE_TOKEN": "t"}
    for name, value in env.items():
        monkeypatch.setenv(name, stand_in[name] if value.startswith("secret:") else value)
    return Settings()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_worker_deployment(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(overlay)
    worker = one(objects, "Deployment", "gat-tune-worker")
    pod = worker["spec"]["template"]["spec"]
    c = container(objects, "Deployment", "gat-tune-worker")
    gpus = {k: c["resources"][k].get("nvidia.com/gpu") for k in ("requests", "limits")}
    assert gpus == ({"requests": 1, "limits": 1} if overlay == "gpu" else {"requests": None, "limits": None})
    assert "replicas" not in worker["spec"], "KEDA owns the replica count; an apply must not reset it"

    env = environment(objects, c)
    assert set(env) == settings_variables(), "every variable Settings reads, and nothing else"
    assert {k for k, v in env.items() if v.startswith("secret:")} == (SECRET_VARIABLES if overlay == "gpu" else set())
    settings = settings_from(env, monkeypatch)
    assert pod["terminationGracePeriodSeconds"] >= settings.lease_seconds + CHECKPOINT_SECONDS
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # Run directories (checkpoints) and artifacts on the shared volume: a trial resumes on any pod.
    assert volumes[mounts[str(settings.data_dir)]]["persistentVolumeClaim"]["claimName"] == "gat-tune-data"
    assert settings.artifacts.is_relative_to(settings.data_dir) and settings.artifact_s3_bucket is None

    command = c["command"] + c.get("args", [])
    assert command[0] == "gat-tune"
    args = build_parser().parse_args(command[1:])  # exits (fails the test) on an unknown command or flag
    assert (args.command, args.devices, args.per_device) == ("worker", "auto", 1)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_counts_the_projects_query(overlay: str) -> None:
    objects = render(overlay)
    scaled = one(objects, "ScaledObject", "gat-tune-worker")
    assert scaled["spec"]["scaleTargetRef"] == {"name": "gat-tune-worker"}
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["maxReplicaCount"] >= 1
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    meta = trigger["metadata"]
    assert meta["query"] == SLOTS_WANTED_SQL, "copy `python -m service.queue.demand` into worker-scaledobject.yaml"
    # One slot per pod (--per-device 1, one device), so one pod per slot wanted.
    assert meta["targetQueryValue"] == "1"
    env = environment(objects, container(objects, "Deployment", "gat-tune-worker"))
    assert meta["connectionFromEnv"] in env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_and_the_migrate_job(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(overlay)
    parser = build_parser()
    api = container(objects, "Deployment", "gat-tune-api")
    env = environment(objects, api)
    assert set(env) == settings_variables()
    settings = settings_from(env, monkeypatch)
    assert settings.host == "0.0.0.0" and settings.token, "serve refuses 0.0.0.0 without a token"
    assert parser.parse_args(api["command"][1:]).command == "serve"
    (port,) = api["ports"]
    assert port["containerPort"] == settings.port
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    service = one(objects, "Service", "gat-tune-api")["spec"]
    assert service["selector"] == one(objects, "Deployment", "gat-tune-api")["spec"]["selector"]["matchLabels"]
    assert service["ports"][0]["targetPort"] == port["name"]

    job = container(objects, "Job", "gat-tune-migrate")
    assert job["command"] == ["gat-tune", "db", "upgrade"] and parser.parse_args(job["command"][1:]).func
    assert set(environment(objects, job)) == settings_variables() - {"GAT_TUNE_TOKEN"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_within_limits(overlay: str) -> None:
    for obj in render(overlay):
        if obj["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
            assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"], c["name"]


def test_the_trial_overlay_brings_its_database_and_the_gpu_overlay_does_not() -> None:
    cpu = render("cpu")
    url = urlsplit(environment(cpu, container(cpu, "Deployment", "gat-tune-worker"))["DATABASE_URL"])
    postgres = one(cpu, "StatefulSet", "gat-tune-postgres")
    assert url.hostname == postgres["spec"]["serviceName"] and url.port == 5432
    assert url.scheme == "postgresql", "KEDA's driver (pgx) reads this URL too: no SQLAlchemy dialect in it"
    pg_env = environment(cpu, postgres["spec"]["template"]["spec"]["containers"][0])
    assert (url.username, url.password, url.path) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        "/" + pg_env["POSTGRES_DB"],
    )
    assert url.password and "example-only" in url.password, "the trial secrets must say they are examples"
    (claim,) = postgres["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/var/lib/postgresql/data"} in (
        postgres["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    )
    assert one(cpu, "PersistentVolumeClaim", "gat-tune-data")["spec"]["accessModes"] == ["ReadWriteOnce"]

    gpu = render("gpu")
    assert not [o for o in gpu if o["kind"] in ("Secret", "StatefulSet")], "production secrets are the operator's"
    assert one(gpu, "PersistentVolumeClaim", "gat-tune-data")["spec"]["accessModes"] == ["ReadWriteMany"]
