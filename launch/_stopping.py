"""Stopping processes: a polite stop, a grace period, then a forced one, the one way shmlaunch
does it (Linux: SIGTERM then SIGKILL; Windows: CTRL_BREAK_EVENT then TerminateProcess; the
platform backend sends them).

Used for the nodes' process groups (the launcher), the background processes they left (the
launcher, a child subreaper) and a dead launcher's nodes (the watchdog), so the grace period
is one constant and the steps are one function.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from shmlaunch import _platform as backend

#: Seconds between the polite stop and the forced one.
STOP_TIMEOUT = 5.0


def terminate_then_kill(send: Callable[[bool], None], alive: Callable[[], bool], wait: Callable[[float], None],
                        on_kill: Callable[[], None] | None = None, timeout: float = STOP_TIMEOUT,
                        clock: Callable[[], float] = time.monotonic) -> None:
    """``send(False)`` (the polite stop); wait (calling ``wait(0.05)``, which may also do the
    caller's work: read output, reap children) until ``alive()`` is False or ``timeout`` s pass
    by ``clock``; then ``on_kill()`` and ``send(True)`` (forced), waiting as long again. Returns
    at once when nothing is alive. (``clock`` and ``wait`` are the caller's, so a test replays a
    stop in simulated time.)"""
    for force in (False, True):
        if not alive():
            return
        if force and on_kill is not None:
            on_kill()
        send(force)
        deadline = clock() + timeout
        while alive() and clock() < deadline:
            wait(0.05)


def stop_on_request(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` when this process is asked to stop: SIGINT, SIGTERM, and on Windows
    Ctrl-Break and the launcher's stop event, so a tool run as a graph's ``cmd:`` node (the
    ``record:`` section's recorder) stops cleanly there too, not killed after the grace period.
    Returns the function that stops listening for the event."""
    for sig in backend.STOP_SIGNALS:
        signal.signal(sig, lambda *_: callback())
    return backend.listen_for_stop()
