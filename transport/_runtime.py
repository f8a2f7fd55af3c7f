"""Where a graph's files live: its private runtime directory, topic names and segment names.

A graph's runtime directory is ``<SHM_ROOT>/shmlaunch-<user>-<graph>`` (Linux:
``/dev/shm/shmlaunch-<uid>-<graph>``, mode 0700, files 0600; Windows: under
``%LOCALAPPDATA%\\shmlaunch``): per user so two users never collide, per graph so two graphs
never collide, flat so that removing it leaves nothing behind. ``SHMLAUNCH_RUNTIME_DIR`` (set
by the launcher for every node) overrides the default.

Why every file is opened through :class:`RuntimeDir`: /dev/shm is writable by every user, so
anything under it may have been planted. The platform's ``Directory`` opens the directory
itself without following a link and checks it (a real directory, owned by this user, closed
to others) before anything else, then opens every file in it without following a link either
(Linux: relative to the directory's descriptor with ``O_NOFOLLOW``; Windows: through the
held-open directory, refusing reparse points), so a symlink swapped in later is never followed.
A directory is recognised as shmlaunch's by its marker file (``.shmlaunch-runtime``), and
removing one deletes only the kinds of file shmlaunch creates, never anything else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
from pathlib import Path

from shmlaunch._platform import SHM_ROOT, USER_ID, ByteLock, Directory

from ._errors import RuntimeDirError

ENV_RUNTIME_DIR = "SHMLAUNCH_RUNTIME_DIR"
REGISTRY_FILE = "registry.yaml"
SEGMENT_SUFFIX = ".pool"
MARKER_FILE = ".shmlaunch-runtime"
MAX_GRAPH_LEN = 100
#: Where a lock file's holder writes its pid: after byte 0, the lock byte.
LOCK_HOLDER_OFFSET = 1
#: The marker is tiny; anything larger is not ours.
_MARKER_LIMIT = 4096

# ROS-like names: segments of letters, digits, '_' and '-', joined by '/'. Mapping '/' to '.'
# for the file name is then one-to-one, and no name can step out of the runtime directory.
_TOPIC_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*(/[A-Za-z0-9_][A-Za-z0-9_\-]*)*")
_GRAPH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
# A segment name as a registry may give it: a plain file name in the runtime directory.
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\.pool")
MAX_TOPIC_LEN = 200

#: Every kind of file a shmlaunch run creates in a runtime directory (and nothing else may be
#: there): the marker, registry and its lock, the launcher's lock and state, the bridge's status, a tracer's request and table and the trace rings,
#: node heartbeats, segments, servers' access tokens, and the temporary files these are built in before an atomic rename
#: (or, on Windows, renamed to before they are deleted: ``.<name>.<pid>.<hex>.tmp``).
_OWN_NAMES = (r"(\.shmlaunch-runtime|registry\.yaml|registry\.lock|launcher\.lock|graph\.json|bridge\.json|ready\.[A-Za-z0-9_.\-]+"
              r"|trace\.request|trace\.wake|trace\.json|trace\.[1-9][0-9]*\.ring"
              r"|[A-Za-z0-9_][A-Za-z0-9_.\-]*\.pool|[A-Za-z0-9_][A-Za-z0-9_.\-]*\.token)")
OWN_FILES = re.compile(rf"{_OWN_NAMES}|\.{_OWN_NAMES}\.\d+(\.[0-9a-f]+)?\.tmp")


def validate_topic_name(name: object) -> str:
    """Return ``name`` if it is a valid topic name, else raise ValueError saying why."""
    if not isinstance(name, str):
        raise ValueError(f"invalid topic name {name!r}: expected a string, got {type(name).__name__}")
    if not name:
        raise ValueError("invalid topic name '': a topic name cannot be empty")
    if len(name) > MAX_TOPIC_LEN:
        raise ValueError(f"invalid topic name {name[:40]!r}...: longer than {MAX_TOPIC_LEN} characters")
    if not _TOPIC_RE.fullmatch(name):
        raise ValueError(
            f"invalid topic name {name!r}: use letters, digits, '_' and '-' in parts joined by '/'"
            " (no leading or trailing '/', no '//', no '.', no spaces or NUL)"
        )
    return name


def validate_graph_name(name: object) -> str:
    """Return ``name`` if it can name a graph (and so a runtime directory), else raise ValueError."""
    if not isinstance(name, str) or not _GRAPH_RE.fullmatch(name) or len(name) > MAX_GRAPH_LEN:
        shown = name[:40] + "..." if isinstance(name, str) and len(name) > 40 else name
        raise ValueError(f"invalid graph name {shown!r}: 1 to {MAX_GRAPH_LEN} letters, digits, '_' and '-'")
    return name


def validate_segment_name(name: object) -> str:
    """A registry's ``segment`` field must be a plain ``*.pool`` file name (no '/', no '..')."""
    if not isinstance(name, str) or len(name) > MAX_TOPIC_LEN + len(SEGMENT_SUFFIX) or not _SEGMENT_RE.fullmatch(name):
        raise ValueError(f"segment {str(name)[:60]!r} is not a plain segment file name (NAME.pool, no '/' or '..')")
    return name


def graph_runtime_dir(graph: str) -> Path:
    """The runtime directory of ``graph`` for this user: /dev/shm/shmlaunch-<uid>-<graph>."""
    return Path(SHM_ROOT) / f"shmlaunch-{USER_ID}-{validate_graph_name(graph)}"


def runtime_dir_prefix() -> str:
    """What the names of this user's runtime directories under SHM_ROOT begin with."""
    return f"shmlaunch-{USER_ID}-"


def graphs_present() -> list[str]:
    """Names of the graphs that have a runtime directory of this user under the default root
    (running, or left by a crash): what to suggest when a topic is not where it was looked for."""
    prefix = runtime_dir_prefix()
    try:
        names = os.listdir(SHM_ROOT)
    except OSError:
        return []
    return sorted(n[len(prefix):] for n in names if n.startswith(prefix))


def default_runtime_dir() -> Path:
    """Where a node finds its graph: ``$SHMLAUNCH_RUNTIME_DIR`` (set by the launcher), else the
    runtime directory of the graph named "default"."""
    env = os.environ.get(ENV_RUNTIME_DIR)
    return Path(env) if env else graph_runtime_dir("default")


def segment_file_name(topic: str) -> str:
    return validate_topic_name(topic).replace("/", ".") + SEGMENT_SUFFIX


class RuntimeDir:
    """An open, checked runtime directory; every file in it is opened through the platform's
    :class:`~shmlaunch._platform.Directory` (relative to a directory handle, never
    through a symlink).

    ``open`` takes an existing directory and checks it (``RuntimeDirError`` says what is
    wrong, in one line); ``create`` makes it (private to this user, with the marker) when
    missing, then opens it. ``close()`` releases the handle. Use as a context manager.
    """

    __slots__ = ("path", "dir")

    def __init__(self, path: Path, directory: Directory | None) -> None:
        self.path = path
        self.dir = directory

    @classmethod
    def open(cls, path: str | Path) -> RuntimeDir:
        path = Path(path)
        return cls(path, Directory.open(path))

    @classmethod
    def create(cls, path: str | Path, run: str | None = None) -> RuntimeDir:
        """Open ``path``, creating it (private, marked as shmlaunch's) when it does not exist."""
        path = Path(path)
        try:
            Directory.make(path)
        except FileExistsError:
            return cls.open(path)
        except OSError as exc:
            raise RuntimeDirError(f"cannot create runtime directory {path}: {exc.strerror}") from exc
        rd = cls.open(path)
        rd.write_marker(run or new_run_id(), remove_dir=True)
        return rd

    # ----- files
    def open_file(self, name: str, flags: int, mode: int = 0o600) -> int:
        """``os.open`` of ``name`` in this directory; never follows a symlink."""
        return self.dir.open_file(name, flags, mode)

    def read_bytes(self, name: str, limit: int) -> bytes:
        """The bytes of regular file ``name``, read with a bound: ValueError if it is not a regular
        file (a FIFO would block, a device never end) or holds more than ``limit`` bytes."""
        fd = self.open_file(name, os.O_RDONLY)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(f"{self.path / name} is not a regular file")
            chunks, total = [], 0
            while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise ValueError(f"{self.path / name} is larger than {limit} bytes")
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write_atomic(self, name: str, data: bytes) -> None:
        """Replace ``name`` by a file holding ``data`` (0600), through a fresh temporary file
        (``O_EXCL``: a planted file or symlink at the temporary name is an error, never a target)."""
        tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = self.open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            self.unlink(tmp)
            raise
        os.close(fd)
        try:
            self.dir.replace(tmp, name)
        except BaseException:
            self.unlink(tmp)
            raise

    def lock(self, name: str, wait: float = 0.0) -> int | None:
        """Take the exclusive lock of file ``name`` (created if missing; its byte 0), waiting up to
        ``wait`` s: the descriptor that holds it (close it to release; the system releases it
        when the process dies), or None while another open file holds it. The holder's pid is
        written after the lock byte (``lock_holder`` reads it)."""
        fd = self.open_file(name, os.O_RDWR | os.O_CREAT)
        if ByteLock(fd, 0).try_exclusive_within(wait):
            note_lock_holder(fd)
            return fd
        os.close(fd)
        return None

    def touch(self, name: str) -> None:
        """Create ``name`` (0600) if missing and set its modification time to now."""
        self.dir.touch(name)

    def lock_holder(self, name: str) -> str:
        """The pid the holder of lock file ``name`` wrote ("" when unknown)."""
        try:
            fd = self.open_file(name, os.O_RDONLY)
        except OSError:
            return ""
        try:
            os.lseek(fd, LOCK_HOLDER_OFFSET, os.SEEK_SET)
            pid = os.read(fd, 20).decode("ascii", "replace").strip()
        except OSError:
            return ""
        finally:
            os.close(fd)
        return pid if pid.isdigit() else ""

    def is_locked(self, name: str) -> bool:
        """True while another process holds file ``name``'s lock (False if there is no such file)."""
        try:
            fd = self.open_file(name, os.O_RDONLY)
        except OSError:
            return False
        try:
            return ByteLock(fd, 0).is_held_by_others(exclusive=False)
        finally:
            os.close(fd)

    def replace(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst`` in this directory, replacing ``dst`` (atomic)."""
        self.dir.replace(src, dst)

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.dir.unlink(name)

    def lstat(self, name: str) -> os.stat_result:
        return self.dir.lstat(name)

    def entries(self) -> list[str]:
        return sorted(self.dir.entries())

    def is_file_of(self, name: str, fd: int) -> bool:
        """True while ``name`` here is the file ``fd`` has open (not unlinked, not replaced)."""
        return self.dir.is_file_of(name, fd)

    # ----- ownership of the directory by a run
    def marker(self) -> dict | None:
        """The marker's contents ({"run": id, "remove_dir": bool}), None if there is none (or it is not ours)."""
        try:
            doc = json.loads(self.read_bytes(MARKER_FILE, _MARKER_LIMIT))
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("run"), str) or not isinstance(doc.get("remove_dir"), bool):
            return None
        return doc

    def write_marker(self, run: str, remove_dir: bool) -> None:
        self.write_atomic(MARKER_FILE, json.dumps({"run": run, "remove_dir": remove_dir}).encode())

    def first_foreign_entry(self) -> str | None:
        """The first entry that no shmlaunch run creates (or one that is not a regular file)."""
        for name in self.entries():
            if not OWN_FILES.fullmatch(name):
                return name
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISREG(self.lstat(name).st_mode):
                    return name
        return None

    def check_reusable(self) -> dict | None:
        """Refuse (RuntimeDirError) a directory that is not empty and not wholly shmlaunch's;
        return its marker (None for an empty, unmarked directory)."""
        marker = self.marker()
        entries = self.entries()
        if marker is None and entries:
            raise RuntimeDirError(f"runtime directory {self.path} was not made by shmlaunch (no {MARKER_FILE} marker) and is not "
                                  f"empty (first entry: {entries[0]!r}); refusing to use or clear it")
        foreign = self.first_foreign_entry()
        if foreign is not None:
            raise RuntimeDirError(f"runtime directory {self.path} holds {foreign!r}, which shmlaunch did not create; "
                                  f"refusing to use or clear it")
        return marker

    def remove_own_files(self, keep: tuple[str, ...] = ()) -> None:
        """Delete every file of a kind shmlaunch creates (but the marker and ``keep``); anything else stays."""
        for name in self.entries():
            if name == MARKER_FILE or name in keep or not OWN_FILES.fullmatch(name):
                continue
            with contextlib.suppress(FileNotFoundError, PermissionError):  # Windows: deleted already, still open elsewhere
                if stat.S_ISREG(self.lstat(name).st_mode):
                    self.unlink(name)

    # -----
    def close(self) -> None:
        if self.dir is not None:
            self.dir.close()
            self.dir = None

    def __enter__(self) -> RuntimeDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def note_lock_holder(fd: int) -> None:
    """Write this process's pid into a lock file it holds, after the lock byte: Windows' locks
    are mandatory for reads, so the byte itself is never read by anyone."""
    os.lseek(fd, LOCK_HOLDER_OFFSET, os.SEEK_SET)
    os.write(fd, f"{os.getpid():<19}\n".encode())


def new_run_id() -> str:
    """A fresh identifier for one run of a graph (what a watchdog checks before it deletes)."""
    return secrets.token_hex(8)


def ensure_runtime_dir(path: str | Path) -> Path:
    """Create the runtime directory (0700, marked) if needed and check that only we can enter it."""
    RuntimeDir.create(path).close()
    return Path(path)


def cleanup(runtime_dir: Path | str, run: str | None = None) -> bool:
    """Remove a graph's runtime directory: every segment, the registry and the other files a
    shmlaunch run creates, then the directory itself if a shmlaunch run made it.

    Nothing else is ever deleted: a directory that is not marked as shmlaunch's, belongs to
    another user or is a symlink is left alone, and so is any file of another kind. With
    ``run``, only a directory whose marker names that run is touched (a watchdog must not
    clean a newer run). Returns True when the directory is gone. Processes that still map a
    segment keep their memory until they close it; new openers no longer find the topic.
    """
    try:
        rd = RuntimeDir.open(runtime_dir)
    except (FileNotFoundError, RuntimeDirError):
        return not os.path.lexists(runtime_dir)
    with rd:
        marker = rd.marker()
        if marker is None or (run is not None and marker["run"] != run):
            return False
        rd.remove_own_files()
        if not marker["remove_dir"]:
            rd.unlink(MARKER_FILE)
            return False
        if rd.entries() != [MARKER_FILE]:
            return False
        rd.unlink(MARKER_FILE)
    try:
        os.rmdir(runtime_dir)
    except OSError:
        return False
    return True
