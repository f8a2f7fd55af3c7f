"""Readers of a pool topic and the messages they hold.

A reader looks at one 32-bit word, the futex word, which names the newest slot. If the
word has not changed since its last look, there is nothing new and it sleeps on that word
(no CPU, GIL released). Otherwise it takes a shared lock on that slot's lock byte (the
writer cannot be writing it then, and cannot overwrite it until the lock is dropped),
checks the slot's state word (even = complete, newer than what it last delivered) and
hands out a zero-copy view. The lock is dropped when the message is released: by
``with msg:``, ``msg.release()``, or when the Message object is garbage.
"""

from __future__ import annotations

import array
import functools
import math
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _layout as L
from ._errors import ClosedError
from ._layout import normalize_request
from ._runtime import default_runtime_dir
from ._segment import Segment, open_for_reading
from .backend import ByteLock, futex_wait, futex_wait_any, take

_U64 = struct.Struct("<Q")
#: Timeouts at or above this many seconds (about 116 days; inf too) mean "wait forever": the
#: kernel's timeout cannot take them, and nobody means them literally.
FOREVER = 1e7


def wait_seconds(timeout: float | None) -> float | None:
    """A caller's timeout as the futex calls take it: None (forever) or seconds >= 0."""
    if timeout is None:
        return None
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
        request = normalize_request(capacity, pool, dtype, shape)
        self._seg: Segment | None = open_for_reading(self.runtime_dir, topic, request, observer=observer)
        self.config = self._seg.config
        self._holds = array.array("I", bytes(4 * self.config.pool))  # messages held per slot (read by _fastpath.take)
        self._last_wake = 0
        self._last_seq = 0
        self._max_age_ns = None if max_age is None else int(max_age * 1e9)
        self._received = self._missed = self._torn = self._busy = self._stale = 0
        self._last_age_ns = self._last_receive_ns = 0
        self._entry = None if observer else self._seg.claim_reader_entry()
        self._pid = os.getpid()
        seg = self._seg
        self._look = functools.partial(take, seg.address, seg.fd, seg.slots_offset, seg.slot_stride)
        self._taken = 0
        self._claims = None
        self._group_field = 0
        if group is not None:
            g = self._seg.join_group(group)
            self._claims = (L.group_claims_offset(g), [ByteLock(self._seg.fd, L.LOCK_CLAIM0 + g * L.MAX_POOL + i)
                                                        for i in range(self.config.pool)])
            self._group_field = g + 1
            self._write_entry()  # tools show the membership before the first message
        self._filtered = self._max_age_ns is not None or self._claims is not None

    # ----- receiving
    def receive(self, timeout: float | None = None) -> Message | None:
        """The newest message not yet seen, waiting up to ``timeout`` seconds (None: forever).

        Returns None on timeout. Sleeps on the futex while nothing is new (0% CPU). A
        message whose slot is being written is not returned; the next one is waited for.
        ``inf`` (or any timeout of 10**7 s or more) waits forever; ``nan`` is a ValueError.
        """
        seg = self._seg
        if seg is None:
            raise ClosedError(f"reader of topic {self.topic!r} is closed")
        timeout = wait_seconds(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            msg = self._take()
            if msg is not None:
                return msg
            # Sleep while the word still says what we last saw; a publish since the look
            # above changed it, and the wait returns at once.
            if deadline is None:
                futex_wait(seg.wake_address, self._last_wake, None)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                futex_wait(seg.wake_address, self._last_wake, remaining)

    def receive_nowait(self) -> Message | None:
        """The newest message not yet seen, or None at once (also when it is being written)."""
        if self._seg is None:
            raise ClosedError(f"reader of topic {self.topic!r} is closed")
        return self._take()

    def _take(self) -> Message | None:
        """One look: the newest message if it is new, whole and ours to take (the hot path:
        kept short, since after an idle moment it runs from cold caches)."""
        got = self._look(self._last_wake, self._holds)
        if got is None:
            return None  # the word has not moved: nothing new
        wake, slot, locked, state, length, source_ns, publish_ns, generation, source_seq, now = got
        self._last_wake = wake
        seq = state >> 1
        last = self._last_seq
        if (locked < 0 or state & 1 or seq <= last or self._filtered) and not self._accept(slot, locked, state, seq, now - publish_ns):
            return None
        self._holds[slot] += 1
        if last and seq > last + 1 and self._claims is None:  # in a group, gaps are the others' share
            self._missed += seq - last - 1
        self._last_seq = seq
        self._received += 1
        self._last_age_ns = now - publish_ns
        self._last_receive_ns = now
        return Message(self, slot, self._seg.read_view(slot, length), seq, source_ns, publish_ns, generation, source_seq)

    def _accept(self, slot: int, locked: int, state: int, seq: int, age_ns: int) -> bool:
        """The rare cases: busy, half-written, already seen, too old, or taken by the group."""
        if locked < 0:
            self._busy += 1  # the writer is rewriting it: a newer word follows
            return False
        reason = None
        if state & 1:
            self._torn += 1
            reason = "torn"
        elif seq <= self._last_seq:
            reason = "seen"
        elif self._max_age_ns is not None and age_ns > self._max_age_ns:
            self._stale += 1
            reason = "stale"
        elif self._claims is not None and not self._claim(slot, seq):
            self._taken += 1
            reason = "taken"
        if reason is None:
            return True
        if reason in ("stale", "taken"):
            self._last_seq = seq
        if locked:
            self._seg.slot_locks[slot].release()
        return False

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

    def _release(self, slot: int) -> None:
        seg = self._seg
        if seg is None:
            return
        held = self._holds[slot] - 1
        self._holds[slot] = held
        if held == 0:
            seg.slot_locks[slot].release()
        self._write_entry()  # after the release: the reader table is off the latency path

    def _write_entry(self) -> None:
        if self._entry is not None:
            L.READER_ENTRY.pack_into(self._seg.mm, self._entry, self._pid, self._received, self._missed, self._last_seq,
                                     self._last_age_ns, self._last_receive_ns, self._stale, self._group_field)

    # ----- waiting on several topics at once (used by the node runtime)
    def wait_word(self) -> tuple[int, int]:
        """(address, value) of the futex word to sleep on while nothing is new."""
        return self._seg.wake_address, self._last_wake

    # ----- state
    def writer_alive(self) -> bool:
        """True while a writer process holds the topic's writer lock."""
        return self._seg.writer_lock.is_held_by_others()

    def statistics(self) -> ReaderStatistics:
        return ReaderStatistics(self._received, self._missed, self._torn, self._busy, self._stale, self._taken, self._last_seq,
                                sum(self._holds))

    @property
    def closed(self) -> bool:
        return self._seg is None

    def close(self) -> None:
        """Release this process's mapping and every slot this reader holds. The topic stays."""
        if self._seg is not None:
            self._seg.close()
            self._seg = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"last_seq={self._last_seq}"
        return f"<Reader {self.topic!r} {self.config.describe()} {state}>"


def wait_any(readers: list[Reader], timeout: float | None) -> None:
    """Sleep until any of ``readers`` may have a new message, or ``timeout`` seconds pass.

    One futex_waitv over all their words: the node runtime waits on every subscription
    with one system call and no CPU. Returns early at any change; callers re-check.
    """
    futex_wait_any([r.wait_word() for r in readers], wait_seconds(timeout))


class Message:
    """One received message: a zero-copy view of its slot, held until released.

    While held, the writer will not reuse the slot, so ``data`` stays valid and intact.
    ``with msg:`` (or ``release()``, or dropping the last reference) lets the slot go;
    after that ``data`` may be overwritten at any time: ``copy()`` first to keep it.
    """

    __slots__ = ("data", "seq", "stamp_ns", "publish_ns", "generation", "source_seq", "_reader", "_slot")

    def __init__(self, reader: Reader | None, slot: int, data: np.ndarray, seq: int, stamp_ns: int, publish_ns: int,
                 generation: int = 0, source_seq: int = 0) -> None:
        self._reader = reader
        self._slot = slot
        self.data = data
        self.seq = seq
        self.stamp_ns = stamp_ns
        self.publish_ns = publish_ns
        self.generation = generation  # which writer (1 = the first to attach) published it
        self.source_seq = source_seq  # the input message it was computed from (0: none)

    @property
    def age_ns(self) -> int:
        """Nanoseconds since the message was published."""
        return time.time_ns() - self.publish_ns

    @property
    def held(self) -> bool:
        return self._reader is not None

    def release(self) -> None:
        """Let the writer reuse this message's slot (idempotent)."""
        reader = self._reader
        if reader is not None:
            self._reader = None
            reader._release(self._slot)

    def copy(self) -> Message:
        """A detached message owning a copy of the data; holds no slot."""
        return Message(None, -1, self.data.copy(), self.seq, self.stamp_ns, self.publish_ns, self.generation, self.source_seq)

    def __enter__(self) -> Message:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Message seq={self.seq} {self.data.dtype}{list(self.data.shape)} {'held' if self.held else 'released'}>"
