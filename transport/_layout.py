"""The byte layout of a pool-topic segment, version 1 (documented in transport/LAYOUT.md).

All integers are little-endian (every supported platform is); offsets are from the start
of the segment file. The static part is written once by the creator before the file is
renamed into place; the dynamic part and the slots change while the topic lives.

Header (512 bytes)
  off  size  field             part     meaning
  0    8     magic             static   b"SHMLPOOL"
  8    4     layout_version    static   u32, 1
  12   4     pool              static   u32, number of slots N (1..256)
  16   8     capacity          static   u64, max payload bytes per message
  24   8     slot_stride       static   u64, bytes from one slot to the next (multiple of 64)
  32   8     slots_offset      static   u64, offset of slot 0 (21504)
  40   8     itemsize          static   u64, bytes per element of dtype (0: raw bytes)
  48   4     ndim              static   u32, number of dims in shape (0: no fixed shape)
  52   4     (reserved)
  56   32    dtype             static   ASCII numpy typestr, NUL padded ("|u1", "<f4", "|V1272")
  88   64    shape             static   u64[8], the first ndim are used
  152  104   (reserved)        static   zero
  256  4     wake              dynamic  u32 futex word: ((seq & 0xFFFFFF) << 8) | slot, 0 = none yet
  260  4     (reserved)
  264  8     latest_seq        dynamic  u64, sequence number of the newest complete message
  272  8     writer_pid        dynamic  u64, pid of the last writer that attached
  280  8     writer_generation dynamic  u64, +1 each time a writer attaches
  288  8     writer_attach_ns  dynamic  i64, CLOCK_REALTIME ns when it attached
  296  8     waiters           dynamic  u64 bit mask (Windows only; zero on Linux): bit i set while
                                        wait entry i has a wake event (set and cleared under lock
                                        byte 2049; the writer signals each set bit's event)
  304  8     wake_id           static   u64, random, set by the creator: names the topic's wake
                                        events on Windows (Local\\shmlaunch-<wake_id hex>-<i>)
  312  200   (reserved)        dynamic  zero

Reader table (512 .. 4608): MAX_READERS entries of 64 bytes, entry i written only by the
reader that holds lock byte 1024 + i (so tools can show per-reader figures):
  0    8     pid               u64
  8    8     received          u64, messages delivered to this reader
  16   8     missed            u64, messages overwritten before this reader got to them
  24   8     last_seq          u64
  32   8     last_age_ns       i64, publish to receive time of the last message
  40   8     last_receive_ns   i64, CLOCK_REALTIME ns
  48   8     stale             u64, messages skipped for being older than the reader's max_age
  56   8     group             u64, 0: an ordinary reader; else 1 + its group's index in the group table

Group table (4608 .. 21504): MAX_GROUPS entries of 2112 bytes, for competing-consumer reads:
  0    64    name              ASCII group name, NUL padded (all zero: entry free)
  64   2048  claims            u64[256]: claims[i] = the sequence number a member of the group
                               took from slot i (each message goes to at most one member)

Slot i starts at slots_offset + i * slot_stride:
  0    8     state             u64: 2*seq when message seq is complete, odd while being written,
                               0 when never written
  8    8     length            u64, payload bytes of this message
  16   8     source_ns         i64, source timestamp (e.g. capture time), CLOCK_REALTIME ns
  24   8     publish_ns        i64, when the writer published it, CLOCK_REALTIME ns
  32   8     generation        u64, writer_generation of the writer that wrote it
  40   8     source_seq        u64, sequence number of the input this message was computed from (0: none)
  48   16    (reserved)
  64   ...   payload           capacity bytes, 64-byte aligned

Lock bytes (fcntl open-file-description byte-range locks on the segment file; advisory,
they do not touch the bytes):
  0        writer: exclusive, held by the live writer for its whole life
  1        presence: shared, held by every live reader for its life (a segment in use is never re-created)
  64 + i   slot i: shared while a reader holds a message of slot i,
           exclusive while the writer writes slot i
  1024 + i reader table entry i: exclusive, held by the reader that owns the entry
  2048     group table: exclusive while a reader adds a group name (short, blocking)
  4096 + g*256 + i   claim of slot i for group g: exclusive while a member checks and sets it
  2049     waiters mask (Windows): exclusive while a waiter sets or clears its bit (short)
  8192 + i wait entry i (Windows): exclusive, held by the reader (or observer) whose wake event is i

Where the platforms differ (the bytes above are the same on both): Linux readers sleep on the
wake word as a futex and writers wake it; Windows readers each own a wait entry with a named
auto-reset event, and the writer, after storing the wake word, sets the event of every bit of
``waiters``. Linux uses open-file-description locks, Windows LockFileEx byte ranges (both
released by the system when their holder dies; neither enforced on mapped memory).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"SHMLPOOL"
LAYOUT_VERSION = 1
HEADER_SIZE = 512
MAX_POOL = 256
READERS_OFFSET = 512
MAX_READERS = 64
READER_ENTRY = struct.Struct("<QQQQqqQQ")  # pid, received, missed, last_seq, last_age_ns, last_receive_ns, stale, group (0: none, else 1 + its index)
GROUPS_OFFSET = READERS_OFFSET + MAX_READERS * READER_ENTRY.size  # 4608
MAX_GROUPS = 8
GROUP_NAME_SIZE = 64  # NUL-padded ASCII; the claims follow
GROUP_ENTRY_SIZE = GROUP_NAME_SIZE + MAX_POOL * 8  # 2112
SLOTS_OFFSET = GROUPS_OFFSET + MAX_GROUPS * GROUP_ENTRY_SIZE  # 21504
SLOT_HEADER_SIZE = 64
ALIGN = 64
MAX_NDIM = 8
#: The largest capacity a topic may have (1 TiB): far beyond any frame, small enough that no
#: size computed from a header can overflow 64 bits in C++ or C#.
MAX_CAPACITY = 1 << 40
#: Slot state words at or above this are corrupt (a sequence number of 2**62 is never reached).
MAX_STATE = 1 << 63

STATIC = struct.Struct("<8sIIQQQQI4x32s8Q")  # offsets 0..151
WAKE_OFFSET = 256
LATEST_SEQ_OFFSET = 264
WRITER = struct.Struct("<QQq")  # writer_pid, writer_generation, writer_attach_ns at 272
WRITER_OFFSET = 272
SLOT = struct.Struct("<QQqqQQ")  # state, length, source_ns, publish_ns, generation, source_seq

LOCK_WRITER = 0
LOCK_PRESENCE = 1
LOCK_SLOT0 = 64
LOCK_READER0 = 1024
LOCK_GROUP_TABLE = 2048
LOCK_CLAIM0 = 4096  # + group * MAX_POOL + slot
WAITERS_OFFSET = 296
WAKE_ID_OFFSET = 304
LOCK_WAITERS = 2049
LOCK_WAITER0 = 8192
MAX_WAITERS = 64

# ----- trace rings (``shmlaunch trace``; transport/_trace.py writes and reads them)
# While a tracer holds the lock of ``trace.request`` in a runtime directory, each process with
# a topic open there writes ``trace.<pid>.ring`` (0600), and only that process writes it:
#   Header (128 bytes)
#   0    8   magic          b"SHMLTRCE"
#   8    4   version        u32, 1
#   12   4   capacity       u32, records in the ring (a power of two)
#   16   8   head           u64, records written so far (stored with release order after each)
#   24   8   pid            u64, the writing process
#   32   8   clock_offset   i64, CLOCK_REALTIME - CLOCK_MONOTONIC in ns when the ring was made
#   40   8   (reserved)
#   48   64  name           UTF-8 process name (the node's, under a launcher), NUL padded
#   112  16  (reserved)
#   Record i of the ring is at 128 + (i % capacity) * 64; record i is valid while head - i <= capacity:
#   0    8   ns             i64, CLOCK_MONOTONIC when the step happened
#   8    8   topic          u64, the topic segment's wake_id (its identity while it exists)
#   16   8   seq            u64, the message's sequence number
#   24   8   source_seq     u64, the input message it was computed from (0: none)
#   32   8   stamp_ns       i64, the message's source timestamp (CLOCK_REALTIME)
#   40   2   kind           u16, TRACE_PUBLISH ... TRACE_DROP
#   42   2   entry          u16, the reader's table index (0xFFFF: a writer, an observer, a callback)
#   44   4   generation     u32, low bits of the writer generation that published it
#   48   12  lost           u32[3], receive only: messages overwritten, stale, taken by another
#                           group member since this reader's previous traced receive
#   60   4   (reserved)
TRACE_MAGIC = b"SHMLTRCE"
TRACE_VERSION = 1
TRACE_HEADER = struct.Struct("<8sIIQQq8x64s16x")  # magic, version, capacity, head, pid, clock_offset, name
TRACE_HEAD_OFFSET = 16
TRACE_HEADER_SIZE = TRACE_HEADER.size  # 128: record 0 starts here
TRACE_RECORD = struct.Struct("<qQQQqHHIIII4x")  # ns, topic, seq, source_seq, stamp_ns, kind, entry, generation, overwritten, stale, taken
TRACE_RECORD_SIZE = TRACE_RECORD.size  # 64
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
        req = normalize_request(capacity, pool, dtype, shape)
        if req["capacity"] is None:
            raise ValueError("needs 'capacity' (bytes) or 'dtype' and 'shape'")
        return cls(req["capacity"], req["pool"], req["dtype"], req["shape"])

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

    @classmethod
    def parse(cls, buf) -> HeaderView:
        f = STATIC.unpack_from(buf, 0)
        ndim = f[7]
        return cls(
            magic=f[0], layout_version=f[1], pool=f[2], capacity=f[3], slot_stride=f[4],
            slots_offset=f[5], itemsize=f[6], typestr=f[8].rstrip(b"\0").decode("ascii", "replace"),
            shape=tuple(f[9 : 9 + min(ndim, MAX_NDIM)]) if ndim else None, ndim=ndim,
        )


def header_problem(h: HeaderView, size: int) -> str | None:
    """What is wrong with a segment's static header read back from a file of ``size`` bytes
    (None: it can be mapped safely). Every field is bounded before any product is formed, so
    the same checks in C++ and C# cannot overflow."""
    if h.magic != MAGIC:
        return f"magic is {h.magic!r}, expected {MAGIC!r}"
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


def normalize_request(capacity=None, pool=None, dtype=None, shape=None, message=None) -> dict:
    """Check a caller's declaration and fill in what follows from it (capacity from dtype x shape)."""
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
    return {"capacity": capacity, "pool": None if pool is None else int(pool), "dtype": dt, "shape": shp, "message": message}
