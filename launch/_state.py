"""The running graph's state, as the launcher publishes it for the tools (``graph.json``).

The launcher rewrites ``<runtime dir>/graph.json`` (atomically, 0600) whenever a node starts,
becomes ready or exits; ``shmlaunch list`` / ``node list`` / ``topic ...`` / ``stop`` read it.
Node readiness comes from the nodes' heartbeat files (``shmlaunch.nodes._heartbeat``).

The tools trust a graph only as far as they can check it: its directory must pass the
runtime-directory checks (this user's, 0700, not a symlink), ``graph.json`` must parse
strictly, and before a pid is signalled it must hold the graph's launcher lock and have the
start time that graph.json recorded (a pid reused by another process has another).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields

from shmlaunch import _platform as backend
from shmlaunch.transport import SHM_ROOT, RuntimeDir, TransportError, runtime_dir_prefix

STATE_FILE = "graph.json"
LOCK_FILE = "launcher.lock"
MAX_STATE_BYTES = 4 << 20
NODE_STATES = ("starting", "running", "waiting", "exited", "failed")


class BadStateError(ValueError):
    """A graph.json that is not what a launcher writes."""


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
    launcher_start: int = 0  # the launcher's start time in clock ticks since boot (/proc/<pid>/stat field 22)
    run: str = ""  # this run's id, as the runtime directory's marker holds it

    def write(self, rd: RuntimeDir) -> None:
        rd.write_atomic(STATE_FILE, json.dumps(asdict(self), indent=1).encode())

    @classmethod
    def read(cls, rd: RuntimeDir) -> GraphState:
        """The state a launcher wrote; BadStateError (one line) for anything else."""
        try:
            doc = json.loads(rd.read_bytes(STATE_FILE, MAX_STATE_BYTES))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadStateError(f"{rd.path / STATE_FILE}: {exc}") from None
        return cls.from_json(doc, str(rd.path / STATE_FILE))

    @classmethod
    def from_json(cls, doc, where: str) -> GraphState:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise BadStateError(f"{where}: {what}")

        def whole(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        need(isinstance(doc, dict), "not a JSON object")
        types = {"name": str, "file": str, "runtime_dir": str, "launcher_pid": int, "started_ns": int, "nodes": dict,
                 "launcher_start": int, "run": str}
        need(set(doc) == set(types), f"fields are {sorted(doc)}, expected {sorted(types)}")
        for key, kind in types.items():
            need(isinstance(doc[key], kind) and (kind is not int or whole(doc[key])), f"{key} is {doc[key]!r}, not a {kind.__name__}")
        need(doc["launcher_pid"] > 0, f"launcher_pid {doc['launcher_pid']} is not a pid")
        nodes = {}
        names = {f.name for f in fields(NodeState)}
        for name, n in doc["nodes"].items():
            need(isinstance(n, dict) and set(n) == names, f"node {name!r} is not a node state")
            need(n["pid"] is None or (whole(n["pid"]) and n["pid"] > 0), f"node {name!r} pid {n['pid']!r} is not a pid")
            need(n["state"] in NODE_STATES, f"node {name!r} state {n['state']!r} is unknown")
            need(whole(n["restarts"]) and (n["last_exit"] is None or whole(n["last_exit"])) and n["kind"] in ("python", "cmd"),
                 f"node {name!r} has a bad field")
            nodes[name] = NodeState(**n)
        return cls(**{**doc, "nodes": nodes})


def launcher_alive(rd: RuntimeDir) -> bool:
    """True while a launcher (or its watchdog, briefly) holds the graph's lock."""
    return rd.is_locked(LOCK_FILE)


def is_launcher(state: GraphState, rd: RuntimeDir) -> bool:
    """True if ``state.launcher_pid`` is really this graph's live launcher: the lock is held, the
    process is this user's, and it started when graph.json says the launcher started."""
    info = backend.process_info(state.launcher_pid)
    return (info is not None and launcher_alive(rd) and info.user == backend.USER_ID and state.launcher_start > 0
            and info.start_time == state.launcher_start)


def running_graphs() -> list[GraphState]:
    """Every graph of this user whose launcher is alive, from directories that pass the checks
    (others' directories, symlinks and unreadable states are skipped, never trusted)."""
    out = []
    prefix = runtime_dir_prefix()
    for entry in sorted(os.listdir(SHM_ROOT)):
        if not entry.startswith(prefix):
            continue
        try:
            with RuntimeDir.open(os.path.join(SHM_ROOT, entry)) as rd:
                if launcher_alive(rd):
                    state = GraphState.read(rd)
                    state.runtime_dir = str(rd.path)  # where it was found, whatever the file says
                    out.append(state)
        except (OSError, TransportError, BadStateError):
            continue
    return out


def uptime(started_ns: int) -> str:
    s = int((time.time_ns() - started_ns) / 1e9)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
