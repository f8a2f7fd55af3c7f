"""The errors the platform layer raises, at the bottom so that every layer raises the same family.

The transport re-exports them (``shmlaunch.transport.TransportError`` and its subclasses are the
public names) and adds the protocol's own; nothing here imports the transport, so the platform
layer stays below it.
"""


class TransportError(Exception):
    """Base class of every pool-topic error."""


class RuntimeDirError(TransportError):
    """A runtime directory that must not be trusted: another user's, a symlink, open to others,
    or holding files shmlaunch did not create (refused, never used or cleared)."""


class PlatformUnavailableError(TransportError):
    """This system has no backend for pool topics (or it could not load): the reason is given."""
