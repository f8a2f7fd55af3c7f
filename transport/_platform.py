"""The platform-specific parts of the transport: wake-up, byte-range locks, segment location.

Everything that differs between Linux, macOS and Windows lives here, so porting means
rewriting this one module. Linux is implemented; elsewhere the wake-up falls back to a
short sleep loop (correct, not idle-free) and byte-range locks are not available yet.

Why these primitives:
- A futex on a 32-bit word inside the shared mapping is the cheapest cross-process
  wake-up Linux has (no file descriptor, no kernel object to clean up). ctypes releases
  the GIL for the call, so a waiting reader costs no CPU and blocks no other thread.
- Open-file-description locks (``F_OFD_SETLK``, Linux 3.15+) belong to one ``open()``
  of the segment file, not to the process: two readers in one process do not merge
  their locks, and the kernel drops every lock of a process that dies, so a crashed
  reader's slot and a crashed writer's ownership come back with no pid bookkeeping.
  Taking and dropping one also orders memory (the kernel's lock is a real lock), which
  is what keeps payload reads correct on weakly ordered CPUs (ARM) from plain Python.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import struct
import sys
import time
from collections.abc import Callable

IS_LINUX = sys.platform.startswith("linux")

#: Where runtime directories go by default: a RAM-backed file system, so a "file" is memory.
SHM_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"

# struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start, off_t l_len,
# pid_t l_pid (0 for OFD locks), padded to 32 bytes.
_FLOCK = struct.Struct("hhqqi4x")
_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)
_BUSY = (errno.EAGAIN, errno.EACCES)


class ByteLock:
    """One lock byte of a file, with its request structs packed once (the hot path).

    ``try_shared`` / ``try_exclusive`` never block: they return False when another open
    file description holds a conflicting lock. ``wait_exclusive`` blocks (used only for
    the short registry critical section).
    """

    __slots__ = ("fd", "offset", "_rd", "_wr", "_un", "release")

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset
        self._rd = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, offset, 1, 0)
        self._wr = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
        self._un = _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, offset, 1, 0)
        # Unlocking is on the publish path: a prebuilt call skips a Python frame.
        self.release = functools.partial(fcntl.fcntl, fd, _F_OFD_SETLK, self._un)

    def try_shared(self) -> bool:
        try:
            fcntl.fcntl(self.fd, _F_OFD_SETLK, self._rd)
        except OSError as exc:
            if exc.errno in _BUSY:
                return False
            raise
        return True

    def try_exclusive(self) -> bool:
        try:
            fcntl.fcntl(self.fd, _F_OFD_SETLK, self._wr)
        except OSError as exc:
            if exc.errno in _BUSY:
                return False
            raise
        return True

    def wait_exclusive(self) -> None:
        fcntl.fcntl(self.fd, _F_OFD_SETLKW, self._wr)

    def is_held_by_others(self, exclusive: bool = True) -> bool:
        """True when another open file description holds a lock that would conflict."""
        probe = self._wr if exclusive else self._rd
        got = fcntl.fcntl(self.fd, _F_OFD_GETLK, probe)
        return _FLOCK.unpack(got)[0] != fcntl.F_UNLCK


def buffer_address(buf) -> tuple[int, object]:
    """Address of a writable buffer, and the object that pins it (drop it before close)."""
    pin = ctypes.c_char.from_buffer(buf)
    return ctypes.addressof(pin), pin


if IS_LINUX:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
    # Declared so the 64-bit address is not masked to a C int (ctypes' default for ints).
    _syscall.argtypes = [
        ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
    ]
    _SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "armv7l": 240, "riscv64": 98}.get(os.uname().machine, 202)
    _FUTEX_WAIT = 0  # shared (not FUTEX_PRIVATE): the word is in a mapping of several processes
    _FUTEX_WAKE = 1
    _INT_MAX = 0x7FFFFFFF

    class _Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    def futex_wait(address: int, expected: int, timeout: float | None) -> None:
        """Sleep while the 32-bit word at ``address`` equals ``expected``, at most ``timeout`` s.

        Returns on a wake, a changed value, the timeout or a signal; the caller re-checks
        its condition, so every return is safe. The GIL is released while asleep.
        """
        if timeout is None:
            ts = None
        else:
            timeout = max(timeout, 0.0)
            sec = int(timeout)
            ts = ctypes.byref(_Timespec(sec, int((timeout - sec) * 1e9)))
        _syscall(_SYS_FUTEX, address, _FUTEX_WAIT, expected, ts, None, 0)

    def futex_wake(address: int) -> None:
        """Wake every process and thread sleeping on the word at ``address``."""
        _syscall(_SYS_FUTEX, address, _FUTEX_WAKE, _INT_MAX, None, None, 0)

    def futex_waker(address: int) -> Callable[[], object]:
        """``futex_wake(address)`` as one prebuilt call (the publish path skips a Python frame)."""
        return functools.partial(_syscall, _SYS_FUTEX, address, _FUTEX_WAKE, _INT_MAX, None, None, 0)

    # futex_waitv (Linux 5.16+): sleep until any of several words changes. Same number on
    # every architecture (it is in the generic syscall table).
    _SYS_FUTEX_WAITV = 449
    _FUTEX2_SIZE_U32 = 0x02
    _CLOCK_MONOTONIC = 1

    class _FutexWaitv(ctypes.Structure):
        _fields_ = [("val", ctypes.c_uint64), ("uaddr", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]

    _waitv = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p,
                              ctypes.c_int, use_errno=True)(("syscall", _libc))
    _has_waitv: bool | None = None

    def futex_wait_any(words: list[tuple[int, int]], timeout: float | None) -> None:
        """Sleep until any word at ``address`` differs from its ``expected`` value, or timeout.

        ``words`` is a list of (address, expected). Like futex_wait, every return is safe
        (the caller re-checks). Kernels before 5.16 lack futex_waitv: there the first word
        is waited on with at most 5 ms per sleep, so the others are looked at every 5 ms.
        """
        global _has_waitv
        if len(words) == 1 or _has_waitv is False:
            if _has_waitv is False and len(words) > 1:
                timeout = 0.005 if timeout is None else min(timeout, 0.005)
            futex_wait(words[0][0], words[0][1], timeout)
            return
        arr = (_FutexWaitv * len(words))(*[(val, addr, _FUTEX2_SIZE_U32, 0) for addr, val in words])
        ts = None
        if timeout is not None:
            deadline = time.clock_gettime(time.CLOCK_MONOTONIC) + max(timeout, 0.0)
            sec = int(deadline)
            ts = ctypes.byref(_Timespec(sec, int((deadline - sec) * 1e9)))
        if _waitv(_SYS_FUTEX_WAITV, arr, len(words), 0, ts, _CLOCK_MONOTONIC) < 0 and ctypes.get_errno() == errno.ENOSYS:
            _has_waitv = False
            futex_wait_any(words, timeout)

else:  # pragma: no cover - exercised on other platforms only

    def futex_wait(address: int, expected: int, timeout: float | None) -> None:
        """Fallback: poll the word every 200 µs (no futex outside Linux yet)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        word = ctypes.c_uint32.from_address(address)
        while word.value == expected and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.0002)

    def futex_wake(address: int) -> None:
        """Fallback: pollers see the changed word by themselves."""

    def futex_waker(address: int) -> Callable[[], object]:
        return functools.partial(futex_wake, address)

    def futex_wait_any(words: list[tuple[int, int]], timeout: float | None) -> None:
        """Fallback: poll every word every 200 µs."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cells = [(ctypes.c_uint32.from_address(a), v) for a, v in words]
        while all(c.value == v for c, v in cells) and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.0002)
