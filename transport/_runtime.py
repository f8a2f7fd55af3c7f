"""Where a graph's files live: its private runtime directory, topic names and segment paths.

A graph's runtime directory is ``/dev/shm/shmlaunch-<uid>-<graph>`` (mode 0700, files 0600):
per user so two users never collide, per graph so two graphs never collide, flat so that
removing it leaves nothing behind in /dev/shm. ``SHMLAUNCH_RUNTIME_DIR`` (set by the
launcher for every node) overrides the default.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from ._platform import SHM_ROOT

ENV_RUNTIME_DIR = "SHMLAUNCH_RUNTIME_DIR"
REGISTRY_FILE = "registry.yaml"
SEGMENT_SUFFIX = ".pool"

# ROS-like names: segments of letters, digits, '_' and '-', joined by '/'. Mapping '/' to '.'
# for the file name is then one-to-one, and no name can step out of the runtime directory.
_TOPIC_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*(/[A-Za-z0-9_][A-Za-z0-9_\-]*)*")
_GRAPH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
MAX_TOPIC_LEN = 200


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
    if not isinstance(name, str) or not _GRAPH_RE.fullmatch(name) or len(name) > 100:
        raise ValueError(f"invalid graph name {name!r}: use letters, digits, '_' and '-' only")
    return name


def graph_runtime_dir(graph: str) -> Path:
    """The runtime directory of ``graph`` for this user: /dev/shm/shmlaunch-<uid>-<graph>."""
    return Path(SHM_ROOT) / f"shmlaunch-{os.getuid()}-{validate_graph_name(graph)}"


def default_runtime_dir() -> Path:
    """Where a node finds its graph: ``$SHMLAUNCH_RUNTIME_DIR`` (set by the launcher), else the
    runtime directory of the graph named "default"."""
    env = os.environ.get(ENV_RUNTIME_DIR)
    return Path(env) if env else graph_runtime_dir("default")


def ensure_runtime_dir(path: Path) -> Path:
    """Create the runtime directory (0700) if needed and check that only we can enter it."""
    path = Path(path)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=False)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"runtime directory {path} belongs to uid {st.st_uid}, not to this user ({os.getuid()})")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def segment_file_name(topic: str) -> str:
    return validate_topic_name(topic).replace("/", ".") + SEGMENT_SUFFIX


def cleanup(runtime_dir: Path | str) -> None:
    """Remove a graph's runtime directory: every segment and the registry, once.

    Processes that still map a segment keep their memory until they close it; new
    openers no longer find the topic.
    """
    shutil.rmtree(runtime_dir, ignore_errors=True)
