"""The Windows backend of the platform seam (see ``shmlaunch._platform``).

The same guarantees as Linux, from Windows' own primitives (shared/notes/windows.md):
- Segments are files in a per-user runtime folder, mapped with ``mmap`` (a file-backed
  ``CreateFileMapping``), so byte-range locks have a file to lock. The folder is created with
  a protected DACL that grants only this user, is checked (a real directory, owned by this
  user, not a reparse point) and held open without ``FILE_SHARE_DELETE`` while it is used, so
  it cannot be swapped for a junction; every file in it is opened with
  ``FILE_FLAG_OPEN_REPARSE_POINT`` and refused if it is a symlink or junction.
- Holds and ownership are ``LockFileEx`` byte ranges: they belong to one file handle (as an
  open file description's OFD locks do on Linux) and the system releases a dead process's.
- Wake-ups are named auto-reset events, one per waiting reader (``_windows_hotpath``).
- Space is given to a segment at creation (its end of file moved: NTFS allocates the clusters
  of a non-sparse file then): a full disk is an error then, not a fault later.
- Processes: a kill-on-close Job Object holds the launcher and everything it starts, so every
  node dies with the launcher however the launcher dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import mmap
import msvcrt
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import _win32 as W
from ._common import ByteLockBase
from ._windows_hotpath import LoanBase, MessageBase, ReadCursor, WriteCursor, lock_byte, unlock_byte, wait_any
from .errors import PlatformUnavailableError, RuntimeDirError

__all__ = ["LoanBase", "MessageBase", "ReadCursor", "WriteCursor", "wait_any"]  # the hot path, re-exported

#: The user this process runs as (its SID): runtime folder names carry it, and a process or a
#: folder of another user is never trusted.
USER_ID = W.token_user_sid(W.GetCurrentProcess())
#: Where runtime folders go: the user's own local application data (not roamed, not shared).
SHM_ROOT = os.path.join(os.environ.get("LOCALAPPDATA") or os.path.expanduser(r"~\AppData\Local"), "shmlaunch")
#: Full access for this user only, inherited by everything created inside; nobody else.
_PRIVATE_SDDL = f"D:P(A;OICI;FA;;;{USER_ID})"


def _handle(fd: int) -> int:
    return msvcrt.get_osfhandle(fd)


class ByteLock(ByteLockBase):
    """One lock byte of a file (``LockFileEx``). ``try_shared`` / ``try_exclusive`` never block:
    False when another handle holds a conflicting lock."""

    __slots__ = ("fd", "offset", "handle", "release")

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset
        self.handle = _handle(fd)
        self.release: Callable[[], bool] = functools.partial(unlock_byte, self.handle, offset)

    def try_shared(self) -> bool:
        return lock_byte(self.handle, self.offset, False)

    def try_exclusive(self) -> bool:
        return lock_byte(self.handle, self.offset, True)

    def is_held_by_others(self, exclusive: bool = True) -> bool:
        """True when another handle holds a lock that would conflict. Windows has no lock query:
        this takes the lock for an instant and gives it back (a probe of a byte this handle
        itself holds would count as held)."""
        if lock_byte(self.handle, self.offset, exclusive):
            unlock_byte(self.handle, self.offset)
            return False
        return True


def _unavailable_here(name: str):
    def call(*_args, **_kwargs):
        raise PlatformUnavailableError(f"{name} is Linux's (a futex); on Windows readers wait on their wake events")

    call.__name__ = name
    return call


futex_wait = _unavailable_here("futex_wait")
futex_wake = _unavailable_here("futex_wake")
#: Trace points live in the Linux C hot path only: a Windows process never starts recording.
TRACING = False
trace_start = _unavailable_here("trace_start")
trace_stop = _unavailable_here("trace_stop")
trace_event = _unavailable_here("trace_event")


# ----- segment files
def reserve(fd: int, size: int) -> None:
    """Give the file ``size`` bytes of real space now (OSError when the disk is full): NTFS
    allocates a non-sparse file's clusters when its end is moved (SetEndOfFile), so a full
    disk fails here, never at a later write into the mapping."""
    os.ftruncate(fd, size)


def free_bytes(path: str | Path) -> int:
    """Bytes this user can still write on the volume of ``path``."""
    free = ctypes.c_ulonglong()
    if not W.GetDiskFreeSpaceExW(str(path), ctypes.byref(free), None, None):
        raise W.last_error(f"free space of {path}")
    return free.value


def raise_open_file_limit() -> int:
    """The C runtime's fixed limit on descriptors (os.open's numbers); nothing to raise."""
    return 8192


def map_file(fd: int, size: int) -> mmap.mmap:
    """A shared read-write mapping of the whole file (an unnamed file-backed mapping)."""
    return mmap.mmap(fd, size, access=mmap.ACCESS_WRITE)


# ----- runtime directories
def _file_info(handle: int) -> W.BY_HANDLE_FILE_INFORMATION:
    info = W.BY_HANDLE_FILE_INFORMATION()
    if not W.GetFileInformationByHandle(handle, ctypes.byref(info)):
        raise W.last_error("GetFileInformationByHandle")
    return info


def _open_handle(path: str, access: int, share: int, disposition: int, flags: int) -> int:
    h = W.CreateFileW(path, access, share, None, disposition, flags | W.FILE_FLAG_OPEN_REPARSE_POINT, None)
    if h == W.INVALID_HANDLE_VALUE or h is None:
        raise W.last_error(path)
    return h


#: How long a rename over a file another process has open for a moment is retried.
REPLACE_RETRY_SECONDS = 2.0


class Directory:
    """An open, checked runtime folder: held open (not deletable, not renamable) while in use,
    and every file in it opened without following a symlink or junction."""

    __slots__ = ("path", "handle")

    def __init__(self, path: Path, handle: int) -> None:
        self.path = path
        self.handle = handle

    @classmethod
    def open(cls, path: Path) -> Directory:
        """The folder at ``path``: FileNotFoundError when there is none, RuntimeDirError (one
        line, the reason) when it may not be trusted."""
        try:
            h = _open_handle(str(path), W.FILE_LIST_DIRECTORY | W.FILE_READ_ATTRIBUTES | W.READ_CONTROL,
                             W.FILE_SHARE_READ | W.FILE_SHARE_WRITE, W.OPEN_EXISTING, W.FILE_FLAG_BACKUP_SEMANTICS)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise RuntimeDirError(f"cannot open runtime directory {path}: {exc.strerror}") from exc
        try:
            attrs = _file_info(h).dwFileAttributes
            if attrs & W.FILE_ATTRIBUTE_REPARSE_POINT:
                raise RuntimeDirError(f"runtime directory {path} is a symlink or junction; shmlaunch never follows one (remove it)")
            if not attrs & W.FILE_ATTRIBUTE_DIRECTORY:
                raise RuntimeDirError(f"runtime directory {path} is not a directory")
            owner = W.owner_sid(h)
            if owner != USER_ID:
                raise RuntimeDirError(f"runtime directory {path} belongs to {owner}, not to this user ({USER_ID}); refusing it")
        except BaseException:
            W.CloseHandle(h)
            raise
        return cls(path, h)

    @staticmethod
    def make(path: Path) -> None:
        """Create a folder only this user may enter (FileExistsError when there is one)."""
        os.makedirs(path.parent, exist_ok=True)
        descriptor = ctypes.c_void_p()
        if not W.ConvertStringSecurityDescriptorToSecurityDescriptorW(_PRIVATE_SDDL, 1, ctypes.byref(descriptor), None):
            raise W.last_error("building a private security descriptor")
        try:
            attrs = W.SECURITY_ATTRIBUTES(ctypes.sizeof(W.SECURITY_ATTRIBUTES), descriptor, False)
            if not W.CreateDirectoryW(str(path), ctypes.byref(attrs)):
                raise W.last_error(str(path))
        finally:
            W.LocalFree(descriptor)

    def open_file(self, name: str, flags: int, mode: int = 0o600) -> int:
        """A file descriptor for ``name`` in this folder (``os.open`` flags); never through a
        symlink or junction (ELOOP), never a directory. ``mode``: the folder's DACL decides."""
        access = {os.O_RDONLY: W.GENERIC_READ, os.O_WRONLY: W.GENERIC_WRITE}.get(flags & 3, W.GENERIC_READ | W.GENERIC_WRITE)
        disposition = (W.CREATE_NEW if flags & os.O_EXCL else W.OPEN_ALWAYS) if flags & os.O_CREAT else W.OPEN_EXISTING
        h = _open_handle(str(self.path / name), access, W.FILE_SHARE_READ | W.FILE_SHARE_WRITE | W.FILE_SHARE_DELETE, disposition,
                         W.FILE_ATTRIBUTE_NORMAL)
        try:
            if _file_info(h).dwFileAttributes & W.FILE_ATTRIBUTE_REPARSE_POINT:
                raise OSError(errno.ELOOP, "is a symbolic link or junction; not followed", str(self.path / name))
            return msvcrt.open_osfhandle(h, os.O_RDONLY if access == W.GENERIC_READ else 0)
        except BaseException:
            W.CloseHandle(h)
            raise

    def replace(self, src: str, dst: str) -> None:
        """Rename ``src`` over ``dst``. While another process has ``dst`` open for a moment (a
        reader of the registry, a stat), Windows refuses with a sharing violation: retried for
        up to REPLACE_RETRY_SECONDS (every reader closes at once), then raised."""
        deadline = time.monotonic() + REPLACE_RETRY_SECONDS
        while True:
            try:
                os.replace(self.path / src, self.path / dst)
                return
            except PermissionError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)

    def unlink(self, name: str) -> None:
        """Delete ``name``. A file that is open elsewhere (a mapped segment) is only marked for
        deletion and keeps its name until its last handle closes, so it is first renamed to
        ``.<name>.<pid>.<hex>.tmp``: the name is free at once, as on Linux."""
        doomed = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            os.rename(self.path / name, self.path / doomed)
        except PermissionError:  # being deleted already: nothing more to do
            return
        os.unlink(self.path / doomed)

    def lstat(self, name: str) -> os.stat_result:
        """The entry itself (a symlink is S_IFLNK, never what it points to)."""
        return os.lstat(self.path / name)

    def entries(self) -> list[str]:
        return os.listdir(self.path)

    def touch(self, name: str) -> None:
        """Create ``name`` if missing and set its modification time to now (through the open handle)."""
        fd = self.open_file(name, os.O_WRONLY | os.O_CREAT)
        try:
            now = ctypes.wintypes.FILETIME()
            W.GetSystemTimeAsFileTime(ctypes.byref(now))
            if not W.SetFileTime(_handle(fd), None, None, ctypes.byref(now)):
                raise W.last_error(f"touching {name}")
        finally:
            os.close(fd)

    def is_file_of(self, name: str, fd: int) -> bool:
        """True when ``name`` in this folder is the very file ``fd`` has open (volume and file
        index); False once it was deleted, replaced or is being deleted."""
        try:
            h = _open_handle(str(self.path / name), W.FILE_READ_ATTRIBUTES, W.FILE_SHARE_READ | W.FILE_SHARE_WRITE | W.FILE_SHARE_DELETE,
                             W.OPEN_EXISTING, 0)
        except OSError:
            return False
        try:
            a, b = _file_info(h), _file_info(_handle(fd))
        finally:
            W.CloseHandle(h)
        return (a.dwVolumeSerialNumber, a.nFileIndexHigh, a.nFileIndexLow) == (b.dwVolumeSerialNumber, b.nFileIndexHigh, b.nFileIndexLow)

    def close(self) -> None:
        if self.handle:
            W.CloseHandle(self.handle)
            self.handle = 0


# ----- processes: what the launcher and the tools need to know and to do
@dataclass(frozen=True)
class ProcessInfo:
    """What the system says about one process, at one moment."""

    pid: int
    ppid: int
    user: str  # the SID it runs as
    state: str  # R: running (Windows says no more than alive)
    start_time: int  # creation time, 100 ns units since 1601: with the pid, it names one process for ever
    cpu_seconds: float  # user + kernel
    rss_bytes: int  # working set
    cpus: str  # the CPUs it may run on, as a list ("0-3,6")
    nice: int  # the priority class as a nice value (-20 realtime ... 19 idle)


#: The signals that ask a process to stop: Ctrl-C, and CTRL_BREAK_EVENT (the launcher's polite
#: stop of a node's process group), which Python delivers as SIGBREAK.
STOP_SIGNALS = (signal.SIGINT, signal.SIGBREAK, signal.SIGTERM)
#: Windows does not signal a child's exit: the launcher sees it by the end of its output and by polling.
CHILD_EXIT_SIGNAL = None
_NICE_OF_CLASS = {0x40: 19, 0x4000: 10, 0x20: 0, 0x8000: -5, 0x80: -10, 0x100: -20}
_CLASS_OF_NICE = ((15, 0x40), (5, 0x4000), (-2, 0x20), (-8, 0x8000), (-15, 0x80))  # nice >= bound -> class; else REALTIME


def _cpus_of(mask: int) -> list[int]:
    """The CPUs an affinity mask names."""
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


@contextlib.contextmanager
def _process(pid: int, access: int = W.PROCESS_QUERY_LIMITED_INFORMATION):
    h = W.OpenProcess(access, False, pid) if pid > 0 else None
    try:
        yield h
    finally:
        if h:
            W.CloseHandle(h)


def _alive(h: int) -> bool:
    code = W.DWORD()
    return bool(W.GetExitCodeProcess(h, ctypes.byref(code))) and code.value == W.STILL_ACTIVE


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (a Toolhelp snapshot)."""
    snap = W.CreateToolhelp32Snapshot(W.TH32CS_SNAPPROCESS, 0)
    if snap == W.INVALID_HANDLE_VALUE:
        return {}
    out = {}
    try:
        entry = W.PROCESSENTRY32W()
        entry.dwSize = ctypes.sizeof(entry)
        ok = W.Process32FirstW(snap, ctypes.byref(entry))
        while ok:
            out[entry.th32ProcessID] = entry.th32ParentProcessID
            ok = W.Process32NextW(snap, ctypes.byref(entry))
    finally:
        W.CloseHandle(snap)
    return out


def _times(h: int) -> list[int] | None:
    """A process's creation, exit, kernel and user times (100 ns units), or None."""
    times = [ctypes.wintypes.FILETIME() for _ in range(4)]
    if not W.GetProcessTimes(h, *(ctypes.byref(t) for t in times)):
        return None
    return [W.filetime_int(t) for t in times]


def process_info(pid: int) -> ProcessInfo | None:
    """The process ``pid``, or None when there is none (or it may not be asked about)."""
    with _process(pid) as h:
        if not h or not _alive(h):
            return None
        times = _times(h)
        memory = W.PROCESS_MEMORY_COUNTERS()
        memory.cb = ctypes.sizeof(memory)
        mask, system = ctypes.c_size_t(), ctypes.c_size_t()
        if not (times and W.K32GetProcessMemoryInfo(h, ctypes.byref(memory), memory.cb)
                and W.GetProcessAffinityMask(h, ctypes.byref(mask), ctypes.byref(system))):
            return None
        try:
            user = W.token_user_sid(h)
        except OSError:
            return None
        nice = _NICE_OF_CLASS.get(W.GetPriorityClass(h), 0)
    return ProcessInfo(pid, _parents().get(pid, 0), user, "R", times[0], (times[2] + times[3]) / 1e7, memory.WorkingSetSize,
                       ",".join(map(str, _cpus_of(mask.value))) or "?", nice)


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (100 ns units since 1601; None: no such live process)."""
    with _process(pid) as h:
        if not h or not _alive(h):
            return None
        times = _times(h)
        return times[0] if times else None


def adopted_orphans(known: set[int]) -> list[int]:
    """None: Windows re-parents nobody (a node's descendants are in the launcher's job, which
    ends them with it)."""
    return []


_job: list[int] = []


def become_subreaper() -> None:
    """Put this process in a Job Object that kills every process in it when its last handle
    closes: the launcher holds the only handle and every node it starts joins the job, so
    however the launcher dies (TerminateProcess included) its nodes die with it. Breaking away
    is allowed for the one helper that must outlive it (``detached_options``: the watchdog)."""
    if _job:
        return
    job = W.CreateJobObjectW(None, None)
    if not job:
        raise W.last_error("CreateJobObject")
    limits = W.JOBOBJECT_EXTENDED_LIMIT_INFORMATION()
    limits.BasicLimitInformation.LimitFlags = W.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | W.JOB_OBJECT_LIMIT_BREAKAWAY_OK
    if not (W.SetInformationJobObject(job, W.JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS, ctypes.byref(limits), ctypes.sizeof(limits))
            and W.AssignProcessToJobObject(job, W.GetCurrentProcess())):
        err = W.last_error("joining a kill-on-close job")
        W.CloseHandle(job)
        raise err
    _job.append(job)  # never closed: it goes when the process does


def child_options(cpus: tuple[int, ...] | None, nice: int | None) -> dict:
    """``subprocess.Popen`` arguments that start a node in a process group of its own (what
    ``CTRL_BREAK_EVENT`` is sent to). It joins the launcher's kill-on-close job by inheritance.
    Its CPUs and priority are set right after the start (``place_child``): Windows has no
    fork/exec gap to set them in."""
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}


def stop_group(pgid: int, force: bool) -> None:
    """Ask a node to stop, or make it (``force``: TerminateProcess of it and every process it
    started). The request: the node's stop event (made by ``place_child``, heard by a Python
    node's ``listen_for_stop``), which works with or without a console (a service, a detached
    run) and even before the node listens; and ``CTRL_BREAK_EVENT`` to its process group, which
    a command hears where there is a console. ProcessLookupError when the node is gone."""
    if process_start_time(pgid) is None:
        raise ProcessLookupError(pgid)
    if not force:
        event = _stop_events.get(pgid) or W.OpenEventW(W.EVENT_MODIFY_STATE, False, _stop_event_name(pgid))
        if event:
            W.SetEvent(event)  # a Python node hears it (listen_for_stop), even if it is still starting
        W.GenerateConsoleCtrlEvent(signal.CTRL_BREAK_EVENT, pgid)  # a command, where there is a console (not os.kill:
        return  # it terminates the process when this fails); what hears neither is forced after the grace period
    parents = _parents()
    family, grew = {pgid}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in family and pid not in family}
        family |= more
        grew = bool(more)
    for pid in family:
        with _process(pid, W.PROCESS_TERMINATE) as h:
            if h:
                W.TerminateProcess(h, 1)


def _stop_event_name(pid: int) -> str:
    return f"Local\\shmlaunch-stop-{pid}"


#: The stop events this launcher made for its nodes, by pid (closed when their process is gone).
_stop_events: dict[int, int] = {}


def listen_for_stop() -> Callable[[], None]:
    """Turn the launcher's stop request (its named event for this process) into SIGBREAK, so
    a node stops as on Ctrl-Break even with no console to carry one. Returns the function that
    stops listening."""
    event = W.CreateEventW(None, True, False, _stop_event_name(os.getpid()))
    if not event:
        raise W.last_error("creating the stop event")
    closed = threading.Event()

    def wait() -> None:
        W.WaitForSingleObject(event, 0xFFFFFFFF)
        if not closed.is_set():
            signal.raise_signal(signal.SIGBREAK)

    threading.Thread(target=wait, daemon=True, name="stop request").start()

    def close() -> None:
        closed.set()
        W.SetEvent(event)
        W.CloseHandle(event)

    return close


def request_stop(pid: int) -> None:
    """Ask process ``pid`` (a launcher, a node) to stop as it would on Ctrl-Break: set its stop
    event. ProcessLookupError when it has none (it is gone, or does not listen)."""
    event = W.OpenEventW(W.EVENT_MODIFY_STATE, False, _stop_event_name(pid))
    if not event:
        raise ProcessLookupError(pid)
    W.SetEvent(event)
    W.CloseHandle(event)


def detached_options() -> dict:
    """``subprocess.Popen`` arguments for a helper that must outlive the launcher (the watchdog):
    out of the launcher's kill-on-close job, in a process group of its own."""
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_BREAKAWAY_FROM_JOB}


def group_alive(pgid: int) -> bool:
    """True while the process that leads group ``pgid`` is alive."""
    return process_start_time(pgid) is not None


def stop_process(pid: int, force: bool) -> None:
    """Stop one process: Windows has no polite request to a process that leads no group, so
    both are TerminateProcess. ProcessLookupError when it is gone."""
    with _process(pid, W.PROCESS_TERMINATE) as h:
        if not h or not W.TerminateProcess(h, 1):
            raise ProcessLookupError(pid)


def reap_orphans(known: set[int]) -> None:
    """Nothing to reap: Windows keeps no zombies and re-parents nobody."""


def place_child(pid: int, cpus: tuple[int, ...] | None, nice: int | None) -> None:
    """Make a just-started child's stop event (so a stop asked before it listens is not lost),
    and set its CPU affinity and priority class (Windows has no fork/exec gap: this runs right
    after the start, before the node has done any work worth mentioning)."""
    for old in [p for p in _stop_events if process_start_time(p) is None]:
        W.CloseHandle(_stop_events.pop(old))
    event = W.CreateEventW(None, True, False, _stop_event_name(pid))
    if not event:
        raise W.last_error(f"creating the stop event of process {pid}")
    _stop_events[pid] = event
    if not cpus and nice is None:
        return
    with _process(pid, W.PROCESS_SET_INFORMATION | W.PROCESS_QUERY_LIMITED_INFORMATION) as h:
        if not h:
            raise W.last_error(f"opening process {pid}")
        if cpus and not W.SetProcessAffinityMask(h, sum(1 << c for c in cpus)):
            raise W.last_error(f"cpus {list(cpus)}")
        if nice is not None:
            klass = next((k for bound, k in _CLASS_OF_NICE if nice >= bound), 0x100)
            if not W.SetPriorityClass(h, klass):
                raise W.last_error(f"nice {nice}")


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on."""
    mask, system = ctypes.c_size_t(), ctypes.c_size_t()
    W.GetProcessAffinityMask(W.GetCurrentProcess(), ctypes.byref(mask), ctypes.byref(system))
    return set(_cpus_of(mask.value))


def cpu_features() -> frozenset[str]:
    """Not read on Windows: its only hand runtimes' wheels are x86-64 ones, which need nothing
    beyond what every x86-64 Windows CPU has."""
    return frozenset()


def own_priority() -> int:
    return _NICE_OF_CLASS.get(W.GetPriorityClass(W.GetCurrentProcess()), 0)


def may_raise_priority(nice: int) -> bool:
    """Any user may choose a class up to HIGH (nice -10); REALTIME needs the increase-priority right."""
    return nice >= -10


def wait_for_signal() -> None:
    """Sleep until Ctrl-C, Ctrl-Break or the stop event (each interrupts the sleep through its handler)."""
    time.sleep(3600)


#: Flags for opening a file to read it whole: binary (no newline translation); Windows has no FIFOs to block on.
OPEN_READ_FLAGS = os.O_BINARY
#: Flags for making a new file to write (recordings): never an existing one (a link is opened as itself by CreateFile's caller).
CREATE_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_BINARY


def notify_service_manager(address: str, message: bytes) -> bool:
    """systemd is Linux's: there is nobody to notify."""
    return False
