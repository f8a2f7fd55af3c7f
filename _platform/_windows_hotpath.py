"""The hot path of pool topics on Windows: readers, writers, messages, loans and wake-ups.

The same protocol and the same Python-facing types as ``_fastpath.c`` on Linux (LAYOUT.md;
``_reader.py`` and ``_writer.py`` cannot tell them apart), written with ctypes: this is the
first Windows version, correct first; a C build of it is the next step for speed.

Wake-ups (no futex across processes on Windows): each reader, observers included, owns a
*wait entry* ``i`` of the segment (lock byte ``LOCK_WAITER0 + i``, held for its life) with a
named auto-reset event ``Local\\shmlaunch-<wake_id>-<i>``, and sets bit ``i`` of the header's
``waiters`` mask. After storing the wake word the writer sets the event of every bit in the
mask. An auto-reset event stays set until its one waiter wakes, so a publish between a
reader's look at the word and its wait is never lost, and every waiting reader is woken by
its own event (no thundering race on a shared one). A node waits on the events of all its
subscriptions with one ``WaitForMultipleObjects``.

The one window: a publish racing with a reader's *registration* might read the mask before
the new bit is visible. For the first 50 ms after registering, a reader therefore sleeps in
5 ms slices (by then every publish started earlier has finished); after that it sleeps until
woken. Every wait is also cut into 250 ms slices so that Ctrl-C and the launcher's stop reach
Python's signal handlers (a few wake-ups a second: no measurable CPU).
"""

from __future__ import annotations

import ctypes
import msvcrt
import os
import time

import numpy as np

from . import _layout_constants as L
from . import _win32 as W
from .errors import TransportError

_U64 = (1 << 64) - 1
#: The slot header and a reader entry are u64 words: each field's word index is its offset / 8.
_STATE, _LENGTH, _SOURCE_NS, _PUBLISH_NS, _GENERATION, _SOURCE_SEQ = (off // 8 for off in (
    L.SLOT_STATE_OFFSET, L.SLOT_LENGTH_OFFSET, L.SLOT_SOURCE_NS_OFFSET, L.SLOT_PUBLISH_NS_OFFSET, L.SLOT_GENERATION_OFFSET,
    L.SLOT_SOURCE_SEQ_OFFSET))
_SLOT_WORDS = _SOURCE_SEQ + 1
_READER_WORDS = L.READER_BLOCK_SIZE // 8  # pid, received, missed, last_seq, last_age_ns, last_receive_ns, stale, group
_SIGNAL_SLICE = 0.25
_SETTLE = 0.05
_SETTLE_SLICE = 0.005


# ----- byte-range locks (one byte; LockFileEx on the file's handle)
def _overlapped(offset: int) -> W.OVERLAPPED:
    ov = W.OVERLAPPED()
    ov.Offset = offset & 0xFFFFFFFF
    ov.OffsetHigh = offset >> 32
    return ov


def lock_byte(handle: int, offset: int, exclusive: bool) -> bool:
    """Take the lock of byte ``offset`` without waiting: False when another handle holds a
    conflicting one."""
    flags = W.LOCKFILE_FAIL_IMMEDIATELY | (W.LOCKFILE_EXCLUSIVE_LOCK if exclusive else 0)
    if W.LockFileEx(handle, flags, 0, 1, 0, ctypes.byref(_overlapped(offset))):
        return True
    if ctypes.get_last_error() in (W.ERROR_LOCK_VIOLATION, W.ERROR_IO_PENDING):
        return False
    raise W.last_error(f"locking byte {offset}")


def unlock_byte(handle: int, offset: int) -> bool:
    """Drop this handle's lock of byte ``offset`` (False when it held none)."""
    return bool(W.UnlockFileEx(handle, 0, 1, 0, ctypes.byref(_overlapped(offset))))


def _handle_of(fd: int) -> int:
    return msvcrt.get_osfhandle(fd)


# ----- wake-ups
def _event_name(wake_id: int, index: int) -> str:
    return f"Local\\shmlaunch-{wake_id:016x}-{index}"


class _WaitEntry:
    """A reader's wait entry: the lock byte, the event and the bit in ``waiters``."""

    __slots__ = ("handle", "base", "index", "event", "registered")

    def __init__(self, handle: int, base: int) -> None:
        self.handle, self.base = handle, base
        self.index = next((i for i in range(L.MAX_WAITERS) if lock_byte(handle, L.LOCK_WAITER0 + i, True)), -1)
        if self.index < 0:
            raise TransportError(f"the topic has {L.MAX_WAITERS} waiting readers already (Windows' limit per topic)")
        wake_id = ctypes.c_uint64.from_address(base + L.HEADER_WAKE_ID_OFFSET).value
        self.event = W.CreateEventW(None, False, False, _event_name(wake_id, self.index))
        if not self.event:
            err = W.last_error("CreateEvent")
            unlock_byte(handle, L.LOCK_WAITER0 + self.index)
            raise err
        self._set_bit(True)
        self.registered = time.monotonic()

    def _set_bit(self, on: bool) -> None:
        deadline = time.monotonic() + 5.0
        while not lock_byte(self.handle, L.LOCK_WAITERS, True):
            if time.monotonic() > deadline:
                raise TransportError("the topic's waiters lock is held for more than 5 s: a process holding it is stopped or hung")
            time.sleep(0.001)
        try:
            mask = ctypes.c_uint64.from_address(self.base + L.HEADER_WAITERS_OFFSET)
            bit = 1 << self.index
            mask.value = mask.value | bit if on else mask.value & ~bit
        finally:
            unlock_byte(self.handle, L.LOCK_WAITERS)

    def slice(self, left: float | None) -> int:
        """Milliseconds to sleep now, for at most ``left`` seconds (None: no limit)."""
        cap = _SETTLE_SLICE if time.monotonic() - self.registered < _SETTLE else _SIGNAL_SLICE
        return int((cap if left is None else min(left, cap)) * 1000) + 1

    def close(self) -> None:
        if self.event:
            self._set_bit(False)
            unlock_byte(self.handle, L.LOCK_WAITER0 + self.index)
            W.CloseHandle(self.event)
            self.event = None


class _Signaller:
    """A writer's side of the wake-up: the event of every bit set in ``waiters``."""

    __slots__ = ("mask", "wake_id", "events")

    def __init__(self, base: int) -> None:
        self.mask = ctypes.c_uint64.from_address(base + L.HEADER_WAITERS_OFFSET)
        self.wake_id = ctypes.c_uint64.from_address(base + L.HEADER_WAKE_ID_OFFSET).value
        self.events: dict[int, int] = {}

    def signal(self) -> None:
        mask = self.mask.value
        while mask:
            i = (mask & -mask).bit_length() - 1
            mask &= mask - 1
            event = self.events.get(i)
            if event is None:
                event = W.OpenEventW(W.EVENT_MODIFY_STATE, False, _event_name(self.wake_id, i))
                if not event:
                    continue  # its reader is gone and nobody holds the event: nothing to wake
                self.events[i] = event
            W.SetEvent(event)

    def close(self) -> None:
        for event in self.events.values():
            W.CloseHandle(event)
        self.events.clear()


def wait_any(cursors: list, timeout: float | None) -> None:
    """Sleep until any reader cursor's topic may have a new message, or timeout: one
    WaitForMultipleObjects on their events (past 64 topics, the first 64 in 5 ms slices)."""
    live = [c for c in cursors if not c.closed]
    if not live:
        time.sleep(min(timeout, _SIGNAL_SLICE) if timeout is not None else _SIGNAL_SLICE)
        return
    if any(c._word.value != c.last_wake for c in live):
        return
    waited = live[: W.MAXIMUM_WAIT_OBJECTS]
    ms = min(c._entry.slice(timeout) for c in waited)
    if len(live) > len(waited):
        ms = min(ms, 5)
    handles = (W.HANDLE * len(waited))(*(c._entry.event for c in waited))
    W.WaitForMultipleObjects(len(waited), handles, False, ms)


# ----- reading
class MessageBase:
    """A received message: its fields, and the hold it keeps on its slot until released."""

    __slots__ = ("_cursor", "_slot", "_data", "_seq", "_stamp_ns", "_publish_ns", "_generation", "_source_seq")

    def __init__(self, reader, slot: int, data, seq: int, stamp_ns: int, publish_ns: int, generation: int = 0, source_seq: int = 0):
        self._cursor, self._slot, self._data = reader, slot, data
        self._seq, self._stamp_ns, self._publish_ns = seq, stamp_ns, publish_ns
        self._generation, self._source_seq = generation, source_seq

    data = property(lambda self: self._data, doc="the payload: a read-only view of the slot while held")
    seq = property(lambda self: self._seq, doc="sequence number")
    stamp_ns = property(lambda self: self._stamp_ns, doc="source timestamp (ns since the epoch)")
    publish_ns = property(lambda self: self._publish_ns, doc="when it was published (ns since the epoch)")
    generation = property(lambda self: self._generation, doc="which writer (1 = the first to attach) published it")
    source_seq = property(lambda self: self._source_seq, doc="the input message it was computed from (0: none)")
    held = property(lambda self: self._cursor is not None, doc="True until released")

    def release(self) -> None:
        """Let the writer reuse this message's slot (idempotent)."""
        cursor = self._cursor
        if cursor is not None:
            self._cursor = None
            cursor.release(self._slot)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    def __del__(self) -> None:
        if getattr(self, "_cursor", None) is not None:
            self.release()


class ReadCursor:
    """A reader's hot-path state (the counterpart of ``_fastpath.ReadCursor``)."""

    def __init__(self, *, address, fd, slots_offset, stride, pool, capacity, full_nbytes, views, sized_view, message_type, entry,
                 group_field, filtered) -> None:
        self.base, self.handle = address, _handle_of(fd)
        self.slots_offset, self.stride, self.pool, self.capacity, self.full_nbytes = slots_offset, stride, pool, capacity, full_nbytes
        self.views, self.sized_view, self.message_type = views, sized_view, message_type
        self.entry, self.group_field, self.filtered = entry, group_field, filtered
        self.in_group = group_field != 0
        self.wake_address = address + L.HEADER_WAKE_OFFSET
        self._word = ctypes.c_uint32.from_address(self.wake_address)
        self._headers = [(ctypes.c_uint64 * _SLOT_WORDS).from_address(address + slots_offset + i * stride) for i in range(pool)]
        self._table = (ctypes.c_uint64 * _READER_WORDS).from_address(address + entry) if entry >= 0 else None
        self.holds = [0] * pool
        self.last_wake = self.last_seq = 0
        self.received = self.missed = self.torn = self.busy = self.stale = self.taken = 0
        self.last_age_ns = self.last_receive_ns = 0
        self.closed = False
        self.pid = os.getpid()
        self._entry = _WaitEntry(self.handle, address)

    def receive(self, timeout: float | None):
        """A Message, a tuple for Python's rare-case checks, or None (timed out)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.closed:
                return None
            wake = self._word.value
            if wake != self.last_wake:
                got = self._look(wake)
                if got is not None:
                    return got
            left = None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
            W.WaitForSingleObject(self._entry.event, self._entry.slice(left))

    def _look(self, wake: int):
        self.last_wake = wake
        slot = wake & L.WAKE_SLOT_MASK
        if slot >= self.pool:
            self.busy += 1
            return None
        locked = False
        if self.holds[slot] == 0:
            if not lock_byte(self.handle, L.LOCK_SLOT0 + slot, False):
                self.busy += 1  # the writer is rewriting it: a newer word follows
                return None
            locked = True
        header = self._headers[slot]
        state = header[_STATE]  # first: the slot's lock orders the rest
        length, source_ns, publish_ns = header[_LENGTH], header[_SOURCE_NS], header[_PUBLISH_NS]
        generation, source_seq = header[_GENERATION], header[_SOURCE_SEQ]
        source_ns, publish_ns = _signed(source_ns), _signed(publish_ns)
        now = time.time_ns()
        if length > self.capacity and not state & 1:  # a length past the slot is never delivered
            self.torn += 1
            if locked:
                unlock_byte(self.handle, L.LOCK_SLOT0 + slot)
            return None
        if state & 1 or state >> 1 <= self.last_seq or self.filtered:
            return (slot, int(locked), state, length, source_ns, publish_ns, generation, source_seq, now)
        return self.deliver(slot, state, length, source_ns, publish_ns, generation, source_seq, now)

    def deliver(self, slot, state, length, source_ns, publish_ns, generation, source_seq, now):
        """The message that ``receive``'s tuple described, once Python's checks accepted it."""
        if self.closed:
            return None
        data = self.views[slot] if length == self.full_nbytes else self.sized_view(slot, length)
        seq = state >> 1
        self.holds[slot] += 1
        if self.last_seq and seq > self.last_seq + 1 and not self.in_group:
            self.missed += seq - self.last_seq - 1
        self.last_seq = seq
        self.received += 1
        self.last_age_ns = now - publish_ns
        self.last_receive_ns = now
        return self.message_type(self, slot, data, seq, source_ns, publish_ns, generation, source_seq)

    def release(self, slot: int) -> None:
        if self.closed or not 0 <= slot < self.pool or self.holds[slot] == 0:
            return
        self.holds[slot] -= 1
        if self.holds[slot] == 0:
            unlock_byte(self.handle, L.LOCK_SLOT0 + slot)
        self.write_entry()

    def write_entry(self) -> None:
        """This reader's counters into its table entry (tools show them)."""
        if self._table is None or self.closed:
            return
        values = (self.pid, self.received, self.missed, self.last_seq, self.last_age_ns, self.last_receive_ns, self.stale, self.group_field)
        for i, v in enumerate(values):
            self._table[i] = v & _U64

    def held(self) -> int:
        return sum(self.holds)

    def close(self) -> None:
        """Forget every hold and leave the wait entry (the caller closes the file, and with it the locks)."""
        if not self.closed:
            self.closed = True
            self.holds = [0] * self.pool
            self._entry.close()
            self.views = self.sized_view = None
            self._headers = []
            self._table = None


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


# ----- writing
class LoanBase:
    """A slot being filled in place (the counterpart of ``_fastpath.Loan``)."""

    __slots__ = ("_writer", "_slot", "_done", "_nbytes", "_data", "stamp_ns", "_seq", "source_seq")

    def __init__(self, writer, slot, nbytes, data, stamp_ns, source_seq) -> None:
        self._writer, self._slot, self._nbytes, self._data = writer, slot, nbytes, data
        self.stamp_ns, self.source_seq = stamp_ns, source_seq
        self._done, self._seq = False, None

    data = property(lambda self: self._data, doc="the writable view to fill")
    seq = property(lambda self: self._seq, doc="the published sequence number (None before, and if dropped)")
    dropped = property(lambda self: self._slot < 0, doc="True when no slot was free: nothing this loan holds will be published")

    def publish(self):
        """Publish the loaned slot now (what a clean exit of the with block does); None if dropped."""
        if not self._done:
            self._done = True
            if self._slot >= 0:
                self._writer.closed_check()
                self._seq = self._writer.commit(self._slot, self._nbytes, self.stamp_ns, self.source_seq)
        return self._seq

    def cancel(self) -> None:
        """Give the slot back unpublished (what an exception in the block does)."""
        if not self._done:
            self._done = True
            w = self._writer
            if self._slot >= 0 and not w.closed:  # the slot stays odd (never delivered) and is reused first
                unlock_byte(w.handle, L.LOCK_SLOT0 + self._slot)
                w.move_order(self._slot, to_end=False)

    def __enter__(self):
        return self._data

    def __exit__(self, exc_type, *exc) -> bool:
        if exc_type is None:
            self.publish()
        else:
            self.cancel()
        return False

    def __del__(self) -> None:
        if getattr(self, "_done", True) is False:
            self.cancel()


class WriteCursor:
    """A writer's hot-path state (the counterpart of ``_fastpath.WriteCursor``)."""

    def __init__(self, *, address, fd, slots_offset, stride, capacity, exact_nbytes, full_nbytes, seq, generation, order, views,
                 sized_view, contiguous, topic, closed_error, loan_type) -> None:
        self.base, self.handle = address, _handle_of(fd)
        self.slots_offset, self.stride, self.capacity = slots_offset, stride, capacity
        self.exact_nbytes, self.full_nbytes = exact_nbytes, full_nbytes
        self.seq, self.generation = seq, generation
        self.order = list(order)
        self.pool = len(self.order)
        self.views, self.sized_view, self.contiguous = views, sized_view, contiguous
        self.topic, self.closed_error, self.loan_type = topic, closed_error, loan_type
        self.published = self.dropped = 0
        self.default_source_seq = 0  # what publish and loan use when not given one (the node runtime sets it)
        self.closed = False
        self.next_slot = -1
        self._states = [ctypes.c_uint64.from_address(self.slot_address(i) + L.SLOT_STATE_OFFSET) for i in range(self.pool)]
        self._headers = [(ctypes.c_uint64 * _SLOT_WORDS).from_address(self.slot_address(i)) for i in range(self.pool)]
        self._latest = ctypes.c_uint64.from_address(address + L.HEADER_LATEST_SEQ_OFFSET)
        self._word = ctypes.c_uint32.from_address(address + L.HEADER_WAKE_OFFSET)
        self._signaller = _Signaller(address)

    def slot_address(self, slot: int) -> int:
        return self.base + self.slots_offset + slot * self.stride

    def closed_check(self) -> None:
        if self.closed:
            raise self.closed_error(f"writer of topic {self.topic!r} is closed")

    def _lock_oldest_free(self, candidates: int) -> int:
        for slot in self.order[:candidates]:
            if lock_byte(self.handle, L.LOCK_SLOT0 + slot, True):
                return slot
        return -1

    def _begin_write(self) -> int:
        slot = self.next_slot
        if slot >= 0:
            self.next_slot = -1
        else:
            slot = self._lock_oldest_free(self.pool)
        if slot < 0:
            self.dropped += 1
        else:
            self._states[slot].value = 2 * self.seq + 1
        return slot

    def move_order(self, slot: int, to_end: bool) -> None:
        self.order.remove(slot)
        if to_end:
            self.order.append(slot)
        else:
            self.order.insert(0, slot)

    def commit(self, slot: int, length: int, stamp, source_seq: int) -> int:
        """The publish itself: header, state even, unlock, newest sequence, wake word, wake-ups;
        then the next slot locked ahead (never the newest; never with a pool of one)."""
        self.seq += 1
        seq = self.seq
        now = time.time_ns()
        src = now if stamp is None or stamp < 0 else int(stamp)
        header = self._headers[slot]
        header[_LENGTH], header[_SOURCE_NS], header[_PUBLISH_NS] = length, src & _U64, now
        header[_GENERATION], header[_SOURCE_SEQ] = self.generation, int(source_seq) & _U64
        self._states[slot].value = 2 * seq
        unlock_byte(self.handle, L.LOCK_SLOT0 + slot)
        self._latest.value = seq
        self._word.value = ((seq & L.WAKE_SEQ_MASK) << L.WAKE_SEQ_SHIFT) | slot
        self._signaller.signal()
        self.published += 1
        self.move_order(slot, to_end=True)
        if self.pool > 1:
            self.next_slot = self._lock_oldest_free(self.pool - 1)
        return seq

    def publish(self, data, stamp_ns=None, source_seq=None):
        """Copy ``data`` into a free slot and publish it: its seq, or None when every slot is held."""
        self.closed_check()
        view = memoryview(data)
        if not view.c_contiguous:
            view = memoryview(self.contiguous(data))
        if view.format.lstrip("@=<>!") == "O":
            raise ValueError(f"cannot publish to topic {self.topic!r}: an array of Python objects (its bytes are pointers)")
        n = view.nbytes
        if n > self.capacity:
            raise ValueError(f"cannot publish {n} bytes to topic {self.topic!r}: capacity is {self.capacity} bytes")
        if self.exact_nbytes and n != self.exact_nbytes:
            raise ValueError(f"cannot publish {n} bytes to topic {self.topic!r}: its dtype and shape need exactly {self.exact_nbytes}")
        slot = self._begin_write()
        if slot < 0:
            return None
        if n:
            ctypes.memmove(self.slot_address(slot) + L.SLOT_HEADER_SIZE, np.frombuffer(view, np.uint8).ctypes.data, n)
        return self.commit(slot, n, stamp_ns, self.default_source_seq if source_seq is None else source_seq)

    def loan(self, nbytes=None, stamp_ns=None, source_seq=None):
        """A slot to fill in place (a scratch buffer when every slot is held: the loan is dropped)."""
        want = self.full_nbytes if nbytes is None else int(nbytes)
        if want < 0 or want > self.capacity:
            raise ValueError(f"cannot loan {want} bytes of topic {self.topic!r}: capacity is {self.capacity} bytes")
        self.closed_check()
        slot = self._begin_write()
        try:
            data = self.views[slot] if slot >= 0 and want == self.full_nbytes else self.sized_view(slot, want)
        except BaseException:
            if slot >= 0:
                unlock_byte(self.handle, L.LOCK_SLOT0 + slot)
                self.move_order(slot, to_end=False)
            raise
        return self.loan_type(self, slot, want, data, stamp_ns, self.default_source_seq if source_seq is None else source_seq)

    def skip_to(self, seq: int) -> None:
        """Number the next message ``seq``, if that is ahead (numbers never go back)."""
        if not 0 <= seq < 1 << 62:
            raise ValueError("sequence number out of range")
        if seq > self.seq + 1:
            self.seq = seq - 1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._signaller.close()
            self.views = self.sized_view = None
            self._states, self._headers = [], []
