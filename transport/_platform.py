"""The platform-specific parts of the transport: wake-up, byte-range locks, segment location.

Everything that differs between operating systems lives here (and in ``_fastpath.c``, the
C side of the hot path), so a port to macOS or Windows rewrites these two files: there, the
wake-up would be ``os_sync_wait_on_address`` or ``WaitOnAddress`` and the locks
``LockFileEx`` byte ranges (released when a process exits, like Linux's OFD locks).

Why these primitives (Linux):
- A futex on a 32-bit word inside the shared mapping is the cheapest cross-process wake-up
  (no file descriptor, no kernel object to clean up). The wait releases the GIL, so a
  waiting reader costs no CPU and blocks no other thread.
- Open-file-description locks (``F_OFD_SETLK``, Linux 3.15+) belong to one ``open()`` of
  the segment file, not to the process: two readers in one process do not merge their
  locks, and the kernel drops every lock of a process that dies, so a crashed reader's slot
  and a crashed writer's ownership come back with no pid bookkeeping. Taking and dropping
  one also orders memory (the kernel's lock is a real lock), which keeps payload reads
  correct on weakly ordered CPUs (ARM).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import struct
import sys
import time
from collections.abc import Callable

if not sys.platform.startswith("linux"):  # pragma: no cover
    raise ImportError("shmlaunch pool topics need Linux 3.15 or later (futexes, open-file-description locks) for now")

from . import _fastpath  # noqa: E402

#: Where runtime directories go by default: a RAM-backed file system, so a "file" is memory.
SHM_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"

# struct flock on 64-bit Linux, for the rare blocking and probing calls made from Python.
_FLOCK = struct.Struct("hhqqi4x")
_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_SHARED, _EXCLUSIVE, _UNLOCK = 0, 1, 2
_lock = _fastpath.lock


class ByteLock:
    """One lock byte of a file. ``try_shared`` / ``try_exclusive`` never block: False when
    another open file description holds a conflicting lock (the short critical sections of the
    registry and the group table wait by retrying, for a bounded time)."""

    __slots__ = ("fd", "offset", "release")

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset
        self.release: Callable[[], bool] = functools.partial(_lock, fd, offset, _UNLOCK)

    def try_shared(self) -> bool:
        return _lock(self.fd, self.offset, _SHARED)

    def try_exclusive(self) -> bool:
        return _lock(self.fd, self.offset, _EXCLUSIVE)

    def try_exclusive_within(self, timeout: float) -> bool:
        """``try_exclusive`` again and again for up to ``timeout`` s (a growing sleep, 1 to 50 ms,
        between tries): the critical sections waited for take microseconds, so a holder that
        keeps the lock this long is stopped or hung, and the caller says so instead of hanging."""
        deadline = time.monotonic() + timeout
        pause = 0.001
        while not self.try_exclusive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        return True

    def is_held_by_others(self, exclusive: bool = True) -> bool:
        """True when another open file description holds a lock that would conflict."""
        probe = _FLOCK.pack(fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK, os.SEEK_SET, self.offset, 1, 0)
        return _FLOCK.unpack(fcntl.fcntl(self.fd, _F_OFD_GETLK, probe))[0] != fcntl.F_UNLCK


def buffer_address(buf) -> tuple[int, object]:
    """Address of a writable buffer, and the object that pins it (drop it before close)."""
    pin = ctypes.c_char.from_buffer(buf)
    return ctypes.addressof(pin), pin


#: take(base, fd, slots_offset, stride, last_wake, holds) and commit(...): see _fastpath.c.
take = _fastpath.take
commit = _fastpath.commit

#: futex_wait(address, expected, timeout): sleep while the 32-bit word equals ``expected``, at
#: most ``timeout`` s (None: no limit); every return is safe, the caller re-checks.
futex_wait = _fastpath.futex_wait
#: futex_wake(address): wake every process and thread sleeping on the word.
futex_wake = _fastpath.futex_wake
_has_waitv = True


def futex_wait_any(words: list[tuple[int, int]], timeout: float | None) -> None:
    """Sleep until any word at ``address`` differs from its ``expected`` value, or timeout.

    ``words`` is a list of (address, expected). Kernels before 5.16 lack futex_waitv: there
    the first word is waited on for at most 5 ms at a time, so the others are looked at
    every 5 ms (the only place shmlaunch ever polls, and only on such kernels).
    """
    global _has_waitv
    if len(words) > 1 and _has_waitv:
        if _fastpath.futex_wait_any(words, timeout):
            return
        _has_waitv = False
    if len(words) > 1:
        timeout = 0.005 if timeout is None else min(timeout, 0.005)
    futex_wait(words[0][0], words[0][1], timeout)
