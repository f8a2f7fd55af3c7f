"""Helpers for testing code that uses shmlaunch: private runtime directories, unique names.

>>> from shmlaunch.testing import runtime_dir
>>> with runtime_dir() as d:                       # doctest: +SKIP
...     w = Writer("t", capacity=64, runtime_dir=d)
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from shmlaunch.transport import cleanup, ensure_runtime_dir, graph_runtime_dir

_counter = itertools.count()


def unique_name(prefix: str = "test") -> str:
    """A topic or graph name no other test (or test process) uses."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def runtime_dir(graph: str | None = None) -> Iterator[Path]:
    """A fresh private runtime directory for one graph, removed afterwards whatever happens
    (as any shmlaunch directory is: its own files and itself, never a file it did not create)."""
    path = graph_runtime_dir(graph or unique_name())
    cleanup(path)
    ensure_runtime_dir(path)
    try:
        yield path
    finally:
        gc.collect()  # handles the test dropped without close() let their files go (Windows cannot delete an open one)
        cleanup(path)
