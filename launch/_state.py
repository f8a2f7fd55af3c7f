"""The running graph's state, as the launcher publishes it for the tools (``graph.json``).

The launcher rewrites ``<runtime dir>/graph.json`` (atomically) whenever a node starts,
becomes ready or exits; ``shmlaunch list`` / ``node list`` / ``topic ...`` read it. Node
readiness comes from the nodes' heartbeat files (``shmlaunch.nodes._heartbeat``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shmlaunch.transport._platform import SHM_ROOT, ByteLock

STATE_FILE = "graph.json"
LOCK_FILE = "launcher.lock"


@dataclass
class NodeState:
    pid: int | None = None
    state: str = "starting"  # starting, running (setup done), waiting (to respawn), exited, failed
    restarts: int = 0
    last_exit: int | None = None
    kind: str = "python"


@dataclass
class GraphState:
    name: str
    file: str
    runtime_dir: str
    launcher_pid: int
    started_ns: int
    nodes: dict[str, NodeState] = field(default_factory=dict)

    def write(self) -> None:
        path = Path(self.runtime_dir) / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def read(cls, runtime_dir: Path) -> GraphState:
        doc = json.loads((Path(runtime_dir) / STATE_FILE).read_text())
        doc["nodes"] = {k: NodeState(**v) for k, v in doc["nodes"].items()}
        return cls(**doc)


def launcher_alive(runtime_dir: Path) -> bool:
    """True while a launcher holds the graph's lock."""
    try:
        fd = os.open(Path(runtime_dir) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return ByteLock(fd, 0).is_held_by_others(exclusive=False)
    finally:
        os.close(fd)


def running_graphs() -> list[GraphState]:
    """Every graph of this user whose launcher is alive."""
    out = []
    for d in sorted(Path(SHM_ROOT).glob(f"shmlaunch-{os.getuid()}-*")):
        if d.is_dir() and (d / STATE_FILE).exists() and launcher_alive(d):
            try:
                out.append(GraphState.read(d))
            except (OSError, ValueError):
                continue
    return out


def uptime(started_ns: int) -> str:
    s = int((time.time_ns() - started_ns) / 1e9)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
