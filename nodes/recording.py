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

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shmlaunch.transport import LAYOUT_VERSION, TopicConfig

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
    "ANNOTATIONS_SUFFIX", "ARRAY", "COMPRESSIONS", "ENVELOPE", "GESTURE_TEXT", "IMAGE", "MAX_RECORD", "NDARRAY_ENCODING", "PROFILE",
    "RECORD_EXTRA", "SKELETON", "SOURCE_SEQ_FIELD", "ChannelPlan", "Played", "RecordedChannel", "RecordingError",
    "RecordingReader", "channel_of", "check_record_extra", "config_from_metadata", "describe_problem", "encode", "image_frames",
    "is_image", "plan_channels", "recording_files", "stream_records", "topic_metadata",
]

PROFILE = "shmlaunch"
#: Chunk compressions a recording may use (``none``: camera frames do not compress).
COMPRESSIONS = ("none", "lz4", "zstd")
NDARRAY_ENCODING = "shmlaunch.ndarray"
#: In front of every ``shmlaunch.ndarray`` message: sequence number, source_seq.
ENVELOPE = struct.Struct("<QQ")
#: The protobuf field a RawImage's non-zero source_seq is appended as.
SOURCE_SEQ_FIELD = 1001
META = "shmlaunch."
ANNOTATIONS_SUFFIX = "/annotations"
#: MCAP records longer than this are refused when reading (a corrupt length field must not
#: make a reader allocate gigabytes): well above a 4K frame's chunk.
MAX_RECORD = 1 << 30

IMAGE, ARRAY, SKELETON, GESTURE_TEXT = "image", "array", "skeleton", "gesture text"
SKELETON_RGBA = (0.1, 0.9, 0.2, 1.0)
POINT_RGBA = (1.0, 0.2, 0.2, 1.0)


class RecordingError(Exception):
    """A recording that cannot be read or written as asked (the message is one line)."""


#: The libraries of the ``record`` extra, by import name.
RECORD_EXTRA = ("mcap", "mcap_protobuf", "foxglove")


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
        dtype = meta[META + "dtype"] or None
        shape = json.loads(meta[META + "shape"]) if meta[META + "shape"] else None
        config = TopicConfig.build(int(meta[META + "capacity"]), int(meta[META + "pool"]), dtype, shape)
    except (KeyError, ValueError, TypeError) as exc:
        raise RecordingError(f"{where}: channel metadata does not describe a topic ({exc})") from None
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
    meta = dict(channel.metadata or {})
    config = config_from_metadata(meta, f"{where}: channel {channel.topic!r}") if META + "capacity" in meta else None
    return RecordedChannel(channel.id, channel.topic, schema.name if schema else "", channel.message_encoding, meta, config, schema)


class _ImageDecoder:
    """foxglove.RawImage bytes -> pixels, stamp and source_seq (mcap-protobuf-support builds the
    message class from the schema stored in the file)."""

    def __init__(self) -> None:
        from mcap_protobuf.decoder import DecoderFactory

        self.factory = DecoderFactory()
        self.decoders: dict[str, object] = {}  # by schema name

    def __call__(self, ch: RecordedChannel, data: bytes) -> tuple[bytes, int, int]:
        from google.protobuf.unknown_fields import UnknownFieldSet

        decoder = self.decoders.get(ch.schema_name)
        if decoder is None:
            decoder = self.decoders[ch.schema_name] = self.factory.decoder_for("protobuf", ch.schema)
        msg = decoder(data)
        source_seq = next((f.data for f in UnknownFieldSet(msg) if f.field_number == SOURCE_SEQ_FIELD), 0)
        stamp = msg.timestamp.seconds * 1_000_000_000 + msg.timestamp.nanos
        return msg.data, stamp, source_seq


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


class RecordingReader:
    """The pool messages of one recording (or a split series, as one timeline), in order.

    A finished file is read through its index; one without a footer (the recorder was
    killed) is streamed record by record up to its last complete record, and
    ``truncated`` says so. Derived channels are skipped.
    """

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.channels: dict[str, RecordedChannel] = {}
        self.truncated: list[str] = []  # files read up to a broken or missing end
        self._decode_image = None

    def summary_channels(self) -> list[RecordedChannel]:
        """The pool topics the finished files of the recording list in their summaries (a file
        without one shows its channels only as it is streamed)."""
        from mcap.exceptions import McapError
        from mcap.reader import make_reader

        found = {}
        for path in self.paths:
            with open(path, "rb") as f:
                try:
                    summary = make_reader(f).get_summary()
                except (McapError, ValueError, struct.error, EOFError):
                    continue
                for c in summary.channels.values() if summary else ():
                    ch = channel_of(summary.schemas.get(c.schema_id), c, str(path))
                    if ch.config is not None:
                        found.setdefault(ch.topic, ch)
        return list(found.values())

    def pool_topics(self) -> list[str]:
        """The recorded pool topics seen so far (derived channels left out)."""
        return sorted(ch.topic for ch in self.channels.values() if ch.config is not None)

    def messages(self, topics: set[str] | None = None, start_ns: int | None = None) -> Iterator[Played]:
        for path in self.paths:
            for schema, channel, message in self._records(path):
                ch = self.channels.get(channel.topic)
                if ch is None or ch.id != channel.id:
                    ch = self.channels[channel.topic] = channel_of(schema, channel, str(path))
                if ch.config is None or (topics is not None and ch.topic not in topics):
                    continue
                if start_ns is not None and message.log_time < start_ns:
                    continue
                yield self._decoded(ch, message, path)

    def _decoded(self, ch: RecordedChannel, message, path: Path) -> Played:
        data = message.data
        if ch.kind == IMAGE:
            if self._decode_image is None:
                self._decode_image = _ImageDecoder()
            pixels, stamp, source_seq = self._decode_image(ch, data)
            return Played(ch, message.log_time, message.sequence, stamp, source_seq, pixels)
        if len(data) < ENVELOPE.size:
            raise RecordingError(f"{path}: channel {ch.channel!r}: a message of {len(data)} bytes is shorter than its envelope")
        seq, source_seq = ENVELOPE.unpack_from(data)
        return Played(ch, message.log_time, seq, message.publish_time, source_seq, memoryview(data)[ENVELOPE.size:])

    def _records(self, path: Path):
        from mcap.exceptions import McapError
        from mcap.reader import make_reader

        with open(path, "rb") as f:
            try:
                reader = make_reader(f)
                summary = reader.get_summary()
            except (McapError, ValueError, struct.error, EOFError):
                summary = None
            if summary is not None:
                yield from reader.iter_messages(log_time_order=True)
                return
            f.seek(0)
            yield from self._stream(f, path)

    def _stream(self, f, path: Path):
        """Every complete message of a file with no footer, in the order it was written."""
        from mcap.records import Channel, Message, Schema

        schemas, channels, problems = {}, {}, []
        records = 0
        for record in stream_records(f, problems):
            records += 1
            if isinstance(record, Schema):
                schemas[record.id] = record
            elif isinstance(record, Channel):
                channels[record.id] = record
            elif isinstance(record, Message) and record.channel_id in channels:
                channel = channels[record.channel_id]
                yield schemas.get(channel.schema_id), channel, record
        if problems and not records:
            raise RecordingError(f"{path}: not an MCAP file ({describe_problem(problems[0])})")
        if problems:
            self.truncated.append(str(path))


def describe_problem(exc: Exception) -> str:
    """What stopped a stream, in a few words (some of mcap's exceptions carry no message)."""
    return str(exc) or type(exc).__name__


def stream_records(f, problems: list[Exception]) -> Iterator:
    """Every record of an MCAP stream, front to back, up to the last complete one; what stopped
    it early (a record cut short by a killed writer, a missing footer) goes into ``problems``."""
    from mcap.exceptions import McapError
    from mcap.stream_reader import StreamReader

    try:
        yield from StreamReader(f, record_size_limit=MAX_RECORD).records
    except (McapError, ValueError, struct.error, EOFError) as exc:
        problems.append(exc)


def image_frames(path: str | Path) -> Iterator[tuple[np.ndarray, int]]:
    """The frames of a recording's first image topic, as (H, W, 3) uint8 arrays with their
    capture stamps: what the camera node plays when its source is an ``.mcap`` file."""
    reader = RecordingReader(recording_files(path))
    topic = None
    for played in reader.messages():
        if played.channel.kind != IMAGE or (topic is not None and played.channel.topic != topic):
            continue
        topic = played.channel.topic
        h, w, _ = played.channel.config.shape
        yield np.frombuffer(played.data, np.uint8).reshape(h, w, 3), played.stamp_ns
    if topic is None:
        raise RecordingError(f"{path}: the recording has no image topic (uint8 [height, width, 3]) to play as a camera")
