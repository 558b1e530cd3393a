"""k8s/ray/ (the KubeRay RayJob running ``cascade filter --engine ray``, its PVC and data pod) validated offline
by k8s/ray/validate.py: the RayJob against KubeRay v1.7.0's CRD schema (made strict), its pod templates and the
built-in objects with kubernetes-validate --strict. Negative controls show each check can fail; the entrypoint
is a ``cascade filter`` command line whose --url is the gRPC Service the Helm chart really renders.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import re
import shlex
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY_DIR = ROOT / "k8s" / "ray"
RAYJOB, PVC, DATA_POD = (RAY_DIR / n for n in ("rayjob-filter.yaml", "pvc.yaml", "data-pod.yaml"))
NAMESPACE = "default"  # where rayjob-filter.yaml's --url expects the chart's release `cascade`


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validate = _module("k8s_ray_validate", RAY_DIR / "validate.py")
vendor = _module("k8s_ray_vendor_crd", RAY_DIR / "schemas" / "vendor_crd.py")
sys.path.append(str(ROOT / "tests" / "server"))
helm_chart = importlib.import_module("helm_chart")  # the chart tests' helpers (real helm, temporary helm home)
helm_home = helm_chart.helm_home  # autouse: helm's folders in a temporary one


def rayjob() -> dict:
    (doc,) = validate.load(RAYJOB)
    return doc


def pod_specs(doc: dict) -> dict[str, dict]:
    cluster = doc["spec"]["rayClusterSpec"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        specs[group["groupName"]] = group["template"]["spec"]
    return specs


def entrypoint_options(doc: dict) -> tuple[list[str], dict[str, str]]:
    """The entrypoint's leading words and its ``--option value`` pairs (every option of this one takes a value)."""
    tokens = shlex.split(doc["spec"]["entrypoint"])
    first = next(i for i, t in enumerate(tokens) if t.startswith("--"))
    words, rest = tokens[:first], tokens[first:]
    assert len(rest) % 2 == 0 and all(t.startswith("--") for t in rest[::2]), rest
    options = dict(zip(rest[::2], rest[1::2], strict=True))
    assert len(options) == len(rest) // 2, f"an option given twice: {rest}"
    return words, options


# --- the vendored schema -------------------------------------------------------------------------------------
def test_vendored_schema_is_kuberays_crd_made_strict():
    schema = validate.schema()
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["x-source"] == vendor.SOURCE and vendor.SOURCE["tag"] == "v1.7.0"
    spec = schema["properties"]["spec"]
    cluster = spec["properties"]["rayClusterSpec"]
    head = cluster["properties"]["headGroupSpec"]
    worker = cluster["properties"]["workerGroupSpecs"]["items"]
    for node in (schema, spec, cluster, head, worker):
        assert node["additionalProperties"] is False
    assert head["properties"]["rayStartParams"]["additionalProperties"] == {"type": "string"}
    assert worker["required"] == ["groupName", "maxReplicas", "minReplicas", "template"]
    for template in (head["properties"]["template"], worker["properties"]["template"]):
        assert template == vendor.POD_TEMPLATE  # checked by kubernetes-validate instead
    assert "status" not in schema["properties"] and "description" not in json.dumps(schema)


def test_vendor_conversion():
    crd_node = {
        "type": "object",
        "description": "dropped",
        "properties": {
            "port": {"x-kubernetes-int-or-string": True, "type": "string"},
            "n": {"type": "integer", "format": "int32", "nullable": True},
            "free": {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    out = vendor.convert(crd_node)
    assert out["additionalProperties"] is False and "description" not in out
    props = out["properties"]
    assert props["port"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert props["n"]["type"] == ["integer", "null"] and props["n"]["maximum"] == 2**31 - 1
    assert "additionalProperties" not in props["free"]
    assert props["labels"]["additionalProperties"] == {"type": "string"}


# --- the manifests are valid ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [RAYJOB, PVC, DATA_POD], ids=lambda p: p.name)
def test_manifest_validates(path):
    assert validate.file_errors(path) == []


def test_validate_script_covers_every_manifest(capsys):
    assert validate.KUBE_VERSIONS == helm_chart.KUBE_VERSIONS  # the chart's versions
    assert validate.main([]) == 0
    out = capsys.readouterr().out
    for path in RAY_DIR.glob("*.yaml"):
        assert f"ok  {path}" in out


# --- negative controls: each check can fail ------------------------------------------------------------------
def _rename(node: dict, old: str, new: str) -> None:
    node[new] = node.pop(old)


def _cluster(doc):
    return doc["spec"]["rayClusterSpec"]


BROKEN_RAYJOBS = {
    "misspelt spec field": (
        lambda d: _rename(d["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
        "('shutdownAfterJobFinish' was unexpected)",
    ),
    "misspelt head field": (
        lambda d: _rename(_cluster(d)["headGroupSpec"], "rayStartParams", "rayStartParam"),
        "('rayStartParam' was unexpected)",
    ),
    "misspelt worker field": (
        lambda d: _rename(_cluster(d)["workerGroupSpecs"][0], "maxReplicas", "maxReplica"),
        "('maxReplica' was unexpected)",
    ),
    "string ttl": (lambda d: d["spec"].update(ttlSecondsAfterFinished="600"), "is not of type 'integer'"),
    "int rayStartParams value": (
        lambda d: _cluster(d)["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
        "is not of type 'string'",
    ),
    "wrong apiVersion": (lambda d: d.update(apiVersion="ray.io/v1alpha2"), "'ray.io/v1' was expected"),
    "unknown pod template field": (
        lambda d: _rename(
            _cluster(d)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0], "volumeMounts", "volumeMount"
        ),
        "workerGroupSpecs.0.template as a v1 PodTemplateSpec (k8s 1.29.0): template.spec.containers.0: "
        "Additional properties are not allowed ('volumeMount' was unexpected)",
    ),
    "wrong type in pod template": (
        lambda d: _cluster(d)["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][0].update(
            containerPort="6379"
        ),
        "headGroupSpec.template as a v1 PodTemplateSpec (k8s 1.33.0): template.spec.containers.0.ports.0."
        "containerPort: '6379' is not of type 'integer'",
    ),
    "ttl without shutdown": (
        lambda d: d["spec"].update(shutdownAfterJobFinishes=False),
        "needs spec.shutdownAfterJobFinishes",
    ),
    "minReplicas above maxReplicas": (
        lambda d: _cluster(d)["workerGroupSpecs"][0].update(minReplicas=3),
        "minReplicas <= maxReplicas",
    ),
    "unknown submissionMode": (lambda d: d["spec"].update(submissionMode="K8sJob"), "spec.submissionMode"),
    "no container": (
        lambda d: _cluster(d)["headGroupSpec"]["template"]["spec"].update(containers=[]),
        "at least one container",
    ),
}


@pytest.mark.parametrize("case", BROKEN_RAYJOBS)
def test_broken_rayjob_is_rejected(case):
    break_it, expected = BROKEN_RAYJOBS[case]
    doc = copy.deepcopy(rayjob())
    break_it(doc)
    errors = validate.rayjob_errors(doc)
    assert any(expected in e for e in errors), errors


def test_broken_pvc_is_rejected():
    (pvc,) = validate.load(PVC)
    typo = copy.deepcopy(pvc)
    _rename(typo["spec"], "accessModes", "accessMode")
    assert any("('accessMode' was unexpected)" in e for e in validate.document_errors(typo))
    wrong_type = copy.deepcopy(pvc)
    wrong_type["spec"]["accessModes"] = "ReadWriteMany"
    assert any("is not of type 'array'" in e for e in validate.document_errors(wrong_type))


# --- what the job needs ----------------------------------------------------------------------------------------
def test_rayjob_runs_on_a_shared_volume_and_cleans_up():
    doc = rayjob()
    spec = doc["spec"]
    assert spec["submissionMode"] == "K8sJobMode" and spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["backoffLimit"] >= 0
    (pvc,) = validate.load(PVC)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # head and workers on different nodes write OUT.parts/
    images = set()
    for group, pod in pod_specs(doc).items():
        ray = pod["containers"][0]  # KubeRay's Ray container is the first
        images.add(ray["image"])
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(ray["resources"][kind]), (group, kind)
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        mounts = {m["mountPath"]: m["name"] for m in ray["volumeMounts"]}
        assert claims.get(mounts.get("/data")) == pvc["metadata"]["name"], group
    assert len(images) == 1, images


def test_ray_version_is_the_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    pins = [m.group(1) for req in extras.get("ray", []) if (m := re.fullmatch(r"ray(?:\[[^\]]*\])?==(\S+)", req))]
    assert pins, "pyproject.toml's `ray` extra pins no ray release"
    assert rayjob()["spec"]["rayClusterSpec"]["rayVersion"] == pins[0]


def test_entrypoint_is_cascade_filter_on_ray():
    words, options = entrypoint_options(rayjob())
    assert words[:2] == ["cascade", "filter"] and len(words) == 3, words
    table = words[2]
    assert table.startswith("/data/") and options["--out"].startswith("/data/")  # on the shared claim
    assert options["--engine"] == "ray" and options["--address"] == "auto"
    assert options["--task"] == "sst2" and int(options["--concurrency"]) >= 1
    assert set(options) == {"--task", "--out", "--engine", "--address", "--url", "--concurrency"}
    from cascade.cli.main import build_parser  # the real parser accepts the command line

    args = build_parser().parse_args(shlex.split(rayjob()["spec"]["entrypoint"])[1:])
    assert args.command == "filter" and args.engine == "ray"


def test_entrypoint_url_is_the_charts_grpc_service():
    assert os.access(helm_chart.HELM, os.X_OK), f"no helm at {helm_chart.HELM}: run `make setup` (k8s/install-tools.sh)"
    proc = helm_chart.helm("template", "cascade", str(helm_chart.CHART), "--namespace", NAMESPACE)
    service = helm_chart.one(helm_chart.documents(proc), "Service")
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["port"] == helm_chart.PORTS["grpc"]
    _, options = entrypoint_options(rayjob())
    urls = options["--url"].split(",")
    assert urls == [f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{grpc['port']}"]
