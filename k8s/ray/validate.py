"""Validate the manifests of k8s/ray/ offline (run by ``make helm-lint`` and tests/unit/test_rayjob.py).

    python k8s/ray/validate.py [FILE.yaml ...]     # default: every k8s/ray/*.yaml

- a ``RayJob``: its top level and spec against ``schemas/rayjob-v1.schema.json`` (KubeRay v1.7.0's CRD, made
  strict: unknown fields are errors; see schemas/vendor_crd.py) with jsonschema; its pod templates (head,
  every worker group, the submitter's if any) as real ``v1 PodTemplateSpec`` (wrapped in a ``v1 PodTemplate``)
  with kubernetes-validate ``--strict`` for each Kubernetes version; and a subset of the checks KubeRay's
  operator makes before it creates anything (``ValidateRayJobSpec``/``ValidateRayJobMetadata``/
  ``ValidateRayClusterSpec`` in ray-operator/controllers/ray/utils/validation.go, v1.7.0), which no schema has;
- any other kind (the PVC, the data pod) with kubernetes-validate ``--strict`` for each Kubernetes version.

Exit status 1 and one line per error when something is invalid.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

RAY_DIR = Path(__file__).resolve().parent
SCHEMA_PATH = RAY_DIR / "schemas" / "rayjob-v1.schema.json"
#: The same Kubernetes versions as the Helm chart's checks (Makefile KUBE_VERSIONS, tests/server/helm_chart.py).
KUBE_VERSIONS = ("1.29.0", "1.33.0")
#: KubeRay v1.7.0 rayjob_types.go JobSubmissionMode; the CRD itself has no enum for it.
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
#: KubeRay v1.7.0 utils/constant.go MaxRayJobNameLength (MaxRayClusterNameLength 53 - 6).
MAX_RAYJOB_NAME = 47
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_RAY_START_RESOURCES = ("num-cpus", "num-gpus", "memory", "resources")


@cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _where(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def schema_errors(doc: dict) -> list[str]:
    """The RayJob against the vendored CRD schema (pod templates are only checked to be objects here)."""
    validator = jsonschema.Draft7Validator(schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_where(doc)}: {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(path, template) of each pod template of a RayJob."""
    spec = doc.get("spec") or {}
    cluster = spec.get("rayClusterSpec") or {}
    found = []
    if isinstance((cluster.get("headGroupSpec") or {}).get("template"), dict):
        found.append(("spec.rayClusterSpec.headGroupSpec.template", cluster["headGroupSpec"]["template"]))
    for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
        if isinstance(group, dict) and isinstance(group.get("template"), dict):
            found.append((f"spec.rayClusterSpec.workerGroupSpecs.{i}.template", group["template"]))
    if isinstance(spec.get("submitterPodTemplate"), dict):
        found.append(("spec.submitterPodTemplate", spec["submitterPodTemplate"]))
    return found


def kube_errors(doc: dict, kube: str, where: str | None = None) -> list[str]:
    """One built-in object with kubernetes-validate --strict (its first error, as the CLI reports it)."""
    where = where or _where(doc)
    try:
        kubernetes_validate.validate(doc, kube, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where} (k8s {kube}): {'.'.join(map(str, exc.path)) or '(top)'}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: kubernetes-validate has no schema for {doc.get('apiVersion')} {doc.get('kind')}"]
    return []


def pod_template_errors(doc: dict, kube: str) -> list[str]:
    errors = []
    for path, template in pod_templates(doc):
        wrapped = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "rayjob-pod-template"},
            "template": copy.deepcopy(template),
        }
        errors += kube_errors(wrapped, kube, f"{_where(doc)}: {path} as a v1 PodTemplateSpec")
    return errors


def operator_errors(doc: dict) -> list[str]:
    """Some of KubeRay v1.7.0's own checks of a RayJob (validation.go), for the fields this project uses."""
    spec, errors = doc.get("spec") or {}, []
    name = (doc.get("metadata") or {}).get("name") or ""
    if len(name) > MAX_RAYJOB_NAME or not _DNS1035.match(name):
        errors.append(f"metadata.name {name!r}: a DNS-1035 label of at most {MAX_RAYJOB_NAME} characters")
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        errors.append(f"spec.submissionMode {mode!r}: one of {', '.join(SUBMISSION_MODES)}")
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if isinstance(ttl, int) and ttl > 0 and not spec.get("shutdownAfterJobFinishes"):
        errors.append("spec.ttlSecondsAfterFinished > 0 needs spec.shutdownAfterJobFinishes: true")
    for key, least in (("ttlSecondsAfterFinished", 0), ("backoffLimit", 0), ("activeDeadlineSeconds", 1)):
        if isinstance(spec.get(key), int) and spec[key] < least:
            errors.append(f"spec.{key} {spec[key]}: must be at least {least}")
    cluster = spec.get("rayClusterSpec")
    if not cluster and not spec.get("clusterSelector"):
        errors.append("spec: one of rayClusterSpec or clusterSelector must be set")
    if not isinstance(cluster, dict):
        return errors  # missing, or the schema reports its type
    workers = [g for g in cluster.get("workerGroupSpecs") or [] if isinstance(g, dict)]
    groups = [("head", cluster.get("headGroupSpec") or {})] + [(g.get("groupName", "?"), g) for g in workers]
    for group_name, group in groups:
        template = group.get("template") if isinstance(group.get("template"), dict) else {}
        if not (template.get("spec") or {}).get("containers"):
            errors.append(f"{group_name} group: at least one container (the first is the Ray container)")
        params = group.get("rayStartParams") if isinstance(group.get("rayStartParams"), dict) else {}
        if any(params.get(k) for k in _RAY_START_RESOURCES) and group.get("resources"):
            errors.append(f"{group_name} group: resources in both rayStartParams and resources")
        if "labels" in params:
            errors.append(f"{group_name} group: rayStartParams['labels'] is not supported")
    for group in workers:
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not cluster.get("enableInTreeAutoscaling") and (low is None or high is None):
            errors.append(f"worker group {group.get('groupName')}: minReplicas and maxReplicas without autoscaling")
        elif isinstance(low, int) and isinstance(high, int) and not 0 <= low <= high:
            errors.append(f"worker group {group.get('groupName')}: needs 0 <= minReplicas <= maxReplicas")
    return errors


def rayjob_errors(doc: dict, kube_versions=KUBE_VERSIONS) -> list[str]:
    errors = schema_errors(doc) + [f"{_where(doc)}: {e}" for e in operator_errors(doc)]
    for kube in kube_versions:
        errors += pod_template_errors(doc, kube)
    return errors


def document_errors(doc: dict, kube_versions=KUBE_VERSIONS) -> list[str]:
    if doc.get("apiVersion") == "ray.io/v1" and doc.get("kind") == "RayJob":
        return rayjob_errors(doc, kube_versions)
    return [e for kube in kube_versions for e in kube_errors(doc, kube)]


def file_errors(path: Path, kube_versions=KUBE_VERSIONS) -> list[str]:
    docs = load(path)
    if not docs:
        return [f"{path}: no document"]
    return [f"{path.name}: {e}" for doc in docs for e in document_errors(doc, kube_versions)]


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or sorted(RAY_DIR.glob("*.yaml"))
    failed = False
    for path in paths:
        errors = file_errors(path)
        failed |= bool(errors)
        for error in errors:
            print(error, file=sys.stderr)
        kinds = ", ".join(str(d.get("kind")) for d in load(path))
        print(f"{'FAIL' if errors else 'ok'}  {path} ({kinds}; k8s {', '.join(KUBE_VERSIONS)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
