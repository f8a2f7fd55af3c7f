"""The bridge node: a graph's topics across machines over Eclipse Zenoh, newest-only end to end.

One bridge process per graph (the launcher starts it from the launch file's ``bridge:``
section; one zenoh session per host). It never builds a queue anywhere:

- an **exporter** (one thread per exported topic) reads the newest message as an observer
  (never counted as a reader, never in a writer's way), optionally JPEG-encodes a frame,
  ``put()``s it with congestion control DROP, and only then looks for the newest again; what
  it never saw is counted as skipped. Small topics go at a higher priority than frames, so
  landmarks never wait behind a frame's fragments. A ``rate`` caps how often it sends.
  Frames go with congestion control BLOCK on their own lane (``_bridge_config``): the
  exporter's ``put`` then returns when the frame is on its way, so a frame is delivered at
  whatever rate the link carries, never dropped in pieces, and never queued behind more than
  the one in flight.
- an **importer** (one thread per imported topic) first asks the exporters for the topic's
  description (every answer: two hosts exporting one topic are refused unless the import
  names one), creates or checks the local topic from it (a mismatch is refused, naming both
  sides; a topic larger than ``max_topic_mb`` or half of /dev/shm's free space too), then
  takes samples from that one host only, keeps only the newest (a one-slot box) and copies it
  into a slot of the local topic with the remote capture stamp and ``source_seq``, numbered
  locally (so this host's tools show the rate that arrives). Every byte from the network is
  checked first (``_bridge_sample``): a bad sample is counted per kind and logged at most once
  a minute, never a stopped import; samples older than ``max_age`` beyond the link's quickest
  (what zenoh and TCP held through an outage) are dropped, not delivered as a burst.

Loops cannot happen: exporters publish to remote subscribers only, importers accept remote
samples only. Presence travels as liveliness tokens; ``bridge.json`` in the runtime directory
is what ``shmlaunch bridge status`` and ``shmlaunch topic list --remote`` show.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shmlaunch import _platform as backend
from shmlaunch.transport import RuntimeDir, Topic, TopicConfig, TransportError, Writer, read_registry

from ._bridge_config import DEFAULT_MAX_TOPIC_MB, endpoints, zenoh_config
from ._bridge_sample import AgeFilter, Header, Rejected, check_header, check_length, check_payload, decode
from ._bridge_wire import (
    ATTACHMENT,
    ENCODINGS,
    HOST_RE,
    PREFIX,
    Metadata,
    data_key,
    describe,
    layout_hash,
    live_key,
    meta_key,
    parse_key,
    same_layout,
)
from ._node import Node, NodeSetupError
from ._params import Param

STATUS_FILE = "bridge.json"
#: Topics up to this size go at the high data priority unless the launch file says otherwise.
SMALL_TOPIC = 64 << 10
#: How long an importer waits for a sample before it asks whether the exporter sends at all.
SILENCE_CHECK = 5.0
META_TIMEOUT = 1.0
NO_PEER_WARNING = 5.0
#: Remote topics the bridge keeps track of (liveliness tokens beyond it are counted, not kept).
MAX_REMOTE = 1024
#: How often the list of remote topics is rebuilt from the tokens alive now (what went away ages out).
REMOTE_REFRESH = 30.0
#: A rejected kind is logged at most this often per topic (with the count since).
SAY_EVERY = 60.0
#: After a sample with another layout hash, the exporter's description is asked again at most this often.
RECHECK_EVERY = 2.0
DEFAULT_MAX_AGE = 0.5
#: Teardown waits this long for zenoh to close (the launcher kills a node after 5 s).
CLOSE_WITHIN = 2.0


def default_host() -> str:
    """This machine's name as a key chunk: the hostname with anything else replaced."""
    name = "".join(c if c.isalnum() or c in "_-" else "-" for c in socket.gethostname().split(".")[0]) or "host"
    return name[:63]


@dataclass
class Counters:
    """One topic's traffic, for bridge.json: totals and the rate over the last second."""

    messages: int = 0
    bytes: int = 0
    skipped: int = 0  # exporter: messages it never saw; importer: samples replaced by a newer one before copied
    lost: int = 0  # importer: samples the exporter put that never arrived (gaps in its count)
    remote_seq: int = 0  # importer: the exporter's sequence number of the newest message written
    rejected: dict = field(default_factory=dict)  # importer: samples refused, per kind (_bridge_sample.KINDS)
    last_ns: int = 0
    state: str = "starting"
    detail: str = ""
    window: list = field(default_factory=lambda: [time.monotonic(), 0, 0, 0.0, 0.0])  # t0, messages, bytes, hz, MB/s

    def count(self, nbytes: int) -> None:
        self.messages += 1
        self.bytes += nbytes
        self.last_ns = time.time_ns()

    def snapshot(self, skipped: int | None = None) -> dict:
        """For bridge.json (``skipped``: an exporter's reader's count, read here rather than per message)."""
        if skipped is not None:
            self.skipped = skipped
        now = time.monotonic()
        t0, m0, b0, hz, mbs = self.window
        if now - t0 >= 1.0:
            hz, mbs = (self.messages - m0) / (now - t0), (self.bytes - b0) / 1e6 / (now - t0)
            self.window = [now, self.messages, self.bytes, hz, mbs]
        return {"state": self.state, "detail": self.detail, "messages": self.messages, "bytes": self.bytes, "skipped": self.skipped,
                "lost": self.lost, "remote_seq": self.remote_seq, "rejected": dict(self.rejected),
                "hz": round(hz, 2), "mb_s": round(mbs, 3), "last_ns": self.last_ns}


class _TopicThread(threading.Thread):
    """One exported or imported topic's thread: ``work()`` until the bridge stops; a failure is
    said once and shown as the topic's state, never a thread that silently vanishes."""

    counters: Counters
    bridge: Bridge

    def run(self) -> None:
        try:
            self.work()
        except Exception as exc:  # noqa: BLE001 (a thread must say why it stopped, not vanish)
            if not self.bridge.stop.is_set():
                self.counters.state, self.counters.detail = "failed", str(exc)
                self.bridge.log.error("%s stopped: %s: %s", self.name, type(exc).__name__, exc)

    def work(self) -> None:
        raise NotImplementedError


class Exporter(_TopicThread):
    def __init__(self, bridge: Bridge, topic: str, spec: dict) -> None:
        super().__init__(name=f"export {topic!r}", daemon=True)
        self.bridge, self.topic, self.spec = bridge, topic, spec
        self.counters = Counters()
        self.handle = Topic.open(topic, runtime_dir=bridge.runtime_dir)
        self.config = self._config_with_message()
        self.encode = spec.get("encode", "raw")
        if self.encode == "jpeg" and not (self.config.dtype == np.uint8 and self.config.shape and len(self.config.shape) in (2, 3)):
            raise NodeSetupError(f"export {topic!r}: encode: jpeg needs a uint8 image topic ([height, width, 3]), "
                                 f"this one is {describe(self.config)}")
        self.hash = layout_hash(self.config)
        self.reader = self.handle.reader(observer=True)
        self.period = 1.0 / spec["rate"] if spec.get("rate") else 0.0
        self.quality = int(spec.get("quality", 85))

    def _config_with_message(self) -> TopicConfig:
        entry = read_registry(self.bridge.runtime_dir).get(self.topic) or {}
        c = self.handle.config
        return TopicConfig(c.capacity, c.pool, c.dtype, c.shape, message=entry.get("message") or c.message)

    def declare(self, session) -> None:
        import zenoh

        b = self.bridge
        small = self.config.capacity <= SMALL_TOPIC
        priority = {"high": zenoh.Priority.DATA_HIGH, "normal": zenoh.Priority.DATA, "low": zenoh.Priority.DATA_LOW}[
            self.spec.get("priority", "high" if small else "low")]
        # small: dropped rather than queued (the next one is 10 ms away); frames: BLOCK, one in flight
        # (DROP throws away a frame whose fragments cannot all go out within 50 ms: none on a slow link)
        congestion = zenoh.CongestionControl.DROP if small else zenoh.CongestionControl.BLOCK
        self.publisher = session.declare_publisher(
            data_key(b.host, b.graph_name, self.topic), encoding=zenoh.Encoding.APPLICATION_OCTET_STREAM,
            congestion_control=congestion, priority=priority, express=small, allowed_destination=zenoh.Locality.REMOTE)
        self.queryable = session.declare_queryable(meta_key(b.host, b.graph_name, self.topic), self._answer)
        self.token = session.liveliness().declare_token(live_key(b.host, b.graph_name, self.topic))

    def _answer(self, query) -> None:
        b = self.bridge
        if self.config.message is None:  # its writer may have named the message type since
            self.config = self._config_with_message()
            if self.config.message is None and self.handle.dynamic().latest_seq == 0:
                return  # no writer has said what it sends yet: the importer asks again
        meta = Metadata(b.host, b.graph_name, self.topic, self.config, self.encode, self.counters.messages)
        query.reply(meta_key(b.host, b.graph_name, self.topic), meta.to_json())  # its own key: says which host answers

    def work(self) -> None:
        self.counters.state = "exporting"
        next_at = 0.0
        while not self.bridge.stop.is_set():
            if self.period and (wait := next_at - time.monotonic()) > 0:
                self.bridge.stop.wait(wait)
                continue
            msg = self.reader.receive(timeout=0.2)
            if msg is None:
                continue
            with msg:
                payload = self._payload(msg.data)
                seq, stamp, source_seq = msg.seq, msg.stamp_ns, msg.source_seq
            head = ATTACHMENT.pack(self.hash, seq, stamp, time.time_ns(), source_seq, ENCODINGS.index(self.encode), len(payload),
                                   self.counters.messages + 1)
            self.publisher.put(payload, attachment=head)  # returns once sent (or dropped): then the newest again
            self.counters.count(len(payload))
            next_at = time.monotonic() + self.period

    def _payload(self, data: np.ndarray) -> bytes:
        if self.encode == "jpeg":
            import cv2

            ok, buf = cv2.imencode(".jpg", data, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            return buf.tobytes()
        return data.tobytes()

    def close(self) -> None:
        for obj in ("token", "queryable", "publisher"):
            with contextlib.suppress(Exception):
                getattr(self, obj).undeclare()
        self.reader.close()
        self.handle.close()


class Importer(_TopicThread):
    def __init__(self, bridge: Bridge, remote: str, spec: dict) -> None:
        super().__init__(name=f"import {remote!r}", daemon=True)
        self.bridge, self.remote, self.spec = bridge, remote, spec
        self.graph, _, self.remote_topic = remote.partition("/")
        self.local = spec.get("topic") or self.remote_topic
        self.host = spec.get("host") or "*"
        self.counters = Counters()
        self.counters.state = "waiting for the exporter"
        self.box: list = []  # the newest sample not yet copied (one slot: RingChannel(1))
        self.arrived = threading.Event()
        self.meta: Metadata | None = None
        self.writer: Writer | None = None
        self.subscriber = None
        self.reported: set[str] = set()
        self.said: dict[str, tuple[float, int]] = {}  # rejected kind -> (when last logged, count then)
        self.inline = False  # small raw samples are written on zenoh's thread (see _on_sample)
        self.lock = threading.Lock()  # the writer, between zenoh's thread and this one
        self.age = AgeFilter(float(spec.get("max_age", DEFAULT_MAX_AGE)))
        self.recheck_at: float | None = None  # when to ask the exporter for its description again (a foreign hash arrived)
        self.rechecked = -RECHECK_EVERY  # when it was last asked
        self.replaced_since = 0  # samples replaced in the box since the last one written (not lost on the way)
        self.last_sent = 0

    def declare(self, session) -> None:
        self.session = session

    def _subscribe(self, host: str) -> None:
        """Samples from ``host`` only: another host exporting the same topic is never mixed in."""
        import zenoh

        self._unsubscribe()
        self.subscriber = self.session.declare_subscriber(data_key(host, self.graph, self.remote_topic), self._on_sample,
                                                          allowed_origin=zenoh.Locality.REMOTE)

    def _unsubscribe(self) -> None:
        if self.subscriber is not None:
            with contextlib.suppress(Exception):
                self.subscriber.undeclare()
            self.subscriber = None

    def _on_sample(self, sample) -> None:
        """On a zenoh thread: every check that needs no decoding. A small raw sample is then
        written at once (a copy of a few kB: no hand-over to the importer thread, which would
        cost a wake-up); anything else is kept as the newest for the importer thread (a JPEG
        decode must not hold up zenoh's receiving). A bad sample never displaces a good one."""
        with self.lock:
            checked = self._guarded(self._check, sample)
            if checked is None:
                return
            if self.inline:
                header, payload, writer = checked
                self._guarded(lambda: self._store(header, decode(payload, header, self.meta), writer))
                return
            if self.box:
                self.counters.skipped += 1
                self.replaced_since += 1
            self.box[:] = [checked]
        self.arrived.set()

    def say_once(self, key: str, text: str, level: str = "warning") -> None:
        if key not in self.reported:
            self.reported.add(key)
            getattr(self.bridge.log, level)("%s", text)

    def work(self) -> None:
        last_check = time.monotonic()
        seen = 0
        while not self.bridge.stop.is_set():
            if self.meta is None:
                self._fetch_metadata()
                if self.meta is None:
                    self.bridge.stop.wait(0.5)
                    continue
            if self.arrived.wait(0.2):
                self.arrived.clear()
                with self.lock:
                    checked = self.box.pop() if self.box else None
                if checked is not None:
                    self._guarded(self._decode_and_store, *checked)
            if self.recheck_at is not None and time.monotonic() >= self.recheck_at:
                self._recheck()
            if time.monotonic() - last_check >= SILENCE_CHECK:
                last_check = time.monotonic()
                seen = self._check_silence(seen)

    def _descriptions(self, host: str) -> dict[str, Metadata]:
        """Every exporter's answer (consolidation off: zenoh would keep one of several), by host;
        an answer whose key names another host than it claims is not one."""
        import zenoh

        replies: dict[str, Metadata] = {}
        with contextlib.suppress(Exception):
            for reply in self.session.get(meta_key(host, self.graph, self.remote_topic), timeout=META_TIMEOUT,
                                          consolidation=zenoh.ConsolidationMode.NONE):
                if reply.ok is None or len(replies) >= 16:
                    continue
                try:
                    meta = Metadata.from_json(reply.ok.payload.to_string())
                    parsed = parse_key(reply.ok.key_expr)
                    if parsed is None or parsed != (meta.host, meta.graph, meta.topic) or meta.graph != self.graph:
                        raise ValueError(f"a description of {meta.host}/{meta.graph}/{meta.topic} under key {str(reply.ok.key_expr)[:120]}")
                except ValueError as exc:
                    self.say_once("bad meta", f"import {self.remote!r}: ignored a reply: {exc}", "error")
                    continue
                replies[meta.host] = meta
        return replies

    def _fetch_metadata(self) -> None:
        replies = self._descriptions(self.host)
        if len(replies) > 1:
            self.counters.state, self.counters.detail = "ambiguous", f"exported by {', '.join(sorted(replies))}"
            self.say_once("hosts", f"import {self.remote!r}: refused: exported by hosts {', '.join(sorted(replies))}: "
                                   f"name one with 'host:' in the import", "error")
            return
        if replies:
            self._adopt(next(iter(replies.values())))

    def _adopt(self, meta: Metadata) -> None:
        """Create or check the local topic from the exporter's description."""
        declared = self.bridge.declared.get(self.local)
        if declared is not None and not same_layout(declared, meta.config):
            self.counters.state, self.counters.detail = "refused", f"{meta.host} exports {describe(meta.config)}"
            self.say_once("mismatch", f"import {self.remote!r} from {meta.host}: refused: the exporter's topic is "
                          f"{describe(meta.config)}, local topic {self.local!r} is {describe(declared)}", "error")
            return
        c = meta.config
        pool = declared.pool if declared else c.pool
        if (why := self._too_big(TopicConfig(c.capacity, pool).segment_size)) is not None:
            self.counters.state, self.counters.detail = "refused", why
            self.say_once("too big", f"import {self.remote!r} from {meta.host}: refused: {describe(c)} {why}", "error")
            return
        try:
            self.writer = Writer(self.local, c.capacity, pool, dtype=c.dtype, shape=c.shape,
                                 runtime_dir=self.bridge.runtime_dir, message=c.message)
        except (TransportError, ValueError) as exc:  # ValueError: a description the local topic cannot take (its message type)
            self.counters.state, self.counters.detail = "refused", str(exc)[:200]
            self.say_once("writer", f"import {self.remote!r} from {meta.host}: refused: {exc}", "error")
            return
        self.hash = layout_hash(c)
        self.meta = meta
        self.inline = meta.encode == "raw" and c.capacity <= SMALL_TOPIC
        self.counters.state, self.counters.detail = "importing", f"from {meta.host}"
        self._subscribe(meta.host)
        self.bridge.log.info("importing %s/%s from %s into %r (%s%s)", self.graph, self.remote_topic, meta.host, self.local,
                             describe(c), ", jpeg" if meta.encode == "jpeg" else "")

    def _too_big(self, segment: int) -> str | None:
        """Why a segment of this size is not made here (a peer's description must not fill /dev/shm)."""
        limit = self.bridge.max_topic_mb * (1 << 20)
        if segment > limit:
            return f"needs a {segment / (1 << 20):.0f} MB segment, more than max_topic_mb {self.bridge.max_topic_mb:g}"
        try:
            free = backend.free_bytes(self.bridge.runtime_dir)
        except OSError:
            return None
        if segment > free // 2:
            return f"needs a {segment / (1 << 20):.0f} MB segment, more than half of the {free / (1 << 20):.0f} MB free"
        return None

    def _guarded(self, step, *args):
        """``step(*args)``, or None after counting and saying why not (never raises: one bad sample
        must not stop the import)."""
        try:
            return step(*args)
        except Rejected as r:
            self._rejected(r.kind, str(r))
        except Exception as exc:  # noqa: BLE001 (anything else a sample provokes is counted too, not fatal)
            self._rejected("other", f"{type(exc).__name__}: {exc}")
        return None

    def _rejected(self, kind: str, text: str) -> None:
        """Counted per kind; logged the first time and then at most once a minute, with the count since."""
        count = self.counters.rejected.get(kind, 0) + 1
        self.counters.rejected[kind] = count
        when, before = self.said.get(kind, (None, 0))
        now = time.monotonic()
        if when is None or now - when >= SAY_EVERY:
            self.said[kind] = (now, count)
            since = f" ({count - before} since the last report)" if when is not None else ""
            self.bridge.log.warning("import %r: rejected a sample%s: %s", self.remote, since, text)
        if kind == "hash" and self.recheck_at is None:  # a changed exporter, or a stranger: its description says which
            self.recheck_at = max(now, self.rechecked + RECHECK_EVERY)

    def _check(self, sample) -> tuple[Header, bytes, object] | None:
        """(header, payload, writer) of a sample that passed every check but decoding."""
        writer = self.writer
        if writer is None:
            return None  # between a layout change and the new description: nothing to write into
        head = sample.attachment.to_bytes() if sample.attachment is not None else b""
        header = check_header(head, self.hash, self.meta)
        check_length(len(sample.payload), self.meta)  # before the payload is copied out of zenoh
        self.age.check(header.publish_ns)
        payload = sample.payload.to_bytes()
        check_payload(payload, header, self.meta)
        return header, payload, writer

    def _decode_and_store(self, header: Header, payload: bytes, writer: Writer) -> None:
        data = decode(payload, header, self.meta)  # outside the lock: zenoh's thread keeps checking the next sample
        with self.lock:
            self._store(header, data, writer)

    def _store(self, header: Header, data, writer: Writer) -> None:
        """Publish into the local topic (numbered here) and count; the writer is the one the sample was checked against."""
        if writer is not self.writer:
            return  # the layout changed since the check
        writer.publish(data, stamp_ns=header.stamp_ns, source_seq=header.source_seq)
        if self.last_sent and header.sent > self.last_sent:
            self.counters.lost += max(0, header.sent - self.last_sent - 1 - self.replaced_since)
        self.last_sent, self.replaced_since = header.sent, 0
        self.counters.remote_seq = header.seq
        self.counters.count(header.nbytes)

    def _recheck(self) -> None:
        """A sample with another layout hash arrived: the exporter restarted with another layout
        (then the topic is described anew), or someone else sent it (then nothing changes)."""
        self.recheck_at, self.rechecked = None, time.monotonic()
        meta = self._descriptions(self.meta.host).get(self.meta.host)
        if meta is None or layout_hash(meta.config) == self.hash:
            return  # no answer (asked again at the next foreign sample), or the same layout: someone else sent it
        self.say_once("hash", f"import {self.remote!r}: the exporter's topic layout changed mid-run (its graph restarted with "
                              f"another layout?): asking for its description again", "error")
        with self.lock:
            self.inline = False
            self._unsubscribe()
            self.writer.close()
            self.meta, self.writer = None, None
        self.reported.discard("mismatch")

    def _check_silence(self, seen: int) -> int:
        """Once: an exporter that sends while nothing arrives here (frames too big for the link);
        and, for an import that names no host, a second host that exports the topic too."""
        if self.meta is None:
            return seen
        before = self.meta.sent
        replies = self._descriptions(self.host)
        if self.meta.host in replies:
            self.meta = replies[self.meta.host]
        others = sorted(set(replies) - {self.meta.host})
        if others:
            self.say_once("more hosts", f"import {self.remote!r}: also exported by {', '.join(others)} now; still importing from "
                                        f"{self.meta.host} only (name one with 'host:' in the import)")
        sent = self.meta.sent - before
        if sent > 0 and self.counters.messages == seen:
            size = self.meta.config.capacity
            self.say_once("silent", f"import {self.remote!r}: {self.meta.host} sent {sent} messages in the last {SILENCE_CHECK:g} s "
                          f"and none arrived: messages of {size / 1e6:.1f} MB do not cross this link in time; on the exporter set "
                          f"'rate:' lower or 'encode: jpeg' (frames), or give the link more bandwidth")
            self.counters.detail = "nothing arrives: see the log"
        return self.counters.messages

    def close(self) -> None:
        self._unsubscribe()
        if self.writer is not None:
            self.writer.close()


class Bridge(Node):
    """Exports and imports topics over Zenoh (the launch file's ``bridge:`` section)."""

    section = Param("{}", "the launch file's bridge section as JSON (the launcher passes it)")

    def setup(self) -> None:
        try:
            import zenoh
        except ImportError:
            raise NodeSetupError("the bridge needs eclipse-zenoh: install shmlaunch's 'bridge' extra "
                                 "(uv pip install -e '.[bridge]')") from None
        section = json.loads(self.section)
        self._said: set[str] = set()
        self.host = section.get("host") or default_host()
        if not HOST_RE.fullmatch(self.host):
            raise NodeSetupError(f"bridge host name {self.host!r}: use letters, digits, '_' and '-'")
        self.graph_name = section["graph"]
        self.max_topic_mb = float(section.get("max_topic_mb", DEFAULT_MAX_TOPIC_MB))
        self.stop = threading.Event()
        self.declared = {name: TopicConfig.build(**{k: v for k, v in t.items() if k != "message"}) for name, t in section.get("declared", {}).items()}
        self.exporters = [Exporter(self, topic, spec or {}) for topic, spec in section.get("export", {}).items()]
        self.importers = [Importer(self, remote, spec or {}) for remote, spec in section.get("import", {}).items()]
        try:
            config = zenoh_config(section, Path.cwd())
            self.session = zenoh.open(config)
        except Exception as exc:  # noqa: BLE001 (zenoh raises ZError for a bad config or endpoint)
            raise NodeSetupError(f"cannot open the zenoh session: {exc}") from None
        self.endpoints = endpoints(config, "connect") or endpoints(config, "listen")
        self.tls = any(e.startswith("tls/") for e in self.endpoints)
        self.remote: dict[str, dict] = {}
        self.remote_ignored = 0  # liveliness tokens past MAX_REMOTE
        self.remote_refreshed = time.monotonic()
        self.liveliness = self.session.liveliness().declare_subscriber(f"{PREFIX}/live/**", self._on_live, history=True)
        for t in self.exporters + self.importers:
            t.declare(self.session)
            t.start()
        self.started = time.monotonic()
        self.peers: list[str] = []
        self.ever_connected = False
        self.log.info("bridge %s: zenoh %s, exporting %s, importing %s", self.host, self.session.zid(),
                      ", ".join(e.topic for e in self.exporters) or "nothing", ", ".join(i.remote for i in self.importers) or "nothing")
        self.timer(1.0, self._status)

    def _on_live(self, sample) -> None:
        import zenoh

        if sample.kind == zenoh.SampleKind.DELETE:
            self.remote.pop(str(sample.key_expr), None)
        else:
            self._remember(str(sample.key_expr), self.remote)

    def _remember(self, key: str, into: dict) -> None:
        """One remote topic, unless it is ours, not a topic key, or past MAX_REMOTE (then counted:
        a peer declaring thousands of tokens must not grow bridge.json without bound)."""
        parsed = parse_key(key)
        if parsed is None or parsed[0] == self.host or key in into:
            return
        if len(into) >= MAX_REMOTE:
            self.remote_ignored += 1
            self.say_once(f"more than {MAX_REMOTE} remote topics are announced: the rest are counted, not listed")
            return
        into[key] = {"host": parsed[0], "graph": parsed[1], "topic": parsed[2][:200]}

    def _refresh_remote(self) -> None:
        """The list rebuilt from the tokens alive now: what went away without a word ages out."""
        self.remote_refreshed = time.monotonic()
        alive: dict[str, dict] = {}
        with contextlib.suppress(Exception):
            for reply in self.session.liveliness().get(f"{PREFIX}/live/**", timeout=0.5):
                if reply.ok is not None:
                    self._remember(str(reply.ok.key_expr), alive)
        self.remote = alive

    def _status(self) -> None:
        peers = sorted(str(z) for z in self.session.info.peers_zid()) + sorted(str(z) for z in self.session.info.routers_zid())
        if peers != self.peers:
            gone, new = set(self.peers) - set(peers), set(peers) - set(self.peers)
            for z in sorted(new):
                self.log.info("connected to peer %s", z)
            for z in sorted(gone):
                self.log.warning("peer %s went away: imported topics keep their last message until it is back", z)
            self.peers = peers
        self.ever_connected = self.ever_connected or bool(peers)
        if time.monotonic() - self.remote_refreshed >= REMOTE_REFRESH:
            self._refresh_remote()
        if not self.ever_connected and self.endpoints and time.monotonic() - self.started > NO_PEER_WARNING:
            why = (" (with TLS: a peer whose certificate the other side does not trust, or that has none while mTLS is "
                   "required, never connects; check transport/link/tls in the zenoh config)") if self.tls else ""
            self.say_once(f"no peer has connected after {NO_PEER_WARNING:g} s (endpoints {', '.join(self.endpoints)}){why}")
        doc = {"host": self.host, "graph": self.graph_name, "zid": str(self.session.zid()), "peers": peers, "pid": os.getpid(),
               "written_ns": time.time_ns(),
               "exports": {e.topic: {**e.counters.snapshot(skipped=e.reader.statistics().missed), "encode": e.encode}
                           for e in self.exporters},
               "imports": {i.remote: {**i.counters.snapshot(), "local": i.local, "host": i.meta.host if i.meta else None}
                           for i in self.importers},
               "remote": sorted(self.remote.values(), key=lambda r: (r["host"], r["graph"], r["topic"])),
               "remote_ignored": self.remote_ignored}
        with contextlib.suppress(OSError, TransportError), RuntimeDir.open(self.runtime_dir) as rd:
            rd.write_atomic(STATUS_FILE, json.dumps(doc).encode())

    def say_once(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            self.log.warning("%s", text)

    def teardown(self) -> None:
        """Within CLOSE_WITHIN seconds whatever the network does: with a link that went down,
        zenoh's close and a frame's blocked ``put`` wait for the link's timeouts (measured: past
        the launcher's 5 s, which then killed the bridge)."""
        self.stop.set()
        with contextlib.suppress(OSError, TransportError), RuntimeDir.open(self.runtime_dir) as rd:
            rd.unlink(STATUS_FILE)
        closing = threading.Thread(target=self._close_all, name="zenoh close", daemon=True)
        closing.start()
        closing.join(CLOSE_WITHIN)
        if closing.is_alive():
            self.log.warning("zenoh did not close within %g s (a peer unreachable?): leaving it to the process's exit", CLOSE_WITHIN)

    def _close_all(self) -> None:
        for t in self.exporters + self.importers:
            t.join(1.0)
            t.close()
        with contextlib.suppress(Exception):
            self.liveliness.undeclare()
        with contextlib.suppress(Exception):
            self.session.close()
