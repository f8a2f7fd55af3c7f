"""The processes of one run: the nodes (spawned, their output pumped to the printer, reaped,
stopped), the background processes they leave behind, and the watchdog.

Each node runs in its own session and process group, with SIGTERM as its parent-death signal,
its CPU affinity and priority set before it starts a thread (the platform backend's
``child_options`` and ``place_child``). The launcher is a child subreaper: a node's orphaned descendants become
its children, so they are reaped while the graph runs and stopped with it. Stopping is the
one SIGTERM, grace period, SIGKILL of ``_stopping``. The watchdog (``_watchdog``) learns each
process group as it starts, and stops them and removes the run's files if the launcher dies.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shmlaunch.nodes import ENV_NODE, ENV_START_DIR, NodeLaunch
from shmlaunch.transport import ENV_RUNTIME_DIR, backend

from ._check import node_cwd
from ._printer import Printer
from ._schema import Graph, NodeSpec
from ._stopping import STOP_TIMEOUT, terminate_then_kill


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen
    pgid: int


class Children:
    def __init__(self, graph: Graph, runtime_dir: Path, printer: Printer, say: Callable[[str], None]) -> None:
        self.graph = graph
        self.runtime_dir = runtime_dir
        self.printer = printer
        self.say = say
        self.running: dict[str, _Child] = {}
        self._watchdog: subprocess.Popen | None = None
        self.sel = selectors.DefaultSelector()
        # Signals (and SIGCHLD) write a byte here, so one select() waits for output and events alike.
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)

    # ----- the watchdog
    def start_watchdog(self, run_id: str) -> None:
        """Start the watchdog for run ``run_id`` (before the first byte of a segment is reserved)."""
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "shmlaunch.launch._watchdog", str(self.runtime_dir), run_id],
            stdin=subprocess.PIPE, start_new_session=True, close_fds=True,
        )

    def _tell_watchdog(self, line: str) -> None:
        if self._watchdog is not None:
            with contextlib.suppress(OSError):
                self._watchdog.stdin.write(f"{line}\n".encode())
                self._watchdog.stdin.flush()

    # ----- nodes
    def _argv_env(self, spec: NodeSpec) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        env[ENV_RUNTIME_DIR] = str(self.runtime_dir)
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
                              str(self.runtime_dir))
            return [sys.executable, "-m", "shmlaunch.nodes", node.to_json()], env
        return list(spec.cmd), env

    def spawn(self, name: str) -> int | None:
        """Start node ``name``; its pid, or None (said why) when it cannot be started."""
        spec = self.graph.nodes[name]
        argv, env = self._argv_env(spec)
        cwd = node_cwd(self.graph, spec)
        if not cwd.is_dir():  # checked before the start; a folder may vanish while the graph runs
            self.say(f"node {name!r}: cannot start: its cwd {cwd} is not a directory")
            return None
        try:
            proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, close_fds=True, **backend.child_options(spec.cpus, spec.nice),
            )
            backend.place_child(proc.pid, spec.cpus, spec.nice)
        except OSError as exc:
            self.say(f"node {name!r}: cannot start {argv[0]!r}: {exc.strerror or exc}")
            return None
        os.set_blocking(proc.stdout.fileno(), False)
        self.sel.register(proc.stdout, selectors.EVENT_READ, name)
        self.running[name] = _Child(name, proc, proc.pid)
        self._tell_watchdog(f"pgid {proc.pid}")
        return proc.pid

    def pump(self, timeout: float | None) -> None:
        """Wait for output, a signal or a child's exit (SIGCHLD), at most ``timeout`` seconds."""
        for key, _ in self.sel.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wake_r, 512):
                        pass
                continue
            try:
                data = key.fileobj.read(65536)
            except (BlockingIOError, ValueError):
                continue
            if data:
                self.printer.feed(key.data, data)
            else:
                self.sel.unregister(key.fileobj)
                self.printer.flush(key.data)

    def reap(self) -> list[tuple[str, int]]:
        """(name, exit code) of every node that has exited since the last call (orphans reaped too)."""
        self._reap_orphans()
        exited = []
        for name, child in list(self.running.items()):
            code = child.proc.poll()
            if code is not None:
                self._drain(child)
                del self.running[name]
                exited.append((name, code))
        return exited

    def _drain(self, child: _Child) -> None:
        out = child.proc.stdout
        if out is None or out.closed:
            return
        with contextlib.suppress(BlockingIOError, ValueError):
            while data := out.read(65536):
                self.printer.feed(child.name, data)
        self.printer.flush(child.name)

    # ----- stopping
    def stop_all(self, on_exit: Callable[[str, int], None]) -> None:
        """SIGTERM every node's process group, SIGKILL what is left after STOP_TIMEOUT; ``on_exit``
        hears of each exit; then the same for the background processes they left."""
        def send(sig: int) -> None:
            for child in self.running.values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    backend.stop_group(child.pgid, force=sig == signal.SIGKILL)

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

    def _reap_orphans(self) -> None:
        """Reap exited orphans re-parented to us (we are a subreaper), leaving our own Popen
        children to their Popen objects: peek with WNOWAIT, reap only what is not ours."""
        known = self._known_pids()
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in known:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.si_pid, 0)

    def _orphans(self) -> list[int]:
        """Live processes whose parent is this launcher but that it did not start (a node's
        background children, re-parented here). A child cannot be another process by the time
        we signal it: its pid is not reused before we reap it."""
        known = self._known_pids()
        return [pid for pid in backend.child_pids(os.getpid()) if pid not in known]

    def stop_orphans(self) -> None:
        def send(sig: int) -> None:
            pids = self._orphans()
            if sig == signal.SIGTERM:
                self.say(f"stopping {len(pids)} background process(es) the nodes left: pids {', '.join(map(str, pids))}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

        def alive() -> bool:
            self._reap_orphans()
            return bool(self._orphans())

        terminate_then_kill(send, alive, time.sleep)

    def close(self) -> None:
        """Leave nothing running (after an unexpected error, SIGKILL at once), release the pipes,
        and tell the watchdog this run cleaned up by itself."""
        for child in self.running.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                backend.stop_group(child.pgid, force=True)
            child.proc.wait()
        with contextlib.suppress(OSError):
            self.stop_orphans()
        self.sel.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def watchdog_done(self) -> None:
        if self._watchdog is not None:
            self._tell_watchdog("done")
            self._watchdog.stdin.close()
            self._watchdog.wait()
