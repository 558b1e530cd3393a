"""The CPU container image under test (``make test-image``): run it with podman as the Helm chart's pod runs
(read-only root file system, uid 1000, no capabilities, host network on free ports), wait until Triton is ready,
classify dataset rows over gRPC, and the figures of ``bench/results/image-*.json``.

podman runs rootful with ``.image/containers.conf``, written by ``scripts/image.sh`` (cgroupfs, runc, the
ulimits this machine allows); :func:`podman` points ``$CONTAINERS_CONF`` at it unless the caller set one.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

from cascade.paths import WORK_ROOT
from cascade.results import machine

IMAGE_ENV, BUILD_IMAGE_ENV = "CASCADE_IMAGE", "CASCADE_BUILD_IMAGE"
#: The server's image (Dockerfile.cpu's ``serve`` target) and the init container's (``builder``: ``serve`` plus
#: what ``cascade build`` alone imports), as values-cpu.yaml names them.
DEFAULT_IMAGE = "localhost/triton-cascade:0.1.0-cpu"
DEFAULT_BUILD_IMAGE = "localhost/triton-cascade-build:0.1.0-cpu"
CACHE_DIR = WORK_ROOT / ".image"
#: The serving image's budgets: its unpacked size (decimal GB; what a node's disk holds) and the seconds from
#: `podman run` to Triton's ready endpoint. The compressed size (what a registry holds and a node pulls) is checked
#: against the same limit; the init container's image is measured and recorded beside them, with no budget.
BUDGETS = {"image_size_bytes": 4_000_000_000, "seconds_to_ready": 120.0}
#: The chart's /dev/shm for the cpu profile (values-cpu.yaml shm.sizeLimit).
SHM_SIZE = "1g"


def image_name() -> str:
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def build_image_name() -> str:
    return os.environ.get(BUILD_IMAGE_ENV) or DEFAULT_BUILD_IMAGE


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    conf = CACHE_DIR / "containers.conf"
    if "CONTAINERS_CONF" not in env and conf.is_file():
        env["CONTAINERS_CONF"] = str(conf)
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def image_info(image: str) -> dict:
    """The image's id and size in bytes (unpacked: what ``podman images`` shows), and from ``.image/build.json``,
    where it describes this image, its compressed size (gzip'd layers, as a registry holds them) and build seconds."""
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    out = {"image": image, "image_id": info["Id"], "size_bytes": int(info["Size"])}
    build = CACHE_DIR / "build.json"
    record = json.loads(build.read_text()) if build.is_file() else {}
    mine = next((r for r in record.get("images", []) if r.get("image_id") == info["Id"]), None)
    return out | {
        "compressed_bytes": mine["compressed_bytes"] if mine else None,
        "build_seconds": record.get("build_seconds") if mine else None,
    }


@dataclass
class Container:
    id: str
    http_port: int
    grpc_port: int
    started: float

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def running(self) -> bool:
        proc = podman("inspect", "--format", "{{.State.Running}}", self.id, check=False)
        return proc.stdout.strip() == "true"

    def logs(self, tail: int = 60) -> str:
        proc = podman("logs", "--tail", str(tail), self.id, check=False)
        return proc.stdout + proc.stderr

    def remove(self) -> None:
        podman("rm", "--force", "--time", "10", self.id, check=False, timeout=60)

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds from ``podman run`` until ``/v2/health/ready`` answers 200; raises with the container's log
        when it exits first or ``timeout_s`` passes."""
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() - self.started < timeout_s:
            try:
                with opener.open(url, timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - self.started
            except OSError:
                pass
            if not self.running():
                raise RuntimeError(f"container {self.id[:12]} exited before it was ready:\n{self.logs()}")
            time.sleep(0.5)
        raise RuntimeError(f"container {self.id[:12]} not ready after {timeout_s:.0f} s:\n{self.logs()}")


@dataclass
class Pod:
    """How the chart's pod runs a container, as podman flags: read-only root, ``/tmp`` a tmpfs, ``/dev/shm`` of
    :data:`SHM_SIZE`, ``user``, every capability dropped, no new privileges; host network; ``volumes``: host
    path -> ``target[:ro]``; ``entrypoint`` replaces the image's."""

    user: str = "1000:1000"
    env: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None

    def flags(self) -> list[str]:
        flags = ["--network", "host", "--read-only", "--tmpfs", "/tmp:rw,mode=1777", "--shm-size", SHM_SIZE]
        flags += ["--user", self.user, "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
        flags += [f"--env={key}={value}" for key, value in self.env.items()]
        flags += [f"--volume={host}:{target}" for host, target in self.volumes.items()]
        return flags + ([f"--entrypoint={json.dumps(self.entrypoint)}"] if self.entrypoint is not None else [])

    def start(self, image: str, args: list[str], ports: tuple[int, int, int]) -> Container:
        """``podman run --detach``; ``ports`` (HTTP, gRPC, metrics) are those ``args`` set."""
        started = time.monotonic()
        cid = podman("run", "--detach", *self.flags(), image, *args).stdout.strip()
        return Container(cid, ports[0], ports[1], started)

    def run(self, image: str, args: list[str], timeout: float) -> tuple[float, str]:
        """``podman run --rm`` in the foreground; its seconds and output."""
        t = time.monotonic()
        proc = podman("run", "--rm", *self.flags(), image, *args, timeout=timeout)
        return time.monotonic() - t, proc.stdout + proc.stderr


def classify(grpc_url: str, task: str, texts: list[str], gold: list[int], batch: int = 32) -> dict:
    """Classify ``texts`` over gRPC; the rows answered, accuracy against ``gold`` and the tier mix."""
    from cascade.tasks import load_task
    from cascade_client import CascadeClient

    labels = load_task(task).labels
    answers = []
    start = time.perf_counter()
    with CascadeClient(grpc_url) as client:
        for i in range(0, len(texts), batch):
            answers += client.classify(task, texts[i : i + batch])
    seconds = time.perf_counter() - start
    correct = sum(p.label == labels[g] for p, g in zip(answers, gold, strict=True))
    return {
        "rows_sent": len(texts),
        "rows_answered": sum(p.label in labels for p in answers),
        "accuracy": round(correct / len(texts), 4),
        "tiers": dict(Counter(p.tier_name for p in answers)),
        "degraded": sum(p.degraded for p in answers),
        "seconds": round(seconds, 2),
    }


def machine_info() -> dict:
    """:func:`cascade.results.machine` (cores, CPU model, platform, Python) and ``uname -a``."""
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip()
    return machine() | {"uname": uname or platform.platform()}


def budgets(image: dict, seconds_to_ready: float) -> dict:
    """Each budget with its limit, the measured value and whether it passed; the compressed size is checked
    against the size's limit too, where ``image`` (:func:`image_info`) has it."""
    measured = {"image_size_bytes": image["size_bytes"], "seconds_to_ready": round(seconds_to_ready, 2)}
    limits = dict(BUDGETS)
    if image.get("compressed_bytes"):
        measured["image_compressed_bytes"] = image["compressed_bytes"]
        limits["image_compressed_bytes"] = BUDGETS["image_size_bytes"]
    return {k: {"limit": lim, "value": measured[k], "pass": measured[k] <= lim} for k, lim in limits.items()}
