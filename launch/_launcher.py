"""The launcher: create a graph's topics, start its nodes, supervise them, stop cleanly.

Start: the pre-flight check; the graph's runtime directory, checked (ours, 0700, a real
directory, holding only shmlaunch's files) and locked for the launcher's life (a second
launch of the same graph is refused; the files of a run that did not stop cleanly are
flushed, anything else is a refusal); a watchdog process that cleans up if the launcher
itself is killed, started before the first byte of a segment is reserved; every topic of the
launch file created under one registry lock, with the launcher holding each one's presence
lock (so no writer mistakes a live topic for a stale one); then every node, each in its own
session and process group, with SIGTERM as its parent-death signal, its output piped
through the one printer. The launcher is a child subreaper: a node's orphaned background
processes become its children, so none outlives the graph.

Stop (SIGINT, SIGTERM, ``--duration``, a required node's exit, the last node's exit, its
standard output closed): SIGTERM to every node's process group and every orphan, SIGKILL to
what is left after STOP_TIMEOUT, every child reaped, this run's files removed. Nothing is
left behind in processes or /dev/shm. The launcher's own bookkeeping (the state file, the
status view) never takes the graph down: a failure there is one logged line.
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shmlaunch.nodes import ENV_NODE, HEARTBEAT, NodeLaunch, ready_name
from shmlaunch.transport import (
    ENV_RUNTIME_DIR,
    MARKER_FILE,
    SHM_ROOT,
    RuntimeDir,
    Topic,
    backend,
    cleanup,
    graph_runtime_dir,
    new_run_id,
)

from ._check import check_graph, node_cwd
from ._printer import Printer
from ._schema import Graph, LaunchFileError, NodeSpec
from ._state import LOCK_FILE, GraphState, NodeState
from ._status import StatusView
from ._stopping import STOP_TIMEOUT, terminate_then_kill
from ._supervisor import Supervisor
from ._systemd import notify, watchdog_interval

_MIB = 1 << 20
#: How long a new launcher waits for a dead run's watchdog that is removing that run's files.
LOCK_WAIT = 2.0


class GraphRunningError(RuntimeError):
    """The graph is already running under another launcher."""


class NoRoomError(RuntimeError):
    """/dev/shm cannot hold the graph's topics (checked before anything is created)."""


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
        self._topics: list[Topic] = []
        self._rd: RuntimeDir | None = None
        self._lock_fd: int | None = None
        self._watchdog: subprocess.Popen | None = None
        self.run_id = new_run_id()
        self.state = GraphState(graph.name, str(Path(graph.file).resolve()), str(self.runtime_dir), os.getpid(), time.time_ns(),
                                {n: NodeState(kind="python" if s.node_class else "cmd") for n, s in graph.nodes.items()},
                                launcher_start=backend.process_start_time(os.getpid()) or 0, run=self.run_id)
        self._state_error: str | None = None
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
        created = False
        try:
            self._rd = rd = RuntimeDir.open(rt)
        except FileNotFoundError:
            self._check_room()
            self._rd = rd = RuntimeDir.create(rt, self.run_id)
            created = True
        marker = None if created else rd.check_reusable()
        self._lock_fd = rd.lock(LOCK_FILE, LOCK_WAIT)
        if self._lock_fd is None:
            pid = rd.read_bytes(LOCK_FILE, 64).decode(errors="replace").strip()
            raise GraphRunningError(f"graph {self.graph.name!r} is already running (launcher pid {pid or '?'}, {rt})")
        if not created:
            if any(name not in (LOCK_FILE, MARKER_FILE) for name in rd.entries()):
                self.say(f"flushing {rt}, left by a run that did not stop cleanly")
            rd.remove_own_files(keep=(LOCK_FILE,))
            # A directory shmlaunch made is removed at stop, and so is an empty one found under
            # the graph's default name; one the user named with --runtime-dir stays (its files go).
            rd.write_marker(self.run_id, marker["remove_dir"] if marker else rt == graph_runtime_dir(self.graph.name))
            self._check_room()
        os.pwrite(self._lock_fd, f"{os.getpid():<19}\n".encode(), 0)
        self._start_watchdog()  # before the first byte of a segment is reserved
        configs = {t.name: t.config for t in self.graph.topics.values()}
        self._topics = Topic.create_many(configs, runtime_dir=rt, recreate=True) if configs else []
        self._write_state()

    def _check_room(self) -> None:
        need = sum(t.config.segment_size for t in self.graph.topics.values())
        if self._rd is not None:
            free = backend.free_bytes(self._rd.fd)
        else:
            parent = os.open(self.runtime_dir.parent if self.runtime_dir.parent.exists() else SHM_ROOT, os.O_RDONLY | os.O_CLOEXEC)
            try:
                free = backend.free_bytes(parent)
            finally:
                os.close(parent)
        if need > free:
            raise NoRoomError(
                f"not enough room in {self.runtime_dir.parent} for graph {self.graph.name!r}: its topics need "
                f"{need / _MIB:.1f} MiB, {free / _MIB:.1f} MiB are free ({(need - free) / _MIB:.1f} MiB missing); "
                f"in Docker, /dev/shm is 64 MiB unless you pass --shm-size"
            )

    def _start_watchdog(self) -> None:
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "shmlaunch.launch._watchdog", str(self.runtime_dir), self.run_id],
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
            node = NodeLaunch(spec.name, spec.node_class, spec.params, spec.publish, spec.subscribe, spec.groups, spec.merge,
                              str(self.runtime_dir))
            return [sys.executable, "-m", "shmlaunch.nodes", node.to_json()], env
        return list(spec.cmd), env

    def _spawn(self, name: str, sel: selectors.BaseSelector) -> bool:
        spec = self.graph.nodes[name]
        argv, env = self._argv_env(spec)
        cwd = node_cwd(self.graph, spec)
        if not cwd.is_dir():  # checked before the start; a folder may vanish while the graph runs
            self.say(f"node {name!r}: cannot start: its cwd {cwd} is not a directory")
            return False
        try:
            proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                preexec_fn=functools.partial(backend.prepare_child, os.getpid(), spec.cpus, spec.nice),
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
        with contextlib.suppress(OSError):
            self._rd.unlink(ready_name(name))
        self._write_state()
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
        sup = Supervisor(list(self.graph.nodes.values()), self.clock(), self.state.nodes)

        def on_stop(signum, _frame):
            sup.request_stop(f"received {signal.Signals(signum).name}")

        handlers = {s: signal.signal(s, on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector
        sel = selectors.DefaultSelector()
        sel.register(rfd, selectors.EVENT_READ, None)
        # A node's orphaned background processes are re-parented to us, not to init: at stop they
        # are found and ended too (what escapes only when the launcher itself is killed: README,
        # "Security model").
        backend.become_subreaper()
        try:
            self._prepare_runtime_dir()
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
                if self.printer.broken and not sup.stopping:
                    sup.request_stop("its standard output was closed")
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
        self._reap_orphans()
        for name, child in list(self.children.items()):
            code = child.proc.poll()
            if code is None:
                continue
            self._drain(child)
            del self.children[name]
            self.say(sup.exited(name, code, self.clock()))
            node = self.state.nodes[name]
            node.state = "waiting" if sup.nodes[name].next_start is not None else ("exited" if code == 0 else "failed")
            self._write_state()

    def _write_state(self) -> None:
        """Publish graph.json for the tools. Never fatal: a full /dev/shm (or any other failure)
        costs the tools a fresh view, not the graph its life; said once, and once when it recovers."""
        if self._rd is None:
            return
        try:
            self.state.write(self._rd)
        except OSError as exc:
            if self._state_error is None:
                self._state_error = exc.strerror or str(exc)
                self.say(f"warning: cannot update {self.runtime_dir}/graph.json ({self._state_error}); the graph goes on, "
                         f"shmlaunch node list may show an old state")
            return
        if self._state_error is not None:
            self._state_error = None
            self.say(f"{self.runtime_dir}/graph.json is up to date again")

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
                age = time.time() - self._rd.lstat(ready_name(name)).st_mtime
            except OSError:
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
            try:
                self.status.refresh(self.state, now)
            except Exception as exc:  # a view must never take the graph down
                self.say(f"warning: the live status view stopped ({type(exc).__name__}: {exc}); the graph goes on")
                with contextlib.suppress(Exception):
                    self.status.clear()
                self.status = None

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

    def _known_pids(self) -> set[int]:
        known = {c.proc.pid for c in self.children.values()}
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

    def _stop_orphans(self) -> None:
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

    def _stop_all(self, sel: selectors.BaseSelector, rfd: int, sup: Supervisor) -> None:
        def send(sig: int) -> None:
            for child in self.children.values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pgid, sig)

        def wait(seconds: float) -> None:
            self._pump(sel, seconds, rfd)
            self._reap(sup)

        terminate_then_kill(send, lambda: bool(self.children), wait,
                            lambda: self.say(f"still running after {STOP_TIMEOUT:g} s, killing: {', '.join(self.children)}"))

    def _cleanup(self, sel: selectors.BaseSelector, rfd: int, wfd: int) -> None:
        for child in self.children.values():  # only after an unexpected error: leave nothing running
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pgid, signal.SIGKILL)
            child.proc.wait()
        with contextlib.suppress(OSError):
            self._stop_orphans()
        sel.close()
        os.close(rfd)
        os.close(wfd)
        if self.status:
            self.status.clear()
        for topic in self._topics:
            topic.close()
        if self._lock_fd is not None:
            cleanup(self.runtime_dir, run=self.run_id)  # while still holding the launcher lock
            os.close(self._lock_fd)
        if self._rd is not None:
            self._rd.close()
        if self._watchdog is not None:
            self._tell_watchdog("done")
            self._watchdog.stdin.close()
            self._watchdog.wait()
