"""A node's sign of life to its launcher: ``ready.<node>`` in the runtime directory.

Created once setup() has succeeded, touched again at least every HEARTBEAT seconds while the
node spins. The launcher turns these into ``graph.json`` states and, under systemd, into
READY=1 and WATCHDOG=1. Only nodes started by a launcher (SHMLAUNCH_NODE set) write it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from shmlaunch.transport import ENV_RUNTIME_DIR

HEARTBEAT = 1.0
ENV_NODE = "SHMLAUNCH_NODE"


def ready_file(runtime_dir: Path, node: str) -> Path:
    return Path(runtime_dir) / f"ready.{node.replace('/', '.')}"


def beat(node: str) -> None:
    """Mark ``node`` ready and alive, if a launcher started this process as that node."""
    rt = os.environ.get(ENV_RUNTIME_DIR)
    if not rt or os.environ.get(ENV_NODE) != node:
        return
    path = ready_file(Path(rt), node)
    try:
        os.utime(path)
    except FileNotFoundError:
        with contextlib.suppress(OSError):  # the graph is being removed
            path.touch()
