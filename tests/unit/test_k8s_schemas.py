"""The Kubernetes manifests (deploy/k8s) validate offline against the published schemas.

Built-in kinds (StatefulSet, Service, PodDisruptionBudget, HorizontalPodAutoscaler, ...) are
checked with `kubernetes-validate`, which ships the Kubernetes JSON schemas, in strict mode
(unknown fields are errors). KEDA's ScaledObject is a custom resource, absent from those
schemas: it is checked against the models generated from KEDA's CRD openAPI schema
(`cloudcoil.models.keda`), and must survive a round trip through them unchanged, so that a
misspelt or unknown field (which the models would silently ignore) fails too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from kubernetes_validate import utils as k8s_schemas
from pydantic import ValidationError

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSIONS = k8s_schemas.all_versions()
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}


def documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                yield f"{path.name}#{index}:{doc['kind']}", doc


DOCS = list(documents())
BUILTIN = [(name, doc) for name, doc in DOCS
           if (doc["apiVersion"], doc["kind"]) not in CUSTOM_KINDS]
SCALED = [(name, doc) for name, doc in DOCS if doc["kind"] == "ScaledObject"]


def validate_scaled_object(doc: dict[str, Any]) -> None:
    """Types and required fields from the CRD's schema; then no field may be lost."""
    model = ScaledObject.model_validate(doc)
    again = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert again == doc, "fields unknown to the ScaledObject schema"


def test_every_manifest_is_checked() -> None:
    assert DOCS, "no manifests found"
    kinds = {(doc["apiVersion"], doc["kind"]) for _, doc in DOCS}
    unchecked = kinds - CUSTOM_KINDS - {(d["apiVersion"], d["kind"]) for _, d in BUILTIN}
    assert not unchecked
    assert {"StatefulSet", "Service", "PodDisruptionBudget"} <= {k for _, k in kinds}
    assert SCALED or any(k == "HorizontalPodAutoscaler" for _, k in kinds), "an autoscaler"


@pytest.mark.parametrize("version", [VERSIONS[0], VERSIONS[-1]])
@pytest.mark.parametrize(("name", "doc"), BUILTIN, ids=[n for n, _ in BUILTIN])
def test_builtin_kinds_match_the_kubernetes_schema(name: str, doc: dict[str, Any],
                                                   version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(("name", "doc"), SCALED, ids=[n for n, _ in SCALED])
def test_keda_scaled_objects_match_the_crd_schema(name: str, doc: dict[str, Any]) -> None:
    validate_scaled_object(doc)
    target = doc["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "StatefulSet")
    assert target["name"] in {
        d["metadata"]["name"] for _, d in DOCS if d["kind"] == "StatefulSet"}


def test_the_validators_reject_broken_manifests() -> None:
    """The checks above can fail: a wrong type, an unknown field, a bad ScaledObject."""
    workload = copy.deepcopy(next(d for _, d in DOCS if d["kind"] == "StatefulSet"))
    workload["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload, VERSIONS[-1], strict=True)
    workload = copy.deepcopy(next(d for _, d in DOCS if d["kind"] == "StatefulSet"))
    workload["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy_"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload, VERSIONS[-1], strict=True)
    workload = copy.deepcopy(next(d for _, d in DOCS if d["kind"] == "StatefulSet"))
    workload["spec"]["strategy"] = workload["spec"].pop("updateStrategy")  # a Deployment's
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload, VERSIONS[-1], strict=True)
    if SCALED:
        scaled = copy.deepcopy(SCALED[0][1])
        scaled["spec"]["minReplicaCount"] = "one"
        with pytest.raises(ValidationError):
            validate_scaled_object(scaled)
        scaled = copy.deepcopy(SCALED[0][1])
        scaled["spec"]["minReplicas"] = 1
        with pytest.raises(AssertionError):
            validate_scaled_object(scaled)
