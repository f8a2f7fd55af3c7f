"""Shared-memory pool topics: one writer, many readers, newest message first, zero copy.

A topic is a segment of ``pool`` slots of ``capacity`` bytes in a graph's private runtime
directory, listed in the graph's registry file. See transport/LAYOUT.md for the byte layout
that C++ and C# readers follow.
"""

from shmlaunch._platform import SHM_ROOT

from ._errors import (
    ClosedError,
    GroupsFullError,
    LayoutVersionError,
    LockBusyError,
    OutOfSpaceError,
    PlatformUnavailableError,
    RegistryCorruptError,
    RuntimeDirError,
    SegmentCorruptError,
    TopicExistsError,
    TopicMismatchError,
    TopicNotFoundError,
    TransportError,
    WriterBusyError,
)
from ._layout import LAYOUT_VERSION, TopicConfig
from ._reader import Message, Reader, ReaderStatistics, wait_any
from ._registry import read_registry
from ._runtime import (
    ENV_RUNTIME_DIR,
    MARKER_FILE,
    RuntimeDir,
    cleanup,
    default_runtime_dir,
    ensure_runtime_dir,
    graph_runtime_dir,
    graphs_present,
    new_run_id,
    runtime_dir_prefix,
    validate_graph_name,
    validate_topic_name,
)
from ._topic import ReaderInfo, Topic, TopicState
from ._trace import TraceRecord, TraceSession, clear_trace_request, record_callback
from ._writer import Loan, Writer, WriterStatistics

__all__ = [
    "ENV_RUNTIME_DIR",
    "LAYOUT_VERSION",
    "MARKER_FILE",
    "SHM_ROOT",
    "ClosedError",
    "GroupsFullError",
    "LayoutVersionError",
    "Loan",
    "LockBusyError",
    "Message",
    "OutOfSpaceError",
    "PlatformUnavailableError",
    "Reader",
    "ReaderInfo",
    "ReaderStatistics",
    "RegistryCorruptError",
    "RuntimeDir",
    "RuntimeDirError",
    "SegmentCorruptError",
    "Topic",
    "TopicConfig",
    "TopicExistsError",
    "TopicMismatchError",
    "TopicNotFoundError",
    "TopicState",
    "TraceRecord",
    "TraceSession",
    "TransportError",
    "Writer",
    "WriterBusyError",
    "WriterStatistics",
    "cleanup",
    "clear_trace_request",
    "default_runtime_dir",
    "ensure_runtime_dir",
    "graph_runtime_dir",
    "graphs_present",
    "new_run_id",
    "read_registry",
    "record_callback",
    "runtime_dir_prefix",
    "validate_graph_name",
    "validate_topic_name",
    "wait_any",
]
