"""KEDA's ScaledObject as a strict JSON schema (draft 2020-12): every object is closed, so an
unknown or misspelt field fails, where the API server would drop it without a word.

Written by hand from KEDA's documentation, in our own words; not copied or derived from
KEDA's CRD file:
- the ScaledObject spec, KEDA 2.20: https://keda.sh/docs/2.20/reference/scaledobject-spec/
- authenticationRef, KEDA 2.20: https://keda.sh/docs/2.20/concepts/authentication/
- the postgresql trigger's metadata, KEDA 2.15 (the newest version of that page read):
  https://keda.sh/docs/2.15/scalers/postgresql/
Only what a manifest sets: no status. The HPA behavior under
advanced.horizontalPodAutoscalerConfig is Kubernetes' own type, which KEDA hands to the HPA as
it is; tests/test_kubernetes.py checks it against Kubernetes' schema (kubernetes-validate).
Checks JSON schema cannot say (one field against another) are in scaled_object_errors.
To compare with KEDA's published CRD, see README, "Kubernetes" (GAT_TUNE_KEDA_CRD)."""

from __future__ import annotations

from typing import Any

KEDA_DOCS_VERSION = "2.20"
API_VERSION = "keda.sh/v1alpha1"
# Schemas that leave their object open on purpose, by path from the root.
OPEN_OBJECTS = {("spec", "advanced", "horizontalPodAutoscalerConfig", "behavior")}

Schema = dict[str, Any]


def closed(properties: Schema, *required: str) -> Schema:
    """An object with these fields and no other."""
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_TEXT = {"type": "string", "minLength": 1}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_COUNT = {"type": "integer", "minimum": 0}  # replicas, or seconds

# What the docs say each trigger takes in metadata: a connection string from the target
# container's environment, or the parts of one; then the query and its targets. `connection`
# and `password` are TriggerAuthentication parameters only, not metadata (a password in
# metadata would sit in plain text in the object).
POSTGRESQL_METADATA = closed(
    {
        "connectionFromEnv": _TEXT,
        "host": _TEXT,
        "port": _TEXT,
        "userName": _TEXT,
        "passwordFromEnv": _TEXT,
        "dbName": _TEXT,
        "sslmode": _TEXT,
        "query": _TEXT,
        "targetQueryValue": _TEXT,
        "activationTargetQueryValue": _TEXT,
    },
    "query",
    "targetQueryValue",
)

# Metadata keys for the trigger types this project uses; other types keep the string map.
TRIGGER_METADATA = {"postgresql": POSTGRESQL_METADATA}

_TRIGGER = closed(
    {
        "type": _TEXT,
        "name": _TEXT,
        "metadata": _STRINGS,
        "authenticationRef": closed(
            {"name": _TEXT, "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]}}, "name"
        ),
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        "useCachedMetrics": {"type": "boolean"},
    },
    "type",
    "metadata",
)
_TRIGGER["allOf"] = [
    {"if": {"properties": {"type": {"const": kind}}}, "then": {"properties": {"metadata": metadata}}}
    for kind, metadata in TRIGGER_METADATA.items()
]

SCALED_OBJECT: Schema = closed(
    {
        "apiVersion": {"const": API_VERSION},
        "kind": {"const": "ScaledObject"},
        # The ObjectMeta fields a manifest may set; the API server owns the rest.
        "metadata": closed({"name": _TEXT, "namespace": _TEXT, "labels": _STRINGS, "annotations": _STRINGS}, "name"),
        "spec": closed(
            {
                "scaleTargetRef": closed(
                    {"name": _TEXT, "kind": _TEXT, "apiVersion": _TEXT, "envSourceContainerName": _TEXT}, "name"
                ),
                "pollingInterval": _COUNT,
                "cooldownPeriod": _COUNT,
                "initialCooldownPeriod": _COUNT,
                # The docs: 0 is the only value that works (the HPA controller's limits).
                "idleReplicaCount": {"const": 0},
                "minReplicaCount": _COUNT,
                "maxReplicaCount": _COUNT,
                "fallback": closed(
                    {
                        "failureThreshold": {"type": "integer", "minimum": 1},
                        "replicas": _COUNT,
                        "behavior": {
                            "enum": [
                                "static",
                                "currentReplicas",
                                "currentReplicasIfHigher",
                                "currentReplicasIfLower",
                                "scalingModifiers",
                            ]
                        },
                    },
                    "failureThreshold",
                    "replicas",
                ),
                "advanced": closed(
                    {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": closed({"name": _TEXT, "behavior": {"type": "object"}}),
                        "scalingModifiers": closed(
                            {
                                "target": _TEXT,
                                "activationTarget": _TEXT,
                                "metricType": {"enum": ["AverageValue", "Value"]},
                                "formula": _TEXT,
                            },
                            "target",
                            "formula",
                        ),
                    }
                ),
                "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
            },
            "scaleTargetRef",
            "triggers",
        ),
    },
    "apiVersion",
    "kind",
    "metadata",
    "spec",
)


def scaled_object_errors(obj: dict[str, Any]) -> list[str]:
    """What the docs ask of one field against another, which JSON schema cannot say."""
    spec = obj["spec"]
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)  # the documented defaults
    errors = []
    if low > high:
        errors.append(f"minReplicaCount {low} is above maxReplicaCount {high}")
    if "idleReplicaCount" in spec and spec["idleReplicaCount"] >= low:
        errors.append(f"idleReplicaCount must be less than minReplicaCount ({low})")
    return errors
