"""The transport's exceptions; each class says whose fault the failure is.

Misuse by the caller (oversize data, a bad topic name) raises the built-in ValueError;
the classes below (and the three the platform layer defines: TransportError,
RuntimeDirError, PlatformUnavailableError) cover what the caller cannot see coming from its own arguments.
"""

from shmlaunch._platform.errors import PlatformUnavailableError, RuntimeDirError, TransportError

__all__ = [
    "ClosedError", "GroupsFullError", "LayoutVersionError", "LockBusyError", "OutOfSpaceError", "PlatformUnavailableError",
    "RegistryCorruptError", "RuntimeDirError", "SegmentCorruptError", "TopicExistsError", "TopicMismatchError", "TopicNotFoundError",
    "TransportError", "WriterBusyError",
]



class TopicNotFoundError(TransportError, LookupError):
    """A reader asked for a topic that no registry lists (no writer or launcher created it)."""


class TopicExistsError(TransportError, FileExistsError):
    """``Topic.create`` found the topic already there (open it, or create with ``recreate=True``)."""


class TopicMismatchError(TransportError):
    """Two parties disagree on a topic's capacity, pool size, dtype or shape (both values named)."""


class LayoutVersionError(TopicMismatchError):
    """A segment or registry of another layout version: written by another shmlaunch release."""


class GroupsFullError(TransportError):
    """A topic's group table has no room for another competing-consumer group."""


class WriterBusyError(TransportError):
    """A second writer tried to open a topic whose writer is alive (one writer per topic)."""


class SegmentCorruptError(TransportError):
    """A segment file is not a pool topic of this layout (the OSError, if any, is the cause)."""


class RegistryCorruptError(TransportError):
    """A registry file that is not what shmlaunch writes (the file and line say where)."""


class OutOfSpaceError(TransportError, OSError):
    """The shared-memory file system cannot hold a new segment (reserved up front)."""



class LockBusyError(TransportError):
    """A short critical section's lock (the registry's, a group table's) stayed held longer than
    a bounded wait: its holder is stopped or hung. The message names it where it can."""



class ClosedError(TransportError):
    """The writer or reader was used after close()."""
