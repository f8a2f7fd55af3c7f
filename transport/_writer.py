"""The single writer of a pool topic: copying publish and in-place (loaned) publish.

The writer never blocks and never waits for readers. It writes into the oldest slot that
no reader holds (taking that slot's lock byte exclusively, which fails at once if a reader
holds it), marks the slot odd while writing and even when complete, drops the lock, then
announces the slot in the futex word and wakes every waiting reader.
"""

from __future__ import annotations

import functools
import os
import struct
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shmlaunch._platform import LoanBase, WriteCursor

from . import _layout as L
from ._errors import ClosedError, SegmentCorruptError
from ._layout import TopicRequest
from ._registry import validate_message_type
from ._runtime import RuntimeDir, default_runtime_dir
from ._segment import Segment, open_or_create_segment, unlink_topic
from ._trace import watch as watch_for_tracer

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
    then required; ``pool`` defaults to 4) and records it in the graph's registry: the short form
    a node needs, kept on purpose. It creates through the same path as ``Topic.open_or_create``
    (and the same segment-making function as ``Topic.create``, the explicit verb a launcher and
    tools use); a writer never replaces a topic. When it
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
        request = TopicRequest.build(capacity, pool, dtype, shape, None if message is None else validate_message_type(message))
        with RuntimeDir.create(self.runtime_dir) as rd:
            self._seg = seg = open_or_create_segment(rd, topic, request, writer=True)
        self.config = seg.config
        # Resume after whatever the previous writer left: the highest sequence in any slot.
        # Slots left odd (a writer died mid-write) or empty go first in the reuse order.
        states = [_U64.unpack_from(seg.mm, off)[0] for off in seg.slot_offsets]
        if max(states) >= L.MAX_STATE:
            seg.close()
            raise SegmentCorruptError(f"cannot open topic {topic!r} for writing: segment {seg.path} is corrupt: a slot's state "
                                      f"word is {max(states)}, beyond any sequence number")
        order = sorted(range(len(states)), key=lambda i: -1 if states[i] & 1 else states[i])
        _, generation, _ = L.WRITER.unpack_from(seg.mm, L.WRITER_OFFSET)
        L.WRITER.pack_into(seg.mm, L.WRITER_OFFSET, os.getpid(), generation + 1, time.time_ns())
        exact_nbytes = seg.full_nbytes if seg.typed is not None else 0  # a typed topic's messages have exactly this size
        self._checks_type = self.config.dtype is not None or self.config.shape is not None
        # Every message's steps are one C call (see _fastpath.c). The cursor refers to the
        # segment, never to this object, so a writer dropped without close() is still garbage.
        self._cursor = WriteCursor(
            address=seg.address, fd=seg.fd, slots_offset=seg.slots_offset, stride=seg.slot_stride, capacity=self.config.capacity,
            exact_nbytes=exact_nbytes, full_nbytes=seg.full_nbytes, seq=max((s + 1) >> 1 for s in states), generation=generation + 1,
            order=tuple(order), views=tuple(seg.view(i, seg.full_nbytes) for i in range(len(states))),
            sized_view=functools.partial(_loan_view, seg, []), contiguous=np.ascontiguousarray, topic=topic, closed_error=ClosedError,
            loan_type=Loan,
        )
        # Released when this object is garbage, so a writer dropped without close() frees the topic.
        self._finalizer = weakref.finalize(self, _close, self._cursor, seg)
        watch_for_tracer(self.runtime_dir)

    # ----- publishing
    # publish and loan are the cursor's C methods, handed out by properties: a message costs
    # one C call and no Python frame (a typed topic's publish checks dtype and shape first).
    @property
    def publish(self) -> Callable[..., int | None]:
        """``publish(data, stamp_ns=None, source_seq=default_source_seq) -> seq | None``: copy ``data`` into a
        free slot and publish it.

        ``data`` is bytes-like or an ndarray (a strided one is made contiguous first). Returns
        the message's sequence number, or None when every slot is held by a reader (the message
        is dropped; never waits). ``stamp_ns`` is the source timestamp (default: now);
        ``source_seq`` the sequence number of the input it was computed from (what lets
        consumers of several replicas restore input order). Data over capacity, or not of a
        typed topic's dtype and shape, raises ValueError and publishes nothing; a closed
        writer raises ClosedError.
        """
        return self._publish_checked if self._checks_type else self._cursor.publish

    @property
    def loan(self) -> Callable[..., Loan]:
        """``loan(nbytes=None, stamp_ns=None, source_seq=0) -> Loan``: reserve a free slot to
        fill in place; publish it when the ``with`` block ends.

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
        return self._cursor.loan

    @property
    def default_source_seq(self) -> int:
        """The ``source_seq`` that ``publish`` and ``loan`` give a message when the call names
        none (0 unless set). The node runtime sets it to the sequence number of the message
        whose callback is running, so every output a callback publishes names its input."""
        return self._cursor.default_source_seq

    @default_source_seq.setter
    def default_source_seq(self, seq: int) -> None:
        self._cursor.default_source_seq = seq

    @property
    def trace_id(self) -> int:
        """The topic's identity in trace records (its segment's ``wake_id``)."""
        if self._seg is None:
            raise ClosedError(f"writer of topic {self.topic!r} is closed")
        return self._seg.wake_id

    def skip_to(self, seq: int) -> None:
        """Number the next message ``seq`` when that is ahead of the last one (numbers never go
        back). What a bridge importing a remote topic does to keep the remote numbering, so
        that local readers count the messages lost on the way as missed."""
        if self._cursor.closed:
            raise ClosedError(f"writer of topic {self.topic!r} is closed")
        self._cursor.skip_to(seq)

    def _publish_checked(self, data, stamp_ns: int | None = None, source_seq: int | None = None) -> int | None:
        self._check_type(data)
        if source_seq is None:
            return self._cursor.publish(data, stamp_ns)
        return self._cursor.publish(data, stamp_ns, source_seq)

    def _check_type(self, data) -> None:
        """A typed topic's ndarray must have its dtype and shape (the byte count is checked in C)."""
        if type(data) is not np.ndarray:
            return
        cfg = self.config
        if cfg.dtype is not None and data.dtype != cfg.dtype:
            raise ValueError(
                f"cannot publish to topic {self.topic!r}: data dtype is {L.dtype_name(data.dtype)}, the topic's is {L.dtype_name(cfg.dtype)}"
            )
        if cfg.shape is not None and data.shape != cfg.shape:
            raise ValueError(f"cannot publish to topic {self.topic!r}: data shape is {list(data.shape)}, the topic's is {list(cfg.shape)}")

    # ----- state
    def statistics(self) -> WriterStatistics:
        c = self._cursor
        return WriterStatistics(c.published, c.dropped, c.seq, c.generation)

    @property
    def closed(self) -> bool:
        return self._seg is None

    def close(self) -> None:
        """Release this process's mapping and writer ownership. The topic itself stays."""
        if self._seg is not None:
            self._finalizer()
            self._seg = None

    def unlink(self) -> None:
        """Destroy the topic: remove its segment file and registry entry (once; then close)."""
        if self._seg is None:
            raise ClosedError(f"writer of topic {self.topic!r} is closed")
        unlink_topic(self.runtime_dir, self.topic, self._seg.path.name)
        self.close()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"seq={self._cursor.seq}"
        return f"<Writer {self.topic!r} {self.config.describe()} {state}>"


def _close(cursor: WriteCursor, seg: Segment) -> None:
    """Close the cursor first (a Loan that outlives its writer then fails cleanly), then the segment."""
    cursor.close()
    seg.close()


def _loan_view(seg: Segment, scratch: list, slot: int, nbytes: int) -> np.ndarray:
    """A loan's view of ``nbytes`` when it is not the full-size one the cursor keeps per slot;
    slot -1 is a dropped loan's private scratch buffer (made at the first drop, then kept)."""
    if slot >= 0:
        return seg.view(slot, nbytes)
    if not scratch:
        scratch.append(np.zeros(seg.config.capacity, np.uint8))
    return seg.shape_view(scratch[0], nbytes)


class Loan(LoanBase):
    """A reserved slot being filled in place; ``with`` publishes it on a clean exit.

    Set ``stamp_ns`` inside the block (e.g. the capture time once the frame is decoded);
    ``seq`` holds the published sequence number afterwards. A dropped loan (every slot was
    held by readers) has ``dropped`` True: its block fills a scratch buffer and publishes nothing.
    ``publish()`` and ``cancel()`` do what a clean or a failed exit of the block does.
    The work is C (``_fastpath.Loan``): a loaned publish costs no more than a copying one.
    """

    __slots__ = ()
