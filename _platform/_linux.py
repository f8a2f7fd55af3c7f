"""The Linux backend of the platform seam (see ``shmlaunch._platform``).

With ``_fastpath.c`` (the C side of the hot path) this is every Linux-specific line of
shmlaunch: segment files and their space, mappings, byte-range locks, futex wake-ups, and the
process facts and controls the launcher and tools need (/proc, prctl, affinity, priority).

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

import contextlib
import ctypes
import fcntl
import functools
import logging
import mmap
import os
import resource
import signal
import socket
import stat
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if not sys.platform.startswith("linux"):  # pragma: no cover
    raise ImportError("the Linux backend needs Linux 3.15 or later (futexes, open-file-description locks)")

from . import _fastpath  # noqa: E402
from ._common import ByteLockBase  # noqa: E402
from .errors import RuntimeDirError  # noqa: E402

#: Where runtime directories go by default: a RAM-backed file system, so a "file" is memory.
SHM_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
#: This user, as runtime directory names carry it (two users never share a directory).
USER_ID = str(os.geteuid())

# struct flock on 64-bit Linux, for the rare blocking and probing calls made from Python.
_FLOCK = struct.Struct("hhqqi4x")
_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_SHARED, _EXCLUSIVE, _UNLOCK = 0, 1, 2
_lock = _fastpath.lock


class ByteLock(ByteLockBase):
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

    def is_held_by_others(self, exclusive: bool = True) -> bool:
        """True when another open file description holds a lock that would conflict."""
        probe = _FLOCK.pack(fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK, os.SEEK_SET, self.offset, 1, 0)
        return _FLOCK.unpack(fcntl.fcntl(self.fd, _F_OFD_GETLK, probe))[0] != fcntl.F_UNLCK


#: The hot path (see _fastpath.c): a reader's and a writer's per-message state and steps, and
#: the base types of Message and Loan, whose every-message work (release, publish) is C.
ReadCursor = _fastpath.ReadCursor
WriteCursor = _fastpath.WriteCursor
MessageBase = _fastpath.Message
LoanBase = _fastpath.Loan

#: futex_wait(address, expected, timeout): sleep while the 32-bit word equals ``expected``, at
#: most ``timeout`` s (None: no limit); every return is safe, the caller re-checks.
futex_wait = _fastpath.futex_wait
#: futex_wake(address): wake every process and thread sleeping on the word.
futex_wake = _fastpath.futex_wake
#: Trace points (see transport/_trace.py): trace_start(address, capacity) sends every publish,
#: receive and release of this process to the ring mapped at address; trace_stop() ends it;
#: trace_event(kind, topic_id, seq, source_seq, stamp_ns) adds one record (nothing when stopped).
TRACING = True
trace_start = _fastpath.trace_start
trace_stop = _fastpath.trace_stop
trace_event = _fastpath.trace_event
#: The most words one futex_waitv takes (the kernel's FUTEX_WAITV_MAX)
MAX_WAITV = 128
#: False once futex_waitv answered ENOSYS (kernels before 5.16, and qemu-user, which does not emulate it)
_has_waitv = True
#: SHMLAUNCH_NO_FUTEX_WAITV=1 takes the fallback on purpose (its tests, on kernels that have futex_waitv)
_FORCE_FALLBACK = os.environ.get("SHMLAUNCH_NO_FUTEX_WAITV", "") == "1"


def wait_any(cursors: list, timeout: float | None) -> None:
    """Sleep until any reader cursor's topic may have a new message, or timeout.

    One futex_waitv over every cursor's word. futex_waitv takes at most 128 words: past 128
    topics the first 128 are waited on for at most 5 ms at a time, so the others are looked at
    every 5 ms (as Windows does past 64). Kernels before 5.16 (and qemu-user) lack
    futex_waitv: there the first word is waited on for at most 5 ms at a time. These are the
    only places shmlaunch ever polls; a debug log line says so once.
    """
    global _has_waitv
    words = [(c.wake_address, c.last_wake) for c in cursors[:MAX_WAITV]]
    if len(cursors) > MAX_WAITV:
        timeout = 0.005 if timeout is None else min(timeout, 0.005)
    if len(words) > 1 and _has_waitv:
        if not _FORCE_FALLBACK and _fastpath.futex_wait_any(words, timeout):
            return
        _has_waitv = False
        logging.getLogger("shmlaunch.transport").debug(
            "futex_waitv is not available here (ENOSYS: a kernel before 5.16, or an emulator): "
            "waiting on several topics polls the others every 5 ms")
    if len(words) > 1:
        timeout = 0.005 if timeout is None else min(timeout, 0.005)
    futex_wait(words[0][0], words[0][1], timeout)


# ----- segment files
def reserve(fd: int, size: int) -> None:
    """Give the file ``size`` bytes of real space now (OSError ENOSPC when there is none), so
    a full /dev/shm is an error at creation and never a SIGBUS on first touch."""
    os.posix_fallocate(fd, 0, size)


def free_bytes(path: str | Path) -> int:
    """Bytes an unprivileged process can still write on the file system of ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def map_file(fd: int, size: int) -> mmap.mmap:
    """A shared read-write mapping of the whole file (from Python 3.13 without the duplicate
    descriptor mmap otherwise keeps: one descriptor a topic handle instead of two)."""
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, size, trackfd=False)
    return mmap.mmap(fd, size)


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (children inherit it);
    return the limit now in force. systemd and most shells start at 1024, which ~500 topics reach."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20) if soft != resource.RLIM_INFINITY else soft
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return sys.maxsize if soft == resource.RLIM_INFINITY else soft


# ----- runtime directories
def _check_dir_stat(path: Path, st: os.stat_result) -> None:
    """The one rule for trusting a runtime directory: a real directory, ours, closed to others."""
    if stat.S_ISLNK(st.st_mode):
        raise RuntimeDirError(f"runtime directory {path} is a symlink; shmlaunch never follows one (remove it)")
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"runtime directory {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise RuntimeDirError(f"runtime directory {path} belongs to uid {st.st_uid}, not to this user ({os.geteuid()}); refusing it")
    if st.st_mode & 0o077:
        raise RuntimeDirError(f"runtime directory {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0700 (others could "
                              f"plant or read files there); refusing it")


class Directory:
    """An open, checked directory; every file in it is opened relative to its descriptor.

    The directory is opened with ``O_DIRECTORY | O_NOFOLLOW`` and checked (a real directory,
    owned by this user, mode 0700) before anything else; every file is then opened relative
    to that descriptor with ``O_NOFOLLOW``, so a symlink swapped in later is never followed.
    """

    __slots__ = ("path", "fd")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def open(cls, path: Path) -> Directory:
        """The directory at ``path``: FileNotFoundError when there is none, RuntimeDirError
        (one line, the reason) when it may not be trusted."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as exc:
            with contextlib.suppress(OSError):
                _check_dir_stat(path, os.lstat(path))  # the precise reason, when there is one
            raise RuntimeDirError(f"cannot open runtime directory {path}: {exc.strerror}") from exc
        try:
            _check_dir_stat(path, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    @staticmethod
    def make(path: Path) -> None:
        """Create a directory only this user may enter (FileExistsError when there is one)."""
        os.mkdir(path, 0o700)

    def open_file(self, name: str, flags: int, mode: int = 0o600) -> int:
        """``os.open`` of ``name`` in this directory; never follows a symlink (ELOOP)."""
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=self.fd)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def entries(self) -> list[str]:
        return os.listdir(self.fd)

    def touch(self, name: str) -> None:
        """Create ``name`` if missing and set its modification time to now (through the open file)."""
        fd = self.open_file(name, os.O_WRONLY | os.O_CREAT)
        try:
            os.utime(fd)
        finally:
            os.close(fd)

    def is_file_of(self, name: str, fd: int) -> bool:
        """True when ``name`` in this directory is the very file ``fd`` has open (False once it
        was unlinked or replaced)."""
        try:
            a, b = self.lstat(name), os.fstat(fd)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ----- processes: what the launcher and the tools need to know and to do
#: The signals that ask a process to stop (a node, the launcher).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The signal that says a child exited (the launcher's loop wakes on it).
CHILD_EXIT_SIGNAL = signal.SIGCHLD
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_CAP_SYS_NICE = 23


@dataclass(frozen=True)
class ProcessInfo:
    """What the kernel says about one process, at one moment."""

    pid: int
    ppid: int
    user: str  # who runs it, as USER_ID names this user (Linux: the uid)
    state: str  # R running, S sleeping, D disk, T stopped, t traced, Z zombie
    start_time: int  # clock ticks since boot: with the pid, it names one process for ever
    cpu_seconds: float  # user + system
    rss_bytes: int
    cpus: str  # the CPUs it may run on, as a list ("0-3,6")
    nice: int


def _stat_fields(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


def process_info(pid: int) -> ProcessInfo | None:
    """The process ``pid``, or None when there is none (or it vanished while being read)."""
    try:
        fields = _stat_fields(pid)
        uid = str(os.stat(f"/proc/{pid}").st_uid)
        with open(f"/proc/{pid}/statm", "rb") as f:
            rss = int(f.read().split()[1]) * _PAGE
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read().decode(errors="replace")
        nice = os.getpriority(os.PRIO_PROCESS, pid)
    except (OSError, IndexError, ValueError):
        return None
    cpus = next((x.split(":", 1)[1].strip() for x in status.splitlines() if x.startswith("Cpus_allowed_list:")), "?")
    return ProcessInfo(pid, int(fields[1]), uid, fields[0].decode(), int(fields[19]), (int(fields[11]) + int(fields[12])) / _TICK,
                       rss, cpus, nice)


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (None: no such process). Cheaper than
    process_info when only the identity of a process is asked."""
    try:
        return int(_stat_fields(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def adopted_orphans(known: set[int]) -> list[int]:
    """Live children of this process (a subreaper) that are not in ``known``: the orphaned
    descendants re-parented to it. A scan of /proc (kernels without CONFIG_PROC_CHILDREN have
    no cheaper way). A child cannot be another process by the time it is signalled: its pid is
    not reused before it is reaped."""
    me, found = os.getpid(), []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) not in known:
            try:
                if int(_stat_fields(int(entry.name))[1]) == me:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of init (PR_SET_CHILD_SUBREAPER)."""
    ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1)


def child_options(cpus: tuple[int, ...] | None, nice: int | None) -> dict:
    """``subprocess.Popen`` arguments that start a node in a process group (and session) of its
    own, with SIGTERM as its parent-death signal and its CPU affinity and priority set before
    the new program starts a thread (``_prepare_child``, between fork and exec)."""
    return {"start_new_session": True, "preexec_fn": functools.partial(_prepare_child, os.getpid(), cpus, nice)}


def listen_for_stop() -> Callable[[], None]:
    """Nothing to listen for: the launcher's stop request is SIGTERM. Returns a no-op closer."""
    return lambda: None


def request_stop(pid: int) -> None:
    """Ask process ``pid`` (a launcher, a node) to stop: SIGTERM."""
    os.kill(pid, signal.SIGTERM)


def detached_options() -> dict:
    """``subprocess.Popen`` arguments for a helper that must outlive the launcher (the watchdog):
    a session of its own, so a signal to the launcher's group does not reach it."""
    return {"start_new_session": True}


def group_alive(pgid: int) -> bool:
    """True while any process of group ``pgid`` is alive (or may be: another user's)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process(pid: int, force: bool) -> None:
    """Ask one process to stop (SIGTERM), or make it (``force``: SIGKILL)."""
    os.kill(pid, signal.SIGKILL if force else signal.SIGTERM)


def reap_orphans(known: set[int]) -> None:
    """Reap exited orphans re-parented to this subreaper, leaving the children in ``known`` to
    their Popen objects: peek with WNOWAIT, reap only what is not ours."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid in known:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)


def place_child(pid: int, cpus: tuple[int, ...] | None, nice: int | None) -> None:
    """Nothing to do after the start on Linux: ``child_options`` placed the child before exec."""


def stop_group(pgid: int, force: bool) -> None:
    """Ask a node's process group to stop (SIGTERM), or make it (``force``: SIGKILL).
    ProcessLookupError when the group is gone."""
    os.killpg(pgid, signal.SIGKILL if force else signal.SIGTERM)


def _prepare_child(parent_pid: int, cpus: tuple[int, ...] | None, nice: int | None) -> None:
    """Run in a child between fork and exec: SIGTERM when the parent dies, then the CPU affinity
    and priority every thread of the new program inherits. Exits 126 if they cannot be set."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl: do not outlive it
        os._exit(1)
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:  # a pre-flight check makes this rare (a cpuset changed since): say it and stop
        os.write(2, f"cannot set cpus {list(cpus or [])} / nice {nice}: {exc.strerror}\n".encode())
        os._exit(126)


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on."""
    return os.sched_getaffinity(0)


def cpu_features() -> frozenset[str]:
    """The kernel's names for what this CPU can do (``Features`` on ARM: ``atomics``, ``asimddp``
    ...; ``flags`` on x86: ``avx2`` ...), read from /proc/cpuinfo: which native libraries can
    run here, decided without loading one that would abort the process."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() in ("Features", "flags"):
                return frozenset(value.split())
    return frozenset()


def own_priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def may_raise_priority(nice: int) -> bool:
    """setpriority(2): lowering nice needs CAP_SYS_NICE (root in a container may lack it), or an
    RLIMIT_NICE of at least 20 - nice."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/self/status") as f:
            status = f.read().splitlines()
        if int(next(x for x in status if x.startswith("CapEff:")).split()[1], 16) >> _CAP_SYS_NICE & 1:
            return True
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or 20 - nice <= soft


def wait_for_signal() -> None:
    """Sleep until a signal handler has run (no CPU while idle): a node with no topics or timers."""
    signal.pause()


#: Flags for opening a file someone else may have made to read it: a FIFO or a device does not block the open.
OPEN_READ_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC
#: Flags for making a new file to write (recordings): never an existing one, never through a symlink.
CREATE_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def notify_service_manager(address: str, message: bytes) -> bool:
    """One sd_notify datagram to ``address`` ($NOTIFY_SOCKET; ``@`` = the abstract namespace)."""
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.sendto(message, target)
        except OSError:
            return False
    return True
