"""What every backend shares: nothing here calls the system itself."""

from __future__ import annotations

import ctypes
import time


class ByteLockBase:
    """The part of a backend's ByteLock that does not depend on the system: waiting by retrying."""

    __slots__ = ()

    def try_exclusive(self) -> bool:  # pragma: no cover - each backend's ByteLock defines it
        raise NotImplementedError

    def try_exclusive_within(self, timeout: float) -> bool:
        """``try_exclusive`` again and again for up to ``timeout`` s (a growing sleep, 1 to 50 ms,
        between tries): the critical sections waited for take microseconds, so a holder that
        keeps the lock this long is stopped or hung, and the caller says so instead of hanging."""
        deadline = time.monotonic() + timeout
        pause = 0.001
        while not self.try_exclusive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        return True


def buffer_address(buf) -> tuple[int, object]:
    """Address of a writable buffer, and the object that pins it (drop it before close)."""
    pin = ctypes.c_char.from_buffer(buf)
    return ctypes.addressof(pin), pin
