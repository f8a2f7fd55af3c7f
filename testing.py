"""Helpers for testing code that uses shmlaunch: private runtime directories, unique names.

>>> from shmlaunch.testing import runtime_dir
>>> with runtime_dir() as d:                       # doctest: +SKIP
...     w = Writer("t", capacity=64, runtime_dir=d)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from shmlaunch.transport import cleanup
from shmlaunch.transport._platform import SHM_ROOT

_counter = itertools.count()


def unique_name(prefix: str = "test") -> str:
    """A topic or graph name no other test (or test process) uses."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def runtime_dir(graph: str | None = None) -> Iterator[Path]:
    """A fresh private runtime directory for one graph, removed afterwards whatever happens."""
    path = Path(SHM_ROOT) / f"shmlaunch-{os.getuid()}-{graph or unique_name()}"
    cleanup(path)
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        cleanup(path)
