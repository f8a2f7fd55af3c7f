"""``shmlaunch record``: a running graph's topics into an MCAP file, never slowing a writer.

Two threads, so that no disk I/O ever happens on the thread that reads the pools:

- the *reading* thread (main) sleeps on every recorded topic at once (``wait_any``), takes the
  newest message of each as an *observer* (no reader entry, never counted, the writer never
  waits for it), copies its bytes and lets the slot go at once, and appends the copy to a
  bounded queue. A topic that moved on faster than it was read shows as *skipped*.
- the *writing* thread encodes (RawImage, annotations, envelopes: nodes/recording.py says
  how) and writes chunked MCAP, finishing a chunk at least once a second so a killed
  recorder loses at most that second. When the disk is slower than the graph the queue drops
  its *oldest* message and counts it as *dropped*.

The counters per topic are printed at the end and, while it runs, as a progress line on a
terminal (a log line every 30 s otherwise).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import getpass
import glob
import importlib.metadata
import json
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from shmlaunch import _platform as backend
from shmlaunch.nodes.recording import (
    COMPRESSIONS,
    MAX_MESSAGE,
    PROFILE,
    RECORDING_MODE,
    ChannelPlan,
    RecordingError,
    create_recording,
    encode,
    plan_channels,
)
from shmlaunch.transport import (
    LAYOUT_VERSION,
    Reader,
    RuntimeDir,
    TransportError,
    default_runtime_dir,
    read_registry,
    wait_any,
)

from ._exits import EXIT_FAILED, error
from ._introspect import NoGraphError, table
from ._state import BadStateError, GraphState
from ._stopping import stop_on_request
from ._tools import attach_dir

CHUNK_BYTES = 4 << 20
#: A chunk is finished at least this often: what a SIGKILL can lose.
CHUNK_SECONDS = 1.0
DEFAULT_QUEUE_MB = 128
LOG_EVERY = 30.0
MAX_LAUNCH_FILE_BYTES = 256 << 10
#: Open files a recorded topic costs (its observer reader: the segment and the mapping's own),
#: and what the recorder needs besides (the file, libraries, the live server).
FDS_PER_TAP = 2
FDS_SPARE = 64


@dataclass(eq=False)
class Tap:
    """One recorded topic: its observer reader (the only handle kept: 2 file descriptors a
    topic), its channels and its counters."""

    reader: Reader
    plans: list[ChannelPlan] | None = None  # made at the first message (see _plan)
    recorded: int = 0  # in the file and handed to the disk (fsync)
    dropped: int = 0  # the queue was full (the disk was slower than the graph)
    lost: int = 0  # written into a chunk the disk then refused (a full disk)
    bytes: int = 0

    @property
    def name(self) -> str:
        return self.reader.topic

    @property
    def skipped(self) -> int:
        """Messages the topic moved past before this recorder looked (newest-only reading)."""
        return self.reader.statistics().missed


@dataclass
class Item:
    tap: Tap
    seq: int
    stamp_ns: int
    publish_ns: int
    source_seq: int
    data: bytes


class DropOldestQueue:
    """A queue bounded in bytes; a put that does not fit drops the oldest items (counted)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: collections.deque[Item] = collections.deque()
        self.nbytes = 0
        self.cond = threading.Condition()
        self.closed = False

    def put(self, item: Item) -> None:
        with self.cond:
            while self.items and self.nbytes + len(item.data) > self.max_bytes:
                old = self.items.popleft()
                self.nbytes -= len(old.data)
                old.tap.dropped += 1
            self.items.append(item)
            self.nbytes += len(item.data)
            self.cond.notify()

    def get(self) -> Item | None:
        """The oldest item; None once closed and empty. Waits at most CHUNK_SECONDS."""
        with self.cond:
            if not self.items and not self.closed:
                self.cond.wait(CHUNK_SECONDS)
            if not self.items:
                return None
            item = self.items.popleft()
            self.nbytes -= len(item.data)
            return item

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()


@dataclass
class FileSeries:
    """Where the recording goes: ``FILE``, or ``stem_0.mcap``, ``stem_1.mcap``, ... when split."""

    path: Path
    compression: str
    metadata: dict[str, str]
    split_bytes: int | None = None
    split_ns: int | None = None
    mode: int = RECORDING_MODE
    written: list[Path] = field(default_factory=list)

    def next_path(self) -> Path:
        split = self.split_bytes is not None or self.split_ns is not None
        return self.path.with_name(f"{self.path.stem}_{len(self.written)}{self.path.suffix}") if split else self.path


class McapSink:
    """The writing thread's MCAP writer: one file of the series at a time.

    A message counts as *recorded* only once the chunk holding it reached the disk: each chunk
    boundary (a full chunk, the once-a-second flush, the end of a file) flushes and fsyncs the
    file, and only then are the messages since the last boundary counted. Messages of a chunk
    the disk refused (a full disk) count as *lost*: the summary never claims more than the file
    holds."""

    def __init__(self, series: FileSeries, live=None) -> None:
        self.series = series
        self.live = live  # makes a foxglove live channel for a plan (``--serve``), or None
        self.live_channels: dict[str, object] = {}
        self.writer = None
        self.bytes_written = 0
        self.error: str | None = None
        self.pending: collections.Counter[Tap] = collections.Counter()  # written since the last boundary
        self.fsyncs = 0
        self.fsync_seconds = 0.0

    def _open(self, first_ns: int) -> None:
        from mcap.writer import CompressionType, Writer

        path = self.series.next_path()
        self.file = create_recording(path, self.series.mode)
        self.series.written.append(path)
        compression = {"none": CompressionType.NONE, "lz4": CompressionType.LZ4, "zstd": CompressionType.ZSTD}
        self.writer = w = Writer(self.file, chunk_size=CHUNK_BYTES, compression=compression[self.series.compression])
        w.start(profile=PROFILE, library=f"shmlaunch {_version('shmlaunch')}")
        w.add_metadata("shmlaunch", self.series.metadata)
        self.ids: dict[str, int] = {}  # MCAP channel id by channel name, registered at its first message in this file
        self.first_ns = first_ns
        self.flushed = time.monotonic()
        self.durable_at = self.file.tell()

    def _channel(self, plan: ChannelPlan) -> int:
        cid = self.ids.get(plan.channel)
        if cid is None:
            sid = self.writer.register_schema(plan.schema_name, plan.schema_encoding, plan.schema_data)
            cid = self.ids[plan.channel] = self.writer.register_channel(plan.channel, plan.message_encoding, sid, plan.metadata)
            if self.live is not None:
                self.live_channels[plan.channel] = self.live(plan)
        return cid

    def write(self, item: Item) -> None:
        if self.writer is not None and self._full(item.publish_ns):
            self._close()
        if self.writer is None:
            self._open(item.publish_ns)
        shape = item.tap.reader.config.shape
        self.pending[item.tap] += 1
        for plan in item.tap.plans:
            data = encode(plan, item.seq, item.stamp_ns, item.source_seq, item.data, shape)
            if data is None:
                continue
            self.writer.add_message(self._channel(plan), log_time=item.publish_ns, data=data, publish_time=item.stamp_ns,
                                    sequence=item.seq & 0xFFFFFFFF)
            if self.live is not None:
                self.live_channels[plan.channel].log(data, log_time=item.publish_ns)
        self.bytes_written += len(item.data)
        if self.file.tell() != self.durable_at:  # the writer finished a chunk (this message is in it)
            self._sync()
        elif time.monotonic() - self.flushed >= CHUNK_SECONDS:
            self.flush()

    def _sync(self) -> None:
        """Hand what was written to the disk, then count its messages as recorded."""
        start = time.perf_counter()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.fsyncs += 1
        self.fsync_seconds += time.perf_counter() - start
        self.durable_at = self.file.tell()
        for tap, n in self.pending.items():
            tap.recorded += n
        self.pending.clear()

    def lose_pending(self) -> None:
        """The disk refused the open chunk: its messages are lost, and counted so."""
        for tap, n in self.pending.items():
            tap.lost += n
        self.pending.clear()

    def _full(self, now_ns: int) -> bool:
        s = self.series
        return ((s.split_bytes is not None and self.file.tell() >= s.split_bytes)
                or (s.split_ns is not None and now_ns - self.first_ns >= s.split_ns))

    def flush(self) -> None:
        """Finish the open chunk and hand it to the disk: a SIGKILL or a power cut now loses
        nothing written."""
        if self.writer is not None:
            self.writer.flush()
            self._sync()
            self.flushed = time.monotonic()

    def _close(self) -> None:
        self.writer.finish()
        self._sync()
        self.file.close()
        self.writer = None

    def close(self) -> None:
        if self.writer is not None:
            try:
                self._close()
            finally:
                self.writer = None
                with contextlib.suppress(OSError):
                    self.file.close()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def file_metadata(runtime_dir: Path) -> dict[str, str]:
    """The graph this recording comes from: name, launch file (and its text), host, versions."""
    meta = {"graph": runtime_dir.name, "runtime_dir": str(runtime_dir), "host": platform.node(), "user": getpass.getuser(),
            "shmlaunch": _version("shmlaunch"), "layout_version": str(LAYOUT_VERSION), "python": platform.python_version(),
            "mediapipe": _version("mediapipe"), "numpy": _version("numpy"), "started_ns": str(time.time_ns())}
    with contextlib.suppress(OSError, TransportError, BadStateError):
        with RuntimeDir.open(runtime_dir) as rd:
            state = GraphState.read(rd)
        meta["graph"], meta["launch_file"] = state.name, state.file
        with open(state.file, "rb") as f:
            meta["launch_file_text"] = f.read(MAX_LAUNCH_FILE_BYTES).decode("utf-8", "replace")
    return meta


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="shmlaunch record", description=(
        "Record a running graph's topics into an MCAP file (Foxglove opens it; shmlaunch play replays it). "
        "Reads as an observer: never slows or blocks a writer. Stops on SIGINT/SIGTERM, --duration, or when the graph stops."))
    ap.add_argument("file", help="the .mcap file to write (refused if it exists); with --split-*, FILE_0.mcap, FILE_1.mcap, ...")
    ap.add_argument("topics", nargs="*", help="topics to record (default: all, as --all)")
    ap.add_argument("-a", "--all", action="store_true", help="record every topic of the graph")
    ap.add_argument("--graph", help="the running graph (default: the only running graph)")
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    ap.add_argument("--split-size", type=float, metavar="MB", help="start a new file past this many MB (rosbag2: --max-bag-size)")
    ap.add_argument("--split-duration", type=float, metavar="S", help="start a new file every S seconds (--max-bag-duration)")
    ap.add_argument("--compression", choices=COMPRESSIONS, default="none", help="chunk compression (default none: camera "
                    "frames do not compress; lz4 is cheap and shrinks landmarks)")
    ap.add_argument("--queue-mb", type=float, default=DEFAULT_QUEUE_MB, help="bound of the queue between reading and writing "
                    f"(default {DEFAULT_QUEUE_MB}); past it the oldest message is dropped and counted")
    ap.add_argument("--mode", type=_octal, default=RECORDING_MODE, metavar="OCTAL", help="permissions of the files "
                    "(default 600: only you; a recording holds camera frames and the launch file's text)")
    ap.add_argument("--serve", type=int, nargs="?", const=8765, metavar="PORT", help="also serve the channels live to the "
                    "Foxglove app on ws://127.0.0.1:PORT (default 8765)")
    ap.add_argument("--no-auth", action="store_true", help="needed with --serve: the Foxglove WebSocket protocol has no "
                    "authentication, so every user of this machine can connect to 127.0.0.1:PORT and see the frames")
    ap.add_argument("--recover", nargs=2, metavar=("IN", "OUT"), help="rewrite a recording whose recorder was killed (no "
                    "footer) as a complete, indexed file; records nothing")
    return ap


def record(argv: list[str]) -> int:
    if "--recover" in argv:  # FILE is not needed then
        ap = argparse.ArgumentParser(prog="shmlaunch record --recover")
        ap.add_argument("--recover", nargs=2, metavar=("IN", "OUT"), required=True)
        from ._mcap_tools import recover

        return recover(*ap.parse_args(argv).recover)
    ns = _parser().parse_intermixed_args(argv)
    problem = _check_options(ns)
    if problem:
        return error(problem)
    try:
        runtime_dir = attach_dir(ns.graph) or default_runtime_dir()
        if not runtime_dir.exists():
            raise NoGraphError("no graph is running (start one with: shmlaunch FILE)")
        taps = _open_taps(runtime_dir, ns.topics)
    except (NoGraphError, TransportError, RecordingError, LookupError) as exc:
        return error(str(exc), EXIT_FAILED)
    series = FileSeries(Path(ns.file), ns.compression, file_metadata(runtime_dir),
                        None if ns.split_size is None else int(ns.split_size * 1e6),
                        None if ns.split_duration is None else int(ns.split_duration * 1e9), ns.mode)
    try:
        return Recorder(taps, series, int(ns.queue_mb * 1e6), ns.serve).run(ns.duration)
    except RecordingError as exc:
        return error(str(exc), EXIT_FAILED)
    finally:
        for tap in taps:
            tap.reader.close()


def _check_options(ns) -> str | None:
    if ns.all and ns.topics:
        return "give topics or --all, not both"
    if ns.serve is not None and not ns.no_auth:
        return ("--serve: the Foxglove WebSocket server has no authentication (every user of this machine could watch the "
                "frames on 127.0.0.1); add --no-auth to serve anyway")
    path = Path(ns.file)
    if path.suffix != ".mcap":
        return f"{ns.file}: the file name must end in .mcap"
    if os.path.lexists(path):
        return f"{ns.file}: exists; give a new file name (a recording is never overwritten)"
    if ns.split_size is not None or ns.split_duration is not None:
        taken = sorted(p.name for p in path.parent.glob(f"{glob.escape(path.stem)}_*{path.suffix}")
                       if p.stem[len(path.stem) + 1:].isdigit())
        if taken:
            return f"{ns.file}: {taken[0]} exists in {str(path.parent)!r}; a split recording needs every {path.stem}_N.mcap free"
    if not path.parent.is_dir():
        return f"{ns.file}: no such directory {str(path.parent)!r}"
    for name, value in (("--duration", ns.duration), ("--split-size", ns.split_size), ("--split-duration", ns.split_duration),
                        ("--queue-mb", ns.queue_mb)):
        if value is not None and not value > 0:
            return f"{name} must be a positive number, got {value}"
    return None


def _octal(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 600 or 640") from None
    if not 0 <= mode <= 0o777 or not mode & 0o600 == 0o600:
        raise argparse.ArgumentTypeError(f"mode {text} must be 600 to 777 and let you read and write")
    return mode


def _open_taps(runtime_dir: Path, names: list[str]) -> list[Tap]:
    registry = read_registry(runtime_dir)
    if not registry:
        raise LookupError(f"graph {runtime_dir.name!r} has no topics to record")
    missing = [n for n in names if n not in registry]
    if missing:
        raise LookupError(f"no topic {missing[0]!r} in graph at {runtime_dir} (topics: {', '.join(sorted(registry))})")
    chosen = names or sorted(registry)
    too_big = [n for n in chosen if registry[n]["capacity"] > MAX_MESSAGE]
    if too_big:
        raise LookupError(f"topic {too_big[0]!r} takes messages of {registry[too_big[0]]['capacity']} bytes; a recording "
                          f"holds messages of at most {MAX_MESSAGE} bytes (name the other topics to record them)")
    need = FDS_PER_TAP * len(chosen) + FDS_SPARE
    limit = backend.raise_open_file_limit()
    if need > limit:
        raise LookupError(f"recording {len(chosen)} topics needs about {need} open files; the limit is {limit} "
                          f"(raise it with ulimit -n {need}, or LimitNOFILE= in a systemd unit)")
    taps: list[Tap] = []
    try:
        for name in chosen:
            taps.append(Tap(Reader(name, runtime_dir=runtime_dir, observer=True)))
    except BaseException:
        for tap in taps:
            tap.reader.close()
        raise
    return taps


def _plan(tap: Tap) -> list[ChannelPlan]:
    """The channels of a tap, made at its first message: by then its writer has named the
    message type in the registry (a launcher creates topics before any writer runs)."""
    entry = read_registry(tap.reader.runtime_dir).get(tap.name) or {}
    config = tap.reader.config
    if entry.get("message") and config.message is None:
        config = dataclasses.replace(config, message=entry["message"])
    return plan_channels(tap.name, config)


class Recorder:
    def __init__(self, taps: list[Tap], series: FileSeries, queue_bytes: int, serve_port: int | None) -> None:
        self.taps = taps
        self.series = series
        self.queue = DropOldestQueue(queue_bytes)
        self.stop = threading.Event()
        self.serve_port = serve_port
        self.server = None
        self.sink = McapSink(series, self._serve() if serve_port is not None else None)
        self.stopped_because = "stopped"

    def _serve(self):
        """Start the Foxglove WebSocket server (127.0.0.1 only); return what makes its channels."""
        import foxglove

        context = foxglove.Context()
        try:
            self.server = foxglove.start_server(name="shmlaunch", host="127.0.0.1", port=self.serve_port, context=context)
        except Exception as exc:  # noqa: BLE001 (foxglove-sdk raises its own error types, e.g. for a port in use)
            raise RecordingError(f"cannot serve on ws://127.0.0.1:{self.serve_port}: {exc}") from None

        def live_channel(plan: ChannelPlan):
            schema = foxglove.Schema(name=plan.schema_name, encoding=plan.schema_encoding, data=plan.schema_data)
            return foxglove.Channel(plan.channel, schema=schema, message_encoding=plan.message_encoding, metadata=plan.metadata,
                                    context=context)
        return live_channel

    def run(self, duration: float | None) -> int:
        import foxglove.messages  # noqa: F401  (imported here, not at a topic's first message on the reading thread)

        # The reading thread must get the GIL back within a millisecond of a wake-up, not the
        # default 5 ms the writing thread could keep it for while it encodes a frame.
        sys.setswitchinterval(0.001)
        stop_listening = stop_on_request(self.stop.set)
        writer = threading.Thread(target=self._write, name="mcap-writer", daemon=True)
        writer.start()
        start = time.monotonic()
        where = f"{self.series.path}" + (f" (and ws://127.0.0.1:{self.serve_port})" if self.server else "")
        if self.server:
            print(f"shmlaunch: warning: serving ws://127.0.0.1:{self.serve_port} WITHOUT authentication (--no-auth): every user "
                  "of this machine can connect and see the recorded topics", file=sys.stderr, flush=True)
        print(f"shmlaunch: recording {len(self.taps)} topics to {where}; Ctrl-C stops", file=sys.stderr, flush=True)
        try:
            self._read(start, duration)
        finally:
            stop_listening()
            self.queue.close()
            writer.join()
            if self.server is not None:
                self.server.stop()
        return self._report(time.monotonic() - start)

    def _read(self, start: float, duration: float | None) -> None:
        readers = [tap.reader for tap in self.taps]
        shown = checked = start
        while not self.stop.is_set() and self.sink.error is None:
            now = time.monotonic()
            if duration is not None and now - start >= duration:
                self.stopped_because = "duration reached"
                return
            if now - checked >= 1.0:
                checked = now
                if not self._graph_alive():
                    self.stopped_because = "the graph stopped"
                    return
            if now - shown >= (1.0 if sys.stderr.isatty() else LOG_EVERY):
                shown = now
                self._progress(now - start)
            wait_any(readers, 0.2)
            for tap in self.taps:
                msg = tap.reader.receive_nowait()
                if msg is not None:
                    if tap.plans is None:
                        tap.plans = _plan(tap)
                    with msg:
                        item = Item(tap, msg.seq, msg.stamp_ns, msg.publish_ns, msg.source_seq, msg.data.tobytes())
                    tap.bytes += len(item.data)
                    self.queue.put(item)

    def _graph_alive(self) -> bool:
        """Every recorded topic's file is still the one read (one directory open for them all)."""
        try:
            with RuntimeDir.open(self.taps[0].reader.runtime_dir) as rd:
                return all(tap.reader.same_file(rd) for tap in self.taps)
        except (OSError, TransportError):
            return False

    def _write(self) -> None:
        try:
            while (item := self.queue.get()) is not None or not self.queue.closed:
                if item is None:
                    self.sink.flush()
                else:
                    self.sink.write(item)
        except (OSError, RecordingError) as exc:
            self.sink.error = f"{self.sink.series.path}: cannot write: {getattr(exc, 'strerror', None) or exc}"
        finally:
            try:
                self.sink.close()
            except OSError as exc:
                self.sink.error = self.sink.error or f"{self.sink.series.path}: cannot finish: {exc.strerror or exc}"
            if self.sink.error:
                self.sink.lose_pending()
                with self.queue.cond:
                    for item in self.queue.items:
                        item.tap.lost += 1
                    self.queue.items.clear()

    def _progress(self, elapsed: float) -> None:
        parts = [f"{t.name} {t.recorded}" + (f" (-{t.dropped} dropped)" if t.dropped else "") for t in self.taps]
        mb = self.sink.bytes_written / 1e6
        line = f"recording {elapsed:6.1f} s  {mb:8.1f} MB  queue {self.queue.nbytes / 1e6:5.1f} MB  " + "  ".join(parts)
        if sys.stderr.isatty():
            print("\r" + line[: os.get_terminal_size().columns - 1], end="", file=sys.stderr, flush=True)
        else:
            print(f"shmlaunch: {line}", file=sys.stderr, flush=True)

    def _report(self, elapsed: float) -> int:
        if sys.stderr.isatty():
            print(file=sys.stderr)
        rows = [["TOPIC", "RECORDED", "SKIPPED", "DROPPED", "LOST", "MB"]]
        rows += [[t.name, str(t.recorded), str(t.skipped), str(t.dropped), str(t.lost), f"{t.bytes / 1e6:.1f}"] for t in self.taps]
        files = ", ".join(str(p) for p in self.series.written) or "no file (nothing was published)"
        print("\n".join(table(rows)))
        summary = {"files": [str(p) for p in self.series.written], "seconds": round(elapsed, 3),
                   "fsyncs": self.sink.fsyncs, "fsync_seconds": round(self.sink.fsync_seconds, 4),
                   "topics": {t.name: {"recorded": t.recorded, "skipped": t.skipped, "dropped": t.dropped, "lost": t.lost}
                              for t in self.taps}}
        print(f"shmlaunch: {self.stopped_because} after {elapsed:.1f} s; wrote {files}", file=sys.stderr)
        print(f"shmlaunch: summary {json.dumps(summary)}", file=sys.stderr, flush=True)
        if self.sink.error:
            return error(self.sink.error, EXIT_FAILED)
        return 0
