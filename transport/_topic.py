"""``Topic``: the one public handle on a pool topic, for tools as much as for nodes.

Modelled on iceoryx2's service builder: three verbs, each failing with a typed error that says
whose fault it is, and the topic's immutable description kept apart from its live state.

- ``Topic.create(name, config)``: a new topic; TopicExistsError if it exists (``recreate=True``
  replaces an existing one nobody uses: what the launcher does at start).
- ``Topic.open(name, expect=None)``: an existing topic; TopicNotFoundError, TopicMismatchError
  (naming both values) for what ``expect`` sets, LayoutVersionError, SegmentCorruptError.
- ``Topic.open_or_create(name, config)``: either; never replaces a topic whose config differs.

``topic.config`` is the frozen static description (``TopicConfig``: capacity, pool, dtype,
shape, layout version, segment name); ``topic.dynamic()`` a frozen snapshot of the live state
(``TopicState``). A Topic maps its segment as an *observer*: it holds no lock, takes no reader
entry, is not counted as a reader. ``topic.writer()`` and ``topic.reader()`` open the topic for
publishing and receiving (``Writer(...)`` and ``Reader(...)`` are the short forms).

>>> with Topic.open("camera/image") as t:              # doctest: +SKIP
...     print(t.config.shape, t.dynamic().latest_seq)
"""

from __future__ import annotations

import dataclasses
import struct
import weakref
from dataclasses import dataclass
from pathlib import Path

from . import _layout as L
from ._errors import ClosedError
from ._layout import TopicConfig
from ._reader import Reader
from ._registry import validate_message_type
from ._runtime import RuntimeDir, default_runtime_dir, validate_topic_name
from ._segment import Segment, create_segments, open_for_reading, open_or_create_segment, segment_is_current, unlink_topic
from ._writer import Writer

_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class ReaderInfo:
    """One live reader of a topic, as its entry in the segment's reader table says."""

    pid: int
    received: int  # messages delivered to it
    missed: int  # messages overwritten before it got to them
    last_seq: int
    last_age_ns: int  # publish-to-receive time of its last message
    last_receive_ns: int  # CLOCK_REALTIME of its last receive (0: none yet)
    stale: int  # messages it skipped for being older than its max_age
    group: str | None  # its competing-consumer group, if any


@dataclass(frozen=True)
class TopicState:
    """A topic's live state at one moment (``Topic.dynamic()``)."""

    writer_pid: int  # the last writer that attached (0: none ever)
    writer_generation: int  # +1 each time a writer attaches
    writer_attach_ns: int
    writer_alive: bool  # a writer holds the topic now
    latest_seq: int  # the newest complete message (0: none yet)
    latest_publish_ns: int  # its publish and source stamps and length (0 when there is none)
    latest_source_ns: int
    latest_length: int
    readers: tuple[ReaderInfo, ...]
    groups: tuple[str, ...]  # competing-consumer groups that have joined


class Topic:
    """An observer's handle on one topic: its static config, its live state, and the way in for
    writers and readers. ``close()`` releases this mapping; ``unlink()`` destroys the topic."""

    def __init__(self, name: str, runtime_dir: Path, seg: Segment) -> None:
        self.name = name
        self.runtime_dir = runtime_dir
        self._seg: Segment | None = seg
        self._finalizer = weakref.finalize(self, seg.close)  # a handle dropped without close() lets the file go
        self.config: TopicConfig = seg.config

    # ----- the three verbs
    @classmethod
    def create(cls, name: str, config: TopicConfig, *, runtime_dir: str | Path | None = None, recreate: bool = False) -> Topic:
        """Create topic ``name``; TopicExistsError if it exists, unless ``recreate`` (then an
        existing segment nobody uses is replaced; one in use is WriterBusyError).

        The verb for making a topic. ``Writer(name, capacity=...)`` keeps a short form for nodes
        (create when missing, else attach): it and ``open_or_create`` go through the same
        function as this (``_segment._create``: build under a temporary name, reserve, rename),
        so a topic is made one way whoever asks."""
        return cls.create_many({name: config}, runtime_dir=runtime_dir, recreate=recreate)[0]

    @classmethod
    def create_many(cls, configs: dict[str, TopicConfig], *, runtime_dir: str | Path | None = None,
                    recreate: bool = False) -> list[Topic]:
        """``create`` for many topics with one registry update (a launcher's whole graph)."""
        path = _runtime_path(runtime_dir)
        checked = {validate_topic_name(name): _checked(config) for name, config in configs.items()}
        with RuntimeDir.create(path) as rd:
            segs = create_segments(rd, checked, recreate=recreate)
        return [cls(seg.topic, path, seg) for seg in segs]

    @classmethod
    def open(cls, name: str, *, runtime_dir: str | Path | None = None, expect: TopicConfig | dict | None = None) -> Topic:
        """Open existing topic ``name``; every field ``expect`` sets must match (TopicMismatchError)."""
        path = _runtime_path(runtime_dir)
        return cls(name, path, open_for_reading(path, name, _request(expect), observer=True))

    @classmethod
    def open_or_create(cls, name: str, config: TopicConfig, *, runtime_dir: str | Path | None = None) -> Topic:
        """Open topic ``name`` if it exists (its config must equal ``config``), else create it."""
        path = _runtime_path(runtime_dir)
        with RuntimeDir.create(path) as rd:
            seg = open_or_create_segment(rd, name, _request(_checked(config)), writer=False)
        return cls(name, path, seg)

    # ----- what it is and how it is doing
    def dynamic(self) -> TopicState:
        """A snapshot of the live state: writer, newest message, readers and groups."""
        seg = self._segment()
        mm = seg.mm
        pid, generation, attach_ns = L.WRITER.unpack_from(mm, L.WRITER_OFFSET)
        latest = _U64.unpack_from(mm, L.LATEST_SEQ_OFFSET)[0]
        wake = struct.unpack_from("<I", mm, L.WAKE_OFFSET)[0]
        publish_ns = source_ns = length = 0
        if wake and (wake & L.WAKE_SLOT_MASK) < self.config.pool:
            _state, length, source_ns, publish_ns, _gen, _src = L.SLOT.unpack_from(mm, seg.slot_offsets[wake & L.WAKE_SLOT_MASK])
        groups = [seg.group_name(g) for g in range(L.MAX_GROUPS)]
        readers = tuple(ReaderInfo(*entry[:7], group=groups[entry[7] - 1] if 0 < entry[7] <= L.MAX_GROUPS else None)
                        for entry in seg.reader_entries())
        return TopicState(pid, generation, attach_ns, seg.writer_lock.is_held_by_others(), latest, publish_ns, source_ns,
                          min(length, self.config.capacity), readers, tuple(g for g in groups if g))

    # ----- ways in
    def writer(self) -> Writer:
        """The topic's writer (WriterBusyError while another one is alive)."""
        return Writer(self.name, runtime_dir=self.runtime_dir)

    def reader(self, *, max_age: float | None = None, group: str | None = None, observer: bool = False) -> Reader:
        """A reader of the topic (see ``Reader`` for ``max_age``, ``group`` and ``observer``)."""
        return Reader(self.name, runtime_dir=self.runtime_dir, max_age=max_age, group=group, observer=observer)

    # ----- lifetime
    def _segment(self) -> Segment:
        if self._seg is None:
            raise ClosedError(f"topic {self.name!r} is closed")
        return self._seg

    @property
    def closed(self) -> bool:
        return self._seg is None

    def same_file(self, rd: RuntimeDir | None = None) -> bool:
        """True while the runtime directory's segment file is still the one this handle maps
        (False once the topic was unlinked or re-created). ``rd``: the directory, if the caller
        has it open already (a view checking hundreds of topics a second)."""
        return segment_is_current(self._segment(), self.runtime_dir, rd)

    def close(self) -> None:
        """Release this process's mapping. The topic stays."""
        if self._seg is not None:
            self._finalizer()
            self._seg = None

    def unlink(self) -> None:
        """Destroy the topic: its segment file and its registry entry, once; then close."""
        unlink_topic(self.runtime_dir, self.name, self._segment().path.name)
        self.close()

    def __enter__(self) -> Topic:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Topic {self.name!r} {self.config.describe()}{' closed' if self.closed else ''}>"


def _runtime_path(runtime_dir: str | Path | None) -> Path:
    return Path(runtime_dir) if runtime_dir else default_runtime_dir()


def _checked(config: TopicConfig) -> TopicConfig:
    """A caller's config, checked as any declaration is (ValueError says what is wrong)."""
    if not isinstance(config, TopicConfig):
        raise TypeError(f"expected a TopicConfig, got {type(config).__name__} (TopicConfig.build(...) makes one)")
    built = TopicConfig.build(config.capacity, config.pool, config.dtype, config.shape)
    return built if config.message is None else dataclasses.replace(built, message=validate_message_type(config.message))


def _request(expect: TopicConfig | dict | None) -> L.TopicRequest:
    """The fields to check, from a TopicConfig (all four) or a dict (those it sets)."""
    if expect is None:
        return L.TopicRequest()
    if isinstance(expect, TopicConfig):
        return L.TopicRequest.of(expect)
    return L.TopicRequest.build(expect.get("capacity"), expect.get("pool"), expect.get("dtype"), expect.get("shape"))
