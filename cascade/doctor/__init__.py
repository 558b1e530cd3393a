"""``cascade doctor``: whether this install can serve, checked in seconds, each problem with what to do about it.

The checks are plain functions returning a :class:`Result` (name, ok/info/warn/fail, detail, fix), grouped by
module: :mod:`~cascade.doctor.cpu` (the CPU's flags; llama.cpp's build and 8 tokens, in a subprocess),
:mod:`~cascade.doctor.server` (tritonserver, the Python-backend stub, libpython, NumPy),
:mod:`~cascade.doctor.weights` (every model's packages, sizes and sha256) and :mod:`~cascade.doctor.host` (ports,
``/dev/shm``, threads, recent crash records). Nothing here prints: :mod:`cascade.cli.doctor` does.

:func:`run` runs them all; ``quick=True`` leaves out the two slow ones (the llama.cpp subprocess and the sha256 of
the weights); ``cascade serve`` and ``cascade demo`` run the quick ones and the llama.cpp subprocess before they
start (:func:`preflight`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from cascade.doctor.cpu import check_cpu, check_llama
from cascade.doctor.host import DEFAULT_PORTS, check_ports, check_shm, check_threads, recent_crashes
from cascade.doctor.result import FAIL, INFO, OK, WARN, Result, worst
from cascade.doctor.server import check_libpython, check_numpy, check_stub, check_tritonserver
from cascade.doctor.weights import WEIGHTS, check_weights

__all__ = ["FAIL", "INFO", "OK", "WARN", "Result", "checks", "preflight", "run", "worst"]

Check = Callable[[], Result]


def checks(quick: bool = False, ports: Sequence[tuple[str, int]] | None = DEFAULT_PORTS, host: str = "127.0.0.1"):
    """The checks in the order they print, without the llama.cpp subprocess (see :func:`run`). ``ports``: the
    (option, port) pairs the server will listen on; None leaves the ports out (``cascade demo`` picks free ones)."""
    found: list[tuple[str, Check]] = [
        ("cpu", check_cpu),
        ("tritonserver", check_tritonserver),
        ("python backend stub", check_stub),
        ("libpython", check_libpython),
        ("numpy", check_numpy),
    ]
    found += [(f"weights {w.name}", partial(check_weights, w, hashing=not quick)) for w in WEIGHTS]
    if ports is not None:
        found.append(("ports", partial(check_ports, ports, host)))
    found += [("/dev/shm", check_shm), ("threads", check_threads)]
    return found


def _guarded(name: str, check: Check) -> Result:
    """A check that raises is a failure of that check, not of the doctor."""
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - any error of one check is reported, and the others still run
        return Result(name, FAIL, f"the check itself failed: {type(exc).__name__}: {exc}", "report this as a bug")


def run(
    quick: bool = False,
    ports: Sequence[tuple[str, int]] | None = DEFAULT_PORTS,
    host: str = "127.0.0.1",
    llama: Check | None = None,
) -> list[Result]:
    """Every check's result, in order, then the recent crash records (information). Unless ``quick``, the llama.cpp
    subprocess (``llama``: default :func:`cascade.doctor.cpu.check_llama`) runs beside the other checks, and its
    result prints after the CPU's."""
    selected = checks(quick, ports, host)
    if quick:
        results = [_guarded(name, check) for name, check in selected]
    else:
        with ThreadPoolExecutor(max_workers=1) as pool:
            probe = pool.submit(_guarded, "llama.cpp", llama or check_llama)
            results = [_guarded(name, check) for name, check in selected]
            results.insert(1, probe.result())
    crashes = _guarded("recent crashes", recent_crashes)
    if crashes is not None:
        results.append(crashes)
    return results


def preflight(
    ports: Sequence[tuple[str, int]] | None = DEFAULT_PORTS, host: str = "127.0.0.1", llama: Check | None = None
) -> list[Result]:
    """What ``cascade serve`` and ``cascade demo`` run before they start anything: the quick checks and the
    llama.cpp subprocess (about a second; a build for another CPU dies there, not in the server), no sha256."""
    results = run(quick=True, ports=ports, host=host)
    results.insert(1, _guarded("llama.cpp", llama or check_llama))
    return results
