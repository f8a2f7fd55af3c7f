"""``shmlaunch play``: a recording's messages back into pool topics, at the pace they were made.

Each recorded topic is opened (or created) with exactly the layout the recording stores; a
running graph's topic that disagrees is refused with both values named, and one that already
has a writer (a live camera) is refused too. Messages go out on one timeline: message *i* is
published at ``start + (log_time_i - log_time_0) / rate`` on the monotonic clock, so every
topic keeps its proportions at any rate, a split recording plays in real time across its
files, and a late message never makes the later ones late (no drift). Capture stamps and
``source_seq`` are published as recorded. The timing error (actual minus planned publish
time) is measured and printed at the end.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shmlaunch import _platform as backend
from shmlaunch.nodes.recording import Played, RecordedChannel, RecordingError, RecordingReader, recording_files
from shmlaunch.transport import (
    RuntimeDir,
    TopicConfig,
    TopicMismatchError,
    TransportError,
    Writer,
    graph_runtime_dir,
    new_run_id,
    validate_topic_name,
)

from ._children import Watchdog
from ._exits import EXIT_FAILED, error
from ._graphdir import GraphDir, GraphRunningError
from ._introspect import NoGraphError
from ._schema import Graph
from ._state import STATE_FILE, GraphState, launcher_alive, running_graphs
from ._stopping import stop_on_request
from ._tools import attach_dir

#: timing errors kept for the report (the last ones: a bounded buffer however long it plays)
ERRORS_KEPT = 100_000
#: Read ahead at most this far (recorded time) and this many bytes.
LOOKAHEAD_NS = 2_000_000_000
LOOKAHEAD_BYTES = 128 << 20


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="shmlaunch play", description=(
        "Publish a recording's messages into pool topics, paced as recorded. Into the running graph (--graph, or the only "
        "one running), else into a graph of its own that consumers attach to with --graph and that is removed at the end."))
    ap.add_argument("file", help="the .mcap file (a split recording: its first file, or FILE with no _N)")
    ap.add_argument("-r", "--rate", type=float, default=1.0, help="speed factor (2: twice as fast); every topic keeps its proportions")
    ap.add_argument("-l", "--loop", action="store_true", help="start again at the end, until stopped")
    ap.add_argument("--start", "--start-offset", type=float, default=0.0, metavar="S", help="skip the first S seconds")
    ap.add_argument("--topics", nargs="+", metavar="TOPIC", help="play only these recorded topics")
    ap.add_argument("--remap", action="append", default=[], metavar="FROM:=TO", help="publish recorded topic FROM as TO")
    ap.add_argument("--graph", help="the graph to play into (default: the only running graph, else 'replay')")
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    return ap


def play(argv: list[str]) -> int:
    ns = _parser().parse_intermixed_args(argv)
    try:
        remap = _remaps(ns.remap)
        if not ns.rate > 0 or ns.start < 0 or (ns.duration is not None and not ns.duration > 0):
            raise ValueError(f"--rate and --duration must be > 0 and --start >= 0 (got {ns.rate}, {ns.duration}, {ns.start})")
        files = recording_files(ns.file)
        reader = RecordingReader(files)
        _check_topics(reader, ns.topics, ns.file)
        runtime_dir, own = _target(ns.graph, ns.file)
    except (ValueError, RecordingError) as exc:
        return error(str(exc))
    except OSError as exc:
        return error(f"{exc.filename or ns.file}: {exc.strerror or exc}", EXIT_FAILED)
    except (NoGraphError, TransportError, GraphRunningError) as exc:
        return error(str(exc), EXIT_FAILED)
    player = Player(reader, runtime_dir, remap, ns.rate)
    sys.setswitchinterval(0.0005)  # the pacing thread gets the GIL back from the read-ahead thread within 0.5 ms
    stop = threading.Event()
    stop_listening = stop_on_request(stop.set)
    try:
        print(f"shmlaunch: playing {', '.join(map(str, files))} into {runtime_dir} at rate {ns.rate:g}", file=sys.stderr, flush=True)
        player.run(set(ns.topics) if ns.topics else None, ns.start, ns.loop, stop, ns.duration)
    except (TransportError, RecordingError) as exc:
        return error(str(exc), EXIT_FAILED)
    except OSError as exc:  # the recording could not be read (permissions, a disk error)
        return error(f"{exc.filename or ns.file}: {exc.strerror or exc}", EXIT_FAILED)
    finally:
        stop_listening()
        player.close()
        if own is not None:
            own.release()
    missing = sorted(set(ns.topics or ()) - set(player.reader.pool_topics()))
    if missing:
        return error(f"{ns.file}: no recorded topic {missing[0]!r} (recorded: {', '.join(player.reader.pool_topics())})")
    return player.report()


def _check_topics(reader: RecordingReader, topics: list[str] | None, file: str) -> None:
    """--topics must name recorded topics (known before playing when the files have summaries)."""
    known = sorted(ch.topic for ch in reader.summary_channels())
    missing = sorted(set(topics or ()) - set(known))
    if missing and reader.summarised:
        raise ValueError(f"{file}: no recorded topic {missing[0]!r} (recorded: {', '.join(known)})")


def _remaps(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        src, sep, dst = item.partition(":=")
        if not sep:
            raise ValueError(f"--remap {item!r}: expected FROM:=TO")
        out[validate_topic_name(src)] = validate_topic_name(dst)
    return out


@dataclass
class OwnGraph:
    """A graph the player made for itself: its hold on the directory, and the watchdog that
    removes it should the player be killed."""

    dir: GraphDir
    watchdog: Watchdog

    def release(self) -> None:
        self.dir.release()
        self.watchdog.done()


def _target(graph: str | None, file: str) -> tuple[Path, OwnGraph | None]:
    """(runtime directory, the hold on it if this player made the graph and must remove it).

    A graph of its own is claimed like a launcher claims one (its lock held, graph.json
    written, a watchdog that removes it if the player is killed), so ``shmlaunch list`` shows
    it and a player killed with SIGKILL leaves nothing (and a directory left by an older one is
    recognised as dead and flushed; never one whose topics a script made by hand)."""
    if graph is None and running_graphs():
        return attach_dir(None) or graph_runtime_dir("default"), None
    if graph is not None and any(g.name == graph for g in running_graphs()):
        return attach_dir(graph), None
    name = graph or "replay"
    path = graph_runtime_dir(name)
    try:
        with RuntimeDir.open(path) as rd:
            if launcher_alive(rd) or STATE_FILE not in rd.entries():
                return path, None  # a graph that is starting, or topics made by hand: play into it, leave it
    except FileNotFoundError:
        pass
    run = new_run_id()
    hold = GraphDir(path, Graph(name, str(Path(file).absolute()), {}, {}), run, lambda text: print(f"shmlaunch: {text}", file=sys.stderr))
    hold.claim()
    own = OwnGraph(hold, Watchdog(path, run))
    hold.write_state(GraphState(name, str(Path(file).absolute()), str(path), os.getpid(), time.time_ns(),
                                launcher_start=backend.process_start_time(os.getpid()) or 0, run=run))
    return path, own


class ReadAhead(threading.Thread):
    """Reads and decodes the recording on its own thread, up to LOOKAHEAD_NS of recorded time and
    LOOKAHEAD_BYTES ahead of the player: a chunk to decompress or a slow disk then costs the
    pacing thread nothing (it only waits for the GIL, for at most the switch interval).

    Whatever ends the reading early is kept in ``error`` and raised on the pacing thread: a
    reading thread never dies silently (a play that lost data never exits 0)."""

    def __init__(self, reader: RecordingReader, topics: set[str] | None, start_s: float) -> None:
        super().__init__(name="read-ahead", daemon=True)
        self.reader, self.topics, self.start_s = reader, topics, start_s
        self.items: collections.deque[Played | None] = collections.deque()
        self.nbytes = 0
        self.cond = threading.Condition()
        self.closed = False
        self.error: BaseException | None = None
        self.t0_log = 0

    def run(self) -> None:
        try:
            first = None
            for played in self.reader.messages(self.topics):
                if first is None:
                    first = self.t0_log = played.log_time + int(self.start_s * 1e9)
                if self.start_s and played.log_time < first:  # (messages of several topics may be out of order by a little)
                    continue
                with self.cond:
                    while not self.closed and self.items and (self.nbytes >= LOOKAHEAD_BYTES
                                                              or played.log_time - self.items[0].log_time >= LOOKAHEAD_NS):
                        self.cond.wait(0.1)
                    if self.closed:
                        return
                    self.items.append(played)
                    self.nbytes += len(played.data)
                    self.cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 (handed to the pacing thread, which reports it: never lost)
            self.error = exc
        finally:
            with self.cond:
                self.items.append(None)  # the end
                self.cond.notify_all()

    def next(self, stop: threading.Event) -> Played | None:
        """The next message; None at the end or once ``stop`` is set (checked at least every 0.1 s)."""
        with self.cond:
            while not self.items and not stop.is_set():
                self.cond.wait(0.1)
            if not self.items:
                return None
            played = self.items.popleft()
            if played is not None:
                self.nbytes -= len(played.data)
            self.cond.notify_all()
            return played

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.join(5)


class Player:
    def __init__(self, reader: RecordingReader, runtime_dir: Path, remap: dict[str, str], rate: float) -> None:
        self.reader = reader
        self.runtime_dir = runtime_dir
        self.remap = remap
        self.rate = rate
        self.writers: dict[str, Writer] = {}
        self.published = 0
        self.dropped = 0
        self.errors_ns: collections.deque[int] = collections.deque(maxlen=ERRORS_KEPT)
        self.elapsed = 0.0
        self.empty_pass = False

    def _writer(self, ch: RecordedChannel) -> Writer:
        w = self.writers.get(ch.topic)
        if w is None:
            name = self.remap.get(ch.topic, ch.topic)
            c: TopicConfig = ch.config
            try:
                w = self.writers[ch.topic] = Writer(name, c.capacity, c.pool, dtype=c.dtype, shape=c.shape,
                                                    runtime_dir=self.runtime_dir, message=c.message)
            except TopicMismatchError as exc:  # "requested" is the recording's layout here
                raise TopicMismatchError(f"refusing to play into the graph's topic {name!r}: it differs from the recorded one "
                                         f"({str(exc).replace('requested', 'recorded')})") from None
        return w

    def run(self, topics: set[str] | None, start_s: float, loop: bool, stop: threading.Event, duration: float | None) -> None:
        for ch in self.reader.summary_channels():  # topics first, so the timeline starts with no set-up in it
            if topics is None or ch.topic in topics:
                self._writer(ch)
        begin = time.monotonic()
        deadline = None if duration is None else begin + duration
        while not stop.is_set():
            published = self.published
            self._pass(topics, start_s, stop, deadline)
            if not loop or self.published == published:  # a pass that published nothing would spin forever
                self.empty_pass = self.published == published
                break
        self.elapsed = time.monotonic() - begin

    def _pass(self, topics: set[str] | None, start_s: float, stop: threading.Event, deadline: float | None) -> None:
        ahead = ReadAhead(self.reader, topics, start_s)
        ahead.start()
        t0 = None
        try:
            while (played := ahead.next(stop)) is not None:
                if t0 is None:
                    t0 = time.monotonic_ns()
                due = self._due(played, t0, ahead.t0_log)
                while (wait := due - time.monotonic_ns()) > 0 and not stop.is_set():
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    stop.wait(min(wait / 1e9, 0.1))
                if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                    stop.set()
                    return
                self._publish(played)
                self.errors_ns.append(time.monotonic_ns() - due)
            if ahead.error is not None:
                raise ahead.error
        finally:
            ahead.close()

    def _due(self, played: Played, t0: int, t0_log: int) -> int:
        """When ``played`` is to be published, on the monotonic clock (ns)."""
        return t0 + int((played.log_time - t0_log) / self.rate)

    def _publish(self, played: Played) -> None:
        w = self._writer(played.channel)
        c = played.channel.config
        data = played.data
        if c.dtype is not None and c.shape is not None:
            data = np.frombuffer(data, c.dtype).reshape(c.shape)
        seq = w.publish(data, stamp_ns=played.stamp_ns, source_seq=played.source_seq)
        if seq is None:
            self.dropped += 1  # every slot held by readers: the writer never waits
        else:
            self.published += 1

    def close(self) -> None:
        for w in self.writers.values():
            w.close()

    def report(self) -> int:
        for line in self.reader.truncated:
            print(f"shmlaunch: {line}: played every complete message; 'shmlaunch record --recover IN OUT' makes it a "
                  "complete file", file=sys.stderr)
        if self.errors_ns:
            e = np.abs(np.array(self.errors_ns)) / 1e6
            timing = f"timing error p50 {np.percentile(e, 50):.3f} ms, p99 {np.percentile(e, 99):.3f} ms, max {e.max():.3f} ms"
        else:
            timing = "no message in the chosen range"
        skipped = f", {self.dropped} not published (every slot held)" if self.dropped else ""
        print(f"shmlaunch: played {self.published} messages on {len(self.writers)} topics in {self.elapsed:.2f} s{skipped}; {timing}",
              file=sys.stderr, flush=True)
        lost = self.reader.lost
        if lost:
            return error("\n".join(lost + [f"the recording is damaged: {len(lost)} kind{'s' * (len(lost) != 1)} of loss above; "
                                            "everything intact was played"]), EXIT_FAILED)
        return 0
