"""deploy/: every manifest validates offline against its published schema, and the autoscaling pieces
agree with each other and with the metrics the service exports.

- Kubernetes' own kinds: `kubernetes-validate` in strict mode (unknown fields are errors), against the
  newest schemas it ships and an older release still common in clusters;
- KEDA's ScaledObject: KEDA's CRD schema as the pydantic models of `cloudcoil-models-keda`; those
  ignore unknown fields, so the manifest must also survive a round trip unchanged;
- KServe's InferenceService (no schema package): its predictor's containers as a Pod's, strictly;
- the Prometheus adapter's rule must name a series the service exports, as the metric the HPA reads.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")
keda = pytest.importorskip("cloudcoil.models.keda.v1alpha1")

from enet_serve.paths import REPO_ROOT  # noqa: E402
from enet_serve.service.metrics import Metrics  # noqa: E402

DEPLOY = REPO_ROOT / "deploy"
K8S_VERSIONS = (kubernetes_validate.latest_version(), "1.27.0")
CRD_KINDS = {"ScaledObject", "InferenceService"}


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.parent.name == "prometheus-adapter":
            continue  # Helm values, not a manifest
        if path.name == "kustomization.yaml" or path.parent.name == "kubernetes-gpu":
            continue  # kustomize's own files and the GPU overlay: validated built (below)
        out += [(f"{path.relative_to(DEPLOY)}:{d['kind']}", d) for d in documents(path)]
    return out


def gpu_overlay() -> list[tuple[str, dict]]:
    from test_deploy import kustomize  # the overlay applied to the base, as kustomize builds it

    return [(f"kubernetes-gpu (built):{d['kind']}", d) for d in kustomize(DEPLOY / "kubernetes-gpu")]


def by_kind(kind: str) -> dict:
    found = [d for _, d in manifests() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} under deploy/, found {len(found)}"
    return found[0]


METRICS_TEXT = Metrics().render()[0].decode()


@pytest.mark.parametrize("name,doc", [m for m in manifests() if m[1]["kind"] not in CRD_KINDS],
                         ids=[m[0] for m in manifests() if m[1]["kind"] not in CRD_KINDS])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_kinds_validate_strictly(name, doc, version):
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("name,doc", gpu_overlay(), ids=[m[0] for m in gpu_overlay()])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_built_gpu_overlay_validates_strictly(name, doc, version):
    kubernetes_validate.validate(doc, version, strict=True)


def test_every_manifest_is_checked():
    kinds = {d["kind"] for _, d in manifests()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ScaledObject"} <= kinds
    assert kinds & CRD_KINDS <= {"ScaledObject", "InferenceService"}


def test_strict_validation_rejects_unknown_fields():
    hpa = yaml.safe_load(yaml.safe_dump(by_kind("HorizontalPodAutoscaler")))
    hpa["spec"]["maxReplica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, K8S_VERSIONS[0], strict=True)


def test_keda_scaled_object_matches_the_crd_schema():
    doc = by_kind("ScaledObject")
    obj = keda.ScaledObject.model_validate(doc)
    # the models drop fields the CRD does not have: what comes back must be the whole manifest
    assert obj.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc
    triggers = {t["type"]: t for t in doc["spec"]["triggers"]}
    assert set(triggers) == {"prometheus", "cpu"}
    assert float(triggers["prometheus"]["metadata"]["threshold"]) > 0


def test_keda_round_trip_catches_a_misspelt_field():
    doc = yaml.safe_load(yaml.safe_dump(by_kind("ScaledObject")))
    doc["spec"]["maxReplicas"] = 3  # KEDA's field is maxReplicaCount
    obj = keda.ScaledObject.model_validate(doc)
    assert obj.model_dump(by_alias=True, exclude_unset=True, mode="json") != doc


def test_kserve_predictor_containers_validate_as_a_pod():
    isvc = by_kind("InferenceService")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
           "spec": {"containers": isvc["spec"]["predictor"]["containers"]}}
    kubernetes_validate.validate(pod, K8S_VERSIONS[0], strict=True)


def test_kserve_container_listens_where_its_port_and_probes_say():
    (container,) = by_kind("InferenceService")["spec"]["predictor"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    port = int(env["ENET_SERVE_PORT"])  # the setting, which the image's HEALTHCHECK reads too, not --port
    assert "--port" not in container.get("args", [])
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert container["readinessProbe"]["httpGet"]["port"] == container["livenessProbe"]["httpGet"]["port"] == port


# -- the autoscaling pieces fit together -------------------------------------------------------------------

def test_the_autoscaler_owns_the_replica_count():
    deployment = by_kind("Deployment")
    assert "replicas" not in deployment["spec"], "an HPA scales the Deployment: a fixed count would fight it"
    for target in (by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"],
                   by_kind("ScaledObject")["spec"]["scaleTargetRef"]):
        assert (target["kind"] if "kind" in target else "Deployment") == "Deployment"
        assert target["name"] == deployment["metadata"]["name"]


def test_the_disruption_budget_covers_the_pods_and_leaves_one_serving():
    pods = by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb = by_kind("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pods.items()
    assert pdb["maxUnavailable"] < by_kind("HorizontalPodAutoscaler")["spec"]["minReplicas"]
    assert pdb["maxUnavailable"] < by_kind("ScaledObject")["spec"]["minReplicaCount"]


def test_the_cpu_target_has_a_request_to_be_a_share_of():
    container = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"]


def exported(series: str) -> bool:
    return re.search(rf"^{re.escape(series)}[{{ ]", METRICS_TEXT, re.M) is not None or \
        f"# TYPE {series} " in METRICS_TEXT


def test_the_adapter_serves_the_metric_the_hpa_reads_from_a_series_the_service_exports():
    values = documents(DEPLOY / "prometheus-adapter" / "values.yaml")[0]
    rules = values["rules"]["custom"]
    hpa_metrics = [m["pods"]["metric"]["name"] for m in by_kind("HorizontalPodAutoscaler")["spec"]["metrics"]
                   if m["type"] == "Pods"]
    assert hpa_metrics
    for name in hpa_metrics:
        rule = next((r for r in rules if r["name"]["as"] == name), None)
        assert rule is not None, f"no adapter rule serves {name}"
        series = re.match(r"\s*(\w+)", rule["seriesQuery"]).group(1)
        assert re.search(rule["name"]["matches"], series)
        assert exported(series), f"the service exports no {series}"
        assert {"<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"} <= set(re.findall(r"<<\.\w+>>",
                                                                                      rule["metricsQuery"]))
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def test_the_keda_query_reads_a_series_the_service_exports():
    query = next(t for t in by_kind("ScaledObject")["spec"]["triggers"] if t["type"] == "prometheus")
    for series in re.findall(r"\b(enet_serve_\w+)", query["metadata"]["query"]):
        assert exported(series), series
