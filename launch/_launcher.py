"""The launcher: create a graph's topics, start its nodes, supervise them, stop cleanly.

Start: the pre-flight check; the graph's runtime directory, locked for the launcher's life
(a second launch of the same graph is refused; a directory left by a crashed run is flushed);
every topic of the launch file created, with the launcher holding each one's presence lock
(so no writer mistakes a live topic for a stale one); a watchdog process that cleans up if
the launcher itself is killed; then every node, each in its own session and process group,
with SIGTERM as its parent-death signal, its output piped through the one printer.

Stop (SIGINT, SIGTERM, ``--duration``, a required node's exit, the last node's exit):
SIGTERM to every node's process group, SIGKILL to what is left after STOP_TIMEOUT, every
child reaped, the runtime directory removed. Nothing is left behind in processes or /dev/shm.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shmlaunch.nodes._heartbeat import ENV_NODE, HEARTBEAT, ready_file
from shmlaunch.transport import ENV_RUNTIME_DIR, TopicConfig, cleanup, ensure_runtime_dir, ensure_topic, graph_runtime_dir
from shmlaunch.transport._platform import SHM_ROOT, ByteLock

from ._check import check_graph, node_cwd
from ._printer import Printer
from ._schema import Graph, LaunchFileError, NodeSpec
from ._state import LOCK_FILE, GraphState, NodeState
from ._status import StatusView
from ._supervisor import Supervisor
from ._systemd import notify, watchdog_interval

#: Seconds between SIGTERM and SIGKILL when stopping nodes.
STOP_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1
_MIB = 1 << 20


class GraphRunningError(RuntimeError):
    """The graph is already running under another launcher."""


class NoRoomError(RuntimeError):
    """/dev/shm cannot hold the graph's topics (checked before anything is created)."""


def _child_setup(parent_pid: int, cpus: tuple[int, ...] | None, nice: int | None) -> None:
    """Runs in the child between fork and exec. Affinity and priority are set here, before the
    node starts any thread, so every thread it makes (MediaPipe's, OpenCV's) inherits them."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the launcher died before prctl: do not outlive it
        os._exit(1)
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:  # the pre-flight check makes this rare (a cpuset changed since): say it and stop
        os.write(2, f"cannot set cpus {list(cpus or [])} / nice {nice}: {exc.strerror}\n".encode())
        os._exit(126)


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen
    pgid: int


class Launcher:
    """Runs one graph until it stops; ``run()`` returns the exit code (0 = clean)."""

    def __init__(self, graph: Graph, printer: Printer | None = None, *, duration: float | None = None,
                 runtime_dir: str | Path | None = None, clock=time.monotonic, status: bool | None = None) -> None:
        self.graph = graph
        self.printer = printer or Printer(list(graph.nodes))
        self.duration = duration
        self.runtime_dir = Path(runtime_dir) if runtime_dir else graph_runtime_dir(graph.name)
        self.clock = clock
        self.children: dict[str, _Child] = {}
        self._segments = []
        self._lock_fd: int | None = None
        self._watchdog: subprocess.Popen | None = None
        self.state = GraphState(graph.name, str(Path(graph.file).resolve()), str(self.runtime_dir), os.getpid(), time.time_ns(),
                                {n: NodeState(kind="python" if s.node_class else "cmd") for n, s in graph.nodes.items()})
        self._ready_sent = False
        self._watchdog_every = watchdog_interval()
        self._next_keepalive = 0.0
        show = self.printer.colour if status is None else status
        self.status = StatusView(self.printer, self.runtime_dir, graph) if show else None

    def say(self, text: str) -> None:
        self.printer.line("shmlaunch", text)

    # ----- start
    def _prepare_runtime_dir(self) -> None:
        rt = self.runtime_dir
        if rt.exists():
            fd = os.open(rt / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600) if rt.is_dir() else None
            if fd is not None:
                lock = ByteLock(fd, 0)
                busy = not lock.try_exclusive()
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                if busy:
                    raise GraphRunningError(f"graph {self.graph.name!r} is already running (launcher pid {pid or '?'}, {rt})")
            self.say(f"flushing {rt}, left by a run that did not stop cleanly")
            cleanup(rt)
        self._check_room()
        ensure_runtime_dir(rt)
        self._lock_fd = os.open(rt / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if not ByteLock(self._lock_fd, 0).try_exclusive():
            raise GraphRunningError(f"graph {self.graph.name!r} is already running ({rt})")
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        for topic in self.graph.topics.values():
            seg = ensure_topic(rt, topic.name, topic.request(), writer=False)
            seg.presence_lock.try_shared()
            self._segments.append(seg)
        self.state.write()

    def _check_room(self) -> None:
        need = sum(TopicConfig(t.capacity, t.pool).segment_size for t in self.graph.topics.values())
        st = os.statvfs(self.runtime_dir.parent if self.runtime_dir.parent.exists() else SHM_ROOT)
        free = st.f_bavail * st.f_frsize
        if need > free:
            raise NoRoomError(
                f"not enough room in {self.runtime_dir.parent} for graph {self.graph.name!r}: its topics need "
                f"{need / _MIB:.1f} MiB, {free / _MIB:.1f} MiB are free ({(need - free) / _MIB:.1f} MiB missing); "
                f"in Docker, /dev/shm is 64 MiB unless you pass --shm-size"
            )

    def _start_watchdog(self) -> None:
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "shmlaunch.launch._watchdog", str(self.runtime_dir)],
            stdin=subprocess.PIPE, start_new_session=True, close_fds=True,
        )

    def _tell_watchdog(self, line: str) -> None:
        if self._watchdog is not None:
            try:
                self._watchdog.stdin.write(f"{line}\n".encode())
                self._watchdog.stdin.flush()
            except OSError:
                pass

    def _argv_env(self, spec: NodeSpec) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        env[ENV_RUNTIME_DIR] = str(self.runtime_dir)
        env[ENV_NODE] = spec.name
        env["PYTHONUNBUFFERED"] = "1"
        for key, value in spec.env.items():
            if key == "PYTHONPATH" and env.get(key):
                value = value + os.pathsep + env[key]
            env[key] = value
        if spec.node_class:
            node = {"name": spec.name, "class": spec.node_class, "params": spec.params, "publish": spec.publish,
                    "subscribe": spec.subscribe, "groups": spec.groups, "merge": spec.merge, "runtime_dir": str(self.runtime_dir)}
            return [sys.executable, "-m", "shmlaunch.nodes", json.dumps(node)], env
        return list(spec.cmd), env

    def _spawn(self, name: str, sel: selectors.BaseSelector) -> bool:
        spec = self.graph.nodes[name]
        argv, env = self._argv_env(spec)
        try:
            proc = subprocess.Popen(
                argv, env=env, cwd=node_cwd(self.graph, spec), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                preexec_fn=functools.partial(_child_setup, os.getpid(), spec.cpus, spec.nice),
            )
        except OSError as exc:
            self.say(f"node {name!r}: cannot start {argv[0]!r}: {exc.strerror or exc}")
            return False
        os.set_blocking(proc.stdout.fileno(), False)
        sel.register(proc.stdout, selectors.EVENT_READ, name)
        self.children[name] = _Child(name, proc, proc.pid)
        self._tell_watchdog(f"pgid {proc.pid}")
        node = self.state.nodes[name]
        node.pid = proc.pid
        node.state = "running" if spec.cmd else "starting"  # a command has no setup() to wait for
        ready_file(self.runtime_dir, name).unlink(missing_ok=True)
        self.state.write()
        return True

    # ----- run
    def run(self) -> int:
        errors, warnings = check_graph(self.graph)
        if errors:
            raise LaunchFileError(errors)
        for w in warnings:
            self.say(f"warning: {w}")
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        old_wakeup = signal.set_wakeup_fd(wfd)
        sup = Supervisor(list(self.graph.nodes.values()), self.clock())

        def on_stop(signum, _frame):
            sup.request_stop(f"received {signal.Signals(signum).name}")

        handlers = {s: signal.signal(s, on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector
        sel = selectors.DefaultSelector()
        sel.register(rfd, selectors.EVENT_READ, None)
        try:
            self._prepare_runtime_dir()
            self._start_watchdog()
            self.say(f"graph {self.graph.name!r}: {len(self.graph.topics)} topics in {self.runtime_dir}, "
                     f"starting {len(self.graph.nodes)} nodes")
            end = None if self.duration is None else self.clock() + self.duration
            while not sup.stopping and not sup.finished():
                now = self.clock()
                for name in sup.due(now):
                    spawned = self._spawn(name, sel)
                    sup.started(name)
                    if not spawned:
                        self.say(sup.exited(name, 127, now))  # as a shell reports "command not found"
                deadlines = [t for t in (sup.next_deadline(), end, self._next_housekeeping()) if t is not None]
                timeout = max(min(deadlines) - self.clock(), 0.0) if deadlines else None
                self._pump(sel, timeout, rfd)
                self._reap(sup)
                self._housekeeping()
                if end is not None and self.clock() >= end and not sup.stopping:
                    sup.request_stop(f"ran for {self.duration:g} s")
            if sup.stop_reason:
                self.say(f"stopping: {sup.stop_reason}")
            notify("STOPPING=1")
            self._stop_all(sel, rfd, sup)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            signal.set_wakeup_fd(old_wakeup)
            self._cleanup(sel, rfd, wfd)
        code = sup.exit_code()
        self.say(f"graph {self.graph.name!r} stopped, exit code {code}")
        return code

    def _pump(self, sel: selectors.BaseSelector, timeout: float | None, rfd: int) -> None:
        """Wait for output, a signal or a child's exit (SIGCHLD), at most ``timeout`` seconds."""
        for key, _ in sel.select(timeout):
            if key.data is None:
                try:
                    while os.read(rfd, 512):
                        pass
                except BlockingIOError:
                    pass
                continue
            name = key.data
            try:
                data = key.fileobj.read(65536)
            except (BlockingIOError, ValueError):
                continue
            if data:
                self.printer.feed(name, data)
            else:
                sel.unregister(key.fileobj)
                self.printer.flush(name)

    def _reap(self, sup: Supervisor) -> None:
        for name, child in list(self.children.items()):
            code = child.proc.poll()
            if code is None:
                continue
            self._drain(child)
            del self.children[name]
            self.say(sup.exited(name, code, self.clock()))
            node = self.state.nodes[name]
            node.last_exit, node.restarts = code, sup.nodes[name].restarts
            node.state = "waiting" if sup.nodes[name].next_start is not None else ("exited" if code == 0 else "failed")
            self._write_state()

    def _write_state(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):  # the runtime directory is being removed
                self.state.write()

    def _next_housekeeping(self) -> float | None:
        """When readiness, keep-alives or the status view next need a look."""
        times = []
        if not self._ready_sent:
            times.append(self.clock() + 0.2)
        if self._watchdog_every:
            times.append(self._next_keepalive)
        if self.status:
            times.append(self.status.next_refresh)
        return min(times) if times else None

    def _housekeeping(self) -> None:
        now = self.clock()
        changed = False
        fresh = True
        for name, node in self.state.nodes.items():
            if node.kind != "python" or name not in self.children:
                continue
            try:
                age = time.time() - ready_file(self.runtime_dir, name).stat().st_mtime
            except FileNotFoundError:
                fresh = False
                continue
            fresh = fresh and age < 3 * HEARTBEAT
            if node.state == "starting":
                node.state = "running"
                changed = True
        if changed:
            self._write_state()
        if not self._ready_sent and all(n.state == "running" for n in self.state.nodes.values()):
            self._ready_sent = True
            notify(f"READY=1\nSTATUS=graph {self.graph.name} running, {len(self.children)} nodes\nMAINPID={os.getpid()}")
            self.say(f"all {len(self.children)} nodes are up")
        if self._watchdog_every and now >= self._next_keepalive:
            self._next_keepalive = now + self._watchdog_every
            if fresh and self._ready_sent:
                notify("WATCHDOG=1")
        if self.status and now >= self.status.next_refresh:
            self.status.refresh(self.state, now)

    def _drain(self, child: _Child) -> None:
        out = child.proc.stdout
        if out is None or out.closed:
            return
        try:
            while data := out.read(65536):
                self.printer.feed(child.name, data)
        except (BlockingIOError, ValueError):
            pass
        self.printer.flush(child.name)

    def _stop_all(self, sel: selectors.BaseSelector, rfd: int, sup: Supervisor) -> None:
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
            if not self.children:
                return
            for child in self.children.values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pgid, sig)
            deadline = self.clock() + wait
            while self.children and self.clock() < deadline:
                self._pump(sel, 0.05, rfd)
                self._reap(sup)
            if self.children and sig == signal.SIGTERM:
                self.say(f"still running after {STOP_TIMEOUT:g} s, killing: {', '.join(self.children)}")

    def _cleanup(self, sel: selectors.BaseSelector, rfd: int, wfd: int) -> None:
        for child in self.children.values():  # only after an unexpected error: leave nothing running
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pgid, signal.SIGKILL)
            child.proc.wait()
        sel.close()
        os.close(rfd)
        os.close(wfd)
        if self.status:
            self.status.clear()
        for seg in self._segments:
            seg.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            cleanup(self.runtime_dir)
        if self._watchdog is not None:
            self._tell_watchdog("done")
            self._watchdog.stdin.close()
            self._watchdog.wait()
