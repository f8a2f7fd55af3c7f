"""The single writer of a pool topic: copying publish and in-place (loaned) publish.

The writer never blocks and never waits for readers. It writes into the oldest slot that
no reader holds (taking that slot's lock byte exclusively, which fails at once if a reader
holds it), marks the slot odd while writing and even when complete, drops the lock, then
announces the slot in the futex word and wakes every waiting reader.
"""

from __future__ import annotations

import os
import struct
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _layout as L
from ._errors import ClosedError, SegmentCorruptError
from ._layout import normalize_request
from ._registry import validate_message_type
from ._runtime import RuntimeDir, default_runtime_dir
from ._segment import Segment, open_or_create_segment, unlink_topic
from .backend import commit

_U64 = struct.Struct("<Q")  # a slot state word, latest_seq


@dataclass(frozen=True)
class WriterStatistics:
    """Counters of one writer since it attached."""

    published: int
    dropped: int  # publishes and loans that found every slot held by readers (nothing was published)
    last_seq: int
    generation: int


class Writer:
    """Create (or re-attach to) a pool topic and publish into it.

    Creates the topic when it does not exist (``capacity``, or ``dtype`` and ``shape``, are
    then required; ``pool`` defaults to 4) and records it in the graph's registry. When it
    exists, every argument given must agree with the registry and the segment header, or
    TopicMismatchError names both values: an existing topic is never replaced behind its
    users' backs (``Topic.create(..., recreate=True)`` or ``Topic.unlink`` does that, on
    purpose). A writer whose process died is replaced by the next one, which continues the
    sequence. A second live writer gets WriterBusyError. ``message`` names the type of what it
    publishes (e.g. "shmlaunch.landmarks/1"); the registry keeps it so tools decode the topic.

    ``close()`` releases this process's mapping and writer ownership; the topic stays for
    readers and a later writer. A writer dropped without ``close()`` releases them when it is
    garbage-collected. ``unlink()`` destroys the segment and its registry entry.

    >>> w = Writer("demo/topic", capacity=4096, pool=4)          # doctest: +SKIP
    >>> seq = w.publish(np.arange(10, dtype=np.uint8))             # doctest: +SKIP
    """

    def __init__(
        self,
        topic: str,
        capacity: int | None = None,
        pool: int | None = None,
        *,
        dtype=None,
        shape=None,
        runtime_dir: str | Path | None = None,
        message: str | None = None,
    ) -> None:
        self.topic = topic
        self.runtime_dir = Path(runtime_dir) if runtime_dir else default_runtime_dir()
        request = normalize_request(capacity, pool, dtype, shape, None if message is None else validate_message_type(message))
        with RuntimeDir.create(self.runtime_dir) as rd:
            self._seg = seg = open_or_create_segment(rd, topic, request, writer=True)
        # Released when this object is garbage, so a writer dropped without close() frees the topic.
        self._finalizer = weakref.finalize(self, Segment.close, seg)
        self.config = seg.config
        self._mm = seg.mm
        # Resume after whatever the previous writer left: the highest sequence in any slot.
        # Slots left odd (a writer died mid-write) or empty go first in the reuse order.
        states = [_U64.unpack_from(seg.mm, off)[0] for off in seg.slot_offsets]
        if max(states) >= L.MAX_STATE:
            self.close()
            raise SegmentCorruptError(f"cannot open topic {topic!r} for writing: segment {seg.path} is corrupt: a slot's state "
                                      f"word is {max(states)}, beyond any sequence number")
        self._seq = max((s + 1) >> 1 for s in states)
        self._order = sorted(range(len(states)), key=lambda i: -1 if states[i] & 1 else states[i])
        _, generation, _ = L.WRITER.unpack_from(seg.mm, L.WRITER_OFFSET)
        self._generation = generation + 1
        L.WRITER.pack_into(seg.mm, L.WRITER_OFFSET, os.getpid(), self._generation, time.time_ns())
        self._next_slot: int | None = None
        self._published = 0
        self._dropped = 0
        self._typed_nbytes = seg.typed[0].nbytes if seg.typed is not None else None
        self._scratch: np.ndarray | None = None  # what a dropped loan fills (never published)

    # ----- publishing
    def publish(self, data, stamp_ns: int | None = None, source_seq: int = 0) -> int | None:
        """Copy ``data`` (bytes-like or ndarray) into a free slot and publish it.

        Returns the message's sequence number, or None when every slot is held by a reader
        (the message is dropped; never waits). ``stamp_ns`` is the source timestamp
        (default: now); ``source_seq`` the sequence number of the input it was computed from
        (what lets consumers of several replicas restore input order). Data over capacity, or
        not of a typed topic's dtype and shape, raises ValueError and publishes nothing.
        """
        src = self._as_bytes(data)
        n = src.nbytes
        slot = self._take_free_slot()
        if slot is None:
            self._dropped += 1
            return None
        off = self._seg.slot_offsets[slot]
        _U64.pack_into(self._mm, off, 2 * self._seq + 1)
        start = off + L.SLOT_HEADER_SIZE
        self._mm[start : start + n] = src
        return self._commit(slot, n, stamp_ns, source_seq)

    def loan(self, nbytes: int | None = None, stamp_ns: int | None = None, source_seq: int = 0) -> Loan:
        """Reserve a free slot to fill in place; publish it when the ``with`` block ends.

        The block gets a writable typed view of the slot (the topic's shape when declared,
        else ``nbytes`` or ``capacity`` bytes, as the dtype when declared). If the block
        raises or calls ``loan.cancel()``, nothing is published. When every slot is held by
        readers the loan is *dropped*, exactly as ``publish`` drops a message: the block still
        runs (on a private scratch buffer), nothing is published, ``loan.dropped`` is True,
        ``loan.seq`` stays None and the writer's ``dropped`` counter grows. The writer never
        blocks and never fails because of its readers.

        >>> with w.loan() as frame:          # doctest: +SKIP
        ...     cap.read(image=frame)
        """
        self._check_open()
        seg = self._seg
        if self._typed_nbytes is not None and nbytes in (None, self._typed_nbytes):
            nbytes = self._typed_nbytes
        elif nbytes is None:
            nbytes = self.config.capacity
        elif not 0 <= nbytes <= self.config.capacity:
            raise ValueError(f"cannot loan {nbytes} bytes of topic {self.topic!r}: capacity is {self.config.capacity} bytes")
        slot = self._take_free_slot()
        if slot is None:
            self._dropped += 1
            if self._scratch is None:
                self._scratch = np.zeros(self.config.capacity, np.uint8)
            return Loan(self, -1, seg.shape_view(self._scratch, nbytes), stamp_ns, source_seq)
        _U64.pack_into(self._mm, seg.slot_offsets[slot], 2 * self._seq + 1)
        view = seg.view(slot, nbytes)
        return Loan(self, slot, view, stamp_ns, source_seq)

    def _as_bytes(self, data):
        """``data`` as a C-contiguous buffer, checked against the topic (cheap in the common case:
        this runs on the publish path, often from cold caches)."""
        if self._seg is None:
            raise ClosedError(f"writer of topic {self.topic!r} is closed")
        cfg = self.config
        if type(data) is np.ndarray:
            if cfg.dtype is not None and data.dtype != cfg.dtype:
                raise ValueError(
                    f"cannot publish to topic {self.topic!r}: data dtype is {L.dtype_name(data.dtype)}, "
                    f"the topic's is {L.dtype_name(cfg.dtype)}"
                )
            if cfg.shape is not None and data.shape != cfg.shape:
                raise ValueError(
                    f"cannot publish to topic {self.topic!r}: data shape is {list(data.shape)}, the topic's is {list(cfg.shape)}"
                )
            src = data if data.flags.c_contiguous else np.ascontiguousarray(data)
        else:
            src = memoryview(data).cast("B")
        n = src.nbytes
        if n > cfg.capacity:
            raise ValueError(f"cannot publish {n} bytes to topic {self.topic!r}: capacity is {cfg.capacity} bytes")
        if self._typed_nbytes is not None and n != self._typed_nbytes:
            raise ValueError(f"cannot publish {n} bytes to topic {self.topic!r}: its dtype and shape need exactly {self._typed_nbytes}")
        return src

    def _take_free_slot(self) -> int | None:
        """The slot to write next: the one locked ahead of time, or the oldest no reader holds."""
        slot = self._next_slot
        if slot is not None:
            self._next_slot = None
            return slot
        return self._lock_oldest_free(len(self._order))

    def _lock_oldest_free(self, candidates: int) -> int | None:
        locks = self._seg.slot_locks
        for slot in self._order[:candidates]:
            if locks[slot].try_exclusive():
                return slot
        return None

    def _commit(self, slot: int, length: int, stamp_ns: int | None, source_seq: int = 0) -> int:
        self._seq = seq = self._seq + 1
        seg = self._seg
        # header, state even, unlock, wake word, futex wake: one C call (see _fastpath.c)
        commit(seg.address, seg.fd, seg.slot_offsets[slot], slot, seq, length, -1 if stamp_ns is None else stamp_ns,
               self._generation, source_seq)
        self._published += 1
        order = self._order
        order.remove(slot)
        order.append(slot)
        if len(order) > 1:
            # Lock the next slot now, after the wake-up, so the next publish has one system
            # call less between its caller and its readers. Never the newest slot (readers
            # want it), and never with a pool of one (readers could not read it at all).
            self._next_slot = self._lock_oldest_free(len(order) - 1)
        return seq

    def _abandon(self, slot: int) -> None:
        """A cancelled loan: the slot stays odd (never delivered) and is reused first."""
        self._seg.slot_locks[slot].release()
        self._order.remove(slot)
        self._order.insert(0, slot)

    # ----- state
    def statistics(self) -> WriterStatistics:
        return WriterStatistics(self._published, self._dropped, self._seq, self._generation)

    @property
    def closed(self) -> bool:
        return self._seg is None

    def _check_open(self) -> None:
        if self._seg is None:
            raise ClosedError(f"writer of topic {self.topic!r} is closed")

    def close(self) -> None:
        """Release this process's mapping and writer ownership. The topic itself stays."""
        if self._seg is not None:
            self._finalizer()
            self._seg = None
            self._mm = None

    def unlink(self) -> None:
        """Destroy the topic: remove its segment file and registry entry (once; then close)."""
        self._check_open()
        unlink_topic(self.runtime_dir, self.topic, self._seg.path.name)
        self.close()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"seq={self._seq}"
        return f"<Writer {self.topic!r} {self.config.describe()} {state}>"


class Loan:
    """A reserved slot being filled in place; ``with`` publishes it on a clean exit.

    Set ``stamp_ns`` inside the block (e.g. the capture time once the frame is decoded);
    ``seq`` holds the published sequence number afterwards. A dropped loan (every slot was
    held by readers) has ``dropped`` True: its block fills a scratch buffer and publishes nothing.
    """

    __slots__ = ("_writer", "_slot", "data", "stamp_ns", "source_seq", "seq", "_done")

    def __init__(self, writer: Writer, slot: int, data: np.ndarray, stamp_ns: int | None, source_seq: int = 0) -> None:
        self._writer = writer
        self._slot = slot
        self.data = data
        self.stamp_ns = stamp_ns
        self.source_seq = source_seq
        self.seq: int | None = None
        self._done = False

    def __enter__(self) -> np.ndarray:
        return self.data

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.publish()
        else:
            self.cancel()

    @property
    def dropped(self) -> bool:
        """True when no slot was free: nothing this loan holds will be published."""
        return self._slot < 0

    def publish(self) -> int | None:
        """Publish the loaned slot now (what a clean exit of the ``with`` block does); None if dropped."""
        if not self._done and self._slot < 0:
            self._done = True
        if not self._done:
            self._done = True
            self.seq = self._writer._commit(self._slot, self.data.nbytes, self.stamp_ns, self.source_seq)
        return self.seq

    def cancel(self) -> None:
        """Give the slot back unpublished (what an exception in the block does)."""
        if not self._done:
            self._done = True
            if self._slot >= 0:
                self._writer._abandon(self._slot)
