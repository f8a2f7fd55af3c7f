"""The launcher: create a graph's topics, start its nodes, supervise them, stop cleanly.

Start: the pre-flight check; the graph's runtime directory, checked (ours, 0700, a real
directory, holding only shmlaunch's files) and locked for the launcher's life (a second
launch of the same graph is refused; the files of a run that did not stop cleanly are
flushed, anything else is a refusal); a watchdog process that cleans up if the launcher
itself is killed, started before the first byte of a segment is reserved; every topic of the
launch file created under one registry lock, with the launcher holding each one's presence
lock (so no writer mistakes a live topic for a stale one); then every node, each in its own
process group, its output piped through the one printer. Linux: each node in its own session
with SIGTERM as its parent-death signal, and the launcher a child subreaper (a node's
orphaned background processes become its children, so none outlives the graph). Windows:
every node in the launcher's kill-on-close Job Object (all die with the launcher, however it
dies), asked to stop by its stop event and CTRL_BREAK_EVENT.

This module is the run loop and its housekeeping (readiness, systemd notify and keep-alives,
the status view); the runtime directory is ``_graphdir.py``, the processes ``_children.py``.

Stop (SIGINT, SIGTERM, Windows' Ctrl-Break, ``--duration``, a required node's exit, the last
node's exit, its standard output closed): the polite stop to every node's process group and
every orphan (the backend's: SIGTERM; Windows: the stop event and CTRL_BREAK_EVENT), the forced
one (SIGKILL; TerminateProcess) to what is left after STOP_TIMEOUT, every child reaped, this
run's files removed. Nothing is
left behind in processes or /dev/shm. The launcher's own bookkeeping (the state file, the
status view) never takes the graph down: a failure there is one logged line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from shmlaunch import _platform as backend
from shmlaunch.nodes import HEARTBEAT, heartbeat_age
from shmlaunch.transport import graph_runtime_dir, new_run_id

from ._check import check_graph
from ._children import Children
from ._graphdir import GraphDir, NoRoomError
from ._printer import Printer
from ._schema import Graph, LaunchFileError
from ._state import GraphState, NodeState
from ._status import StatusView
from ._supervisor import Supervisor
from ._systemd import notify, watchdog_interval

#: Open files: a topic handle (its segment, and the mapping's own on Python < 3.13), a node's
#: supervision (its output pipe and process handles), and what any process needs besides.
FDS_PER_TOPIC = 2
FDS_PER_CHILD = 3
FDS_SPARE = 64


class Launcher:
    """Runs one graph until it stops; ``run()`` returns the exit code (0 = clean)."""

    def __init__(self, graph: Graph, printer: Printer | None = None, *, duration: float | None = None,
                 runtime_dir: str | Path | None = None, clock=time.monotonic, status: bool | None = None) -> None:
        self.graph = graph
        self.printer = printer or Printer(list(graph.nodes))
        self.duration = duration
        self.runtime_dir = Path(runtime_dir) if runtime_dir else graph_runtime_dir(graph.name)
        self.clock = clock
        self.run_id = new_run_id()
        self.dir = GraphDir(self.runtime_dir, graph, self.run_id, self.say)
        self.children = Children(graph, self.runtime_dir, self.printer, self.say)
        self.state = GraphState(graph.name, str(Path(graph.file).resolve()), str(self.runtime_dir), os.getpid(), time.time_ns(),
                                {n: NodeState(kind="python" if s.node_class else "cmd") for n, s in graph.nodes.items()},
                                launcher_start=backend.process_start_time(os.getpid()) or 0, run=self.run_id)
        self._ready_sent = False
        self._watchdog_every = watchdog_interval()
        self._next_keepalive = 0.0
        show = self.printer.colour if status is None else status
        self.status = StatusView(self.printer, self.runtime_dir, graph) if show else None

    def say(self, text: str) -> None:
        self.printer.line("shmlaunch", text)

    # ----- run
    def run(self) -> int:
        errors, warnings = check_graph(self.graph)
        if errors:
            raise LaunchFileError(errors)
        self._check_open_files()
        for w in warnings:
            self.say(f"warning: {w}")
        sup = Supervisor(list(self.graph.nodes.values()), self.clock(), self.state.nodes)

        def on_stop(signum, _frame):
            sup.request_stop(f"received {signal.Signals(signum).name}")
            self.children.wake()

        handlers = {s: signal.signal(s, on_stop) for s in backend.STOP_SIGNALS}
        if backend.CHILD_EXIT_SIGNAL is not None:
            handlers[backend.CHILD_EXIT_SIGNAL] = signal.signal(backend.CHILD_EXIT_SIGNAL, lambda *_: self.children.wake())
        # Linux: a node's orphaned background processes are re-parented to us, not to init: at stop
        # they are found and ended too (what escapes only when the launcher itself is killed: README,
        # "Security model"). Windows: every node is in our kill-on-close job, which ends with us.
        backend.become_subreaper()
        stop_listening = backend.listen_for_stop()  # Windows: `shmlaunch stop`'s request, console or not
        try:
            self.dir.claim()
            self.children.start_watchdog(self.run_id)  # before the first byte of a segment is reserved
            for topic in self.dir.create_topics():  # made; the nodes hold them from now on (a handle costs file descriptors)
                topic.close()
            self.dir.write_state(self.state)
            self.say(f"graph {self.graph.name!r}: {len(self.graph.topics)} topics in {self.runtime_dir}, "
                     f"starting {len(self.graph.nodes)} nodes")
            self._loop(sup)
            if sup.stop_reason:
                self.say(f"stopping: {sup.stop_reason}")
            notify("STOPPING=1")
            self.children.stop_all(lambda name, code: self._exited(sup, name, code))
        finally:
            stop_listening()
            for s, h in handlers.items():
                signal.signal(s, h)
            self._cleanup()
        code = sup.exit_code()
        self.say(f"graph {self.graph.name!r} stopped, exit code {code}")
        return code

    def _check_open_files(self) -> None:
        """Raise the open-file limit as far as allowed (children inherit it) and refuse, before
        anything starts, a graph whose launcher or busiest node would still run out."""
        launcher = FDS_SPARE + FDS_PER_TOPIC * len(self.graph.topics) + FDS_PER_CHILD * len(self.graph.nodes)
        busiest = max(((FDS_SPARE + FDS_PER_TOPIC * (len(n.publish) + len(n.subscribe)), name) for name, n in self.graph.nodes.items()),
                      default=(0, ""))
        limit = backend.raise_open_file_limit()
        need, who = max((launcher, "its launcher"), (busiest[0], f"node {busiest[1]!r}"))
        if need > limit:
            raise NoRoomError(f"graph {self.graph.name!r} needs about {need} open files ({who}: {FDS_PER_TOPIC} a topic); the "
                              f"limit is {limit}: raise it (ulimit -n {need}; LimitNOFILE={need} in a systemd unit)")

    def _loop(self, sup: Supervisor) -> None:
        end = None if self.duration is None else self.clock() + self.duration
        while not sup.stopping and not sup.finished():
            now = self.clock()
            for name in sup.due(now):
                pid = self._spawn(name)
                sup.started(name)
                if pid is None:
                    self.say(sup.exited(name, 127, now))  # as a shell reports "command not found"
            deadlines = [t for t in (sup.next_deadline(), end, self._next_housekeeping()) if t is not None]
            self.children.pump(max(min(deadlines) - self.clock(), 0.0) if deadlines else None)
            for name, code in self.children.reap():
                self._exited(sup, name, code)
            self._housekeeping()
            if end is not None and self.clock() >= end and not sup.stopping:
                sup.request_stop(f"ran for {self.duration:g} s")
            if self.printer.broken and not sup.stopping:
                sup.request_stop("its standard output was closed")

    def _spawn(self, name: str) -> int | None:
        self.dir.forget_heartbeat(name)
        pid = self.children.spawn(name)
        if pid is not None:
            node = self.state.nodes[name]
            node.pid = pid
            node.state = "running" if self.graph.nodes[name].cmd else "starting"  # a command has no setup() to wait for
            self.dir.write_state(self.state)
        return pid

    def _exited(self, sup: Supervisor, name: str, code: int) -> None:
        self.say(sup.exited(name, code, self.clock()))
        node = self.state.nodes[name]
        node.state = "waiting" if sup.nodes[name].next_start is not None else ("exited" if code == 0 else "failed")
        self.dir.write_state(self.state)

    # ----- housekeeping: readiness, systemd, the status view
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
        fresh = self._check_heartbeats()
        if not self._ready_sent and all(n.state == "running" for n in self.state.nodes.values()):
            self._ready_sent = True
            notify(f"READY=1\nSTATUS=graph {self.graph.name} running, {len(self.children.running)} nodes\nMAINPID={os.getpid()}")
            self.say(f"all {len(self.children.running)} nodes are up")
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

    def _check_heartbeats(self) -> bool:
        """Mark Python nodes running once they beat; True while every one beats recently."""
        changed = False
        fresh = True
        for name, node in self.state.nodes.items():
            if node.kind != "python" or name not in self.children.running:
                continue
            age = heartbeat_age(self.dir.rd, name)
            if age is None:
                fresh = False
                continue
            fresh = fresh and age < 3 * HEARTBEAT
            if node.state == "starting":
                node.state = "running"
                changed = True
        if changed:
            self.dir.write_state(self.state)
        return fresh

    def _cleanup(self) -> None:
        self.children.close()
        if self.status:
            self.status.clear()
        self.dir.release()
        self.children.watchdog_done()
