"""The platform layer: every OS-specific call shmlaunch makes, behind one set of names.

The bottom layer: transport, nodes and launch call only these, and nothing here imports them
(the segment layout arrives as generated constants: ``layout.h`` for the C hot path,
``_layout_constants.py`` for the Windows one). A backend module implements the names for one
system: ``_linux`` (Linux 3.15+, with the C module ``_fastpath`` beside it for the hot path) and
``_windows`` (file-backed mappings, ``LockFileEx`` byte ranges, named events, Job Objects; its hot
path is ``_windows_hotpath``). README's "The platform layer" lists each name with one line, the
checklist of a new backend (macOS). In groups:

- runtime folders and segment files: ``SHM_ROOT``, ``USER_ID``, ``Directory``, ``reserve``,
  ``free_bytes``, ``map_file``, ``buffer_address`` (shared: ``_common``), ``raise_open_file_limit``,
  ``OPEN_READ_FLAGS``, ``CREATE_NEW_FLAGS``;
- locks: ``ByteLock(fd, offset)`` (one lock byte, released by the system when a process dies);
- wake-ups and the hot path: ``wait_any``, ``ReadCursor``, ``WriteCursor`` (keyword arguments
  only), ``MessageBase``, ``LoanBase``; ``futex_wait`` / ``futex_wake`` (Linux only);
- trace points (Linux only, ``TRACING``): ``trace_start``, ``trace_stop``, ``trace_event``;
- processes: ``ProcessInfo``, ``process_info``, ``process_start_time``, ``adopted_orphans``,
  ``become_subreaper``, ``child_options``, ``place_child``, ``detached_options``, ``stop_group``,
  ``listen_for_stop``, ``request_stop``, ``group_alive``, ``stop_process``, ``reap_orphans``,
  ``STOP_SIGNALS``, ``CHILD_EXIT_SIGNAL``, ``wait_for_signal``, ``notify_service_manager``;
- the machine: ``allowed_cpus``, ``own_priority``, ``may_raise_priority``, ``cpu_features``.

Where no backend loads, importing shmlaunch still works (a launch file can be checked
anywhere); every call that needs the backend raises PlatformUnavailableError with the reason.
``AVAILABLE`` and ``UNAVAILABLE_REASON`` say which case this is.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time

from ._common import buffer_address
from .errors import PlatformUnavailableError

#: What a backend module provides (``buffer_address`` is shared: ``_common``).
_SEAM = (
    "CHILD_EXIT_SIGNAL", "CREATE_NEW_FLAGS", "SHM_ROOT", "STOP_SIGNALS", "TRACING", "USER_ID", "ByteLock", "Directory", "LoanBase", "MessageBase",
    "ProcessInfo", "OPEN_READ_FLAGS", "ReadCursor", "WriteCursor", "adopted_orphans", "allowed_cpus", "become_subreaper", "child_options",
    "cpu_features", "detached_options", "free_bytes", "futex_wait", "futex_wake", "group_alive", "listen_for_stop", "map_file",
    "may_raise_priority", "notify_service_manager", "own_priority", "place_child", "process_info", "process_start_time",
    "raise_open_file_limit", "reap_orphans", "request_stop", "reserve", "stop_group", "stop_process", "trace_event", "trace_start",
    "trace_stop", "wait_any", "wait_for_signal",
)

try:
    if sys.platform == "win32":
        from . import _windows as _impl
    else:
        from . import _linux as _impl
    globals().update({name: getattr(_impl, name) for name in _SEAM})
    AVAILABLE = True
    UNAVAILABLE_REASON = ""
except ImportError as exc:  # another system, or the C module was not built
    AVAILABLE = False
    UNAVAILABLE_REASON = f"pool topics have no backend on this system ({exc})"
    SHM_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    USER_ID = str(os.geteuid()) if hasattr(os, "geteuid") else "user"

    def _unavailable(*_args, **_kwargs):
        raise PlatformUnavailableError(UNAVAILABLE_REASON)

    class ByteLock:  # type: ignore[no-redef]
        def __init__(self, *_args) -> None:
            _unavailable()

    class ProcessInfo:  # type: ignore[no-redef]
        def __init__(self, *_args) -> None:
            _unavailable()

    class MessageBase:  # type: ignore[no-redef]
        __slots__ = ()

        def __new__(cls, *_args):
            _unavailable()

    LoanBase = MessageBase  # type: ignore[misc]

    class Directory:  # type: ignore[no-redef]
        @classmethod
        def open(cls, *_args):
            _unavailable()

        make = open

    adopted_orphans = ReadCursor = WriteCursor = free_bytes = futex_wait = wait_any = futex_wake = _unavailable
    map_file = child_options = place_child = stop_group = process_info = process_start_time = reserve = become_subreaper = _unavailable
    detached_options = group_alive = listen_for_stop = reap_orphans = request_stop = stop_process = _unavailable
    trace_start = trace_stop = trace_event = _unavailable
    TRACING = False
    STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
    CHILD_EXIT_SIGNAL = None

    # What a launch-file check asks, answered from what Python itself knows on any system.
    def allowed_cpus() -> set[int]:
        getter = getattr(os, "sched_getaffinity", None)
        return set(getter(0)) if getter else set(range(os.cpu_count() or 1))

    def own_priority() -> int:
        getter = getattr(os, "getpriority", None)
        return getter(os.PRIO_PROCESS, 0) if getter else 0

    def may_raise_priority(_nice: int) -> bool:
        return False  # not knowable here: the check says what is needed

    def cpu_features() -> frozenset[str]:
        return frozenset()  # unknown: a caller chooses what runs on any CPU

    def wait_for_signal() -> None:
        time.sleep(3600)

    def notify_service_manager(_address: str, _message: bytes) -> bool:
        return False

    OPEN_READ_FLAGS = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    CREATE_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)

__all__ = ["AVAILABLE", "UNAVAILABLE_REASON", "buffer_address", *_SEAM]
