"""The processes of one run: the nodes (spawned, their output pumped to the printer, reaped,
stopped), the background processes they leave behind, and the watchdog.

Each node runs in a process group of its own, started through the platform backend
(``child_options`` and ``place_child``: on Linux its own session, SIGTERM as its parent-death
signal, CPU affinity and priority set before it starts a thread; on Windows a new process
group inside the launcher's kill-on-close job). On Linux the launcher is a child subreaper:
a node's orphaned descendants become its children, so they are reaped while the graph runs
and stopped with it. Stopping is the one polite stop, grace period, forced stop of
``_stopping``. The watchdog (``_watchdog``) learns each process group as it starts, and stops
them and removes the run's files if the launcher dies.

Each node's output is read by a thread of its own into one queue, which is also what a signal
or a child's exit wakes: the run loop waits on that queue (the same on every system; pipes
cannot be polled on Windows).
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shmlaunch import _platform as backend
from shmlaunch.nodes import ENV_NODE, ENV_START_DIR, NodeLaunch
from shmlaunch.transport import ENV_RUNTIME_DIR

from ._check import node_cwd
from ._printer import Printer
from ._schema import Graph, NodeSpec
from ._stopping import STOP_TIMEOUT, terminate_then_kill

#: The longest the run loop sleeps at once: a signal handler runs at the latest this long after
#: its signal even where a wait cannot be interrupted (Windows).
MAX_WAIT = 0.25
#: How long a node's output may still come in after it exited (its reader thread reaching EOF).
_OUTPUT_GRACE = 0.5


def node_argv_env(spec: NodeSpec, runtime_dir: Path | None, *, deep_check: bool = False) -> tuple[list[str], dict[str, str]]:
    """The command line and environment a node process starts with (``deep_check``: a Python
    node's process that only loads what the node needs, ``shmlaunch check --deep``)."""
    env = dict(os.environ)
    if runtime_dir is not None:
        env[ENV_RUNTIME_DIR] = str(runtime_dir)
    env[ENV_NODE] = spec.name
    env[ENV_START_DIR] = os.getcwd()
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in spec.env.items():
        if key == "PYTHONPATH" and env.get(key):
            value = value + os.pathsep + env[key]
        env[key] = value
    # node modules: beside the launch file (the node's cwd), then where shmlaunch was started, then PYTHONPATH
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p)
    if spec.node_class:
        node = NodeLaunch(spec.name, spec.node_class, spec.params, spec.publish, spec.subscribe, spec.groups, spec.merge,
                          str(runtime_dir) if runtime_dir is not None else None)
        return [sys.executable, "-m", "shmlaunch.nodes", *(["--deep-check"] if deep_check else []), node.to_json()], env
    return list(spec.cmd), env


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen
    pgid: int
    reader: threading.Thread | None = field(default=None, repr=False)


def _read_output(name: str, fd: int, events: queue.SimpleQueue) -> None:
    """A node's output, chunk by chunk, into the queue; (name, b"") at its end."""
    with contextlib.suppress(OSError):
        while data := os.read(fd, 65536):
            events.put((name, data))
    events.put((name, b""))


class Watchdog:
    """The launcher's (or a player's, or a tracer's) end of its watchdog: started in a session of
    its own with a pipe on stdin, told each process group, and ``done`` at a clean end. A tracer's
    (``run_id`` None) withdraws its trace request instead of removing a run."""

    def __init__(self, runtime_dir: str | os.PathLike, run_id: str | None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "shmlaunch.launch._watchdog", str(runtime_dir), run_id or "--trace"],
                                     stdin=subprocess.PIPE, close_fds=True, **backend.detached_options())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tell(self, line: str) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.write(f"{line}\n".encode())
            self.proc.stdin.flush()

    def done(self) -> None:
        """This run cleaned up by itself: the watchdog leaves without touching anything."""
        self.tell("done")
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self.proc.wait()


class Children:
    """The graph's node processes: started, their output pumped to the printer, reaped, stopped.
    ``popen`` makes a node's process (``subprocess.Popen`` unless a test gives another: honcho's
    injectable process constructor)."""

    def __init__(self, graph: Graph, runtime_dir: Path, printer: Printer, say: Callable[[str], None],
                 popen: Callable[..., subprocess.Popen] = subprocess.Popen) -> None:
        self.popen = popen
        self.graph = graph
        self.runtime_dir = runtime_dir
        self.printer = printer
        self.say = say
        self.running: dict[str, _Child] = {}
        self._watchdog: Watchdog | None = None
        # Output chunks (name, bytes) and wake-ups (None: a signal, a child's exit).
        self.events: queue.SimpleQueue = queue.SimpleQueue()

    def wake(self) -> None:
        """Make a waiting ``pump`` return (safe from a signal handler)."""
        self.events.put(None)

    # ----- the watchdog
    def start_watchdog(self, run_id: str) -> None:
        """Start the watchdog for run ``run_id`` (before the first byte of a segment is reserved)."""
        self._watchdog = Watchdog(self.runtime_dir, run_id)

    def _tell_watchdog(self, line: str) -> None:
        if self._watchdog is not None:
            self._watchdog.tell(line)

    # ----- nodes
    def spawn(self, name: str) -> int | None:
        """Start node ``name``; its pid, or None (said why) when it cannot be started."""
        spec = self.graph.nodes[name]
        argv, env = node_argv_env(spec, self.runtime_dir)
        cwd = node_cwd(self.graph, spec)
        if not cwd.is_dir():  # checked before the start; a folder may vanish while the graph runs
            self.say(f"node {name!r}: cannot start: its cwd {cwd} is not a directory")
            return None
        try:
            proc = self.popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, close_fds=True, **backend.child_options(spec.cpus, spec.nice),
            )
            backend.place_child(proc.pid, spec.cpus, spec.nice)
        except OSError as exc:
            self.say(f"node {name!r}: cannot start {argv[0]!r}: {exc.strerror or exc}")
            return None
        child = self.running[name] = _Child(name, proc, proc.pid)
        child.reader = threading.Thread(target=_read_output, args=(name, proc.stdout.fileno(), self.events), daemon=True,
                                        name=f"output of {name}")
        child.reader.start()
        self._tell_watchdog(f"pgid {proc.pid}")
        return proc.pid

    def pump(self, timeout: float | None) -> None:
        """Wait for output, a signal or a child's exit, at most ``timeout`` seconds (and at most
        MAX_WAIT), then print every chunk of output that has come in."""
        wait = MAX_WAIT if timeout is None else min(timeout, MAX_WAIT)
        try:
            item = self.events.get(timeout=wait) if wait > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is not None:
                name, data = item
                if data:
                    self.printer.feed(name, data)
                else:
                    self.printer.flush(name)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return

    def reap(self) -> list[tuple[str, int]]:
        """(name, exit code) of every node that has exited since the last call (orphans reaped too)."""
        backend.reap_orphans(self._known_pids())
        exited = []
        for name, child in list(self.running.items()):
            code = child.proc.poll()
            if code is not None:
                self._drain(child)
                del self.running[name]
                exited.append((name, code))
        return exited

    def _drain(self, child: _Child) -> None:
        """Print what the node wrote before it exited (its reader reaches the end of the pipe,
        unless a process it left behind still holds the pipe open), then close the pipe."""
        if child.reader is not None:
            child.reader.join(_OUTPUT_GRACE)
        self.pump(0)
        self.printer.flush(child.name)
        if not (child.reader and child.reader.is_alive()):
            with contextlib.suppress(OSError):
                child.proc.stdout.close()

    # ----- stopping
    def stop_all(self, on_exit: Callable[[str, int], None]) -> None:
        """Ask every node's process group to stop, force what is left after STOP_TIMEOUT (the
        backend's stop_group); ``on_exit`` hears of each exit; then the same for the background
        processes they left."""
        def send(force: bool) -> None:
            for child in self.running.values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    backend.stop_group(child.pgid, force)

        def wait(seconds: float) -> None:
            self.pump(seconds)
            for name, code in self.reap():
                on_exit(name, code)

        terminate_then_kill(send, lambda: bool(self.running), wait,
                            lambda: self.say(f"still running after {STOP_TIMEOUT:g} s, killing: {', '.join(self.running)}"))

    def _known_pids(self) -> set[int]:
        known = {c.proc.pid for c in self.running.values()}
        if self._watchdog is not None:
            known.add(self._watchdog.pid)
        return known

    def _orphans(self) -> list[int]:
        """Live processes re-parented to this launcher that it did not start (a node's background
        children; Linux only: Windows re-parents nobody)."""
        return backend.adopted_orphans(self._known_pids())

    def stop_orphans(self) -> None:
        def send(force: bool) -> None:
            pids = self._orphans()
            if not force:
                self.say(f"stopping {len(pids)} background process(es) the nodes left: pids {', '.join(map(str, pids))}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    backend.stop_process(pid, force)

        def alive() -> bool:
            backend.reap_orphans(self._known_pids())
            return bool(self._orphans())

        terminate_then_kill(send, alive, time.sleep)

    def close(self) -> None:
        """Leave nothing running (after an unexpected error, forced at once)."""
        for child in self.running.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                backend.stop_group(child.pgid, force=True)
            child.proc.wait()
        with contextlib.suppress(OSError):
            self.stop_orphans()

    def watchdog_done(self) -> None:
        if self._watchdog is not None:
            self._watchdog.done()
