import multiprocessing

import pytest

from shmlaunch.testing import runtime_dir


@pytest.fixture
def rt():
    """A private runtime directory, removed after the test."""
    with runtime_dir() as d:
        yield d


@pytest.fixture
def ctx():
    """Spawned processes: nothing inherited, as the launcher starts nodes."""
    return multiprocessing.get_context("spawn")
