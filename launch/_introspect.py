"""Looking at a running graph from outside: nodes, topics, readers, messages.

Everything here attaches as an *observer*: it holds no presence lock, takes no reader-table
entry, and copies a message out before releasing it, so looking never slows or blocks the
graph. Used by the ``shmlaunch list / node / topic / stop`` commands and the launcher's live
status view.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shmlaunch import _platform as backend
from shmlaunch.nodes import HEARTBEAT, heartbeat_age
from shmlaunch.nodes.bridge import STATUS_FILE as BRIDGE_STATUS_FILE
from shmlaunch.nodes.messages import (
    FRAME_SOURCE_TYPE,
    GESTURE_TYPE,
    LANDMARKS_TYPE,
    decode_frame_source,
    decode_landmarks,
    describe_gestures,
    frame_source_message,
    gesture_message,
    landmarks_message,
)
from shmlaunch.transport import Reader, RuntimeDir, Topic, TopicConfig, TransportError, read_registry

from ._state import GraphState, running_graphs

MAX_BRIDGE_STATUS_BYTES = 1 << 20

#: A Python node beats every HEARTBEAT s while it spins; this much silence means it is stuck.
STALE_HEARTBEAT = 5 * HEARTBEAT


class NoGraphError(LookupError):
    """No running graph matches what was asked."""


def find_graph(name: str | None) -> GraphState:
    """The running graph called ``name``, or the only running graph when ``name`` is None."""
    graphs = running_graphs()
    if name is not None:
        for g in graphs:
            if g.name == name:
                return g
        running = ", ".join(g.name for g in graphs) or "none"
        raise NoGraphError(f"no graph {name!r} is running (running: {running})")
    if not graphs:
        raise NoGraphError("no graph is running (start one with: shmlaunch FILE)")
    if len(graphs) > 1:
        raise NoGraphError(f"{len(graphs)} graphs are running ({', '.join(g.name for g in graphs)}): name one with --graph")
    return graphs[0]


def add_graph_arguments(ap) -> None:
    """``[GRAPH | --graph GRAPH]``: how every operator command names the running graph."""
    ap.add_argument("graph", nargs="?", help="graph name (default: the only running graph)")
    ap.add_argument("--graph", dest="graph_option", metavar="GRAPH", help="the same, as an option")


def chosen_graph(ns) -> GraphState:
    """The running graph ``add_graph_arguments`` options name (NoGraphError if none)."""
    return find_graph(ns.graph or ns.graph_option)


def find_topic_graph(topic: str, name: str | None) -> GraphState:
    """The running graph that has ``topic`` (the named one, or the only one that has it)."""
    if name is not None:
        return find_graph(name)
    having = []
    for g in running_graphs():
        try:
            if topic in read_registry(Path(g.runtime_dir)):
                having.append(g)
        except (OSError, TransportError):
            continue
    if len(having) == 1:
        return having[0]
    if not having:
        raise NoGraphError(f"no running graph has topic {topic!r}")
    raise NoGraphError(f"topic {topic!r} is in {len(having)} running graphs ({', '.join(g.name for g in having)}): name one with --graph")


@dataclass
class Sampler:
    """Rates between two looks: CPU% per pid and messages per second per topic."""

    cpu: dict
    seqs: dict
    when: float

    @classmethod
    def start(cls) -> Sampler:
        return cls({}, {}, time.monotonic())

    def cpu_pct(self, pid: int, used: float | None, now: float) -> float | None:
        """CPU% of ``pid`` since the last look, from the CPU seconds it has ``used`` now."""
        before = self.cpu.get(pid)
        self.cpu[pid] = used
        if used is None or before is None or now <= self.when:
            return None
        return 100 * (used - before) / (now - self.when)

    def rate(self, topic: str, seq: int, now: float) -> float | None:
        before = self.seqs.get(topic)
        self.seqs[topic] = seq
        if before is None or now <= self.when:
            return None
        return (seq - before) / (now - self.when)


def live_state(n, info, rd: RuntimeDir | None, name: str) -> str:
    """What graph.json says, corrected by what can be seen now: a node stopped by a signal
    (SIGSTOP, a debugger) is "stopped"; a Python node whose heartbeat is stale is "unresponsive"."""
    if n.pid is None or n.state not in ("starting", "running"):
        return n.state
    if info is not None and info.state in ("T", "t"):
        return "stopped"
    if n.state == "running" and n.kind == "python" and rd is not None:
        age = heartbeat_age(rd, name)
        if age is not None and age > STALE_HEARTBEAT:
            return "unresponsive"
    return n.state


def node_rows(state: GraphState, sampler: Sampler, now: float) -> list[list[str]]:
    """One row per node; each process is looked at once (/proc) per call."""
    rows = [["NODE", "PID", "STATE", "RESTARTS", "CPU%", "RSS MiB", "CPUS", "NICE", "LAST EXIT"]]
    try:
        rd = RuntimeDir.open(state.runtime_dir)
    except (OSError, TransportError):
        rd = None
    with rd or contextlib.nullcontext():
        for name, n in state.nodes.items():
            alive = n.pid is not None and n.state in ("starting", "running")
            info = backend.process_info(n.pid) if alive else None
            cpu = sampler.cpu_pct(n.pid, info.cpu_seconds, now) if info is not None else None
            rss = None if info is None else info.rss_bytes
            cpus, nice = ("-", "-") if info is None else (info.cpus, str(info.nice))
            rows.append([name, str(n.pid or "-"), live_state(n, info, rd, name), str(n.restarts), "-" if cpu is None else f"{cpu:.1f}",
                         "-" if rss is None else f"{rss / 2**20:.0f}", cpus, nice, "-" if n.last_exit is None else str(n.last_exit)])
    return rows


# ----- topics
def describe_type(config: TopicConfig) -> str:
    if config.dtype is None:
        return "bytes"
    name = config.dtype.str if config.dtype.names else config.dtype.name
    return name + (str(list(config.shape)) if config.shape else "")


def read_bridge_status(runtime_dir: str | Path) -> dict | None:
    """The graph bridge's last status (bridge.json), or None when the graph has no bridge."""
    try:
        with RuntimeDir.open(runtime_dir) as rd:
            return json.loads(rd.read_bytes(BRIDGE_STATUS_FILE, MAX_BRIDGE_STATUS_BYTES))
    except (OSError, ValueError, TransportError):
        return None


def topic_rows(runtime_dir: Path, sampler: Sampler, now: float, cache: dict[str, Topic] | None = None) -> list[list[str]]:
    """One row per topic. With ``cache`` (topic -> open Topic), topics stay open between calls
    (the live view refreshes every second) and are reopened when their segment was re-created;
    otherwise each is opened and closed."""
    rows = [["TOPIC", "TYPE", "CAPACITY", "POOL", "WRITER", "LAST SEQ", "HZ", "MB/s", "READERS"]]
    imported = {i["local"]: i.get("host") or "?" for i in (read_bridge_status(runtime_dir) or {}).get("imports", {}).values()}
    with RuntimeDir.open(runtime_dir) as rd:
        registry = read_registry(rd)
        for name in sorted(registry):
            topic = cache.get(name) if cache is not None else None
            if topic is not None and not topic.same_file(rd):
                cache.pop(name).close()
                topic = None
            if topic is None:
                try:
                    topic = Topic.open(name, runtime_dir=runtime_dir)
                except Exception as exc:  # a tool must show what it can; the row says what went wrong
                    rows.append([name, f"unreadable: {exc}", "", "", "", "", "", "", ""])
                    continue
                if cache is not None:
                    cache[name] = topic
            try:
                rows.append(_topic_row(name, topic, sampler, now, imported.get(name)))
            finally:
                if cache is None:
                    topic.close()
    for name in set(cache or ()) - set(registry):
        cache.pop(name).close()
    return rows


def _topic_row(name: str, topic: Topic, sampler: Sampler, now: float, imported_from: str | None) -> list[str]:
    d = topic.dynamic()
    hz = sampler.rate(name, d.latest_seq, now)
    via = f", bridge from {imported_from}" if imported_from else ""
    return [name, describe_type(topic.config), str(topic.config.capacity), str(topic.config.pool),
            f"{d.writer_pid} (gen {d.writer_generation}{via})" if d.writer_alive else "none",
            str(d.latest_seq), "-" if hz is None else f"{hz:.1f}",
            "-" if hz is None else f"{hz * d.latest_length / 1e6:.2f}", str(len(d.readers))]


def table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]


# ----- messages
def summarize(reader: Reader, msg, data: np.ndarray) -> str:
    """One line for one message: decoded by the message type its topic's writer declared
    (landmarks, gestures), frames summarised, small typed arrays listed, the rest as hex."""
    head = f"seq {msg.seq} age {(time.time_ns() - msg.publish_ns) / 1e6:.1f} ms"
    raw = data.view(np.uint8).reshape(-1)
    cfg = reader.config
    try:
        if cfg.message == LANDMARKS_TYPE:
            d = decode_landmarks(landmarks_message(data), digits=3)
            hands = "".join(f" | {h['handedness']} {h['score']:.2f} wrist ({h['landmarks'][0][0]:.3f}, {h['landmarks'][0][1]:.3f})"
                            for h in d["hands"])
            return f"{head} landmarks frame {d['frame_seq']}: {len(d['hands'])} hand(s){hands} | inference {d['inference_ms']:.1f} ms"
        if cfg.message == GESTURE_TYPE:
            rec = gesture_message(data)
            return f"{head} gesture frame {int(rec['frame_seq'])}: {describe_gestures(rec)}"
        if cfg.message == FRAME_SOURCE_TYPE:
            rec = frame_source_message(data)
            src = decode_frame_source(rec)
            return f"{head} source of frame {int(rec['frame_seq'])}: {src['kind']} #{src['index']} {src['name']!r}"
    except ValueError as exc:  # a message of another version: say so, show the bytes
        return f"{head} {cfg.message}: {exc}; {raw.nbytes} bytes: {raw[:32].tobytes().hex(' ')}"
    if cfg.dtype is not None and cfg.shape is not None and len(cfg.shape) == 3 and cfg.dtype == np.uint8:
        return f"{head} frame {list(data.shape)} mean {float(data.mean()):.1f}"
    if cfg.dtype is not None and data.size <= 16:
        return f"{head} {data.tolist()}"
    return f"{head} {raw.nbytes} bytes: {raw[:32].tobytes().hex(' ')}{' ...' if raw.nbytes > 32 else ''}"
