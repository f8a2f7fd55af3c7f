"""The bridge node: a graph's topics across machines over Eclipse Zenoh, newest-only end to end.

One bridge process per graph (the launcher starts it from the launch file's ``bridge:``
section; one zenoh session per host). It never builds a queue anywhere:

- an **exporter** (one thread per exported topic) reads the newest message as an observer
  (never counted as a reader, never in a writer's way), optionally JPEG-encodes a frame,
  ``put()``s it with congestion control DROP, and only then looks for the newest again; what
  it never saw is counted as skipped. Small topics go at a higher priority than frames, so
  landmarks never wait behind a frame's fragments. A ``rate`` caps how often it sends.
- an **importer** (one thread per imported topic) first asks the exporter for the topic's
  description (its queryable), creates or checks the local topic from it (a mismatch is
  refused, naming both sides), then keeps only the newest sample that arrives (a one-slot
  box, RingChannel(1)'s behaviour) and copies it into a loaned slot of the local topic with
  the remote capture stamp, ``source_seq`` and sequence number. Every sample's attachment
  carries the layout hash, so a change mid-run is caught.

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

from shmlaunch.transport import RuntimeDir, Topic, TopicConfig, TransportError, Writer, read_registry

from ._bridge_wire import (
    ATTACHMENT,
    ENCODINGS,
    HOST_RE,
    PREFIX,
    Metadata,
    as_array,
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
#: Reconnect backoff (zenoh's default grows to 4 s; a peer that comes back is found within 1 s).
RETRY = "{period_init_ms: 200, period_max_ms: 500, period_increase_factor: 2}"
NO_PEER_WARNING = 5.0


def default_host() -> str:
    """This machine's name as a key chunk: the hostname with anything else replaced."""
    name = "".join(c if c.isalnum() or c in "_-" else "-" for c in socket.gethostname().split(".")[0]) or "host"
    return name[:63]


def zenoh_config(section: dict, base_dir: Path):
    """The session's config: a zenoh config file verbatim (TLS, access control are zenoh's own),
    with ``mode``, ``listen`` and ``connect`` from the launch file on top. Shared memory off:
    another "host" may share this machine's /dev/shm, and the bridge copies anyway. Without a
    file, explicit endpoints turn multicast scouting off; with neither, zenoh's defaults
    (peers on the LAN find each other)."""
    import zenoh

    config = zenoh.Config.from_file(str(base_dir / section["config"])) if section.get("config") else zenoh.Config()
    if section.get("mode"):
        config.insert_json5("mode", json.dumps(section["mode"]))
    for key in ("listen", "connect"):
        if section.get(key):
            config.insert_json5(f"{key}/endpoints", json.dumps(section[key]))
    if not section.get("config") and (section.get("listen") or section.get("connect")):
        # explicit endpoints: an explicit mesh, not whatever else on the LAN answers multicast scouting
        config.insert_json5("scouting/multicast/enabled", "false")
    config.insert_json5("connect/retry", RETRY)
    config.insert_json5("transport/shared_memory/enabled", "false")
    return config


def _endpoints(config, key: str) -> list[str]:
    """The session's ``connect`` or ``listen`` endpoints, however they were given."""
    try:
        value = json.loads(config.get_json(f"{key}/endpoints"))
    except Exception:  # noqa: BLE001 (absent, or a per-mode mapping)
        return []
    if isinstance(value, dict):  # {router: [...], peer: [...]}: every mode's
        value = [e for v in value.values() for e in (v or [])]
    return [str(e) for e in value or []]


@dataclass
class Counters:
    """One topic's traffic, for bridge.json: totals and the rate over the last second."""

    messages: int = 0
    bytes: int = 0
    skipped: int = 0  # exporter: messages it never saw; importer: samples replaced by a newer one before copied
    last_ns: int = 0
    state: str = "starting"
    detail: str = ""
    window: list = field(default_factory=lambda: [time.monotonic(), 0, 0, 0.0, 0.0])  # t0, messages, bytes, hz, MB/s

    def count(self, nbytes: int) -> None:
        self.messages += 1
        self.bytes += nbytes
        self.last_ns = time.time_ns()

    def snapshot(self) -> dict:
        now = time.monotonic()
        t0, m0, b0, hz, mbs = self.window
        if now - t0 >= 1.0:
            hz, mbs = (self.messages - m0) / (now - t0), (self.bytes - b0) / 1e6 / (now - t0)
            self.window = [now, self.messages, self.bytes, hz, mbs]
        return {"state": self.state, "detail": self.detail, "messages": self.messages, "bytes": self.bytes, "skipped": self.skipped,
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
        self.publisher = session.declare_publisher(
            data_key(b.host, b.graph_name, self.topic), encoding=zenoh.Encoding.APPLICATION_OCTET_STREAM,
            congestion_control=zenoh.CongestionControl.DROP, priority=priority, express=small,
            allowed_destination=zenoh.Locality.REMOTE)
        self.queryable = session.declare_queryable(meta_key(b.host, b.graph_name, self.topic), self._answer)
        self.token = session.liveliness().declare_token(live_key(b.host, b.graph_name, self.topic))

    def _answer(self, query) -> None:
        b = self.bridge
        if self.config.message is None:  # its writer may have named the message type since
            self.config = self._config_with_message()
            if self.config.message is None and self.handle.dynamic().latest_seq == 0:
                return  # no writer has said what it sends yet: the importer asks again
        meta = Metadata(b.host, b.graph_name, self.topic, self.config, self.encode, self.counters.messages)
        query.reply(query.key_expr, meta.to_json())

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
                head = ATTACHMENT.pack(self.hash, msg.seq, msg.stamp_ns, msg.publish_ns, msg.source_seq,
                                       ENCODINGS.index(self.encode), msg.data.nbytes)
            self.publisher.put(payload, attachment=head)  # returns once sent (or dropped): then the newest again
            self.counters.count(len(payload))
            self.counters.skipped = self.reader.statistics().missed
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
        self.reported: set[str] = set()
        self.inline = False  # small raw samples are written on zenoh's thread (see _on_sample)
        self.lock = threading.Lock()  # the writer, between zenoh's thread and this one

    def declare(self, session) -> None:
        import zenoh

        self.session = session
        self.subscriber = session.declare_subscriber(data_key(self.host, self.graph, self.remote_topic), self._on_sample,
                                                     allowed_origin=zenoh.Locality.REMOTE)

    def _on_sample(self, sample) -> None:
        """On a zenoh thread. A small raw sample is written at once (a copy of a few kB: no hand-over
        to the importer thread, which would cost a wake-up); anything else is kept as the newest
        for the importer thread (a JPEG decode must not hold up zenoh's receiving)."""
        if self.inline:
            with self.lock:
                self._write(sample)
            return
        if self.box:
            self.counters.skipped += 1
        self.box[:] = [sample]
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
                with contextlib.suppress(IndexError), self.lock:
                    self._write(self.box.pop())
            if time.monotonic() - last_check >= SILENCE_CHECK:
                last_check = time.monotonic()
                seen = self._check_silence(seen)

    def _fetch_metadata(self) -> None:
        replies = {}
        with contextlib.suppress(Exception):
            for reply in self.session.get(meta_key(self.host, self.graph, self.remote_topic), timeout=META_TIMEOUT):
                if reply.ok is not None:
                    try:
                        meta = Metadata.from_json(reply.ok.payload.to_string())
                    except ValueError as exc:
                        self.say_once("bad meta", f"import {self.remote!r}: {exc}", "error")
                        continue
                    replies[meta.host] = meta
        if len(replies) > 1:
            self.counters.state = "ambiguous"
            self.say_once("hosts", f"import {self.remote!r}: exported by hosts {', '.join(sorted(replies))}: "
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
        try:
            self.writer = Writer(self.local, c.capacity, declared.pool if declared else c.pool, dtype=c.dtype, shape=c.shape,
                                 runtime_dir=self.bridge.runtime_dir, message=c.message)
        except TransportError as exc:
            self.counters.state = "refused"
            self.say_once("writer", f"import {self.remote!r} from {meta.host}: refused: {exc}", "error")
            return
        self.hash = layout_hash(c)
        self.meta = meta
        self.inline = meta.encode == "raw" and c.capacity <= SMALL_TOPIC
        self.counters.state, self.counters.detail = "importing", f"from {meta.host}"
        self.bridge.log.info("importing %s/%s from %s into %r (%s%s)", self.graph, self.remote_topic, meta.host, self.local,
                             describe(c), ", jpeg" if meta.encode == "jpeg" else "")

    def _write(self, sample) -> None:
        if self.writer is None:
            return  # between a layout change and the new description: nothing to write into
        head = sample.attachment.to_bytes() if sample.attachment is not None else b""
        if len(head) != ATTACHMENT.size:
            self.say_once("attachment", f"import {self.remote!r}: a sample without a shmlaunch attachment was ignored", "error")
            return
        lhash, seq, stamp, _publish, source_seq, encoding, nbytes = ATTACHMENT.unpack(head)
        if lhash != self.hash:
            self.say_once("hash", f"import {self.remote!r}: the exporter's topic layout changed mid-run (its graph restarted with "
                                  f"another layout?): asking for its description again", "error")
            self.inline = False
            self.writer.close()
            self.meta, self.writer = None, None
            self.reported.discard("mismatch")
            return
        payload = sample.payload.to_bytes()
        try:
            data = self._decode(payload) if encoding == 1 else as_array(self.meta.config, payload)
        except ValueError:
            data = None
            self.say_once("size", f"import {self.remote!r}: a sample of {len(payload)} bytes does not fit {describe(self.meta.config)}",
                          "error")
        if data is None:
            return
        self.writer.skip_to(seq)
        self.writer.publish(data, stamp_ns=stamp, source_seq=source_seq)
        self.counters.count(len(payload))

    def _decode(self, payload: bytes):
        import cv2

        img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR if len(self.meta.config.shape) == 3 else cv2.IMREAD_GRAYSCALE)
        if img is None or img.shape != self.meta.config.shape:
            self.say_once("jpeg", f"import {self.remote!r}: a JPEG sample did not decode to {list(self.meta.config.shape)}", "error")
            return None
        return img

    def _check_silence(self, seen: int) -> int:
        """Once: an exporter that sends while nothing arrives here (frames too big for the link)."""
        if self.meta is None:
            return seen
        before = self.meta.sent
        with contextlib.suppress(Exception):
            for reply in self.session.get(meta_key(self.meta.host, self.graph, self.remote_topic), timeout=META_TIMEOUT):
                if reply.ok is not None:
                    self.meta = Metadata.from_json(reply.ok.payload.to_string())
        sent = self.meta.sent - before
        if sent > 0 and self.counters.messages == seen:
            size = self.meta.config.capacity
            self.say_once("silent", f"import {self.remote!r}: {self.meta.host} sent {sent} messages in the last {SILENCE_CHECK:g} s "
                          f"and none arrived: messages of {size / 1e6:.1f} MB do not cross this link in time; on the exporter set "
                          f"'rate:' lower or 'encode: jpeg' (frames), or give the link more bandwidth")
            self.counters.detail = "nothing arrives: see the log"
        return self.counters.messages

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.subscriber.undeclare()
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
        self.stop = threading.Event()
        self.declared = {name: TopicConfig.build(**{k: v for k, v in t.items() if k != "message"}) for name, t in section.get("declared", {}).items()}
        self.exporters = [Exporter(self, topic, spec or {}) for topic, spec in section.get("export", {}).items()]
        self.importers = [Importer(self, remote, spec or {}) for remote, spec in section.get("import", {}).items()]
        try:
            config = zenoh_config(section, Path.cwd())
            self.session = zenoh.open(config)
        except Exception as exc:  # noqa: BLE001 (zenoh raises ZError for a bad config or endpoint)
            raise NodeSetupError(f"cannot open the zenoh session: {exc}") from None
        self.endpoints = _endpoints(config, "connect") or _endpoints(config, "listen")
        self.tls = any(e.startswith("tls/") for e in self.endpoints)
        self.remote: dict[str, dict] = {}
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

        parsed = parse_key(sample.key_expr)
        if parsed is None or parsed[0] == self.host:
            return
        key = "/".join(parsed)
        if sample.kind == zenoh.SampleKind.DELETE:
            self.remote.pop(key, None)
        else:
            self.remote[key] = {"host": parsed[0], "graph": parsed[1], "topic": parsed[2]}

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
        if not self.ever_connected and self.endpoints and time.monotonic() - self.started > NO_PEER_WARNING:
            why = (" (with TLS: a peer whose certificate the other side does not trust, or that has none while mTLS is "
                   "required, never connects; check transport/link/tls in the zenoh config)") if self.tls else ""
            self.say_once(f"no peer has connected after {NO_PEER_WARNING:g} s (endpoints {', '.join(self.endpoints)}){why}")
        doc = {"host": self.host, "graph": self.graph_name, "zid": str(self.session.zid()), "peers": peers, "pid": os.getpid(),
               "written_ns": time.time_ns(),
               "exports": {e.topic: {**e.counters.snapshot(), "encode": e.encode} for e in self.exporters},
               "imports": {i.remote: {**i.counters.snapshot(), "local": i.local, "host": i.meta.host if i.meta else None}
                           for i in self.importers},
               "remote": sorted(self.remote.values(), key=lambda r: (r["host"], r["graph"], r["topic"]))}
        with contextlib.suppress(OSError, TransportError), RuntimeDir.open(self.runtime_dir) as rd:
            rd.write_atomic(STATUS_FILE, json.dumps(doc).encode())

    def say_once(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            self.log.warning("%s", text)

    def teardown(self) -> None:
        self.stop.set()
        for t in self.exporters + self.importers:
            t.join(2.0)
            t.close()
        with contextlib.suppress(Exception):
            self.liveliness.undeclare()
        with contextlib.suppress(Exception):
            self.session.close()
        with contextlib.suppress(OSError, TransportError), RuntimeDir.open(self.runtime_dir) as rd:
            rd.unlink(STATUS_FILE)
