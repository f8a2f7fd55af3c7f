"""One run's hold on its graph's runtime directory: claimed, written, read, released.

Claiming checks the directory (this user's, 0700, a real directory, holding only shmlaunch's
files: anything else is a refusal, never a flush), takes the graph's launcher lock (a second
launch is GraphRunningError; a dead run's watchdog holds it for milliseconds, so a short wait
is allowed), flushes the files a run that did not stop cleanly left, marks the directory with
this run's id, and checks /dev/shm has room for every topic (NoRoomError says how much is
missing). ``release`` removes this run's files while it still holds the lock.

Writing graph.json never takes the graph down: a full /dev/shm costs one warning line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from shmlaunch import _platform as backend
from shmlaunch.nodes import ready_name
from shmlaunch.transport import MARKER_FILE, SHM_ROOT, RuntimeDir, Topic, cleanup, graph_runtime_dir

from ._schema import Graph
from ._state import LOCK_FILE, GraphState

_MIB = 1 << 20
#: How long a new launcher waits for a dead run's watchdog that is removing that run's files.
LOCK_WAIT = 2.0


class GraphRunningError(RuntimeError):
    """The graph is already running under another launcher."""


class NoRoomError(RuntimeError):
    """/dev/shm cannot hold the graph's topics (checked before anything is created)."""


class GraphDir:
    def __init__(self, path: Path, graph: Graph, run_id: str, say: Callable[[str], None]) -> None:
        self.path = path
        self.graph = graph
        self.run_id = run_id
        self.say = say
        self.rd: RuntimeDir | None = None
        self._lock_fd: int | None = None
        self._state_error: str | None = None

    def claim(self) -> None:
        """Make the directory this run's (see the module's docstring), or raise saying why not."""
        created = False
        try:
            self.rd = rd = RuntimeDir.open(self.path)
        except FileNotFoundError:
            self._check_room()
            self.rd = rd = RuntimeDir.create(self.path, self.run_id)
            created = True
        marker = None if created else rd.check_reusable()
        self._lock_fd = rd.lock(LOCK_FILE, LOCK_WAIT)
        if self._lock_fd is None:
            pid = rd.lock_holder(LOCK_FILE)
            raise GraphRunningError(f"graph {self.graph.name!r} is already running (launcher pid {pid or '?'}, {self.path})")
        if not created:
            if any(name not in (LOCK_FILE, MARKER_FILE) for name in rd.entries()):
                self.say(f"flushing {self.path}, left by a run that did not stop cleanly")
            rd.remove_own_files(keep=(LOCK_FILE,))
            # A directory shmlaunch made is removed at stop, and so is an empty one found under
            # the graph's default name; one the user named with --runtime-dir stays (its files go).
            rd.write_marker(self.run_id, marker["remove_dir"] if marker else self.path == graph_runtime_dir(self.graph.name))
            self._check_room()

    def create_topics(self) -> list[Topic]:
        """Every topic of the launch file, with one registry update (re-created if a crash left one)."""
        configs = {t.name: t.config for t in self.graph.topics.values()}
        return Topic.create_many(configs, runtime_dir=self.path, recreate=True) if configs else []

    def _check_room(self) -> None:
        need = sum(t.config.segment_size for t in self.graph.topics.values())
        # the runtime folder, else its nearest existing ancestor: on a fresh Windows profile even
        # %LOCALAPPDATA%\shmlaunch does not exist before the first run
        free = backend.free_bytes(self.path if self.rd is not None else next((p for p in self.path.parents if p.exists()), Path(SHM_ROOT)))
        if need > free:
            raise NoRoomError(
                f"not enough room in {self.path.parent} for graph {self.graph.name!r}: its topics need "
                f"{need / _MIB:.1f} MiB, {free / _MIB:.1f} MiB are free ({(need - free) / _MIB:.1f} MiB missing); "
                f"in Docker, /dev/shm is 64 MiB unless you pass --shm-size"
            )

    # ----- while the graph runs
    def write_state(self, state: GraphState) -> None:
        """Publish graph.json for the tools. Never fatal: a full /dev/shm (or any other failure)
        costs the tools a fresh view, not the graph its life; said once, and once when it recovers."""
        if self.rd is None:
            return
        try:
            state.write(self.rd)
        except OSError as exc:
            if self._state_error is None:
                self._state_error = exc.strerror or str(exc)
                self.say(f"warning: cannot update {self.path}/graph.json ({self._state_error}); the graph goes on, "
                         f"shmlaunch node list may show an old state")
            return
        if self._state_error is not None:
            self._state_error = None
            self.say(f"{self.path}/graph.json is up to date again")

    def forget_heartbeat(self, node: str) -> None:
        """A node (re)starts: its old heartbeat no longer says anything."""
        if self.rd is not None:
            with contextlib.suppress(OSError):
                self.rd.unlink(ready_name(node))

    def release(self) -> None:
        """Remove this run's files (while still holding the lock), then let the directory go.

        Windows deletes an open file only when its last handle closes, and keeps a directory
        that is open: the lock file and the directory itself go in a second pass, once this
        process has closed them (on Linux the first pass has removed everything)."""
        if self._lock_fd is not None:
            cleanup(self.path, run=self.run_id)
        if self.rd is not None:
            self.rd.close()
            self.rd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            cleanup(self.path, run=self.run_id)
