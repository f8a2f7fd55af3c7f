"""The launcher's watchdog: cleans up after a launcher that died without cleaning up itself.

The launcher starts it in its own session with a pipe on stdin, and writes one line per node
process group it starts (``pgid N``), and ``done`` when it has cleaned up by itself. If the
pipe ends without ``done`` (the launcher was SIGKILLed or crashed), the watchdog stops every
group (SIGTERM, then SIGKILL after the grace period) and removes its run's files: nothing is
left in /dev/shm, even then. Nodes also get SIGTERM from the kernel when the launcher dies
(Linux: PR_SET_PDEATHSIG), so they usually stop cleanly before this; on Windows the launcher's
kill-on-close job has ended them already, and the watchdog (outside that job) removes the files.

It cleans only the run it belongs to: it takes the graph's launcher lock first (a new launcher
of the same graph that already holds it owns the directory now) and checks that the
directory's marker still names its run id. The launcher starts it before it reserves the
first byte of a segment, so even a launcher killed while creating topics leaves nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

from shmlaunch import _platform as backend
from shmlaunch.nodes.hops import TRACE_TABLE
from shmlaunch.transport import RuntimeDir, TransportError, cleanup, clear_trace_request

from ._state import LOCK_FILE
from ._stopping import terminate_then_kill


def _stop_all(groups: set[int], force: bool) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            backend.stop_group(pgid, force)


#: How long to wait for the dead run's lock to be released (a live new run would keep it longer).
LOCK_RELEASE_WAIT = 2.0


def clean_run(runtime_dir: str, run: str) -> bool:
    """Remove run ``run``'s files from ``runtime_dir``, holding the launcher lock meanwhile;
    False (nothing touched) when another launcher holds it or the directory is another run's.
    As the launcher does (``GraphDir.release``): a second pass once the lock file and the
    directory are closed, for what Windows keeps while they are open."""
    try:
        with RuntimeDir.open(runtime_dir) as rd:
            # the pipe's end can reach us before the dead process's lock is released (the kernel
            # closes a dying process's files one by one): wait for it a little
            fd = rd.lock(LOCK_FILE, LOCK_RELEASE_WAIT)
        if fd is None:
            return False
        try:
            cleanup(runtime_dir, run=run)
        finally:
            os.close(fd)
        return cleanup(runtime_dir, run=run)
    except (OSError, TransportError):
        return False


def main() -> int:
    runtime_dir, run = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the launcher's death ends us
    groups: set[int] = set()
    for raw in sys.stdin:
        word, _, arg = raw.strip().partition(" ")
        if word == "pgid":
            groups.add(int(arg))
        elif word == "done":
            return 0
    if run == "--trace":  # a tracer's: its request and table go, the graph runs on
        with contextlib.suppress(OSError, TransportError):
            clear_trace_request(runtime_dir, TRACE_TABLE)
        return 0
    terminate_then_kill(lambda force: _stop_all(groups, force), lambda: any(backend.group_alive(g) for g in groups), time.sleep)
    clean_run(runtime_dir, run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
