"""shmlaunch: a brokerless node graph over shared-memory pool topics.

Layers, each usable without the ones above it: ``shmlaunch.transport`` (pool topics),
``shmlaunch.nodes`` (the Node base class and built-in nodes), ``shmlaunch.launch``
(launch files, the launcher and the ``shmlaunch`` command).
"""

__version__ = "0.1.0"
