"""The Helm chart (k8s/triton-cascade) linted and validated offline: every value set is linted
(``--strict``) and rendered for two Kubernetes versions, the manifests validated with
kubernetes-validate's strict schemas; the ServiceMonitor (a CRD kubernetes-validate has no schema for)
is checked against a schema here. Negative controls show both validations would catch a misspelt field.
"""

from __future__ import annotations

import re

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helm_chart import (
    CHART,
    HELM_VERSION_PREFIX,
    KUBE_VERSIONS,
    NAMESPACE,
    VALUE_SETS,
    helm,
    helm_home,  # noqa: F401 -- autouse: helm's folders in a temporary one
    one,
    rendered,
    value_args,
    values,
)

from cascade.contract import DEFAULT_METRICS_PORT

#: Kinds kubernetes-validate has no schema for (custom resources); checked by this file instead.
CRD_KINDS = {"ServiceMonitor"}


def test_helm_is_v3():
    proc = helm("version", "--template", "{{.Version}}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(HELM_VERSION_PREFIX), proc.stdout


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict(name):
    proc = helm("lint", "--strict", str(CHART), *value_args(VALUE_SETS[name]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


# --- Kubernetes schemas --------------------------------------------------------------------------
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_manifests_validate_strict(name, kube):
    checked = set()
    for doc in rendered(name, kube):
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert doc["kind"] in CRD_KINDS, f"no schema for {doc['kind']} {doc['apiVersion']} in k8s {kube}"
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(
                f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid for k8s {kube}: {path}: {exc.message}"
            )
        checked.add(doc["kind"])
    assert {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"} <= checked


def test_strict_validation_rejects_unknown_fields():
    """The negative control: strict validation is on and would catch a misspelt field."""
    deployment = yaml.safe_load(yaml.safe_dump(one(rendered("default"), "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["startupProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
#: The monitoring.coreos.com/v1 ServiceMonitor fields this chart uses, no others allowed.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "labels": _LABELS, "annotations": _LABELS},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                        },
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("name", ["autoscaling", "gpu+autoscaling"])
def test_service_monitor(name):
    docs = rendered(name)
    monitor = one(docs, "ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert service_ports[endpoint["port"]] == DEFAULT_METRICS_PORT
    assert endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == values(name)["serviceMonitor"]["labels"]["release"]
    scrape_s = [int(re.fullmatch(r"(\d+)s", endpoint[k]).group(1)) for k in ("scrapeTimeout", "interval")]
    assert scrape_s[0] <= scrape_s[1]


def test_service_monitor_schema_rejects_unknown_fields():
    monitor = yaml.safe_load(yaml.safe_dump(one(rendered("autoscaling"), "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["targetPort"] = "metrics"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
