"""A busy machine on demand: one core kept busy by a child process, for benchmarks and tests of the slow paths
(users' machines are busy: a slow tier may make answers slower or flagged, never failed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cpu_hog() -> Iterator[int]:
    """One core kept busy by a child Python process spinning ``while True: pass``; yields its pid and stops it by
    that pid afterwards, whatever happened."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it start spinning
        yield proc.pid
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
