"""The Helm chart's objects as rendered by a real ``helm``: autoscaling (HPA on the queue time through
the Prometheus adapter, only when enabled), Service and container ports, probes, shared memory and
security settings, the Grafana dashboard (its layout, and the LLM tiers' tokens, cost and saving) and the NOTES
shown after ``helm install``.
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


DASHBOARD = CHART / "dashboards" / "cascade.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_COLUMNS = 24


def _exprs(panel: dict) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


def test_dashboard_panels_are_well_formed():
    """Unique ids, the datasource variable everywhere, gridPos inside the 24 columns and no two panels overlapping,
    one refId per target, balanced parentheses."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    taken: dict[tuple[int, int], int] = {}
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["id"]
        assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), panel["id"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["id"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["y"] >= 0 and grid["w"] > 0 and grid["h"] > 0
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["id"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"panel {panel['id']} overlaps panel {taken[(x, y)]}"
                taken[(x, y)] = panel["id"]
        for expr in _exprs(panel):
            depth = 0
            for char in expr:
                depth += {"(": 1, ")": -1}.get(char, 0)
                assert depth >= 0, expr
            assert depth == 0, expr


def _panels_naming(metric: str) -> list[dict]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [p for p in panels if any(re.search(rf"\b{metric}\b", e) for e in _exprs(p))]


def test_dashboard_llm_tokens_cost_cpu_and_saving():
    """The LLM tiers' row: tokens/s by tier and direction, cost by tier, CPU-seconds/s, remote retries, and the cost
    of all rows on llm_large (rows/s x llm_large's cost per row) against the cascade's, with the saving. The LLM
    metrics have no task label: no ``$task`` filter on them."""
    by_metric = {
        "cascade_llm_tokens_total": "sum by (model, direction) (rate(cascade_llm_tokens_total[",
        "cascade_llm_cost_total": "sum by (model) (rate(cascade_llm_cost_total[",
        "cascade_llm_cpu_seconds_total": "sum by (model) (rate(cascade_llm_cpu_seconds_total[",
        "cascade_llm_remote_retries_total": "sum by (model) (rate(cascade_llm_remote_retries_total[",
    }
    for metric, grouped in by_metric.items():
        panels = _panels_naming(metric)
        assert panels, f"no panel queries {metric}"
        assert any(grouped in e for p in panels for e in _exprs(p)), metric
        assert not any("task" in e for p in panels for e in _exprs(p)), metric
    rows_rate = "sum(rate(cascade_rows_total[5m]))"
    large = '{model="llm_large"}[5m]))'
    per_row = f"sum(rate(cascade_llm_cost_total{large} / (sum(rate(nv_inference_count{large}"
    actual = "sum(rate(cascade_llm_cost_total[5m]))"
    (saving,) = [p for p in _panels_naming("nv_inference_count") if any(rows_rate in e for e in _exprs(p))]
    targets = {t["legendFormat"]: t["expr"] for t in saving["targets"]}
    assert f"{rows_rate} * {per_row}" in targets["all rows on llm_large"]
    assert actual in targets["cascade (LLM tiers)"]
    assert f"{rows_rate} * {per_row}" in targets["saving"] and f" - {actual}" in targets["saving"]


def render_notes(tmp_path: Path, files: tuple[str, ...], sets: tuple[str, ...] = ()) -> str:
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
        *[a for item in sets for a in ("--set", item)],
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


def test_notes_name_the_remote_llm_endpoint_and_its_secret(tmp_path):
    sets = ("remoteLLM.url=https://llm.example.com/v1", "remoteLLM.apiKeySecret.name=llm-key")
    notes = render_notes(tmp_path, (), sets)
    assert "llm_large at https://llm.example.com/v1" in notes
    assert "API key OPENAI_API_KEY from Secret llm-key, key api-key" in notes
    assert "Remote LLM tiers" not in render_notes(tmp_path / "default", ())
