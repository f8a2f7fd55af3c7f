"""Creating, checking and mapping one topic's segment file; the rules for who may open what.

The ways in: ``create_segments`` (new topics; an existing one only with ``recreate``, and only
if nobody uses it), ``open_or_create_segment`` (a writer's way: never replaces a topic) and
``open_for_reading``. Each checks three parties against each other: what the caller asks for,
the registry, and the segment's own header; any disagreement raises TopicMismatchError naming
the field and both values. Creation happens under the registry lock: the file is built under
a fresh temporary name, its space reserved by the backend (a full /dev/shm fails here, never
with a SIGBUS later), the header written, and only then renamed into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import secrets
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shmlaunch._platform import ByteLock, buffer_address, free_bytes, map_file, reserve

from . import _layout as L
from ._errors import (
    GroupsFullError,
    LayoutVersionError,
    OutOfSpaceError,
    SegmentCorruptError,
    TopicExistsError,
    TopicMismatchError,
    TopicNotFoundError,
    TransportError,
    WriterBusyError,
)
from ._registry import LOCK_WAIT, config_to_entry, entry_to_config, lock_exclusive, locked_registry, registry_entry
from ._runtime import ENV_RUNTIME_DIR, RuntimeDir, graphs_present, segment_file_name, validate_topic_name


class Segment:
    """One process's mapping of a topic segment, with its lock bytes and slot views.

    Built complete in one step: the constructor maps the file, hands the header to ``config_of``
    (the opener's checks: it returns the topic's config or raises to refuse the segment, and then
    the file is closed), and builds the views of that config. ``close()`` releases this process's
    mapping and locks; the file stays (``unlink`` in the writer or ``cleanup`` of the runtime
    directory removes it).
    """

    def __init__(self, topic: str, path: Path, fd: int, config_of: Callable[[Segment], L.TopicConfig]) -> None:
        self.topic = topic
        self.path = path
        self.fd = fd
        size = os.fstat(fd).st_size
        try:
            if size < L.HEADER_SIZE:
                raise SegmentCorruptError(f"cannot map topic {topic!r}: segment {path} is {size} bytes, shorter than a header")
            self.mm = map_file(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self.header = L.HeaderView.parse(self.mm)
        self.size = size
        self.writer_lock = ByteLock(fd, L.LOCK_WRITER)
        self.presence_lock = ByteLock(fd, L.LOCK_PRESENCE)
        self._pin = None
        self.payloads: list[np.ndarray] = []
        self.typed = None
        try:
            self.config: L.TopicConfig = config_of(self)
        except BaseException:
            self.close()
            raise
        self._build_views()

    # ----- checks
    def check_layout(self, action: str) -> None:
        """LayoutVersionError for another release's segment, SegmentCorruptError for a bad header."""
        h = self.header
        if h.magic == L.MAGIC and h.layout_version != L.LAYOUT_VERSION:
            raise LayoutVersionError(f"cannot {action}: segment {self.path} has layout version {h.layout_version}, "
                                     f"this shmlaunch uses {L.LAYOUT_VERSION}")
        problem = L.header_problem(h, self.size)
        if problem is not None:
            raise SegmentCorruptError(f"cannot {action}: segment {self.path} is corrupt: its header's {problem}")

    def claim_reader_entry(self) -> int | None:
        """Own a free reader-table entry (its lock byte, for this open file's life); its offset."""
        for i in range(L.MAX_READERS):
            if ByteLock(self.fd, L.LOCK_READER0 + i).try_exclusive():
                off = L.READERS_OFFSET + i * L.READER_ENTRY.size
                L.READER_ENTRY.pack_into(self.mm, off, os.getpid(), 0, 0, 0, 0, 0, 0, 0)
                return off
        return None

    def join_group(self, name: str) -> int:
        """The index of group ``name`` in the group table, adding it if new (competing consumers)."""
        raw = name.encode("ascii", "strict") if name.isascii() else b""
        if not raw or len(raw) > L.GROUP_NAME_SIZE or b"\0" in raw:
            raise ValueError(f"invalid group name {name!r}: 1 to {L.GROUP_NAME_SIZE} ASCII characters")
        table_lock = ByteLock(self.fd, L.LOCK_GROUP_TABLE)
        lock_exclusive(table_lock, LOCK_WAIT, f"the group table lock of topic {self.topic!r}", lambda: "another reader")
        try:
            free = None
            for g in range(L.MAX_GROUPS):
                off = L.GROUPS_OFFSET + g * L.GROUP_ENTRY_SIZE
                stored = bytes(self.mm[off : off + L.GROUP_NAME_SIZE]).rstrip(b"\0")
                if stored == raw:
                    return g
                if not stored and free is None:
                    free = g
            if free is None:
                raise GroupsFullError(f"cannot join group {name!r} of topic {self.topic!r}: it has {L.MAX_GROUPS} groups already")
            off = L.GROUPS_OFFSET + free * L.GROUP_ENTRY_SIZE
            self.mm[off : off + L.GROUP_NAME_SIZE] = raw.ljust(L.GROUP_NAME_SIZE, b"\0")
            return free
        finally:
            table_lock.release()

    def group_name(self, index: int) -> str:
        """The name of group ``index`` of the group table (as readers' ``group`` field names it, minus one)."""
        off = L.GROUPS_OFFSET + index * L.GROUP_ENTRY_SIZE
        return bytes(self.mm[off : off + L.GROUP_NAME_SIZE]).rstrip(b"\0").decode("ascii", "replace")

    def reader_entries(self) -> list[tuple]:
        """The live readers' table entries (pid, received, missed, last_seq, last_age_ns, last_receive_ns, stale, group).

        An entry never claimed has pid 0 and needs no lock probe (a tool refreshing hundreds
        of topics a second makes one system call per claimed entry, not 64 per topic)."""
        out = []
        for i in range(L.MAX_READERS):
            entry = L.READER_ENTRY.unpack_from(self.mm, L.READERS_OFFSET + i * L.READER_ENTRY.size)
            if entry[0] and ByteLock(self.fd, L.LOCK_READER0 + i).is_held_by_others():
                out.append(entry)
        return out

    @property
    def wake_id(self) -> int:
        """The topic's random identity, fixed by its creator (Windows wake events, trace records)."""
        return int.from_bytes(self.mm[L.WAKE_ID_OFFSET : L.WAKE_ID_OFFSET + 8], "little")

    def _build_views(self) -> None:
        """The per-slot views of the config (the header has been checked against it)."""
        config = self.config
        self.address, self._pin = buffer_address(self.mm)
        h = self.header
        self.slots_offset, self.slot_stride = h.slots_offset, h.slot_stride
        self.slot_offsets = [h.slots_offset + i * h.slot_stride for i in range(h.pool)]
        self.slot_locks = [ByteLock(self.fd, L.slot_lock_offset(i)) for i in range(h.pool)]
        self.payloads = [
            np.frombuffer(self.mm, np.uint8, h.capacity, off + L.SLOT_HEADER_SIZE) for off in self.slot_offsets
        ]
        if config.dtype is not None and config.shape is not None:
            nbytes = L.nbytes_of(config.dtype, config.shape)
            self.typed = [p[:nbytes].view(config.dtype).reshape(config.shape) for p in self.payloads]
        # What readers get: read-only (a consumer must not scribble on what others read), and
        # built once per slot for the common full-size message (no new array per message).
        self.ro_raw = [p.view() for p in self.payloads]
        for p in self.ro_raw:
            p.flags.writeable = False
        self.full_nbytes = self.typed[0].nbytes if self.typed else h.capacity
        self.ro_full = [self._shape(raw, self.full_nbytes) for raw in self.ro_raw]

    def _shape(self, raw: np.ndarray, length: int) -> np.ndarray:
        cfg = self.config
        if self.typed is not None and length == self.full_nbytes:
            return raw[:length].view(cfg.dtype).reshape(cfg.shape)
        if cfg.dtype is not None:
            return raw[: length - length % cfg.dtype.itemsize].view(cfg.dtype)
        return raw[:length]

    def shape_view(self, raw: np.ndarray, length: int) -> np.ndarray:
        """``raw`` bytes seen as ``length`` bytes of the topic's type (a dropped loan's scratch)."""
        return self._shape(raw, length)

    def view(self, slot: int, length: int) -> np.ndarray:
        """A writable view of ``slot``'s payload as the topic's type (the writer's loans)."""
        return self._shape(self.payloads[slot], length)

    def read_view(self, slot: int, length: int) -> np.ndarray:
        """A read-only view of a received message: typed array, 1-D dtype array or bytes."""
        return self.ro_full[slot] if length == self.full_nbytes else self._shape(self.ro_raw[slot], length)

    def close(self) -> None:
        """Unmap and drop this process's locks. Views a caller still holds keep the memory alive."""
        self.payloads = self.ro_raw = self.ro_full = []
        self.typed = None
        self._pin = None
        with contextlib.suppress(BufferError):  # views still exported: the mapping goes with the last one
            self.mm.close()
        os.close(self.fd)


def _describe(field: str, value) -> str:
    if value is None:
        return "unset"
    if field == "dtype":
        return L.dtype_name(value)
    if field == "shape":
        return str(list(value))
    return str(value)


def check_agreement(action: str, have: L.TopicConfig, have_src: str, want: L.TopicRequest, want_src: str) -> None:
    """Raise TopicMismatchError at the first field where ``want`` (where set) differs from ``have``
    (a message type only where both name one: a topic's first writer may name it)."""
    for field in ("capacity", "pool", "dtype", "shape", "message"):
        wanted = getattr(want, field)
        if wanted is None:
            continue
        actual = getattr(have, field)
        if field == "message" and actual is None:
            continue
        if actual != wanted:
            raise TopicMismatchError(
                f"cannot {action}: {want_src} {field} is {_describe(field, wanted)}, "
                f"{have_src} says {_describe(field, actual)}"
            )


def check_header(seg: Segment, config: L.TopicConfig, action: str) -> None:
    """The segment header must repeat the registry's config exactly."""
    h = seg.header
    pairs = [
        ("capacity", h.capacity, config.capacity),
        ("pool", h.pool, config.pool),
        ("dtype", h.typestr or None, None if config.dtype is None else config.dtype.str),
        ("shape", None if h.shape is None else list(h.shape), None if config.shape is None else list(config.shape)),
    ]
    for field, in_header, in_registry in pairs:
        if in_header != in_registry:
            raise TopicMismatchError(
                f"cannot {action}: the segment header {field} is {in_header}, the registry says {in_registry}"
            )


def _as_runtime_dir(runtime_dir: Path | RuntimeDir, create: bool) -> contextlib.AbstractContextManager[RuntimeDir]:
    """An open RuntimeDir for ``runtime_dir`` (closed at the end only when opened here)."""
    if isinstance(runtime_dir, RuntimeDir):
        return contextlib.nullcontext(runtime_dir)
    return RuntimeDir.create(runtime_dir) if create else RuntimeDir.open(runtime_dir)


def _open_file(rd: RuntimeDir, topic: str, name: str) -> int:
    """The segment file ``name``, opened without following a symlink; FileNotFoundError when
    there is none, SegmentCorruptError for anything there that is not a plain segment file."""
    try:
        fd = rd.open_file(name, os.O_RDWR)
    except FileNotFoundError:
        raise
    except OSError as exc:  # a symlink (ELOOP), a directory, a file we may not open
        raise SegmentCorruptError(f"cannot open topic {topic!r}: {rd.path / name}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SegmentCorruptError(f"cannot open topic {topic!r}: segment {rd.path / name} is not a regular file")
    return fd


def _open_segment(rd: RuntimeDir, topic: str, name: str, config_of: Callable[[Segment], L.TopicConfig]) -> Segment:
    """The segment file ``name`` mapped, checked by ``config_of`` and complete (see Segment)."""
    return Segment(topic, rd.path / name, _open_file(rd, topic, name), config_of)


def _create_file(rd: RuntimeDir, topic: str, name: str, config: L.TopicConfig) -> None:
    """Build the segment under a fresh temporary name (O_EXCL, never a planted file), reserve its
    space, write its header, then rename it into place."""
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = rd.open_file(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        try:
            reserve(fd, config.segment_size)
        except OSError as exc:
            raise OutOfSpaceError(
                exc.errno,
                f"cannot create topic {topic!r}: {rd.path} has {free_bytes(rd.path)} bytes free, "
                f"the segment needs {config.segment_size} ({config.describe()})",
            ) from exc
        header = bytearray(config.header_bytes())
        header[L.WAKE_ID_OFFSET : L.WAKE_ID_OFFSET + 8] = secrets.token_bytes(8)  # names the Windows wake events
        os.write(fd, header)  # a fresh file: at offset 0
        rd.replace(tmp, name)
    except BaseException:
        rd.unlink(tmp)
        raise
    finally:
        os.close(fd)


def create_segments(rd: RuntimeDir, configs: dict[str, L.TopicConfig], *, recreate: bool = False) -> list[Segment]:
    """Create every topic of ``configs`` under one registry lock and one registry write (1000
    topics cost one registry update, not 1000). A topic that exists already is TopicExistsError,
    unless ``recreate``: then its old segment is replaced, if nobody uses it (else WriterBusyError)."""
    segs: list[Segment] = []
    try:
        with locked_registry(rd) as topics:
            for topic, config in configs.items():
                name = segment_file_name(topic)
                action = f"create topic {topic!r}"
                if topic in topics or _exists(rd, name):
                    if not recreate:
                        raise TopicExistsError(f"cannot {action}: it exists already in {rd.path}; open it, or re-create it "
                                               f"explicitly (recreate=True)")
                    _remove_unused(rd, topic, name, action)
                segs.append(_create(rd, topics, topic, name, config))
    except BaseException:
        for seg in segs:
            seg.close()
        raise
    return segs


def open_or_create_segment(rd: RuntimeDir, topic: str, request: L.TopicRequest, *, writer: bool, default_pool: int = 4) -> Segment:
    """The one way a topic is opened-or-created: ``Writer(topic, capacity=...)`` (a node's short
    form) and ``Topic.open_or_create`` both come here, and ``Topic.create``/``create_segments`` is
    the explicit verb for making topics. Opens ``topic`` as ``request`` describes it (fields left
    None are not checked), creating it when it does not exist. Never replaces an existing topic:
    a different config is TopicMismatchError, a bad header SegmentCorruptError, whether or not
    anybody uses it.

    With ``writer=True`` the segment holds the writer lock byte, taken inside the registry lock."""
    action = f"open topic {validate_topic_name(topic)!r} for writing" if writer else f"open or create topic {topic!r}"
    name = segment_file_name(topic)
    with locked_registry(rd) as topics:
        entry = topics.get(topic)
        if not _exists(rd, name):
            # New, or listed but its segment is gone (removed by hand): made from the registry's
            # description when there is one, which the request must then agree with.
            listed = None
            if entry is not None:
                listed = entry_to_config(entry)
                check_agreement(action, listed, "the registry", request, "requested")
            if request.capacity is None and listed is None:
                raise TopicNotFoundError(f"cannot {action}: it does not exist yet and no capacity (or dtype and shape) was given")
            seg = _create(rd, topics, topic, name, request.config(listed, default_pool))
        else:
            seg = _open_segment(rd, topic, name, functools.partial(_checked_config, entry=entry, request=request, action=action))
            topics[topic] = config_to_entry(topic, seg.config)
        if writer:
            _take_writer_lock(seg, action)
    return seg


def unlink_topic(runtime_dir: Path, topic: str, segment: str) -> None:
    """Destroy a topic: its registry entry and its segment file, under the registry lock. Processes
    that still map the segment keep their memory until they close it."""
    with RuntimeDir.open(runtime_dir) as rd, locked_registry(rd) as topics:
        topics.pop(topic, None)
        rd.unlink(segment)


def _exists(rd: RuntimeDir, name: str) -> bool:
    try:
        rd.lstat(name)
    except FileNotFoundError:
        return False
    return True


def _create(rd: RuntimeDir, topics: dict, topic: str, name: str, config: L.TopicConfig) -> Segment:
    _create_file(rd, topic, name, config)
    seg = _open_segment(rd, topic, name, lambda _seg: dataclasses.replace(config, segment=name))
    topics[topic] = config_to_entry(topic, config)
    return seg


def _remove_unused(rd: RuntimeDir, topic: str, name: str, action: str) -> None:
    """Remove an existing segment before re-creating it; one in use is never pulled away."""
    try:
        fd = _open_file(rd, topic, name)
    except FileNotFoundError:
        return
    try:
        if ByteLock(fd, L.LOCK_WRITER).is_held_by_others() or ByteLock(fd, L.LOCK_PRESENCE).is_held_by_others():
            raise WriterBusyError(f"cannot {action} again: its segment {rd.path / name} is in use (a writer or reader is attached)")
    finally:
        os.close(fd)
    rd.unlink(name)


def _take_writer_lock(seg: Segment, action: str) -> None:
    if seg.writer_lock.try_exclusive():
        return
    pid = struct.unpack_from("<Q", seg.mm, L.WRITER_OFFSET)[0]
    seg.close()
    if pid == os.getpid():
        raise WriterBusyError(f"cannot {action}: another Writer of this topic is open in this process (pid {pid}); close() it first")
    raise WriterBusyError(f"cannot {action}: another writer (pid {pid}) is alive; a topic has exactly one writer")


def _checked_config(seg: Segment, *, entry: dict | None, request: L.TopicRequest, action: str) -> L.TopicConfig:
    """An existing segment's config, checked: header against the registry (or itself, when the
    registry lost the entry), and both against ``request``; a writer naming its message type
    for the first time adds it."""
    seg.check_layout(action)
    existing = entry_to_config(entry) if entry else _header_config(seg, action)
    check_agreement(action, existing, "the registry", request, "requested")
    check_header(seg, existing, action)
    if request.message is not None and existing.message is None:  # the writer names what it sends
        existing = dataclasses.replace(existing, message=request.message)
    return existing


def _header_config(seg: Segment, action: str) -> L.TopicConfig:
    h = seg.header
    try:
        dtype = np.dtype(h.typestr) if h.typestr else None
    except TypeError:
        raise SegmentCorruptError(f"cannot {action}: segment {seg.path} is corrupt: its header's dtype {h.typestr!r} "
                                  f"is not a numpy type") from None
    return L.TopicConfig(h.capacity, h.pool, dtype, h.shape, segment=seg.path.name)


def _graphs_hint() -> str:
    graphs = graphs_present()
    if not graphs:
        return "no graph has a runtime directory: is it running?"
    return (f"graphs with a runtime directory: {', '.join(graphs)}; open one by name: "
            f"runtime_dir=graph_runtime_dir(NAME), shmlaunch run --graph NAME, or {ENV_RUNTIME_DIR}")


def segment_is_current(seg: Segment, runtime_dir: Path, rd: RuntimeDir | None = None) -> bool:
    """True while ``runtime_dir``'s file for the topic is still the one ``seg`` maps (False once
    the topic was unlinked or re-created, or the directory is gone)."""
    try:
        with contextlib.nullcontext(rd) if rd is not None else RuntimeDir.open(runtime_dir) as d:
            return d.is_file_of(seg.path.name, seg.fd)
    except (OSError, TransportError):
        return False


def open_for_reading(runtime_dir: Path | RuntimeDir, topic: str, request: L.TopicRequest, observer: bool = False) -> Segment:
    """Open an existing topic: the registry supplies the config, the header must agree.
    A reader holds the presence lock; an ``observer`` (a tool) does not."""
    action = f"open topic {validate_topic_name(topic)!r} for reading"
    try:
        ctx = _as_runtime_dir(runtime_dir, create=False)
    except FileNotFoundError:
        raise TopicNotFoundError(f"cannot {action}: there is no runtime directory {runtime_dir} ({_graphs_hint()})") from None
    with ctx as rd:
        entry = registry_entry(rd, topic)
        if entry is None:
            raise TopicNotFoundError(f"cannot {action}: the registry in {rd.path} does not list it ({_graphs_hint()})")
        config = entry_to_config(entry)
        check_agreement(action, config, "the registry", request, "requested")
        try:
            fd = _open_file(rd, topic, entry["segment"])
        except FileNotFoundError:
            raise TopicNotFoundError(f"cannot {action}: its segment {rd.path / entry['segment']} is missing") from None
        path = rd.path / entry["segment"]

    def checked(seg: Segment) -> L.TopicConfig:
        seg.check_layout(action)
        check_header(seg, config, action)
        if not observer:
            seg.presence_lock.try_shared()
        return config

    return Segment(topic, path, fd, checked)
