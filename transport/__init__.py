"""Shared-memory pool topics: one writer, many readers, newest message first, zero copy.

A topic is a segment of ``pool`` slots of ``capacity`` bytes in a graph's private runtime
directory, listed in the graph's registry file. See transport/LAYOUT.md for the byte layout
that C++ and C# readers follow.
"""

from ._errors import (
    ClosedError,
    LockBusyError,
    OutOfSpaceError,
    RuntimeDirError,
    SegmentCorruptError,
    TopicMismatchError,
    TopicNotFoundError,
    TransportError,
    WriterBusyError,
)
from ._layout import LAYOUT_VERSION, TopicConfig
from ._platform import SHM_ROOT
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
    new_run_id,
    validate_graph_name,
    validate_topic_name,
)
from ._segment import ensure_topic, ensure_topics, normalize_request
from ._writer import Loan, Writer, WriterStatistics

__all__ = [
    "ENV_RUNTIME_DIR",
    "LAYOUT_VERSION",
    "MARKER_FILE",
    "ClosedError",
    "Loan",
    "Message",
    "SHM_ROOT",
    "OutOfSpaceError",
    "Reader",
    "ReaderStatistics",
    "LockBusyError",
    "RuntimeDir",
    "RuntimeDirError",
    "SegmentCorruptError",
    "TopicConfig",
    "TopicMismatchError",
    "TopicNotFoundError",
    "TransportError",
    "Writer",
    "WriterBusyError",
    "WriterStatistics",
    "cleanup",
    "default_runtime_dir",
    "ensure_runtime_dir",
    "ensure_topic",
    "ensure_topics",
    "graph_runtime_dir",
    "new_run_id",
    "normalize_request",
    "read_registry",
    "validate_graph_name",
    "validate_topic_name",
    "wait_any",
]
