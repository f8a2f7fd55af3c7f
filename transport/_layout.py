"""The byte layout of a pool-topic segment and of a trace ring: the one definition.

Everything another language needs is generated from this file by ``tools/gen_layout.py``: the C
header of the Linux hot path, the C++ header the C++ client includes, the C# partial class, the
constants of the Windows hot path, and the tables of transport/LAYOUT.md (which adds the protocol
in prose). ``tests/test_layout_codegen.py`` fails when a generated file is stale. A change of any
offset or size bumps ``LAYOUT_VERSION``.

All integers are little-endian (every supported platform is); offsets are from the start of the
segment file (header fields), of a reader-table entry, of a group-table entry, of a slot, of a
ring, or of a ring record. Each table below names every field, reserved ones included, so the
generated code has a name for every offset it touches and the tables are checked to tile their
block exactly. Where the platforms differ (the bytes are the same on both): Linux readers sleep on
the wake word as a futex and writers wake it; Windows readers each own a wait entry with a named
auto-reset event, and the writer, after storing the wake word, sets the event of every bit of
``waiters``. Linux uses open-file-description locks, Windows LockFileEx byte ranges (both released
by the system when their holder dies; neither enforced on mapped memory).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Field:
    """One field of a block: ``kind`` is u16/u32/u64/i64, ``bytes`` or ``TYPE[N]``; ``part`` says
    whether it is written once by the creator (static) or changes while the topic lives (dynamic)."""

    name: str
    offset: int
    size: int
    kind: str
    meaning: str
    part: str = ""

    @property
    def reserved(self) -> bool:
        return self.name.startswith("reserved")


def _fields(*rows: tuple) -> tuple[Field, ...]:
    """Fields laid end to end: each row is (name, size, kind, meaning[, part])."""
    out, offset = [], 0
    for name, size, kind, meaning, *part in rows:
        out.append(Field(name, offset, size, kind, meaning, *part))
        offset += size
    return tuple(out)


HEADER_FIELDS = _fields(
    ("magic", 8, "bytes", "ASCII `SHMLPOOL`", "static"),
    ("layout_version", 4, "u32", "1", "static"),
    ("pool", 4, "u32", "number of slots N, 1..256", "static"),
    ("capacity", 8, "u64", "largest payload in bytes", "static"),
    ("slot_stride", 8, "u64", "bytes from one slot to the next = round_up(64 + capacity, 64)", "static"),
    ("slots_offset", 8, "u64", "offset of slot 0 (21504); read it, do not assume it", "static"),
    ("itemsize", 8, "u64", "bytes per element of `dtype`, 0 for raw bytes", "static"),
    ("ndim", 4, "u32", "dimensions in `shape`, 0 when the topic has no fixed shape", "static"),
    ("reserved_52", 4, "bytes", "reserved, 0", "static"),
    ("dtype", 32, "bytes", "ASCII numpy type string, NUL padded; empty for raw bytes", "static"),
    ("shape", 64, "u64[8]", "the first `ndim` are used", "static"),
    ("reserved_152", 104, "bytes", "reserved, 0", "static"),
    ("wake", 4, "u32", "futex word: `((seq & 0xFFFFFF) << 8) \\| slot` of the newest message, 0 before the first", "dynamic"),
    ("reserved_260", 4, "bytes", "reserved, 0", "dynamic"),
    ("latest_seq", 8, "u64", "sequence number of the newest complete message (for tools)", "dynamic"),
    ("writer_pid", 8, "u64", "pid of the last writer that attached", "dynamic"),
    ("writer_generation", 8, "u64", "+1 each time a writer attaches", "dynamic"),
    ("writer_attach_ns", 8, "i64", "CLOCK_REALTIME ns when it attached", "dynamic"),
    ("waiters", 8, "u64", "bit mask, Windows only (0 on Linux): bit `i` set while wait entry `i` has a wake event "
     "(set and cleared under lock byte 2049; the writer signals each set bit's event)", "dynamic"),
    # Static, but placed after the dynamic fields: it was added in a later revision of version 1,
    # where the static block (0..152) was full up to its reserved tail and readers of older files
    # find zero here (Windows then names no events). Moving it would change the layout version.
    ("wake_id", 8, "u64", "random, written by the creator: names the topic's wake events on Windows "
     "(`Local\\shmlaunch-<wake_id hex>-<i>`) and the topic in trace records", "static"),
    ("reserved_312", 200, "bytes", "reserved, 0", "dynamic"),
)
READER_FIELDS = _fields(
    ("pid", 8, "u64", "the reader's process"),
    ("received", 8, "u64", "messages delivered to this reader"),
    ("missed", 8, "u64", "messages overwritten before this reader got to them"),
    ("last_seq", 8, "u64", "sequence number of the last message delivered"),
    ("last_age_ns", 8, "i64", "publish-to-receive time of the last message"),
    ("last_receive_ns", 8, "i64", "CLOCK_REALTIME ns of the last receive"),
    ("stale", 8, "u64", "messages skipped for being older than the reader's `max_age`"),
    ("group", 8, "u64", "0: an ordinary reader; else 1 + the index of its competing-consumer group in the group table"),
)
GROUP_FIELDS = _fields(
    ("name", 64, "bytes", "group name, ASCII, NUL padded (all zero: entry free)"),
    ("claims", 2048, "u64[256]", "`claims[i]` = the sequence number a member of the group took from slot `i`"),
)
SLOT_FIELDS = _fields(
    ("state", 8, "u64", "`2*seq` when message `seq` is complete; odd while it is being written; 0 when never written"),
    ("length", 8, "u64", "payload bytes of this message"),
    ("source_ns", 8, "i64", "source timestamp (capture time), CLOCK_REALTIME ns"),
    ("publish_ns", 8, "i64", "publish time, CLOCK_REALTIME ns"),
    ("generation", 8, "u64", "`writer_generation` of the writer that wrote it"),
    ("source_seq", 8, "u64", "sequence number of the input message this one was computed from (0: none)"),
    ("reserved_48", 16, "bytes", "reserved"),
)
TRACE_HEADER_FIELDS = _fields(
    ("magic", 8, "bytes", "`SHMLTRCE`"),
    ("version", 4, "u32", "1"),
    ("capacity", 4, "u32", "records in the ring, a power of two (32768)"),
    ("head", 8, "u64", "records written so far: stored with **release** order after each record"),
    ("pid", 8, "u64", "the writing process (the file name repeats it)"),
    ("clock_offset", 8, "i64", "CLOCK_REALTIME - CLOCK_MONOTONIC in ns when the ring was made"),
    ("reserved_40", 8, "bytes", "reserved"),
    ("name", 64, "bytes", "UTF-8 process name (the node's name under a launcher), NUL padded"),
    ("reserved_112", 16, "bytes", "reserved"),
)
TRACE_RECORD_FIELDS = _fields(
    ("ns", 8, "i64", "CLOCK_MONOTONIC when the step happened"),
    ("topic", 8, "u64", "the topic segment's `wake_id` (its identity while it exists)"),
    ("seq", 8, "u64", "the message's sequence number"),
    ("source_seq", 8, "u64", "the input message it was computed from (0: none)"),
    ("stamp_ns", 8, "i64", "the message's source timestamp (CLOCK_REALTIME)"),
    ("kind", 2, "u16", "1 publish (recorded before the state word makes it visible), 2 receive, 3 release, 4 callback start, "
     "5 callback end, 6 publish dropped (every slot held)"),
    ("entry", 2, "u16", "the reader's table index; 0xFFFF for a writer, an observer, a callback"),
    ("generation", 4, "u32", "low bits of the writer generation that published it"),
    ("lost", 12, "u32[3]", "receive only: messages overwritten, stale (`max_age`), taken by another group member since this "
     "reader's previous traced receive"),
    ("reserved_60", 4, "bytes", "reserved"),
)
#: The blocks, by the prefix of their generated names (``SLOT_LENGTH_OFFSET``, ``HEADER_WAKE_SIZE``...).
BLOCKS: dict[str, tuple[Field, ...]] = {
    "HEADER": HEADER_FIELDS, "READER": READER_FIELDS, "GROUP": GROUP_FIELDS, "SLOT": SLOT_FIELDS,
    "TRACE_HEADER": TRACE_HEADER_FIELDS, "TRACE_RECORD": TRACE_RECORD_FIELDS,
}
_FORMAT = {"u16": "H", "u32": "I", "u64": "Q", "i64": "q"}


def field(block: tuple[Field, ...], name: str) -> Field:
    return next(f for f in block if f.name == name)


def block_size(block: tuple[Field, ...]) -> int:
    return block[-1].offset + block[-1].size


def block_struct(block: tuple[Field, ...], first: str, last: str, *, skip_reserved: bool = True) -> struct.Struct:
    """A struct over the fields ``first`` to ``last`` of a block: reserved fields as padding."""
    names = [f.name for f in block]
    fmt = "<"
    for f in block[names.index(first) : names.index(last) + 1]:
        base, _, count = f.kind.partition("[")
        if f.reserved and skip_reserved:
            fmt += f"{f.size}x"
        elif base == "bytes":
            fmt += f"{f.size}s"
        else:
            fmt += (count.rstrip("]") if count else "") + _FORMAT[base]
    return struct.Struct(fmt)


MAGIC = b"SHMLPOOL"
LAYOUT_VERSION = 1
HEADER_SIZE = block_size(HEADER_FIELDS)  # 512
MAX_POOL = 256
READERS_OFFSET = HEADER_SIZE
MAX_READERS = 64
READER_ENTRY_SIZE = block_size(READER_FIELDS)  # 64
READER_ENTRY = block_struct(READER_FIELDS, "pid", "group")
GROUPS_OFFSET = READERS_OFFSET + MAX_READERS * READER_ENTRY_SIZE  # 4608
MAX_GROUPS = 8
GROUP_NAME_SIZE = field(GROUP_FIELDS, "name").size  # NUL-padded ASCII; the claims follow
GROUP_ENTRY_SIZE = block_size(GROUP_FIELDS)  # 2112
SLOTS_OFFSET = GROUPS_OFFSET + MAX_GROUPS * GROUP_ENTRY_SIZE  # 21504
SLOT_HEADER_SIZE = block_size(SLOT_FIELDS)  # 64
ALIGN = 64
MAX_NDIM = 8
DTYPE_SIZE = field(HEADER_FIELDS, "dtype").size  # 32
#: The largest capacity a topic may have (1 TiB): far beyond any frame, small enough that no
#: size computed from a header can overflow 64 bits in C++ or C#.
MAX_CAPACITY = 1 << 40
#: Slot state words at or above this are corrupt (a sequence number of 2**62 is never reached).
MAX_STATE = 1 << 63

STATIC = block_struct(HEADER_FIELDS, "magic", "shape")  # offsets 0..151
WAKE_OFFSET = field(HEADER_FIELDS, "wake").offset  # 256
LATEST_SEQ_OFFSET = field(HEADER_FIELDS, "latest_seq").offset  # 264
WRITER_OFFSET = field(HEADER_FIELDS, "writer_pid").offset  # 272
WRITER = block_struct(HEADER_FIELDS, "writer_pid", "writer_attach_ns")  # writer_pid, writer_generation, writer_attach_ns
WAITERS_OFFSET = field(HEADER_FIELDS, "waiters").offset  # 296
WAKE_ID_OFFSET = field(HEADER_FIELDS, "wake_id").offset  # 304
#: The wake word: ((seq & WAKE_SEQ_MASK) << WAKE_SEQ_SHIFT) | slot; a reader takes the slot with & WAKE_SLOT_MASK.
WAKE_SEQ_SHIFT = 8
WAKE_SLOT_MASK = (1 << WAKE_SEQ_SHIFT) - 1  # 0xFF: MAX_POOL slots
WAKE_SEQ_MASK = (1 << (32 - WAKE_SEQ_SHIFT)) - 1  # 0xFFFFFF
SLOT = block_struct(SLOT_FIELDS, "state", "source_seq")  # state, length, source_ns, publish_ns, generation, source_seq

#: Lock bytes (fcntl open-file-description byte-range locks on the segment file on Linux,
#: LockFileEx ranges on Windows; advisory, they do not touch the bytes): (name, byte, lock, held by).
LOCKS = (
    ("LOCK_WRITER", 0, "exclusive", "the live writer, for its whole life (a second writer's attempt fails: one writer per topic)"),
    ("LOCK_PRESENCE", 1, "shared", "every live reader, for its life (a segment with a lock on 0 or 1 is in use and is never re-created)"),
    ("LOCK_SLOT0", 64, "shared / exclusive", "byte 64 + i: a reader while it holds a message of slot i (shared); "
     "the writer while it writes slot i (exclusive)"),
    ("LOCK_READER0", 1024, "exclusive", "byte 1024 + i: the reader that owns reader-table entry i, for its life"),
    ("LOCK_GROUP_TABLE", 2048, "exclusive", "a reader adding a group name to the group table (blocking, short)"),
    ("LOCK_WAITERS", 2049, "exclusive", "Windows: a waiter setting or clearing its bit of `waiters` (short)"),
    ("LOCK_CLAIM0", 4096, "exclusive", "byte 4096 + g*256 + i: a group member checking and setting `claims[i]` of group g"),
    ("LOCK_WAITER0", 8192, "exclusive", "byte 8192 + i, Windows: the reader or observer that owns wait entry i (its wake event), for its life"),
)
LOCK_WRITER, LOCK_PRESENCE, LOCK_SLOT0, LOCK_READER0, LOCK_GROUP_TABLE, LOCK_WAITERS, LOCK_CLAIM0, LOCK_WAITER0 = (b for _, b, *_ in LOCKS)
MAX_WAITERS = 64

# ----- trace rings (``shmlaunch trace``; transport/_trace.py writes and reads them)
# While a tracer holds the lock of ``trace.request`` in a runtime directory, each process with
# a topic open there writes ``trace.<pid>.ring`` (0600), and only that process writes it: a
# header (TRACE_HEADER_FIELDS), then record i at TRACE_HEADER_SIZE + (i % capacity) * TRACE_RECORD_SIZE,
# valid while head - i <= capacity.
TRACE_MAGIC = b"SHMLTRCE"
TRACE_VERSION = 1
TRACE_HEADER = block_struct(TRACE_HEADER_FIELDS, "magic", "reserved_112")  # magic, version, capacity, head, pid, clock_offset, name
TRACE_HEAD_OFFSET = field(TRACE_HEADER_FIELDS, "head").offset  # 16
TRACE_HEADER_SIZE = block_size(TRACE_HEADER_FIELDS)  # 128: record 0 starts here
TRACE_RECORD = block_struct(TRACE_RECORD_FIELDS, "ns", "reserved_60")  # ns, topic, seq, source_seq, stamp_ns, kind, entry, generation, lost[3]
TRACE_RECORD_SIZE = block_size(TRACE_RECORD_FIELDS)  # 64
TRACE_CAPACITY = 1 << 15
TRACE_NO_ENTRY = 0xFFFF
TRACE_PUBLISH, TRACE_RECEIVE, TRACE_RELEASE, TRACE_CALLBACK_START, TRACE_CALLBACK_END, TRACE_DROP = range(1, 7)
#: The request a tracer holds locked while it listens, and each process's ring.
TRACE_REQUEST = "trace.request"
#: The graph's trace wake word (u32 at offset 0 of a 64-byte file, made by the first process that
#: watches): a tracer changes it and wakes its sleepers when it attaches and when it detaches, so a
#: process waits for a tracer in the kernel (no CPU, no polling) and looks only when told.
TRACE_WAKE = "trace.wake"
TRACE_WAKE_SIZE = 64

#: The scalar constants every generated file carries (besides each field's offset and size, which
#: give the rest: GROUP_NAME_SIZE is the group block's ``name`` field).
CONSTANTS = (
    "LAYOUT_VERSION", "HEADER_SIZE", "MAX_POOL", "READERS_OFFSET", "MAX_READERS", "READER_ENTRY_SIZE", "GROUPS_OFFSET", "MAX_GROUPS",
    "GROUP_ENTRY_SIZE", "SLOTS_OFFSET", "SLOT_HEADER_SIZE", "ALIGN", "MAX_NDIM", "DTYPE_SIZE", "MAX_CAPACITY", "MAX_STATE",
    "WAKE_SEQ_SHIFT", "WAKE_SLOT_MASK", "WAKE_SEQ_MASK", "LOCK_WRITER", "LOCK_PRESENCE", "LOCK_SLOT0", "LOCK_READER0", "LOCK_GROUP_TABLE",
    "LOCK_WAITERS", "LOCK_CLAIM0", "LOCK_WAITER0", "MAX_WAITERS", "TRACE_VERSION", "TRACE_HEADER_SIZE", "TRACE_RECORD_SIZE",
    "TRACE_CAPACITY", "TRACE_NO_ENTRY", "TRACE_PUBLISH", "TRACE_RECEIVE", "TRACE_RELEASE", "TRACE_CALLBACK_START", "TRACE_CALLBACK_END",
    "TRACE_DROP",
)
#: The byte strings every generated file carries.
STRINGS = ("MAGIC", "TRACE_MAGIC")


def trace_ring_name(pid: int) -> str:
    return f"trace.{pid}.ring"


def trace_ring_size(capacity: int = TRACE_CAPACITY) -> int:
    return TRACE_HEADER.size + capacity * TRACE_RECORD.size


def group_claims_offset(group: int) -> int:
    return GROUPS_OFFSET + group * GROUP_ENTRY_SIZE + GROUP_NAME_SIZE


def slot_lock_offset(index: int) -> int:
    return LOCK_SLOT0 + index


def slot_stride(capacity: int) -> int:
    return -(-(SLOT_HEADER_SIZE + capacity) // ALIGN) * ALIGN


@dataclass(frozen=True)
class TopicConfig:
    """A topic's static description: what the registry lists and the header repeats, written
    once by its creator. ``segment`` is the segment's file name in the runtime directory (set
    on the config of an opened topic); ``message`` names the message type a writer declared
    (registry only: the bytes do not change). ``TopicConfig.build`` checks and completes a
    declaration.
    """

    capacity: int
    pool: int
    dtype: np.dtype | None = None
    shape: tuple[int, ...] | None = None
    layout_version: int = LAYOUT_VERSION
    segment: str | None = None
    message: str | None = None  # the message type its writer declared (e.g. "shmlaunch.landmarks/1"), for tools to decode

    @classmethod
    def build(cls, capacity: int | None = None, pool: int = 4, dtype=None, shape=None) -> TopicConfig:
        """A checked config from a declaration: ``capacity`` in bytes, or ``dtype`` and ``shape``
        (capacity then follows); ValueError says what is wrong."""
        return TopicRequest.build(capacity, pool, dtype, shape).config()

    @property
    def segment_size(self) -> int:
        return SLOTS_OFFSET + self.pool * slot_stride(self.capacity)

    def header_bytes(self) -> bytes:
        typestr = b"" if self.dtype is None else self.dtype.str.encode("ascii")
        itemsize = 0 if self.dtype is None else self.dtype.itemsize
        shape = list(self.shape or ())
        static = STATIC.pack(
            MAGIC, LAYOUT_VERSION, self.pool, self.capacity, slot_stride(self.capacity),
            SLOTS_OFFSET, itemsize, len(shape), typestr, *(shape + [0] * (MAX_NDIM - len(shape))),
        )
        return static + bytes(HEADER_SIZE - len(static))

    def describe(self) -> str:
        parts = [f"capacity={self.capacity}", f"pool={self.pool}"]
        if self.dtype is not None:
            parts.append(f"dtype={dtype_name(self.dtype)}")
        if self.shape is not None:
            parts.append(f"shape={list(self.shape)}")
        return " ".join(parts)


@dataclass(frozen=True)
class HeaderView:
    """What a segment's static header says (as read back from the file)."""

    magic: bytes
    layout_version: int
    pool: int
    capacity: int
    slot_stride: int
    slots_offset: int
    itemsize: int
    typestr: str
    shape: tuple[int, ...] | None
    ndim: int
    dtype_padded: bool = True  # printable ASCII, then only NULs (what a creator writes)

    @classmethod
    def parse(cls, buf) -> HeaderView:
        f = STATIC.unpack_from(buf, 0)
        ndim = f[7]
        return cls(
            magic=f[0], layout_version=f[1], pool=f[2], capacity=f[3], slot_stride=f[4],
            slots_offset=f[5], itemsize=f[6], typestr=f[8].rstrip(b"\0").decode("ascii", "replace"),
            shape=tuple(f[9 : 9 + min(ndim, MAX_NDIM)]) if ndim else None, ndim=ndim,
            dtype_padded=_nul_padded_ascii(f[8]),
        )


def _nul_padded_ascii(field: bytes) -> bool:
    text = field.rstrip(b"\0")
    return all(0x21 <= c <= 0x7E for c in text)


def header_problem(h: HeaderView, size: int) -> str | None:
    """What is wrong with a segment's static header read back from a file of ``size`` bytes
    (None: it can be mapped safely). Every field is bounded before any product is formed, so
    the same checks in C++ and C# cannot overflow; they make them in this order, in these words
    (tests/test_cross_language.py feeds the three clients the same crafted segments)."""
    if h.magic != MAGIC:
        return f"magic is 0x{h.magic.hex()}, expected {MAGIC.decode()}"
    if h.layout_version != LAYOUT_VERSION:
        return f"layout_version is {h.layout_version}, this shmlaunch uses {LAYOUT_VERSION}"
    if not 1 <= h.pool <= MAX_POOL:
        return f"pool {h.pool} is outside 1..{MAX_POOL}"
    if not 1 <= h.capacity <= MAX_CAPACITY:
        return f"capacity {h.capacity} is outside 1..{MAX_CAPACITY}"
    if h.slots_offset < SLOTS_OFFSET or h.slots_offset % ALIGN or h.slots_offset > size:
        return f"slots_offset {h.slots_offset} is not a multiple of {ALIGN} from {SLOTS_OFFSET} to the file size {size}"
    if h.slot_stride < slot_stride(h.capacity) or h.slot_stride % ALIGN or h.slot_stride > (size - h.slots_offset) // h.pool:
        return (f"slot_stride {h.slot_stride} does not fit: capacity {h.capacity} needs at least {slot_stride(h.capacity)}, "
                f"and {h.pool} slots from offset {h.slots_offset} must end within the file size {size}")
    if h.ndim > MAX_NDIM:
        return f"ndim {h.ndim} is above {MAX_NDIM}"
    if not h.dtype_padded:
        return "dtype is not an ASCII type string padded with NULs"
    return None


def dtype_name(dtype: np.dtype) -> str:
    """A readable name for error messages: 'uint8', 'float32', or the record's typestr."""
    return dtype.str if dtype.names else dtype.name


def nbytes_of(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    return dtype.itemsize * math.prod(shape)


def _dimensions(shape) -> tuple[int, ...]:
    """A shape as 1 to MAX_NDIM positive whole dimensions (ValueError otherwise, an infinite one too)."""
    try:
        shp = tuple(int(x) for x in (shape if isinstance(shape, (list, tuple)) else (shape,)))
    except OverflowError:  # an infinite float
        raise ValueError(f"invalid shape {shape!r}: 1 to {MAX_NDIM} positive dimensions") from None
    if not shp or len(shp) > MAX_NDIM or any(x <= 0 for x in shp):
        raise ValueError(f"invalid shape {list(shp)}: 1 to {MAX_NDIM} positive dimensions")
    return shp


@dataclass(frozen=True)
class TopicRequest:
    """What a caller asks of a topic, checked: every field it leaves None is not checked (or, when
    the topic is created, takes its default). ``TopicRequest.build`` checks a declaration and
    fills in what follows from it (capacity from dtype x shape); ValueError says what is wrong.
    A TopicConfig is what a topic is; a TopicRequest is what an opener expects of it."""

    capacity: int | None = None
    pool: int | None = None
    dtype: np.dtype | None = None
    shape: tuple[int, ...] | None = None
    message: str | None = None

    @classmethod
    def build(cls, capacity=None, pool=None, dtype=None, shape=None, message=None) -> TopicRequest:
        dt = None if dtype is None else np.dtype(dtype)
        if dt is not None and dt.hasobject:
            raise ValueError(f"invalid dtype {dt}: Python objects cannot go through shared memory (their bytes are pointers)")
        shp = None
        if shape is not None:
            shp = _dimensions(shape)
            if dt is None:
                raise ValueError(f"shape {list(shp)} given without a dtype")
        if capacity is not None:
            if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity <= 0:
                raise ValueError(f"invalid capacity {capacity!r}: a positive number of bytes")
            capacity = int(capacity)
            if capacity > MAX_CAPACITY:
                raise ValueError(f"invalid capacity {capacity}: at most {MAX_CAPACITY} bytes (1 TiB) per message")
            if shp is not None and capacity < nbytes_of(dt, shp):
                raise ValueError(f"capacity {capacity} is smaller than dtype {dt} x shape {list(shp)} = {nbytes_of(dt, shp)} bytes")
        elif shp is not None:
            capacity = nbytes_of(dt, shp)
            if capacity > MAX_CAPACITY:
                raise ValueError(f"dtype {dt} x shape {list(shp)} = {capacity} bytes: at most {MAX_CAPACITY} bytes (1 TiB) per message")
        if pool is not None and (isinstance(pool, bool) or not isinstance(pool, (int, np.integer)) or not 1 <= pool <= MAX_POOL):
            raise ValueError(f"invalid pool size {pool!r}: 1 to {MAX_POOL} slots")
        return cls(capacity, None if pool is None else int(pool), dt, shp, message)

    @classmethod
    def of(cls, config: TopicConfig) -> TopicRequest:
        """Expect exactly ``config``'s capacity, pool, dtype and shape."""
        return cls(config.capacity, config.pool, config.dtype, config.shape)

    def config(self, defaults: TopicConfig | None = None, default_pool: int = 4) -> TopicConfig:
        """The config of a topic made for this request: its fields over ``defaults`` (a registry's
        description of a lost segment); ValueError without a capacity."""
        base = defaults or TopicConfig(0, default_pool)
        capacity = self.capacity if self.capacity is not None else base.capacity
        if not capacity:
            raise ValueError("needs 'capacity' (bytes) or 'dtype' and 'shape'")
        return TopicConfig(capacity, self.pool if self.pool is not None else base.pool, self.dtype if self.dtype is not None else base.dtype,
                           self.shape if self.shape is not None else base.shape, message=self.message or base.message)
