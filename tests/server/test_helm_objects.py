"""The Helm chart's objects as rendered by a real ``helm``: autoscaling (HPA on the queue time through
the Prometheus adapter, only when enabled), Service and container ports, probes, shared memory and
security settings, the Grafana dashboard and the NOTES shown after ``helm install``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from helm_chart import (
    CHART,
    NAMESPACE,
    PORTS,
    RELEASE,
    VALUE_SETS,
    documents,
    helm,
    helm_home,  # noqa: F401 -- autouse: helm's folders in a temporary one
    kinds,
    one,
    rendered,
    repository_path,
    server_container,
    template,
    values,
)

from cascade.contract import DEFAULT_GRPC_PORT


@pytest.mark.parametrize("name", ["default", "gpu", "cpu"])
def test_no_autoscaling_objects_unless_enabled(name):
    present = kinds(rendered(name))
    assert not {"HorizontalPodAutoscaler", "ServiceMonitor", "ConfigMap"} & present.keys()
    assert one(rendered(name), "Deployment")["spec"]["replicas"] == values(name)["replicaCount"]


@pytest.mark.parametrize("name", ["autoscaling", "gpu+autoscaling"])
def test_hpa_on_queue_time_through_prometheus_adapter(name):
    docs, vals = rendered(name), values(name)["autoscaling"]
    deployment, hpa = one(docs, "Deployment"), one(docs, "HorizontalPodAutoscaler")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (vals["minReplicas"], vals["maxReplicas"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == vals["metricName"]
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": str(vals["targetAverageQueueTimeMs"])}
    adapter = one(docs, "ConfigMap")
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == vals["metricName"]
    series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"]).group(0)
    assert series == "nv_inference_queue_duration_us" and re.fullmatch(rule["name"]["matches"], series)
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    for needed in (
        "nv_inference_queue_duration_us",
        "cascade_queue_seconds_sum",  # the wait in the gates' lanes
        "nv_inference_request_success",
        "<<.LabelMatchers>>",
        "<<.GroupBy>>",
    ):
        assert needed in rule["metricsQuery"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_service_and_container_ports(name):
    docs = rendered(name)
    service = one(docs, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == PORTS
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {n: n for n in PORTS}
    container = server_container(docs)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == PORTS
    assert (
        service["spec"]["selector"].items() <= one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )


@pytest.mark.parametrize("name", VALUE_SETS)
def test_probes_shm_and_security(name):
    docs, vals = rendered(name), values(name)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = server_container(docs)
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"].startswith("/v2/health/")
    budget_s = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget_s >= (1800 if vals["profile"] == "gpu" else 300), "too short for engines to load"
    assert one(docs, "Deployment")["spec"]["progressDeadlineSeconds"] > budget_s
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": vals["shm"]["sizeLimit"]}
    assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= one(docs, "Service")["spec"]["selector"].items()


def test_grafana_dashboard_configmap_carries_the_dashboard_file():
    docs = documents(template(sets=("grafanaDashboard.enabled=true",)))
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["triton-cascade.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "cascade.json").read_text())
    assert not [d for d in rendered("default") if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]]


def render_notes(tmp_path: Path, files: tuple[str, ...]) -> str:
    """NOTES.txt as `helm install` prints it: `helm template` leaves NOTES out, so a copy of the
    chart renders it into a ConfigMap."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_test.tpl").write_text('{{- define "notes-test" -}}\n' + notes + "{{- end }}\n")
    (chart / "templates" / "notes-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "notes-test" . | toJson }}\n'
    )
    files = tuple(str(CHART / f) for f in files)
    proc = helm(
        "template",
        RELEASE,
        str(chart),
        "-n",
        NAMESPACE,
        *[a for f in files for a in ("-f", f)],
        "--show-only",
        "templates/notes-test.yaml",
    )
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)["data"]["notes"]


@pytest.mark.parametrize("name", ["cpu", "gpu+autoscaling"])
def test_notes_tell_how_to_reach_grpc_and_run_the_load_test(name, tmp_path):
    notes = render_notes(tmp_path, VALUE_SETS[name])
    service = one(rendered(name), "Service")["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc:{DEFAULT_GRPC_PORT}" in notes
    assert f"port-forward svc/{service} {DEFAULT_GRPC_PORT}:{DEFAULT_GRPC_PORT}" in notes
    assert f"cascade classify --url 127.0.0.1:{DEFAULT_GRPC_PORT}" in notes
    assert "loadtest/" in notes and "Locust" in notes
    assert f"model repository {repository_path(values(name))}" in notes
    if values(name)["autoscaling"]["enabled"]:
        assert "custom.metrics.k8s.io" in notes and f"{service}-prometheus-adapter" in notes
