"""The Python backend's shared-memory regions in ``/dev/shm``, and the cleanup of those killed servers leave."""

from __future__ import annotations

import os
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")
#: The Python backend's shared-memory regions (one per stub, 1 MiB or more each).
SHM_PREFIX = "triton_python_backend_shm_region_"


def remove_stale_shm(shm_dir: Path = SHM_DIR, min_age_s: float = 60.0) -> list[str]:
    """Delete the Python backend's shared-memory regions that no live process maps any more.

    A server killed with SIGKILL (or by the OOM killer) cannot unlink its regions. In a pod, ``/dev/shm`` is a
    memory volume that outlives container restarts, so each crash would leak a few MiB of its size limit
    until Triton cannot start. Only regions of this user, older than ``min_age_s`` (a starting server may not
    have mapped its new ones yet) and mapped by no process are removed."""
    if not shm_dir.is_dir():
        return []
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # gone, or another user's process (whose regions are not ours to delete)
            continue
        for line in text.splitlines():
            if SHM_PREFIX in line:
                mapped.add(line.split(SHM_PREFIX, 1)[1].split()[0])
    removed = []
    now = time.time()
    for region in shm_dir.glob(f"{SHM_PREFIX}*"):
        try:
            info = region.stat()
            if (
                info.st_uid == os.getuid()
                and now - info.st_mtime > min_age_s
                and region.name[len(SHM_PREFIX) :] not in mapped
            ):
                region.unlink()
                removed.append(region.name)
        except OSError:
            continue
    return removed
