"""Stopping processes: SIGTERM, a grace period, then SIGKILL, the one way shmlaunch does it.

Used for the nodes' process groups (the launcher), the background processes they left (the
launcher, a child subreaper) and a dead launcher's nodes (the watchdog), so the grace period
is one constant and the steps are one function.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

#: Seconds between SIGTERM and SIGKILL.
STOP_TIMEOUT = 5.0


def terminate_then_kill(send: Callable[[int], None], alive: Callable[[], bool], wait: Callable[[float], None],
                        on_kill: Callable[[], None] | None = None, timeout: float = STOP_TIMEOUT) -> None:
    """``send(SIGTERM)``; wait (calling ``wait(0.05)``, which may also do the caller's work: read
    output, reap children) until ``alive()`` is False or ``timeout`` s pass; then ``on_kill()``
    and ``send(SIGKILL)``, waiting as long again. Returns at once when nothing is alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not alive():
            return
        if sig == signal.SIGKILL and on_kill is not None:
            on_kill()
        send(sig)
        deadline = time.monotonic() + timeout
        while alive() and time.monotonic() < deadline:
            wait(0.05)
