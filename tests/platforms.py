"""Which system the tests run on, and the marks for tests that only one system can run.

The transport tests run on Linux and, under Wine, on Windows (tests/test_windows.py says how);
a test that checks a POSIX-only fact (file modes, a symlink planted by the test) says so here
with the reason, and its Windows counterpart lives in test_windows.py.
"""

from __future__ import annotations

import sys

import pytest

WINDOWS = sys.platform == "win32"


def posix_only(reason: str):
    """Skip on Windows, saying why and what checks the same thing there."""
    return pytest.mark.skipif(WINDOWS, reason=f"POSIX only: {reason}")
