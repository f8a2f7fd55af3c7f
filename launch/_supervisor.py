"""What happens to the graph when a node exits: respawn, give up, or stop everything.

Pure decisions over time, no processes: the launcher reports starts and exits with the
time they happened and asks what is due, so tests can replay any history of events.

Rules:
- a node whose Python setup failed (exit 3) or whose config is bad (exit 2) is never
  respawned: the graph stops with exit code 1 (a graph that cannot start is misconfigured);
- a ``required`` node's exit stops the graph: exit code 0 if it exited 0, else 1;
- a node with ``respawn`` comes back after ``delay * 2**(restarts)`` seconds (at most
  MAX_BACKOFF), up to ``max`` times; past that it is given up (the graph's code becomes 1);
- when no node runs and none is due to start, the graph ends: 0 if nothing failed.
"""

from __future__ import annotations

from dataclasses import dataclass

from shmlaunch.nodes import EXIT_BAD_CONFIG, EXIT_SETUP_FAILED

from ._schema import NodeSpec
from ._state import NodeState

MAX_BACKOFF = 30.0


#: What a node's death by these signals usually means, for the person reading the log.
SIGNAL_MEANINGS = {
    "SIGILL": "the CPU lacks an instruction this node's native code needs (e.g. MediaPipe 1.x on an ARMv8.0 core: use runtime: litert)",
    "SIGABRT": "native code aborted (its last lines above say why)",
    "SIGSEGV": "native code crashed (a bad memory access)",
    "SIGBUS": "a shared-memory segment was truncated under it, or memory ran out",
    "SIGFPE": "native code divided by zero",
}


def describe_exit(code: int) -> str:
    """'exit code 3', or 'killed by SIGILL (exit code 132): the CPU lacks ...' for a negative
    Popen returncode (what the signal usually means, where that is worth saying)."""
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        meaning = SIGNAL_MEANINGS.get(name)
        return f"killed by {name} (exit code {128 - code})" + (f": {meaning}" if meaning else "")
    return f"exit code {code}"


@dataclass
class Schedule:
    """The supervisor's plan for one node; its published facts (restarts, last exit) are the
    node's one ``NodeState``, the record graph.json carries (nothing is copied between the two)."""

    spec: NodeSpec
    status: NodeState
    running: bool = False
    next_start: float | None = None  # when to start it; None: not scheduled


class Supervisor:
    def __init__(self, specs: list[NodeSpec], now: float, statuses: dict[str, NodeState] | None = None) -> None:
        statuses = statuses if statuses is not None else {}
        self.nodes = {s.name: Schedule(s, statuses.setdefault(s.name, NodeState()), next_start=now) for s in specs}
        self.stop_reason: str | None = None
        self.failed = False

    # ----- queries
    def due(self, now: float) -> list[str]:
        """Nodes to start now."""
        if self.stop_reason is not None:
            return []
        return [n for n, st in self.nodes.items() if not st.running and st.next_start is not None and st.next_start <= now]

    def next_deadline(self) -> float | None:
        times = [st.next_start for st in self.nodes.values() if not st.running and st.next_start is not None]
        return min(times) if times else None

    def finished(self) -> bool:
        """Nothing runs and nothing will: the graph is over."""
        return all(not st.running and st.next_start is None for st in self.nodes.values())

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    def exit_code(self) -> int:
        return 1 if self.failed else 0

    # ----- events
    def started(self, name: str) -> None:
        st = self.nodes[name]
        st.running = True
        st.next_start = None

    def request_stop(self, reason: str, failed: bool = False) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.failed = self.failed or failed

    def exited(self, name: str, code: int, now: float) -> str:
        """Record that ``name`` exited with ``code`` (negative: killed by that signal); return
        a one-line account of the exit and of what happens next."""
        st = self.nodes[name]
        st.running = False
        st.status.last_exit = code
        what = f"node {name!r} exited ({describe_exit(code)})"
        if self.stopping:
            return what
        spec = st.spec
        if spec.node_class and code in (EXIT_SETUP_FAILED, EXIT_BAD_CONFIG):
            self.request_stop(f"node {name!r} could not start", failed=True)
            return f"{what}: it could not start, so the graph stops"
        if spec.required:
            self.request_stop(f"required node {name!r} exited", failed=code != 0)
            return f"{what}: it is required, so the graph stops"
        if st.status.restarts < spec.respawn_max:
            delay = min(spec.respawn_delay * 2**st.status.restarts, MAX_BACKOFF)
            st.status.restarts += 1
            st.next_start = now + delay
            return f"{what}: respawn {st.status.restarts} of {spec.respawn_max} in {delay:g} s"
        if code != 0:
            self.failed = True
        if spec.respawn_max:
            return f"{what}: gave up after {spec.respawn_max} respawns"
        return what
