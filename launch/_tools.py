"""The operator's commands: ``shmlaunch list``, ``node list``, ``topic list/echo/hz/stats``, ``stop``.

They work from another terminal while a graph runs, attach as observers (see _introspect),
and say clearly when no graph runs. Exit code 1 when the graph or topic does not exist.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from shmlaunch import _platform as backend
from shmlaunch.transport import ENV_RUNTIME_DIR, Reader, RuntimeDir, Topic, TransportError

from ._bridge_tools import remote_lines
from ._exits import EXIT_FAILED, error
from ._introspect import (
    NoGraphError,
    Sampler,
    add_graph_arguments,
    chosen_graph,
    find_graph,
    find_topic_graph,
    node_rows,
    read_bridge_status,
    summarize,
    table,
    topic_rows,
)
from ._state import BadStateError, GraphState, is_launcher, running_graphs, uptime
from ._stopping import STOP_TIMEOUT

RATE_WINDOW = 1.0


def attach_dir(graph: str | None) -> Path | None:
    """The runtime directory a node started by hand attaches to: the named running graph's; else
    $SHMLAUNCH_RUNTIME_DIR; else the only running graph's; else None (the 'default' graph).
    NoGraphError when the named graph is not running, or when several run and none is named."""
    if graph is None and (os.environ.get(ENV_RUNTIME_DIR) or not running_graphs()):
        return None
    return Path(find_graph(graph).runtime_dir)


def _refused(text: str) -> int:
    return error(text, EXIT_FAILED)


def list_graphs(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="shmlaunch list", description="Running graphs of this user.").parse_args(argv)
    graphs = running_graphs()
    if not graphs:
        print("no graph is running")
        return 0
    rows = [["GRAPH", "LAUNCHER PID", "UPTIME", "NODES UP", "FILE"]]
    for g in graphs:
        up = sum(1 for n in g.nodes.values() if n.state == "running")
        rows.append([g.name, str(g.launcher_pid), uptime(g.started_ns), f"{up}/{len(g.nodes)}", g.file])
    print("\n".join(table(rows)))
    return 0


def _sampled(rows_fn):
    """Rows measured over RATE_WINDOW seconds (rates and CPU need two looks)."""
    sampler = Sampler.start()
    rows_fn(sampler, sampler.when)
    time.sleep(RATE_WINDOW)
    return rows_fn(sampler, time.monotonic())


def node(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="shmlaunch node", description="Nodes of a running graph.")
    ap.add_argument("action", choices=["list"])
    add_graph_arguments(ap)
    ns = ap.parse_args(argv)
    try:
        g = chosen_graph(ns)
    except NoGraphError as exc:
        return _refused(str(exc))
    print(f"graph {g.name!r} (launcher pid {g.launcher_pid}, up {uptime(g.started_ns)})")
    print("\n".join(table(_sampled(lambda sampler, now: node_rows(g, sampler, now)))))
    return 0


def topic(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="shmlaunch topic", description="Topics of a running graph.")
    ap.add_argument("action", choices=["list", "echo", "hz", "stats"])
    ap.add_argument("name", nargs="?", help="topic (echo, hz, stats) or graph (list)")
    ap.add_argument("--graph", help="graph name (default: the only running graph that has the topic)")
    ap.add_argument("-n", "--count", type=int, help="echo/hz: stop after this many messages/reports")
    ap.add_argument("--remote", action="store_true", help="list: the topics other hosts export (as the graph's bridge sees them)")
    ns = ap.parse_args(argv)
    try:
        if ns.action == "list" and ns.remote:
            return _remote(find_graph(ns.name or ns.graph))
        if ns.action == "list":
            g = find_graph(ns.name or ns.graph)
            print(f"graph {g.name!r}")
            print("\n".join(table(_sampled(lambda sampler, now: topic_rows(Path(g.runtime_dir), sampler, now)))))
            return 0
        if not ns.name:
            return _refused(f"topic {ns.action} needs a topic name")
        g = find_topic_graph(ns.name, ns.graph)
        return {"echo": _echo, "hz": _hz, "stats": _stats}[ns.action](Path(g.runtime_dir), ns.name, ns.count)
    except NoGraphError as exc:
        return _refused(str(exc))
    except TransportError as exc:
        return _refused(str(exc))
    except KeyboardInterrupt:
        return 0


def _remote(g: GraphState) -> int:
    status = read_bridge_status(g.runtime_dir)
    if status is None:
        return _refused(f"graph {g.name!r} has no bridge (no 'bridge:' section in {g.file}): it sees no other host")
    print(f"topics other hosts export, as seen from graph {g.name!r} on host {status['host']!r}")
    print("\n".join(remote_lines(status)))
    return 0


def _echo(rt: Path, name: str, count: int | None) -> int:
    reader = Reader(name, runtime_dir=rt, observer=True)
    shown = 0
    while count is None or shown < count:
        msg = reader.receive(timeout=1.0)
        if msg is None:
            if not reader.writer_alive() and reader.statistics().received:
                print("(the writer is gone)")
            continue
        kept = msg.copy()  # hold the slot for one copy, never longer
        msg.release()
        print(summarize(reader, kept, kept.data), flush=True)
        shown += 1
    return 0


def _hz(rt: Path, name: str, count: int | None) -> int:
    with Topic.open(name, runtime_dir=rt) as topic:
        reports = 0
        last = topic.dynamic().latest_seq
        t0 = time.monotonic()
        while count is None or reports < count:
            time.sleep(RATE_WINDOW)
            d = topic.dynamic()
            now = time.monotonic()
            rate = (d.latest_seq - last) / (now - t0)
            print(f"{name}: {rate:.2f} Hz (last seq {d.latest_seq}, writer {'alive' if d.writer_alive else 'gone'})", flush=True)
            last, t0 = d.latest_seq, now
            reports += 1
    return 0


def _stats(rt: Path, name: str, _count: int | None) -> int:
    try:
        with RuntimeDir.open(rt) as rd:
            names = {n.pid: node for node, n in GraphState.read(rd).nodes.items() if n.pid}
    except (OSError, BadStateError):
        names = {}
    with Topic.open(name, runtime_dir=rt) as topic:
        d0 = topic.dynamic()
        time.sleep(RATE_WINDOW)
        d = topic.dynamic()
        rate = (d.latest_seq - d0.latest_seq) / RATE_WINDOW
        writer = (f"pid {d.writer_pid} ({names.get(d.writer_pid, '?')}), generation {d.writer_generation}"
                  if d.writer_alive else "none")
        print(f"topic {name!r}: writer {writer}, last seq {d.latest_seq}, {rate:.1f} Hz, capacity {topic.config.capacity}, "
              f"pool {topic.config.pool}")
    rows = [["READER PID", "NODE", "RECEIVED", "OVERWRITTEN BEFORE READ", "STALE SKIPPED", "LAST SEQ", "BEHIND", "AGE AT READ ms",
             "LAST READ s AGO", "GROUP"]]
    now = time.time_ns()
    for r in d.readers:
        # A group member's gaps are the other members' share: neither missed nor behind.
        rows.append([str(r.pid), names.get(r.pid, "?"), str(r.received), "-" if r.group else str(r.missed), str(r.stale),
                     str(r.last_seq), "-" if r.group else str(max(d.latest_seq - r.last_seq, 0)), f"{r.last_age_ns / 1e6:.2f}",
                     "-" if not r.last_receive_ns else f"{(now - r.last_receive_ns) / 1e9:.1f}", r.group or "-"])
    print("\n".join(table(rows)) if len(rows) > 1 else "no reader is attached")
    return 0


def stop(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="shmlaunch stop",
                                 description="Stop a running graph cleanly (SIGTERM to its launcher; Windows: its stop event).")
    add_graph_arguments(ap)
    ap.add_argument("--timeout", type=float, default=STOP_TIMEOUT + 10, help="seconds to wait for it to finish")
    ns = ap.parse_args(argv)
    try:
        g = chosen_graph(ns)
        with RuntimeDir.open(g.runtime_dir) as rd:
            genuine = is_launcher(g, rd)
    except (NoGraphError, TransportError) as exc:
        return _refused(str(exc))
    except OSError as exc:
        return _refused(f"cannot open {g.runtime_dir}: {exc.strerror}")
    if not genuine:
        return _refused(f"graph {g.name!r}: pid {g.launcher_pid} is not its launcher (not holding the graph's lock, or started at "
                     f"another time than graph.json says); not signalling it")
    try:
        backend.request_stop(g.launcher_pid)
    except ProcessLookupError:
        return _refused(f"graph {g.name!r}: its launcher (pid {g.launcher_pid}) is gone")
    deadline = time.monotonic() + ns.timeout
    while Path(g.runtime_dir).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(g.runtime_dir).exists():
        return _refused(f"graph {g.name!r} is still stopping after {ns.timeout:g} s (launcher pid {g.launcher_pid})")
    print(f"graph {g.name!r} stopped")
    return 0
