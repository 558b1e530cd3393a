"""The Helm chart's server container: its arguments against ``cascade.server.launcher.server_command`` and the
model repository's profile, each value set's repository, GPUs, credentials and secrets (the remote LLM tiers' API key
from a Secret only), and a real ``tritonserver`` (the nvidia-pytriton wheel's) run with the rendered arguments against
an empty repository.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
from helm_chart import (
    DEFAULT_API_KEY_ENV,
    GPU_RESOURCE,
    KUBE_VERSIONS,
    LLM_LARGE_URL_ENV,
    LLM_SMALL_URL_ENV,
    RESTRICTED_KEY_REF,
    VALUE_SETS,
    documents,
    helm_home,  # noqa: F401 -- autouse: helm's folders in a temporary one
    kinds,
    one,
    rendered,
    repository_path,
    server_container,
    template,
    values,
)

from cascade.contract import LLM_THREADS_ENV
from cascade.server.launcher import (
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
    docs = documents(proc)
    container = server_container(docs)
    assert container["args"][0] == "--model-repository=gs://bucket/cascade/gpu"
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "object-store-credentials")
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == f"{mount['mountPath']}/key.json"


@pytest.mark.parametrize("name", [n for n in VALUE_SETS if values(n)["profile"] == "gpu"])
def test_the_tensorrt_engine_cache_is_on_a_writable_mount(name):
    """The GPU profile's ONNX models cache their TensorRT engines (cascade.repository.gpu_profile); the root filesystem
    is
    read-only, so the cache path must lie on a writable mount of the server container."""
    from cascade.repository.gpu_profile import TRT_PARAMETERS

    container = server_container(rendered(name))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    cache_path = PurePosixPath(TRT_PARAMETERS["trt_engine_cache_path"])
    writable = [PurePosixPath(m["mountPath"]) for m in container["volumeMounts"] if not m.get("readOnly")]
    assert any(cache_path.is_relative_to(mount) for mount in writable), (str(cache_path), writable)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_llm_threads_env_only_when_set(name):
    """``llm.threads`` becomes CASCADE_LLM_THREADS on the Triton container; unset, the models size themselves."""
    assert LLM_THREADS_ENV not in {e["name"] for e in server_container(rendered(name))["env"]}
    proc = template(VALUE_SETS[name], sets=("llm.threads=3",))
    docs = documents(proc)
    assert {"name": LLM_THREADS_ENV, "value": "3"} in server_container(docs)["env"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    for init in pod.get("initContainers", []):
        assert LLM_THREADS_ENV not in {e["name"] for e in init["env"]}


REMOTE_LLM = (
    "remoteLLM.url=https://llm.example.com/v1",
    "remoteLLM.smallUrl=http://vllm.ml.svc:8000",
    "remoteLLM.apiKeySecret.name=llm-key",
)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_remote_llm_endpoint_and_a_key_only_from_a_secret(name):
    """``remoteLLM``: the endpoint URLs as CASCADE_LLM_{LARGE,SMALL}_URL, the API key as ``apiKeyEnv`` from a
    ``secretKeyRef``, never a literal value; the chart makes no Secret. Off by default."""
    remote_envs = {LLM_LARGE_URL_ENV, LLM_SMALL_URL_ENV, DEFAULT_API_KEY_ENV}
    assert not remote_envs & {e["name"] for e in server_container(rendered(name))["env"]}
    docs = documents(template(VALUE_SETS[name], sets=REMOTE_LLM))
    container = server_container(docs)
    env = {e["name"]: e for e in container["env"]}
    assert env[LLM_LARGE_URL_ENV] == {"name": LLM_LARGE_URL_ENV, "value": "https://llm.example.com/v1"}
    assert env[LLM_SMALL_URL_ENV] == {"name": LLM_SMALL_URL_ENV, "value": "http://vllm.ml.svc:8000"}
    assert env[DEFAULT_API_KEY_ENV] == {
        "name": DEFAULT_API_KEY_ENV,
        "valueFrom": {"secretKeyRef": {"name": "llm-key", "key": "api-key"}},
    }
    assert "Secret" not in kinds(docs), "the key's Secret is the user's, created with kubectl"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    for init in pod.get("initContainers", []):
        assert not remote_envs & {e["name"] for e in init["env"]}
    kubernetes_validate.validate(one(docs, "Deployment"), KUBE_VERSIONS[-1], strict=True)


def test_remote_llm_key_variable_and_secret_key_are_values():
    """Another key variable (the models' ``api_key_env``) and Secret key; a URL alone sets no key variable."""
    sets = ("remoteLLM.apiKeyEnv=VLLM_API_KEY", "remoteLLM.apiKeySecret.name=vllm", "remoteLLM.apiKeySecret.key=token")
    env = {e["name"]: e for e in server_container(documents(template(sets=sets)))["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "vllm", "key": "token"}}
    assert "value" not in env["VLLM_API_KEY"] and DEFAULT_API_KEY_ENV not in env
    assert LLM_LARGE_URL_ENV not in env, "no URL: the repository's own"
    env = {e["name"]: e for e in server_container(documents(template(sets=REMOTE_LLM[:1])))["env"]}
    assert LLM_LARGE_URL_ENV in env and DEFAULT_API_KEY_ENV not in env and LLM_SMALL_URL_ENV not in env


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
    container = server_container(documents(proc))
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
