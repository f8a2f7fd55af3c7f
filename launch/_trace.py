"""``shmlaunch trace``: attach to a running graph, show where each hop's latency goes, detach.

    shmlaunch trace [GRAPH | --graph G] [--duration S] [--out trace.json] [--summary table.json] [--interval S] [--quiet]

Attaching costs the graph nothing to set up: every process of the graph already waits for a
tracer (transport/_trace.py: the tracer wakes the graph's trace wake word) and starts writing
its trace ring when woken. Every ``--interval`` seconds the per-hop table (nodes/hops.py) is printed and written
to ``trace.json`` in the graph's runtime directory, where the viewer shows it. At the end
(``--duration``, SIGINT, SIGTERM, or the graph stopping) the request is withdrawn, the rings
go, and ``--out`` gets a Chrome/Perfetto trace-event file (open it in ui.perfetto.dev). A
watchdog started first withdraws the request if this process is killed, so even a SIGKILLed
tracer leaves the graph as it was. Exit 0, or 1 when no such graph runs, another tracer is
attached, or trace records were lost (a ring overwrote them before they were read).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import time
from pathlib import Path

from shmlaunch.nodes.hops import TRACE_TABLE, HopTable
from shmlaunch.transport import MARKER_FILE, LockBusyError, RuntimeDir, TraceSession, TransportError

from ._children import Watchdog
from ._exits import EXIT_FAILED, error
from ._introspect import NoGraphError, add_graph_arguments, chosen_graph

#: How often the rings are read (a ring holds 32768 records: seconds of any real graph).
READ_EVERY = 0.1


def _arguments(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="shmlaunch trace", description="Where each hop's latency goes in a running graph: queueing "
                                 "per edge, processing and callbacks per node, end to end from the source stamp, and what was lost where.")
    add_graph_arguments(ap)
    ap.add_argument("--duration", type=float, help="detach after this many seconds (default: at Ctrl-C)")
    ap.add_argument("--out", help="write a Chrome/Perfetto trace-event file (.json) at the end")
    ap.add_argument("--summary", help="write the final per-hop table as JSON (what the viewer shows) at the end")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between tables (default 1)")
    ap.add_argument("--quiet", action="store_true", help="print only the final table")
    return ap.parse_args(argv)


def _bad_argument(ns: argparse.Namespace) -> str:
    """What is wrong with the arguments, in one line ("" when nothing)."""
    if ns.duration is not None and not ns.duration > 0:
        return f"--duration {ns.duration}: a positive number of seconds"
    if not ns.interval > 0:
        return f"--interval {ns.interval}: a positive number of seconds"
    for option, value in (("--out", ns.out), ("--summary", ns.summary)):
        if value is not None and (Path(value).suffix != ".json" or not Path(value).resolve().parent.is_dir()):
            return f"{option} {value}: a .json file in an existing folder"
    return ""


def trace(argv: list[str]) -> int:
    ns = _arguments(argv)
    if bad := _bad_argument(ns):
        return error(bad)
    try:
        graph = chosen_graph(ns)
    except NoGraphError as exc:
        return error(str(exc), EXIT_FAILED)
    runtime_dir = Path(graph.runtime_dir)
    watchdog = Watchdog(runtime_dir, None)
    try:
        session = TraceSession.attach(runtime_dir)
    except LockBusyError as exc:
        watchdog.done()
        return error(str(exc), EXIT_FAILED)
    except TransportError as exc:
        watchdog.done()
        return error(f"graph {graph.name!r}: {exc}", EXIT_FAILED)
    table = HopTable(keep=ns.out is not None)
    try:
        _follow(session, table, graph.name, ns)
    finally:
        left = session.detach()
        watchdog.done()
        _remove_status(runtime_dir)
    print(f"trace of graph {graph.name!r}: {len(table.processes)} processes")
    print(table.format(), flush=True)
    if left:
        print(f"shmlaunch trace: {len(left)} processes had not removed their trace ring yet (they do at their next look)")
    try:
        if ns.out is not None:
            table.write_trace(ns.out)
            print(f"wrote {ns.out} (open it in https://ui.perfetto.dev)")
        if ns.summary is not None:
            Path(ns.summary).write_text(json.dumps({"graph": graph.name, **table.summary()}, indent=1) + "\n")
    except OSError as exc:
        return error(f"{exc.filename}: {exc.strerror}", EXIT_FAILED)
    if table.lost_records:
        return error(f"{table.lost_records} trace records were lost (overwritten before they were read): the table misses them",
                     EXIT_FAILED)
    return 0


def _follow(session: TraceSession, table: HopTable, graph: str, ns: argparse.Namespace) -> None:
    """Read the rings until the end, printing and publishing the table every interval."""
    stop: list[str] = []
    old = {s: signal.signal(s, lambda signum, _f: stop.append(signal.Signals(signum).name)) for s in (signal.SIGINT, signal.SIGTERM)}
    start = time.monotonic()
    next_table = start + ns.interval
    try:
        while not stop:
            now = time.monotonic()
            if ns.duration is not None and now - start >= ns.duration:
                break
            table.read(session)
            if now >= next_table:
                next_table = now + ns.interval
                _publish(session.rd, table, graph)
                if not ns.quiet:
                    print(f"--- graph {graph!r}, {now - start:.0f} s\n{table.format()}\n", flush=True)
            if not _graph_alive(session.rd):
                print(f"graph {graph!r} stopped", flush=True)
                break
            time.sleep(READ_EVERY)
        table.read(session)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _publish(rd: RuntimeDir, table: HopTable, graph: str) -> None:
    """The table for the viewer (``trace.json``); a full /dev/shm only costs the viewer its table."""
    with contextlib.suppress(OSError):
        rd.write_atomic(TRACE_TABLE, json.dumps({"graph": graph, "time_ns": time.time_ns(), **table.summary()}).encode())


def _remove_status(runtime_dir: Path) -> None:
    with contextlib.suppress(OSError, TransportError), RuntimeDir.open(runtime_dir) as rd:
        rd.unlink(TRACE_TABLE)


def _graph_alive(rd: RuntimeDir) -> bool:
    try:
        rd.lstat(MARKER_FILE)  # gone with the graph
    except OSError:
        return False
    return True

