"""A node's sign of life to its launcher: ``ready.<node>`` in the runtime directory.

Created once setup() has succeeded, touched again at least every HEARTBEAT seconds while the
node spins. The launcher turns these into ``graph.json`` states and, under systemd, into
READY=1 and WATCHDOG=1. Only nodes started by a launcher (SHMLAUNCH_NODE set) write it; the
file is opened relative to the checked runtime directory (0600, never through a symlink).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from shmlaunch.transport import ENV_RUNTIME_DIR, RuntimeDir, TransportError

HEARTBEAT = 1.0
ENV_NODE = "SHMLAUNCH_NODE"
#: The directory the shmlaunch command was started in (nodes run in their launch file's folder):
#: where a node puts what the user asked for without a path, and where node modules are looked
#: for after the launch file's folder.
ENV_START_DIR = "SHMLAUNCH_START_DIR"


def start_dir() -> Path:
    """The directory the graph was started from (this process's own when not under a launcher)."""
    return Path(os.environ.get(ENV_START_DIR) or os.getcwd())


def ready_name(node: str) -> str:
    """The heartbeat file's name in the runtime directory."""
    return f"ready.{node.replace('/', '.')}"


def beat(node: str) -> None:
    """Mark ``node`` ready and alive, if a launcher started this process as that node."""
    rt = os.environ.get(ENV_RUNTIME_DIR)
    if not rt or os.environ.get(ENV_NODE) != node:
        return
    # the graph is being removed, or /dev/shm is full: the launcher sees a stale heartbeat
    with contextlib.suppress(OSError, TransportError), RuntimeDir.open(rt) as rd:
        rd.touch(ready_name(node))


def heartbeat_age(rd: RuntimeDir, node: str) -> float | None:
    """Seconds since ``node`` last beat in runtime directory ``rd`` (None: it has not, or its file is gone)."""
    try:
        return time.time() - rd.lstat(ready_name(node)).st_mtime
    except OSError:
        return None
