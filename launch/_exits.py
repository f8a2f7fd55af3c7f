"""The exit-code policy of every ``shmlaunch`` command, and its one way of saying what went wrong.

    0  a clean run or stop (SIGINT/SIGTERM and --duration included), or a tool that did its job
    1  a node failed, a required node died, or a tool was refused (no such graph or topic, a
       pid that is not the launcher, a graph still stopping)
    2  a bad launch file, argument or parameter: nothing was started

Errors go to standard error, one line each, as ``shmlaunch: error: <what was wrong and where>``.
"""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def error(text: str, code: int = EXIT_USAGE) -> int:
    """Print ``text`` (one problem a line) as errors; return ``code`` for the caller to exit with."""
    for line in text.splitlines():
        print(f"shmlaunch: error: {line}", file=sys.stderr)
    return code
