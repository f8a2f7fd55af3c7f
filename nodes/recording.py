"""The recording format: how pool topics are stored in an MCAP file, and how they come back.

One module says it all, for the recorder (``shmlaunch record``), the player (``shmlaunch
play``), ``shmlaunch info`` and the camera node (which takes a recording as its source).

Every recorded topic is one MCAP channel named like the topic. Its metadata holds the topic's
static description (``shmlaunch.capacity``, ``.pool``, ``.dtype``, ``.shape``, ``.message``,
``.layout_version``), so a player re-creates the very same topic. Each message's MCAP
``log_time`` is its publish time in the graph (the timeline and what playback is paced by),
``publish_time`` its source stamp (the camera's capture time), ``sequence`` its sequence
number (low 32 bits).

- A uint8 topic of shape [H, W, 3] is stored as ``foxglove.RawImage`` (protobuf, ``bgr8``,
  ``timestamp`` = capture time), so Foxglove shows it. A non-zero ``source_seq`` (a node's
  output image) is appended as protobuf field 1001 (varint), which other readers skip.
- Any other topic is stored as its raw bytes behind a 16-byte envelope (little-endian u64
  sequence number, u64 ``source_seq``): message encoding ``shmlaunch.ndarray``, whose schema
  (``shmlaunch.ndarray``, or the message type such as ``shmlaunch.landmarks/1``) is JSON giving
  the dtype, shape and message type. Nothing is unrecordable.
- Derived channels, for people, never played back: hand landmarks also as
  ``foxglove.ImageAnnotations`` on ``<topic>/annotations`` (per hand the 21 points and the
  skeleton as a line list, in pixels, stamped with the frame's capture time, so Foxglove draws
  them over the image), gestures as text annotations there.
"""

from __future__ import annotations

import heapq
import json
import math
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shmlaunch import _platform as backend
from shmlaunch.transport import LAYOUT_VERSION, TopicConfig, validate_topic_name

from .messages import (
    GESTURE_TYPE,
    HAND_CONNECTIONS,
    LANDMARKS_TYPE,
    decode_gesture,
    gesture_message,
    hand_count,
    landmarks_message,
)

__all__ = [
    "ANNOTATIONS_SUFFIX", "ARRAY", "COMPRESSIONS", "ENVELOPE", "GESTURE_TEXT", "IMAGE", "MAX_MESSAGE", "NDARRAY_ENCODING", "PROFILE",
    "RECORD_EXTRA", "RECORDING_MODE", "SKELETON", "SOURCE_SEQ_FIELD", "BadMessage", "ChannelPlan", "Played", "RecordedChannel", "RecordingError",
    "RecordingReader", "channel_of", "check_record_extra", "config_from_metadata", "create_recording", "encode", "image_frames",
    "is_image", "plan_channels", "printable", "recording_files", "topic_metadata",
]

PROFILE = "shmlaunch"
#: Chunk compressions a recording may use (``none``: camera frames do not compress).
COMPRESSIONS = ("none", "lz4", "zstd")
NDARRAY_ENCODING = "shmlaunch.ndarray"
#: In front of every ``shmlaunch.ndarray`` message: sequence number, source_seq.
ENVELOPE = struct.Struct("<QQ")
#: How far (recorded time) messages may be out of order in a file and still be played in order.
REORDER_NS = 100_000_000
REORDER_BYTES = 64 << 20
#: The largest message a recording holds (the recorder refuses bigger topics, the player skips
#: bigger channels): what keeps a reader's memory bounded (nodes/mcap_records.py).
MAX_MESSAGE = 200 << 20
#: The protobuf field a RawImage's non-zero source_seq is appended as.
SOURCE_SEQ_FIELD = 1001
META = "shmlaunch."
ANNOTATIONS_SUFFIX = "/annotations"

IMAGE, ARRAY, SKELETON, GESTURE_TEXT = "image", "array", "skeleton", "gesture text"
SKELETON_RGBA = (0.1, 0.9, 0.2, 1.0)
POINT_RGBA = (1.0, 0.2, 0.2, 1.0)


class RecordingError(Exception):
    """A recording that cannot be read or written as asked (the message is one line)."""


#: The libraries of the ``record`` extra, by import name.
RECORD_EXTRA = ("mcap", "mcap_protobuf", "foxglove")


#: A new recording's permissions: it holds camera frames and the launch file's text, so only
#: its owner reads it unless asked otherwise (``shmlaunch record --mode``).
RECORDING_MODE = 0o600


def create_recording(path: str | Path, mode: int = RECORDING_MODE):
    """A new file for a recording, opened for writing: never an existing file, never through a
    symlink, made with ``mode`` (whatever the umask)."""
    import os

    fd = os.open(path, backend.CREATE_NEW_FLAGS, mode)
    try:
        os.chmod(fd if os.chmod in os.supports_fd else path, mode)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def check_record_extra() -> None:
    """RecordingError naming the install command when the ``record`` extra is missing."""
    import importlib.util

    missing = [name for name in RECORD_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise RecordingError(f"recording needs {', '.join(missing)}: install shmlaunch's 'record' extra "
                             "(uv pip install -e '.[record]', or pip install 'shmlaunch[record]')")


@dataclass(frozen=True)
class ChannelPlan:
    """One MCAP channel the recorder writes for a topic."""

    channel: str  # the MCAP topic
    kind: str  # IMAGE, ARRAY, SKELETON or GESTURE_TEXT
    schema_name: str
    schema_encoding: str
    schema_data: bytes
    message_encoding: str
    metadata: dict[str, str]


def is_image(config: TopicConfig) -> bool:
    return config.dtype == np.uint8 and config.shape is not None and len(config.shape) == 3 and config.shape[2] == 3


def topic_metadata(topic: str, config: TopicConfig) -> dict[str, str]:
    """The channel metadata that lets a player re-create ``topic`` exactly."""
    return {
        META + "topic": topic, META + "capacity": str(config.capacity), META + "pool": str(config.pool),
        META + "dtype": "" if config.dtype is None else config.dtype.str,
        META + "shape": "" if config.shape is None else json.dumps(list(config.shape)),
        META + "message": config.message or "", META + "layout_version": str(LAYOUT_VERSION),
    }


def config_from_metadata(meta: dict[str, str], where: str) -> TopicConfig:
    """The topic a recorded channel came from; RecordingError says what is wrong and where."""
    try:
        topic = validate_topic_name(meta.get(META + "topic"))
        dtype = meta[META + "dtype"] or None
        shape = json.loads(meta[META + "shape"]) if meta[META + "shape"] else None
        if shape is not None and (not isinstance(shape, list) or not all(type(x) is int for x in shape)):
            raise ValueError(f"shape {printable(str(shape))[:80]} is not a list of integers")
        config = TopicConfig.build(int(meta[META + "capacity"]), int(meta[META + "pool"]), dtype, shape)
    except (KeyError, ValueError, TypeError) as exc:
        raise RecordingError(f"{where}: channel metadata does not describe a topic ({printable(str(exc))[:200]})") from None
    if config.capacity > MAX_MESSAGE:
        raise RecordingError(f"{where}: topic {topic!r} takes messages of {config.capacity} bytes (a recording holds at most "
                             f"{MAX_MESSAGE})")
    message = meta.get(META + "message") or None
    return TopicConfig(config.capacity, config.pool, config.dtype, config.shape, message=message)


def plan_channels(topic: str, config: TopicConfig) -> list[ChannelPlan]:
    """The channels recording ``topic`` writes: its own, then any derived ones."""
    meta = topic_metadata(topic, config)
    if is_image(config):
        return [_foxglove_plan(topic, IMAGE, "RawImage", meta)]
    plans = [ChannelPlan(topic, ARRAY, config.message or NDARRAY_ENCODING, NDARRAY_ENCODING,
                         _array_schema(config), NDARRAY_ENCODING, meta)]
    derived = {META + "derived_from": topic}
    if config.message == LANDMARKS_TYPE:
        plans.append(_foxglove_plan(topic + ANNOTATIONS_SUFFIX, SKELETON, "ImageAnnotations", derived))
    elif config.message == GESTURE_TYPE:
        plans.append(_foxglove_plan(topic + ANNOTATIONS_SUFFIX, GESTURE_TEXT, "ImageAnnotations", derived))
    return plans


def _foxglove_plan(channel: str, kind: str, message: str, meta: dict[str, str]) -> ChannelPlan:
    import foxglove.messages

    schema = getattr(foxglove.messages, message).get_schema()
    return ChannelPlan(channel, kind, schema.name, schema.encoding, bytes(schema.data), "protobuf", meta)


def _array_schema(config: TopicConfig) -> bytes:
    """The ``shmlaunch.ndarray`` schema: what a reader needs to turn the bytes into an array."""
    doc = {
        "encoding": NDARRAY_ENCODING,
        "envelope": "u64 sequence number, u64 source_seq (little-endian), then the message's bytes",
        "dtype": None if config.dtype is None else config.dtype.descr if config.dtype.fields else config.dtype.str,
        "shape": None if config.shape is None else list(config.shape),
        "message": config.message,
        "note": "no dtype: raw bytes; a message type names its layout (shmlaunch transport/LAYOUT.md)",
    }
    return json.dumps(doc).encode()


# ----- encoding (the recorder's writer thread)
def encode(plan: ChannelPlan, seq: int, stamp_ns: int, source_seq: int, data: bytes, shape) -> bytes | None:
    """The MCAP message bytes of one pool message for ``plan``'s channel (None: nothing to write)."""
    if plan.kind == ARRAY:
        return ENVELOPE.pack(seq, source_seq) + data
    if plan.kind == IMAGE:
        return _encode_image(plan.channel, data, shape, stamp_ns, source_seq)
    array = np.frombuffer(data, np.uint8)
    try:
        rec = landmarks_message(array) if plan.kind == SKELETON else gesture_message(array)
    except ValueError:
        return None  # not a message of the declared type: its own channel still has the bytes
    return _skeleton(rec) if plan.kind == SKELETON else _gesture_text(rec)


def _timestamp(ns: int):
    from foxglove.messages import Timestamp

    return Timestamp(ns // 1_000_000_000, ns % 1_000_000_000)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _encode_image(channel: str, data: bytes, shape, stamp_ns: int, source_seq: int) -> bytes:
    from foxglove.messages import RawImage

    h, w = int(shape[0]), int(shape[1])
    image = RawImage(timestamp=_timestamp(stamp_ns), frame_id=channel.replace("/", "_"), width=w, height=h,
                     encoding="bgr8", step=w * 3, data=data).encode()
    if source_seq:
        image += _varint(SOURCE_SEQ_FIELD << 3) + _varint(source_seq)
    return image


def _rgba(c):
    from foxglove.messages import Color

    return Color(r=c[0], g=c[1], b=c[2], a=c[3])


def _skeleton(rec) -> bytes:
    """Per hand: its 21 points, and the skeleton as a line list, in pixels."""
    from foxglove.messages import ImageAnnotations, Point2, PointsAnnotation, PointsAnnotationType

    ts = _timestamp(int(rec["capture_ns"]))
    w, h = float(rec["image_width"]), float(rec["image_height"])
    points = []
    for hand in rec["hands"][: hand_count(rec)]:
        xy = [Point2(x=float(p[0]) * w, y=float(p[1]) * h) for p in hand["landmarks"]]
        points.append(PointsAnnotation(timestamp=ts, type=PointsAnnotationType.Points, points=xy,
                                       outline_color=_rgba(POINT_RGBA), fill_color=_rgba(POINT_RGBA), thickness=4.0))
        bones = [xy[i] for pair in HAND_CONNECTIONS for i in pair]
        points.append(PointsAnnotation(timestamp=ts, type=PointsAnnotationType.LineList, points=bones,
                                       outline_color=_rgba(SKELETON_RGBA), thickness=2.0))
    return ImageAnnotations(points=points).encode()


def _gesture_text(rec) -> bytes:
    """One text label per hand ('Right: call'), top left of the image."""
    from foxglove.messages import ImageAnnotations, Point2, TextAnnotation

    ts = _timestamp(int(rec["capture_ns"]))
    texts = [TextAnnotation(timestamp=ts, position=Point2(x=10.0, y=30.0 + 30.0 * i), text=f"{h['handedness']}: {h['gesture']}",
                            font_size=24.0, text_color=_rgba((1.0, 1.0, 1.0, 1.0)), background_color=_rgba((0.0, 0.0, 0.0, 0.6)))
             for i, h in enumerate(decode_gesture(rec)["hands"])]
    return ImageAnnotations(texts=texts).encode()


# ----- reading
@dataclass
class RecordedChannel:
    """A channel of a recording as the player and ``info`` see it."""

    id: int
    channel: str
    schema_name: str
    message_encoding: str
    metadata: dict[str, str]
    config: TopicConfig | None  # None: a derived channel (annotations), or not written by shmlaunch
    schema: object = None  # the mcap Schema record (to decode protobuf)

    @property
    def kind(self) -> str:
        if self.config is None:
            return SKELETON if self.metadata.get(META + "derived_from") else "foreign"
        return IMAGE if self.message_encoding == "protobuf" else ARRAY

    @property
    def topic(self) -> str:
        return self.metadata.get(META + "topic", self.channel)


@dataclass(frozen=True)
class Played:
    """One recorded pool message, decoded: what a player publishes."""

    channel: RecordedChannel
    log_time: int
    seq: int
    stamp_ns: int
    source_seq: int
    data: memoryview | bytes


def channel_of(schema, channel, where: str) -> RecordedChannel:
    """A channel record as the reader sees it; RecordingError when its metadata describes no
    topic it could publish into (a pool topic's image channel must be an image topic)."""
    meta = dict(channel.metadata or {})
    name = printable(channel.topic)
    config = config_from_metadata(meta, f"{where}: channel {name!r}") if META + "capacity" in meta else None
    ch = RecordedChannel(channel.id, channel.topic, schema.name if schema else "", channel.message_encoding, meta, config, schema)
    if config is not None and (ch.kind == IMAGE) != is_image(config):
        raise RecordingError(f"{where}: channel {name!r}: encoding {printable(channel.message_encoding)!r} does not fit "
                             f"its topic ({config.describe()})")
    if config is not None and ch.kind == IMAGE and schema is None:
        raise RecordingError(f"{where}: channel {name!r}: its schema is missing")
    return ch


class _ImageDecoder:
    """foxglove.RawImage bytes -> pixels, stamp and source_seq (mcap-protobuf-support builds the
    message class from the schema stored in the file). ``shape`` is the last image's (h, w)."""

    def __init__(self) -> None:
        from mcap_protobuf.decoder import DecoderFactory

        self.factory = DecoderFactory()
        self.decoders: dict[str, object] = {}  # by schema name
        self.shape = (0, 0)

    def __call__(self, ch: RecordedChannel, data: bytes) -> tuple[bytes, int, int]:
        from google.protobuf.message import DecodeError
        from google.protobuf.unknown_fields import UnknownFieldSet

        try:
            decoder = self.decoders.get(ch.schema_name)
            if decoder is None:
                decoder = self.decoders[ch.schema_name] = self.factory.decoder_for("protobuf", ch.schema)
            msg = decoder(data)
            source_seq = next((f.data for f in UnknownFieldSet(msg) if f.field_number == SOURCE_SEQ_FIELD), 0)
            stamp = msg.timestamp.seconds * 1_000_000_000 + msg.timestamp.nanos
            self.shape = (msg.height, msg.width)
            pixels, encoding, step = msg.data, msg.encoding, msg.step
        except (DecodeError, AttributeError, TypeError, ValueError, KeyError) as exc:
            # a schema from the file that is no RawImage, or bytes that are not its message
            raise BadMessage(f"not a foxglove.RawImage ({printable(str(exc))[:120] or type(exc).__name__})") from None
        if encoding != "bgr8" or step != msg.width * 3 or not isinstance(source_seq, int):
            raise BadMessage(f"an image of encoding {printable(encoding)!r}, step {step} (expected bgr8, width x 3)")
        return pixels, stamp, source_seq


def recording_files(path: str | Path) -> list[Path]:
    """The files of a recording: ``path`` itself; or, for a split one, the series
    ``stem_0.mcap, stem_1.mcap, ...`` (``path`` names its stem, or its first file)."""
    path = Path(path)
    base = path.with_name(path.stem[:-2] + path.suffix) if path.stem.endswith("_0") else path
    series = []
    while (part := base.with_name(f"{base.stem}_{len(series)}{base.suffix}")).exists():
        series.append(part)
    if path.exists() and (base == path or len(series) < 2):
        return [path]
    if not series:
        raise RecordingError(f"{path}: no such recording (nor a split series {path.stem}_0{path.suffix}, ...)")
    return series


class BadMessage(RecordingError):
    """One recorded message that cannot be published as its channel says (skipped and counted)."""


class RecordingReader:
    """The pool messages of one recording (or a split series, as one timeline), in the order
    they were written.

    Every file is streamed through ``mcap_records`` (bounded, CRC-checked, resynchronised past
    damage). What could not be read is kept, never silent: ``damage`` (records that did not
    check out), ``skipped`` (messages that do not fit their channel's topic, by reason and
    channel) and ``truncated`` (files cut short by a killed recorder: nothing they hold is lost).
    Derived channels are skipped.
    """

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.channels: dict[str, RecordedChannel] = {}
        self.truncated: list[str] = []
        self.damage: list[str] = []
        self.skipped: Counter[str] = Counter()  # "channel 'x': reason" -> messages
        self.summarised = False  # every file had a summary (its topics were known before reading)
        self._decode_image = None

    @property
    def lost(self) -> list[str]:
        """One line per kind of loss (empty: every message the files hold was read)."""
        return self.damage + [f"{n} message{'s' * (n != 1)} skipped: {what}" for what, n in self.skipped.items()]

    def summary_channels(self) -> list[RecordedChannel]:
        """The pool topics the finished files of the recording list in their summaries (a file
        without one shows its channels only as it is streamed)."""
        from .mcap_records import open_recording, read_summary

        found = {}
        self.summarised = True
        for path in self.paths:
            with open_recording(path) as f:
                summary = read_summary(f)
            self.summarised = self.summarised and summary is not None
            for c in summary.channels.values() if summary else ():
                ch = self._channel(summary.schemas.get(c.schema_id), c, path)
                if isinstance(ch, RecordedChannel) and ch.config is not None:
                    found.setdefault(ch.topic, ch)
        return list(found.values())

    def pool_topics(self) -> list[str]:
        """The recorded pool topics seen so far (derived channels left out)."""
        return sorted(ch.topic for ch in self.channels.values() if ch.config is not None)

    def messages(self, topics: set[str] | None = None) -> Iterator[Played]:
        """The messages in log-time order: the recorder writes them in the order it read them,
        which can put one topic's message a few milliseconds before another's published
        earlier; a window of REORDER_NS (recorded time) puts them back in order."""
        window: list[tuple[int, int, Played]] = []
        held = 0
        for n, played in enumerate(self._in_file_order(topics)):
            heapq.heappush(window, (played.log_time, n, played))
            held += len(played.data)
            while window[0][0] < played.log_time - REORDER_NS or held > REORDER_BYTES:  # bounded in time and bytes
                out = heapq.heappop(window)[2]
                held -= len(out.data)
                yield out
        while window:
            yield heapq.heappop(window)[2]

    def _in_file_order(self, topics: set[str] | None) -> Iterator[Played]:
        from mcap.records import Channel, Message, Schema

        from .mcap_records import RecordStream, open_recording, read_summary

        for path in self.paths:
            schemas: dict[int, object] = {}
            by_id: dict[int, RecordedChannel | str] = {}
            with open_recording(path) as f:
                # A finished file lists its schemas and channels again in its (CRC-checked) summary:
                # a damaged chunk that held a channel's record then costs only that chunk's messages.
                if (summary := read_summary(f)) is not None:
                    schemas.update(summary.schemas)
                    by_id.update({c.id: self._channel(summary.schemas.get(c.schema_id), c, path) for c in summary.channels.values()})
                stream = RecordStream(f, str(path))
                for record in stream:
                    if isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel):
                        by_id[record.id] = self._channel(schemas.get(record.schema_id), record, path)
                    elif isinstance(record, Message):
                        ch = by_id.get(record.channel_id, f"{path}: channel id {record.channel_id}: no channel record before its messages")
                        if isinstance(ch, str):
                            self.skipped[ch] += 1
                            continue
                        if ch.config is None or (topics is not None and ch.topic not in topics):
                            continue
                        try:
                            yield self._decoded(ch, record)
                        except BadMessage as bad:
                            self.skipped[f"{path}: channel {printable(ch.channel)!r}: {bad}"] += 1
            self.damage += stream.damage
            if stream.truncated:
                self.truncated.append(stream.truncated)

    def _channel(self, schema, channel, path: Path) -> RecordedChannel | str:
        """The channel, or why its messages cannot be played (its metadata lies)."""
        try:
            ch = channel_of(schema, channel, str(path))
        except RecordingError as exc:
            return str(exc)
        if ch.config is not None:
            self.channels.setdefault(ch.topic, ch)
        return ch

    def _decoded(self, ch: RecordedChannel, message) -> Played:
        """The message as its topic takes it; BadMessage when it does not fit the topic."""
        config: TopicConfig = ch.config
        data = message.data
        if ch.kind == IMAGE:
            if self._decode_image is None:
                self._decode_image = _ImageDecoder()
            data, stamp, source_seq = self._decode_image(ch, data)
            h, w, _ = config.shape
            if (msg_shape := self._decode_image.shape) != (h, w):
                raise BadMessage(f"an image of {msg_shape[1]}x{msg_shape[0]} on a {w}x{h} topic")
        else:
            if len(data) < ENVELOPE.size:
                raise BadMessage(f"a message of {len(data)} bytes, shorter than its {ENVELOPE.size}-byte envelope")
            seq, source_seq = ENVELOPE.unpack_from(data)
            data, stamp = memoryview(data)[ENVELOPE.size:], message.publish_time
        need = config.capacity if config.shape is None else math.prod(config.shape) * config.dtype.itemsize
        if len(data) > need or (config.shape is not None and len(data) != need):
            raise BadMessage(f"{len(data)} bytes where the topic takes {'exactly' if config.shape else 'at most'} {need}")
        return Played(ch, message.log_time, message.sequence if ch.kind == IMAGE else seq, stamp, source_seq, data)


def printable(text: str) -> str:
    """``text`` with control characters (terminal escape sequences) shown as escapes: what a
    recording says is printed through this, never raw."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def image_frames(path: str | Path, on_loss=None) -> Iterator[tuple[np.ndarray, int]]:
    """The frames of a recording's first image topic, as (H, W, 3) uint8 arrays with their
    capture stamps: what the camera node plays when its source is an ``.mcap`` file. A frame
    that does not decode is skipped; ``on_loss(lines)`` hears of every loss once the file ends."""
    reader = RecordingReader(recording_files(path))
    topic = None
    for played in reader.messages():
        if played.channel.kind != IMAGE or (topic is not None and played.channel.topic != topic):
            continue
        topic = played.channel.topic
        h, w, _ = played.channel.config.shape
        yield np.frombuffer(played.data, np.uint8).reshape(h, w, 3), played.stamp_ns
    if reader.lost and on_loss is not None:
        on_loss(reader.lost)
    if topic is None:
        raise RecordingError(f"{path}: the recording has no image topic (uint8 [height, width, 3]) to play as a camera")
