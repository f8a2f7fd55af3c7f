"""Trace points: every publish, receive and release of a process, for an attached tracer.

A tracer (``shmlaunch trace``) asks by holding the lock of ``trace.request`` in the graph's
runtime directory (``TraceSession.attach``), then changing the graph's wake word
(``trace.wake``) and waking it. Every process that opened a topic there has one daemon thread
asleep on that word in the kernel (no CPU while no tracer comes, as an idle reader); woken, it
looks at the request. While the request is locked, the process writes its records into its own ring,
``trace.<pid>.ring`` (0600, the layout is ``_layout.py``'s trace ring), from the hot path's C
calls, in the same call as the step; the node runtime adds its callbacks' start and end. While
recording it also looks every ``POLL`` seconds; when the request goes, or its lock is free
because the tracer died, the process stops recording and removes its ring.

Off, a step costs one test of a pointer in C. Records are bounded (a ring overwrites its
oldest); a tracer that falls behind counts what it lost. Only the Linux hot path has trace
points (``backend.TRACING``); elsewhere processes never start recording.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import secrets
import stat
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from shmlaunch import _platform as backend

from . import _layout as L
from ._errors import LockBusyError, TransportError
from ._registry import read_registry
from ._runtime import RuntimeDir

#: How often a process looks for a tracer's request, in seconds.
POLL = 0.25
#: How long ``detach`` waits for the graph's processes to remove their rings.
DETACH_WAIT = 2.0
#: Every shmlaunch client makes rings of exactly TRACE_CAPACITY records: a larger one is not
#: shmlaunch's, and this bounds what one poll of one ring reads (2 MiB) and keeps.
MAX_RING_CAPACITY = L.TRACE_CAPACITY
_RING_RE = re.compile(r"trace\.([1-9][0-9]{0,9})\.ring")
_ENV_NODE = "SHMLAUNCH_NODE"
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_log = logging.getLogger("shmlaunch.trace")

#: True while this process records (the node runtime tests it before recording a callback).
active = False


def process_name() -> str:
    """What a trace calls this process: the node's name under a launcher, else the program's."""
    return os.environ.get(_ENV_NODE) or Path(sys.argv[0] if sys.argv and sys.argv[0] else "python").name or "python"


class _WakeWord:
    """The graph's trace wake word (``trace.wake``), mapped: what a process sleeps on while no
    tracer is attached, and what a tracer changes and wakes when it attaches or detaches."""

    def __init__(self, rd: RuntimeDir) -> None:
        fd = rd.open_file(L.TRACE_WAKE, os.O_RDWR | os.O_CREAT)  # (made by whoever comes first; never through a link)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{rd.path / L.TRACE_WAKE} is not a regular file")
            if st.st_size < L.TRACE_WAKE_SIZE:
                os.ftruncate(fd, L.TRACE_WAKE_SIZE)  # two first-comers both make it 64 zero bytes
            self.mm = backend.map_file(fd, L.TRACE_WAKE_SIZE)
        finally:
            os.close(fd)
        self.address, self._pin = backend.buffer_address(self.mm)

    @property
    def value(self) -> int:
        return _U32.unpack_from(self.mm, 0)[0]

    def wait(self, seen: int, timeout: float | None) -> None:
        backend.futex_wait(self.address, seen, timeout)

    def ring(self) -> None:
        """Tell every watching process to look at the request again."""
        _U32.pack_into(self.mm, 0, (self.value + 1) & 0xFFFFFFFF)
        backend.futex_wake(self.address)

    def close(self) -> None:
        self._pin = None
        with contextlib.suppress(BufferError):
            self.mm.close()


class _Agent:
    """This process's side: the runtime directory it watches (the last one it opened a topic
    in, unless it is being traced in another), and its ring while recording. Its thread sleeps on the graph's wake word; only while
    recording does it also look every POLL seconds whether the tracer still lives."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rd: RuntimeDir | None = None
        self.word: _WakeWord | None = None
        self.thread: threading.Thread | None = None
        self.ring: tuple[str, int, object, object] | None = None
        self.failed = ""  # why recording could not start (said once)
        self.retired: list[_WakeWord] = []  # words watched before (kept mapped: the thread may still hold one)

    def watch(self, path: Path) -> None:
        with self.lock:
            if self.rd is not None and (self.rd.path == Path(path) or self.ring is not None):
                return  # (a process being traced stays with its graph until the tracer goes)
            try:
                rd = RuntimeDir.open(path)
            except (OSError, TransportError):
                return
            try:
                word = _WakeWord(rd)
            except (OSError, ValueError, TransportError):
                rd.close()
                return
            old = self.word
            if self.rd is not None:  # a topic of another graph: this process now waits for that graph's tracer
                self.rd.close()
            self.rd, self.word = rd, word
            if old is not None:
                self.retired = [*self.retired[-1:], old]  # the thread holds at most the one before
                old.ring()  # the thread asleep on it looks again, at the new word
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="shmlaunch-trace", daemon=True)
                self.thread.start()



    def _run(self) -> None:
        while True:
            with self.lock:
                word = self.word
            seen = word.value
            with self.lock:
                try:
                    self.check()
                except (OSError, TransportError, ValueError) as exc:  # /dev/shm full, the graph removed
                    if str(exc) != self.failed:
                        self.failed = str(exc)
                        _log.warning("trace: cannot record for the attached tracer: %s", exc)
            word.wait(seen, POLL if self.ring is not None else None)

    def check(self) -> None:
        """Start or stop recording as the request says (called with ``self.lock`` held)."""
        rd = self.rd
        if self.ring is not None:
            name, fd, _mm, _pin = self.ring
            if not rd.is_locked(L.TRACE_REQUEST) or not rd.is_file_of(name, fd):
                self.stop()
        elif rd.is_locked(L.TRACE_REQUEST):
            self.start(rd)

    def start(self, rd: RuntimeDir) -> None:
        global active
        name = L.trace_ring_name(os.getpid())
        size = L.trace_ring_size()
        # made complete under a temporary name, then renamed into place once recording: a ring
        # the tracer sees has its header and every step since (a dead process's ring of the same
        # pid is replaced)
        tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = rd.open_file(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            backend.reserve(fd, size)
            mm = backend.map_file(fd, size)
        except BaseException:
            os.close(fd)
            rd.unlink(tmp)
            raise
        label = process_name().encode("utf-8", "replace")[:64]
        offset = time.clock_gettime_ns(time.CLOCK_REALTIME) - time.monotonic_ns()
        L.TRACE_HEADER.pack_into(mm, 0, L.TRACE_MAGIC, L.TRACE_VERSION, L.TRACE_CAPACITY, 0, os.getpid(), offset, label)
        address, pin = backend.buffer_address(mm)
        backend.trace_start(address, L.TRACE_CAPACITY)
        self.ring = (tmp, fd, mm, pin)
        active = True
        try:
            rd.replace(tmp, name)
        except BaseException:
            self.stop()
            raise
        self.ring = (name, fd, mm, pin)

    def stop(self, remove: bool = True) -> None:
        """No more records; the ring file goes unless ``remove`` is False (the tracer removes it)."""
        global active
        if self.ring is None:
            return
        backend.trace_stop()
        active = False
        name, fd, mm, _pin = self.ring
        self.ring = None
        del _pin
        if remove:
            with contextlib.suppress(OSError, TransportError):
                if self.rd.is_file_of(name, fd):
                    self.rd.unlink(name)
        with contextlib.suppress(BufferError):
            mm.close()
        os.close(fd)

    def after_fork(self) -> None:
        """In a forked child: the parent's ring is the parent's; this process starts afresh."""
        global active
        if self.ring is not None:
            backend.trace_stop()
            active = False
            os.close(self.ring[1])
            self.ring = None
        self.lock = threading.Lock()
        self.thread = None
        rd, self.rd, self.word = self.rd, None, None
        if rd is not None:
            rd.close()  # this process's copy of the parent's descriptor
            self.watch(rd.path)

    def at_exit(self) -> None:
        """At exit the ring stays while the tracer listens: it reads the last records, then removes it."""
        with self.lock:
            if self.ring is not None:
                self.stop(remove=not self.rd.is_locked(L.TRACE_REQUEST))


_agent = _Agent()
if backend.AVAILABLE and backend.TRACING:
    atexit.register(_agent.at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_agent.after_fork)


def watch(runtime_dir: Path) -> None:
    """Record this process's steps whenever a tracer attaches to ``runtime_dir`` (idempotent)."""
    if backend.TRACING:
        _agent.watch(runtime_dir)


def record_callback(topic_id: int, msg, end: bool) -> None:
    """The node runtime's mark of a callback's start or end for ``msg`` of topic ``topic_id``."""
    if active:
        backend.trace_event(L.TRACE_CALLBACK_END if end else L.TRACE_CALLBACK_START, topic_id, msg.seq, msg.source_seq, msg.stamp_ns)


# ----------------------------------------------------------------------------- the tracer's side
@dataclass(frozen=True)
class TraceRecord:
    """One step of one process (see ``_layout.py``'s trace ring). ``ns`` is CLOCK_MONOTONIC."""

    pid: int
    ns: int
    topic: int
    seq: int
    source_seq: int
    stamp_ns: int
    kind: int
    entry: int
    generation: int
    overwritten: int
    stale: int
    taken: int


@dataclass
class RingState:
    """What the tracer knows of one process's ring."""

    pid: int
    name: str
    clock_offset: int
    capacity: int
    fd: int
    read: int = 0  # records consumed
    lost: int = 0  # records overwritten before the tracer read them
    bad: int = 0  # records of no known kind
    done: bool = False  # its process is gone and every record was read (the file removed)


@dataclass
class TraceSession:
    """A tracer attached to one runtime directory: ``attach``, ``poll`` repeatedly, ``detach``.

    ``poll()`` returns the records written since the last poll by every process of the graph,
    oldest first per process; ``rings`` says which process is which; ``topics()`` names the
    topics records refer to. Rings are checked as untrusted (magic, version, size, owner, pid).
    """

    rd: RuntimeDir
    lock_fd: int
    rings: dict[int, RingState] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # ring file -> why it was not read
    _names: dict[int, str] = field(default_factory=dict)

    @classmethod
    def attach(cls, runtime_dir: str | Path) -> TraceSession:
        """Take the graph's trace request (LockBusyError while another tracer holds it)."""
        if not backend.TRACING:
            raise TransportError("tracing needs the Linux hot path: this platform's pool topics have no trace points")
        rd = RuntimeDir.open(runtime_dir)
        try:
            fd = rd.lock(L.TRACE_REQUEST)
        except OSError as exc:
            rd.close()
            raise TransportError(f"cannot attach a tracer in {rd.path}: {exc.strerror}") from exc
        if fd is None:
            holder = rd.lock_holder(L.TRACE_REQUEST)
            rd.close()
            raise LockBusyError(f"another tracer{f' (pid {holder})' if holder else ''} is attached to {rd.path}: one at a time")
        _ring_wake_word(rd)
        return cls(rd, fd)

    def poll(self) -> list[TraceRecord]:
        """Every record written since the previous poll (rings of new processes found first)."""
        self._discover()
        out: list[TraceRecord] = []
        for ring in list(self.rings.values()):
            if ring.done:
                continue
            gone = backend.process_info(ring.pid) is None  # looked at first: then every record it wrote is there
            out.extend(self._read(ring))
            if gone and not ring.done:
                self._finish(ring)
        return out

    def _finish(self, ring: RingState) -> None:
        """A ring whose process exited, read to the end: the tracer removes it."""
        name = L.trace_ring_name(ring.pid)
        with contextlib.suppress(OSError):
            if self.rd.is_file_of(name, ring.fd):
                self.rd.unlink(name)
        os.close(ring.fd)
        ring.done = True

    def _discover(self) -> None:
        for name in self.rd.entries():
            m = _RING_RE.fullmatch(name)
            if m is None or int(m.group(1)) in self.rings or name in self.refused:
                continue
            try:
                ring = self._open_ring(name, int(m.group(1)))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                self.refused[name] = str(exc)
                continue
            if ring is not None:
                self.rings[ring.pid] = ring

    def _open_ring(self, name: str, pid: int) -> RingState | None:
        fd = self.rd.open_file(name, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # (the directory is this user's alone: RuntimeDir checked it)
                raise ValueError(f"{name} is not a regular file")
            if st.st_size < L.TRACE_HEADER.size:
                return None  # being made: seen at the next poll
            head = _read_at(fd, 0, L.TRACE_HEADER.size)
            magic, version, capacity, _head, ring_pid, offset, label = L.TRACE_HEADER.unpack(head)
            if magic == bytes(8):
                return None  # being made
            if magic != L.TRACE_MAGIC or version != L.TRACE_VERSION:
                raise ValueError(f"{name} is not a version {L.TRACE_VERSION} trace ring")
            if ring_pid != pid or not 0 < capacity <= MAX_RING_CAPACITY or capacity & (capacity - 1):
                raise ValueError(f"{name} has a bad header (pid {ring_pid}, capacity {capacity})")
            if st.st_size != L.trace_ring_size(capacity):
                raise ValueError(f"{name} is {st.st_size} bytes, its header says {L.trace_ring_size(capacity)}")
        except BaseException:
            os.close(fd)
            raise
        return RingState(pid, label.rstrip(b"\0").decode("utf-8", "replace"), offset, capacity, fd)

    def _read(self, ring: RingState) -> list[TraceRecord]:
        head = _U64.unpack(_read_at(ring.fd, L.TRACE_HEAD_OFFSET, 8))[0]
        start = max(ring.read, head - ring.capacity)
        if head < ring.read:  # a ring does not go back: not ours any more
            self._forget(ring, f"its head went back from {ring.read} to {head}")
            return []
        ring.lost += start - ring.read
        size, base, cap = L.TRACE_RECORD.size, L.TRACE_HEADER.size, ring.capacity
        data = b""
        first, n = start % cap, head - start  # at most two runs of records: to the ring's end, then from its start
        if n:
            run = min(n, cap - first)
            data = _read_at(ring.fd, base + first * size, run * size) + (_read_at(ring.fd, base, (n - run) * size) if n > run else b"")
        raw = [data[i * size : (i + 1) * size] for i in range(len(data) // size)]
        after = _U64.unpack(_read_at(ring.fd, L.TRACE_HEAD_OFFSET, 8))[0]
        overwritten = max(0, after - cap - start)  # rewritten while copied: not to be trusted
        ring.lost += min(overwritten, len(raw))
        out = []
        for data in raw[overwritten:]:
            r = TraceRecord(ring.pid, *L.TRACE_RECORD.unpack(data))
            if L.TRACE_PUBLISH <= r.kind <= L.TRACE_DROP:
                out.append(r)
            else:
                ring.bad += 1
        ring.read = head
        return out

    def _forget(self, ring: RingState, why: str) -> None:
        self.refused[L.trace_ring_name(ring.pid)] = why
        self._close_ring(ring)
        del self.rings[ring.pid]

    @staticmethod
    def _close_ring(ring: RingState) -> None:
        if not ring.done:
            os.close(ring.fd)
            ring.done = True

    def topics(self, refresh: bool = False) -> dict[int, str]:
        """Topic identity (a segment's wake_id) -> topic name, for the topics the registry lists."""
        if self._names and not refresh:
            return self._names
        names = {}
        with contextlib.suppress(OSError, TransportError):
            for topic, entry in read_registry(self.rd).items():
                segment = entry.get("segment") if isinstance(entry, dict) else None
                if not isinstance(segment, str):
                    continue
                with contextlib.suppress(OSError):
                    fd = self.rd.open_file(segment, os.O_RDONLY)
                    try:
                        head = _read_at(fd, 0, L.WAKE_ID_OFFSET + 8)
                    finally:
                        os.close(fd)
                    if len(head) == L.WAKE_ID_OFFSET + 8 and head[:8] == L.MAGIC:
                        names[_U64.unpack_from(head, L.WAKE_ID_OFFSET)[0]] = topic
        self._names = names
        return names

    def detach(self, wait: float = DETACH_WAIT) -> list[str]:
        """Withdraw the request, wait (up to ``wait`` s) for the processes to remove their rings,
        remove those of processes that died meanwhile; returns the rings left by live processes
        (they go at their next look)."""
        self.rd.unlink(L.TRACE_REQUEST)
        os.close(self.lock_fd)
        _ring_wake_word(self.rd)
        for ring in self.rings.values():
            self._close_ring(ring)
        left = remove_dead_rings(self.rd, wait)
        self.rd.close()
        return left


def _ring_wake_word(rd: RuntimeDir) -> None:
    """Wake every process of the graph to look at the trace request (no word yet: nobody watches)."""
    try:
        word = _WakeWord(rd)
    except (OSError, ValueError, TransportError):
        return
    try:
        word.ring()
    finally:
        word.close()


def _read_at(fd: int, offset: int, n: int) -> bytes:
    """Up to ``n`` bytes of the file at ``offset`` (fewer only at its end)."""
    os.lseek(fd, offset, os.SEEK_SET)
    chunks, got = [], 0
    while got < n and (chunk := os.read(fd, n - got)):
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def clear_trace_request(runtime_dir: str | Path, *also: str) -> bool:
    """After a tracer died (its watchdog calls this): withdraw its request, unless another
    tracer holds it now, with the files named in ``also`` (the tracer's own); then, once the
    processes had time to notice, remove the rings of processes that are gone. False when
    another tracer is attached (nothing touched)."""
    with RuntimeDir.open(runtime_dir) as rd:
        fd = rd.lock(L.TRACE_REQUEST, DETACH_WAIT)  # the dead tracer's lock may take a moment to go
        if fd is None:
            return False
        try:
            rd.unlink(L.TRACE_REQUEST)
            for name in also:
                rd.unlink(name)
        finally:
            os.close(fd)
        _ring_wake_word(rd)
        remove_dead_rings(rd, DETACH_WAIT)
    return True


def remove_dead_rings(rd: RuntimeDir, wait: float = 0.0) -> list[str]:
    """Remove the trace rings whose process is gone, looking again for up to ``wait`` s while
    live processes still have one (they remove their own once told); return those left."""
    deadline = time.monotonic() + wait
    while True:
        left = []
        for name in rd.entries():
            m = _RING_RE.fullmatch(name)
            if m is None:
                continue
            if backend.process_info(int(m.group(1))) is None:
                rd.unlink(name)
            else:
                left.append(name)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)
