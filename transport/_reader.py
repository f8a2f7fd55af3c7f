"""Readers of a pool topic and the messages they hold.

A reader looks at one 32-bit word, the wake word, which names the newest slot. If the
word has not changed since its last look, there is nothing new and it sleeps (Linux: a futex
on that word; Windows: its wake event; no CPU, GIL released). Otherwise it takes a shared lock on that slot's lock byte (the
writer cannot be writing it then, and cannot overwrite it until the lock is dropped),
checks the slot's state word (even = complete, newer than what it last delivered) and
hands out a zero-copy view. The lock is dropped when the message is released: by
``with msg:``, ``msg.release()``, or when the Message object is garbage.
"""

from __future__ import annotations

import math
import numbers
import struct
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from shmlaunch import _platform as backend
from shmlaunch._platform import ByteLock, MessageBase, ReadCursor

from . import _layout as L
from ._errors import ClosedError
from ._layout import TopicRequest
from ._runtime import RuntimeDir, default_runtime_dir
from ._segment import Segment, open_for_reading, segment_is_current
from ._trace import watch as watch_for_tracer

_U64 = struct.Struct("<Q")
#: Timeouts at or above this many seconds (about 116 days; inf too) mean "wait forever": the
#: kernel's timeout cannot take them, and nobody means them literally.
FOREVER = 1e7


def wait_seconds(timeout: float | None) -> float | None:
    """A caller's timeout as the waits take it: None (forever) or seconds >= 0."""
    if timeout is None:
        return None
    if type(timeout) is not float and type(timeout) is not int and (  # the common cases cost no ABC check
            isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)):  # float("1") would take a string
        raise TypeError(f"timeout must be seconds (a number) or None, got {timeout!r} ({type(timeout).__name__})")
    t = float(timeout)
    if math.isnan(t):
        raise ValueError("invalid timeout nan: give seconds >= 0, or None (or inf) to wait forever")
    return None if t >= FOREVER else max(t, 0.0)


@dataclass(frozen=True)
class ReaderStatistics:
    """Counters of one reader since it opened."""

    received: int
    missed: int  # messages overwritten before this reader got to them (sequence gaps)
    torn: int  # slots found half-written by a writer that died (never delivered)
    busy: int  # looks that found the newest slot being written (pool size 1)
    stale: int  # messages skipped for being older than max_age
    taken: int  # messages another member of this reader's group took first
    last_seq: int
    held: int  # messages this reader holds right now


class Reader:
    """Open an existing pool topic and receive its newest messages.

    The capacity, pool size, dtype and shape come from the graph's registry; any of them
    given here must agree with it (TopicMismatchError names both values). The first
    receive returns the newest message already published, if any; later ones return
    only messages newer than the last one returned.

    ``max_age`` (seconds) skips messages published longer ago than that (counted as stale).
    ``group`` makes this reader a competing consumer: readers of one group share the
    messages, each going to at most one member (the newest no member has taken); a member
    that dies loses only the message it held. Readers outside the group are unaffected.
    A reader takes an entry in the segment's reader table, where ``shmlaunch topic stats``
    shows its counters; ``observer=True`` takes none and holds no presence lock (tools that
    must not count as readers).

    ``close()`` releases this process's mapping and every slot this reader holds; views
    the caller kept stay readable but may then be overwritten.

    >>> r = Reader("demo/topic")                     # doctest: +SKIP
    >>> with r.receive(timeout=1.0) as msg:          # doctest: +SKIP
    ...     print(msg.seq, msg.data[:4])
    """

    def __init__(
        self,
        topic: str,
        *,
        capacity: int | None = None,
        pool: int | None = None,
        dtype=None,
        shape=None,
        runtime_dir: str | Path | None = None,
        max_age: float | None = None,
        observer: bool = False,
        group: str | None = None,
    ) -> None:
        self.topic = topic
        self.runtime_dir = Path(runtime_dir) if runtime_dir else default_runtime_dir()
        request = TopicRequest.build(capacity, pool, dtype, shape)
        self._seg: Segment | None = open_for_reading(self.runtime_dir, topic, request, observer=observer)
        seg = self._seg
        self.config = seg.config
        self._max_age_ns = None if max_age is None else int(max_age * 1e9)
        try:
            self._cursor = self._start(seg, observer, group)
        except BaseException:  # a full group table, no free wait entry: nothing of this reader stays
            seg.close()
            raise
        if group is not None:
            self._cursor.write_entry()  # tools show the membership before the first message
        if not observer:
            watch_for_tracer(self.runtime_dir)
        # Released when this object is garbage, so a reader dropped without close() lets go of its
        # slots, its entries and the file (which Windows could not delete while it is open).
        self._finalizer = weakref.finalize(self, _close, self._cursor, seg)

    def _start(self, seg: Segment, observer: bool, group: str | None) -> ReadCursor:
        """This reader's table entry, group membership and cursor."""
        entry = None if observer else seg.claim_reader_entry()
        self._claims = None
        group_field = 0
        if group is not None:
            g = seg.join_group(group)
            self._claims = (L.group_claims_offset(g), [ByteLock(seg.fd, L.LOCK_CLAIM0 + g * L.MAX_POOL + i) for i in range(self.config.pool)])
            group_field = g + 1
        # Every message's steps are one C call (see _fastpath.c); the rare cases come back to
        # _accept. Readers that filter (max_age, group) see every message in _accept.
        return ReadCursor(
            address=seg.address, fd=seg.fd, slots_offset=seg.slots_offset, stride=seg.slot_stride, pool=self.config.pool,
            capacity=self.config.capacity, full_nbytes=seg.full_nbytes, views=tuple(seg.ro_full), sized_view=seg.read_view,
            message_type=Message, entry=-1 if entry is None else entry, group_field=group_field,
            filtered=self._max_age_ns is not None or self._claims is not None,
        )

    # ----- receiving
    def receive(self, timeout: float | None = None) -> Message | None:
        """The newest message not yet seen, waiting up to ``timeout`` seconds (None: forever).

        Returns None on timeout. Sleeps while nothing is new (0% CPU). A
        message whose slot is being written is not returned; the next one is waited for.
        ``inf`` (or any timeout of 10**7 s or more) waits forever; ``nan`` is a ValueError.
        """
        cursor = self._cursor
        if cursor.closed:
            raise ClosedError(f"reader of topic {self.topic!r} is closed")
        timeout = wait_seconds(timeout)
        start = time.monotonic() if timeout else 0.0
        got = cursor.receive(timeout)  # sleep, wake, take: one C call
        if got.__class__ is not tuple:
            return got  # a Message, or None (timed out)
        while (msg := self._accept(got)) is None:
            left = None if timeout is None else max(0.0, start + timeout - time.monotonic())
            got = cursor.receive(left)
            if got.__class__ is not tuple:
                return got
        return msg

    def receive_nowait(self) -> Message | None:
        """The newest message not yet seen, or None at once (also when it is being written)."""
        cursor = self._cursor
        if cursor.closed:
            raise ClosedError(f"reader of topic {self.topic!r} is closed")
        got = cursor.receive(0.0)
        return got if got.__class__ is not tuple else self._accept(got)

    def _accept(self, got: tuple) -> Message | None:
        """The rare cases: half-written, already seen, too old, or taken by the group. The
        message if it passes, else None (its slot let go)."""
        slot, locked, state, length, source_ns, publish_ns, generation, source_seq, now = got
        cursor = self._cursor
        seq = state >> 1
        reason = None
        if state & 1:
            cursor.torn += 1
            reason = "torn"
        elif seq <= cursor.last_seq:
            reason = "seen"
        elif self._max_age_ns is not None and now - publish_ns > self._max_age_ns:
            cursor.stale += 1
            reason = "stale"
        elif self._claims is not None and not self._claim(slot, seq):
            cursor.taken += 1
            reason = "taken"
        if reason is None:
            return cursor.deliver(slot, state, length, source_ns, publish_ns, generation, source_seq, now)
        if reason in ("stale", "taken"):
            cursor.last_seq = seq
        if locked:
            self._seg.slot_locks[slot].release()
        return None

    def _claim(self, slot: int, seq: int) -> bool:
        """Take message ``seq`` of ``slot`` for this reader's group; False if a member has it."""
        claims_offset, locks = self._claims
        if not locks[slot].try_exclusive():
            return False  # another member is taking it right now
        try:
            off = claims_offset + 8 * slot
            if _U64.unpack_from(self._seg.mm, off)[0] == seq:
                return False
            _U64.pack_into(self._seg.mm, off, seq)
            return True
        finally:
            locks[slot].release()

    # ----- state (each raises ClosedError once the reader is closed, as Writer and Topic do)
    def _open_segment(self) -> Segment:
        if self._seg is None:
            raise ClosedError(f"reader of topic {self.topic!r} is closed")
        return self._seg

    def same_file(self, rd: RuntimeDir | None = None) -> bool:
        """True while the topic's segment file is still the one this reader maps (False once
        the topic was unlinked or re-created); ``rd`` as in ``Topic.same_file``."""
        return segment_is_current(self._open_segment(), self.runtime_dir, rd)

    @property
    def trace_id(self) -> int:
        """The topic's identity in trace records (its segment's ``wake_id``)."""
        return self._open_segment().wake_id

    def writer_alive(self) -> bool:
        """True while a writer process holds the topic's writer lock."""
        return self._open_segment().writer_lock.is_held_by_others()

    def statistics(self) -> ReaderStatistics:
        c = self._cursor
        return ReaderStatistics(c.received, c.missed, c.torn, c.busy, c.stale, c.taken, c.last_seq, c.held())

    @property
    def closed(self) -> bool:
        return self._seg is None

    def close(self) -> None:
        """Release this process's mapping and every slot this reader holds. The topic stays."""
        if self._seg is not None:
            self._finalizer()
            self._seg = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"last_seq={self._cursor.last_seq}"
        return f"<Reader {self.topic!r} {self.config.describe()} {state}>"


def _close(cursor: ReadCursor, seg: Segment) -> None:
    cursor.close()
    seg.close()


def wait_any(readers: list[Reader], timeout: float | None) -> None:
    """Sleep until any of ``readers`` may have a new message, or ``timeout`` seconds pass.

    One system call over all of them (Linux: futex_waitv on their words; Windows:
    WaitForMultipleObjects on their wake events): the node runtime waits on every
    subscription with no CPU. Returns early at any change; callers re-check.
    """
    backend.wait_any([r._cursor for r in readers], wait_seconds(timeout))


class Message(MessageBase):
    """One received message: a zero-copy view of its slot, held until released.

    While held, the writer will not reuse the slot, so ``data`` stays valid and intact.
    ``with msg:`` (or ``release()``, or dropping the last reference) lets the slot go;
    after that ``data`` may be overwritten at any time: ``copy()`` first to keep it.
    Fields: ``data``, ``seq``, ``stamp_ns`` (source time), ``publish_ns``, ``generation``
    (which writer, 1 = the first to attach, published it) and ``source_seq`` (the input
    message it was computed from, 0: none). The fields and the hold are C
    (``_fastpath.Message``): a message costs no Python code to make or to release.
    """

    __slots__ = ()

    @property
    def age_ns(self) -> int:
        """Nanoseconds since the message was published."""
        return time.time_ns() - self.publish_ns

    def copy(self) -> Message:
        """A detached message owning a copy of the data; holds no slot."""
        return Message(None, -1, self.data.copy(), self.seq, self.stamp_ns, self.publish_ns, self.generation, self.source_seq)

    def __repr__(self) -> str:
        return f"<Message seq={self.seq} {self.data.dtype}{list(self.data.shape)} {'held' if self.held else 'released'}>"
