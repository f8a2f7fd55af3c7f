"""Where a message's latency goes, hop by hop, from trace records (``shmlaunch trace``).

Trace records (``shmlaunch.transport.TraceRecord``) say when each process published,
received and released each message, and when a node's callback started and ended. Joined:

- **queueing** on an edge (topic, writer -> reader): receive time - publish time of the same
  message (topic, writer generation, sequence number);
- **processing** in a node: publish time of an output - receive time of the input it names by
  ``source_seq`` (the node runtime sets ``source_seq`` by default to the message being handled);
- **callback**: a callback's end - its start;
- **end to end**: receive time - the message's source stamp (capture time for camera frames,
  carried through by every built-in node), the figure the console shows for landmarks;
- **lost** on an edge, from each receive's counts since the reader's previous one: overwritten
  before it was read, skipped as older than the reader's ``max_age``, taken by another replica;
  and at a writer: publishes dropped because every slot was held.

All times are CLOCK_MONOTONIC except stamps (CLOCK_REALTIME); each ring's header gives the
offset between the two. Memory is bounded: the last ``WINDOW`` samples of each series and the
last ``MATCH_WINDOW`` publishes of each topic are kept.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from shmlaunch.transport import TraceRecord, TraceSession

__all__ = ["MATCH_WINDOW", "TRACE_TABLE", "WINDOW", "HopTable", "Process", "Series", "format_summary", "percentile"]

PUBLISH, RECEIVE, RELEASE, CALLBACK_START, CALLBACK_END, DROP = range(1, 7)
#: Samples kept per series (percentiles are over these, the newest).
WINDOW = 20_000
#: Publishes remembered per topic for matching receives, and receives per process for matching outputs.
MATCH_WINDOW = 4096
#: Records kept for a trace file (a trace of the hands graph makes about 400 a second).
MAX_KEPT = 2_000_000
#: The per-hop table an attached tracer keeps up to date in the graph's runtime directory (the viewer shows it).
TRACE_TABLE = "trace.json"
#: The ``tid`` of a process's callback track in a trace file (its steps are on ``tid = pid``).
CALLBACK_TID_OFFSET = 1 << 24


def percentile(sorted_values: list[int], q: float) -> int:
    """The nearest-rank percentile ``q`` (0..100) of a sorted non-empty list."""
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


@dataclass
class Series:
    """One figure's newest samples (ns) and its loss counters."""

    samples: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    count: int = 0
    overwritten: int = 0
    stale: int = 0
    taken: int = 0

    def add(self, ns: int) -> None:
        self.samples.append(ns)
        self.count += 1

    def summary(self) -> dict:
        values = sorted(self.samples)
        out = {"n": self.count, "overwritten": self.overwritten, "stale": self.stale, "taken": self.taken}
        if values:
            out.update({f"p{q}_ms": percentile(values, q) / 1e6 for q in (50, 90, 99)})
            out["max_ms"] = values[-1] / 1e6
        return out


@dataclass
class Process:
    """A traced process: its name (the node's) and its clock offset."""

    pid: int
    name: str
    clock_offset: int


class HopTable:
    """Joins trace records into per-hop series; ``add`` records as ``TraceSession.poll`` gives
    them (any order across processes), ``summary()`` / ``format()`` for the table,
    ``trace_events()`` for a Chrome/Perfetto trace file (when built with ``keep=True``)."""

    def __init__(self, keep: bool = False) -> None:
        self.processes: dict[int, Process] = {}
        self.topics: dict[int, str] = {}
        # series keyed by ids (topic ids, pids); names are given at summary time
        self.queueing: dict[tuple, Series] = {}  # (topic, reader pid)
        self.processing: dict[tuple, Series] = {}  # (pid, input topic, output topic)
        self.callback: dict[tuple, Series] = {}  # (pid, topic)
        self.end_to_end: dict[tuple, Series] = {}  # (topic, reader pid)
        self._writer_of: dict[int, int] = {}  # topic -> pid of its newest traced publish
        self.writer_drops: dict[str, int] = {}
        self.lost_records = 0
        self._published: dict[int, OrderedDict] = {}  # topic -> (generation, seq) -> (pid, ns)
        self._received: dict[int, OrderedDict] = {}  # pid -> (topic, seq) -> ns
        self._topic_of: dict[int, OrderedDict] = {}  # pid -> seq -> topic of the newest message received with that seq
        self._starts: dict[tuple, int] = {}  # (pid, topic, seq) -> callback start ns
        self._handling: dict[int, tuple[int, int]] = {}  # pid -> (topic, seq) of the callback running now
        self._waiting: deque = deque(maxlen=MATCH_WINDOW)  # receives seen before their publish
        self.kept: list[TraceRecord] | None = [] if keep else None
        self.kept_dropped = 0

    # ----- input
    def add_process(self, pid: int, name: str, clock_offset: int) -> None:
        self.processes[pid] = Process(pid, name, clock_offset)

    def name_of(self, pid: int) -> str:
        p = self.processes.get(pid)
        if p is None:
            return f"pid {pid}"
        same = [q for q in self.processes.values() if q.name == p.name]
        return p.name if len(same) == 1 else f"{p.name}[{pid}]"

    def topic_name(self, topic: int) -> str:
        return self.topics.get(topic, f"topic {topic:016x}")

    def read(self, session: TraceSession) -> int:
        """Take what ``session`` has new: processes, topic names, records; returns how many records."""
        records = session.poll()
        for pid, ring in session.rings.items():
            if pid not in self.processes:
                self.add_process(pid, ring.name, ring.clock_offset)
        if any(r.topic not in self.topics for r in records):
            self.topics = dict(session.topics(refresh=True))
        self.lost_records = sum(r.lost for r in session.rings.values())
        self.add(records)
        return len(records)

    def add(self, records: list[TraceRecord]) -> None:
        """Join new records (publishes before the receives they explain, whichever ring they came from)."""
        records = sorted(records, key=lambda r: r.ns)
        if self.kept is not None:
            room = MAX_KEPT - len(self.kept)
            self.kept.extend(records[:max(room, 0)])
            self.kept_dropped += max(0, len(records) - max(room, 0))
        retry, self._waiting = list(self._waiting), deque(maxlen=MATCH_WINDOW)
        for r in retry:
            self._receive(r, retry=True)
        for r in records:
            if r.kind == PUBLISH:
                self._publish(r)
            elif r.kind == RECEIVE:
                self._receive(r)
            elif r.kind == CALLBACK_START:
                self._starts[(r.pid, r.topic, r.seq)] = r.ns
                self._handling[r.pid] = (r.topic, r.seq)
                if len(self._starts) > MATCH_WINDOW:
                    self._starts.pop(next(iter(self._starts)))
            elif r.kind == CALLBACK_END:
                self._handling.pop(r.pid, None)
                start = self._starts.pop((r.pid, r.topic, r.seq), None)
                if start is not None:
                    self._series(self.callback, (r.pid, r.topic)).add(r.ns - start)
            elif r.kind == DROP:
                name = self.topic_name(r.topic)
                self.writer_drops[name] = self.writer_drops.get(name, 0) + 1

    @staticmethod
    def _series(table: dict, key: tuple) -> Series:
        s = table.get(key)
        if s is None:
            s = table[key] = Series()
        return s

    @staticmethod
    def _remember(store: OrderedDict, key, value) -> None:
        store[key] = value
        if len(store) > MATCH_WINDOW:
            store.popitem(last=False)

    def _publish(self, r: TraceRecord) -> None:
        self._remember(self._published.setdefault(r.topic, OrderedDict()), (r.generation, r.seq), (r.pid, r.ns))
        self._writer_of[r.topic] = r.pid
        if not r.source_seq:
            return
        # the input: the message whose callback is running (a node), else the newest received
        # message with that seq on any topic (a plain program, the C++ client)
        received = self._received.get(r.pid, {})
        handling = self._handling.get(r.pid, (None, None))
        in_topic = handling[0] if handling[1] == r.source_seq else self._topic_of.get(r.pid, {}).get(r.source_seq)
        ns = received.get((in_topic, r.source_seq))
        if ns is not None:
            self._series(self.processing, (r.pid, in_topic, r.topic)).add(r.ns - ns)

    def _receive(self, r: TraceRecord, retry: bool = False) -> None:
        pub = self._published.get(r.topic, {}).get((r.generation, r.seq))
        if pub is None and not retry:
            self._waiting.append(r)  # its publish may be in a ring read later
            return
        s = self._series(self.queueing, (r.topic, r.pid))
        if pub is not None:  # (else published before the tracer attached, or by a writer that records nothing)
            s.add(r.ns - pub[1])
        s.overwritten += r.overwritten
        s.stale += r.stale
        s.taken += r.taken
        self._remember(self._received.setdefault(r.pid, OrderedDict()), (r.topic, r.seq), r.ns)
        self._remember(self._topic_of.setdefault(r.pid, OrderedDict()), r.seq, r.topic)
        proc = self.processes.get(r.pid)
        if proc is not None and r.stamp_ns > 0:
            self._series(self.end_to_end, (r.topic, r.pid)).add(r.ns + proc.clock_offset - r.stamp_ns)

    # ----- output
    def summary(self) -> dict:
        """The table as plain data (what the viewer shows and ``trace.json`` holds)."""
        topic, name = self.topic_name, self.name_of

        def writer(t: int) -> str:  # "(untraced)": a writer that records nothing (C#, Windows)
            return name(self._writer_of[t]) if t in self._writer_of else "(untraced)"

        def rows(table: dict, fields) -> list[dict]:
            return sorted(({**fields(*key), **s.summary()} for key, s in table.items() if s.count or s.overwritten or s.stale or s.taken),
                          key=lambda r: [str(v) for v in r.values()])

        return {
            "queueing": rows(self.queueing, lambda t, rd: {"topic": topic(t), "writer": writer(t), "reader": name(rd)}),
            "processing": rows(self.processing, lambda p, i, o: {"node": name(p), "input": topic(i), "output": topic(o)}),
            "callback": rows(self.callback, lambda p, i: {"node": name(p), "input": topic(i)}),
            "end_to_end": rows(self.end_to_end, lambda t, rd: {"topic": topic(t), "reader": name(rd)}),
            "writer_drops": dict(sorted(self.writer_drops.items())),
            "lost_records": self.lost_records,
        }

    def format(self) -> str:
        """The per-hop table, as ``shmlaunch trace`` prints it (milliseconds)."""
        return format_summary(self.summary())

    def trace_events(self) -> dict:
        """The kept records as Chrome trace-event JSON (Perfetto opens it): one process track per
        traced process (its steps on one thread, its callbacks on another), a slice per publish,
        receive and callback, and flow arrows from each publish to its receives and from each
        receive to the outputs computed from it."""
        events: list[dict] = []
        for p in self.processes.values():
            events.append({"ph": "M", "name": "process_name", "pid": p.pid, "tid": p.pid, "ts": 0, "args": {"name": f"{p.name} ({p.pid})"}})
            events.append({"ph": "M", "name": "thread_name", "pid": p.pid, "tid": p.pid, "ts": 0, "args": {"name": "topics"}})
            events.append({"ph": "M", "name": "thread_name", "pid": p.pid, "tid": p.pid + CALLBACK_TID_OFFSET, "ts": 0,
                           "args": {"name": "callbacks"}})
        kept = [r for r in (self.kept or []) if r.pid in self.processes]
        steps = [r for r in kept if r.kind in (PUBLISH, RECEIVE, DROP)]
        # a step is a slice of up to 1 us, never overlapping the next step of its process
        next_ns: dict[int, int] = {}
        dur: dict[int, float] = {}
        for i in range(len(steps) - 1, -1, -1):
            r = steps[i]
            following = next_ns.get(r.pid)
            dur[i] = 1.0 if following is None else min(1.0, (following - r.ns) / 1000)
            next_ns[r.pid] = r.ns
        publishes: dict[tuple, tuple[int, int]] = {}
        received_at: dict[tuple, int] = {}  # (pid, seq) -> when that process received a message with that seq
        flow = 0
        for i, r in enumerate(steps):
            topic = self.topic_name(r.topic)
            verb = {PUBLISH: "publish", RECEIVE: "receive", DROP: "dropped"}[r.kind]
            events.append({"ph": "X", "name": f"{verb} {topic}", "cat": verb, "pid": r.pid, "tid": r.pid, "ts": r.ns / 1000,
                           "dur": dur[i], "args": {"seq": r.seq, "source_seq": r.source_seq, "generation": r.generation}})
            if r.kind == PUBLISH:
                publishes[(r.topic, r.generation, r.seq)] = (r.pid, r.ns)
                got = received_at.get((r.pid, r.source_seq)) if r.source_seq else None
                if got is not None:  # inside the node: from its input's receive to this output
                    flow += 1
                    events.append(_flow("s", flow, "computed", r.pid, got))
                    events.append(_flow("f", flow, "computed", r.pid, r.ns))
            elif r.kind == RECEIVE:
                pub = publishes.get((r.topic, r.generation, r.seq))
                received_at[(r.pid, r.seq)] = r.ns
                if pub is not None:
                    flow += 1
                    events.append(_flow("s", flow, topic, pub[0], pub[1]))
                    events.append(_flow("f", flow, topic, r.pid, r.ns))
        starts: dict[tuple, int] = {}
        for r in kept:
            if r.kind == CALLBACK_START:
                starts[(r.pid, r.topic, r.seq)] = r.ns
            elif r.kind == CALLBACK_END and (start := starts.pop((r.pid, r.topic, r.seq), None)) is not None:
                events.append({"ph": "X", "name": f"callback {self.topic_name(r.topic)}", "cat": "callback", "pid": r.pid,
                               "tid": r.pid + CALLBACK_TID_OFFSET, "ts": start / 1000, "dur": (r.ns - start) / 1000,
                               "args": {"seq": r.seq}})
        return {"traceEvents": events, "displayTimeUnit": "ms",
                "otherData": {"producer": "shmlaunch trace", "records_not_kept": self.kept_dropped, "records_lost": self.lost_records}}

    def write_trace(self, path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.trace_events(), f)


def _flow(phase: str, flow_id: int, name: str, pid: int, ns: int) -> dict:
    """One end of a flow arrow, bound to the step slice it starts or ends at."""
    event = {"ph": phase, "id": flow_id, "name": name, "cat": "flow", "pid": pid, "tid": pid, "ts": ns / 1000}
    if phase == "f":
        event["bp"] = "e"
    return event


def _ms(row: dict, key: str) -> str:
    return f"{row[key]:.3f}" if key in row else "-"


def format_summary(summary: dict) -> str:
    """A summary (``HopTable.summary``) as aligned text tables, milliseconds."""
    figures = ["N", "P50", "P90", "P99", "MAX"]
    sections = [
        ("QUEUEING (published -> received)", "queueing", lambda r: f"{r['topic']}  {r['writer']} -> {r['reader']}", True),
        ("PROCESSING (input received -> output published)", "processing", lambda r: f"{r['node']}  {r['input']} -> {r['output']}", False),
        ("CALLBACK (start -> end)", "callback", lambda r: f"{r['node']}  on {r['input']}", False),
        ("END TO END (source stamp -> received)", "end_to_end", lambda r: f"{r['topic']}  at {r['reader']}", False),
    ]
    out = []
    for title, key, label, lost in sections:
        rows = summary.get(key) or []
        if not rows:
            continue
        head = [title, *figures] + (["OVERWRITTEN", "STALE", "TAKEN"] if lost else [])
        lines = [head]
        for r in rows:
            line = [label(r), str(r["n"]), _ms(r, "p50_ms"), _ms(r, "p90_ms"), _ms(r, "p99_ms"), _ms(r, "max_ms")]
            if lost:
                line += [str(r["overwritten"]), str(r["stale"]), str(r["taken"])]
            lines.append(line)
        widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
        for line in lines:
            out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip())
        out.append("")
    drops = summary.get("writer_drops") or {}
    if drops:
        out.append("DROPPED AT THE WRITER (every slot held by readers): " + ", ".join(f"{t} {n}" for t, n in drops.items()))
    if summary.get("lost_records"):
        out.append(f"trace records lost (a ring overwrote them before they were read): {summary['lost_records']}")
    return "\n".join(out).rstrip() or "no messages traced yet"
