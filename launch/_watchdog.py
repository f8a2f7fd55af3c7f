"""The launcher's watchdog: cleans up after a launcher that died without cleaning up itself.

The launcher starts it in its own session with a pipe on stdin, and writes one line per node
process group it starts (``pgid N``), and ``done`` when it has cleaned up by itself. If the
pipe ends without ``done`` (the launcher was SIGKILLed or crashed), the watchdog stops every
group (SIGTERM, then SIGKILL after the grace period) and removes the graph's runtime
directory: nothing is left in /dev/shm, even then. Nodes also get SIGTERM from the kernel
when the launcher dies (PR_SET_PDEATHSIG), so they usually stop cleanly before this.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

from shmlaunch.transport import cleanup

STOP_TIMEOUT = 5.0


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_all(groups: set[int], sig: int) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def main() -> int:
    runtime_dir = sys.argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the launcher's death ends us
    groups: set[int] = set()
    for raw in sys.stdin:
        word, _, arg = raw.strip().partition(" ")
        if word == "pgid":
            groups.add(int(arg))
        elif word == "done":
            return 0
    _signal_all(groups, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_all({g for g in groups if _alive(g)}, signal.SIGKILL)
    cleanup(runtime_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
