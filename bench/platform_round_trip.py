"""One publish and one receive of a 64-byte message in one process, on whatever system runs it.

What it shows: the cost of the per-message steps of a platform backend (Linux: the C hot path;
Windows: the ctypes one, whose locks and wake-ups under Wine are each a round trip to
wineserver). Run it with Linux's Python and with the Windows CPython of ``.ci/wine``:

    .venv/bin/python bench/platform_round_trip.py
    WINEPREFIX=/tmp/shmlaunch-wine/prefix /usr/lib/wine/wine64 /tmp/shmlaunch-wine/cp311/python.exe bench/platform_round_trip.py

Each run appends one line to bench/results/platform_round_trip.md: median and range of 5
sittings of 2000 round trips.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

from summary import med_range

from shmlaunch.testing import runtime_dir
from shmlaunch.transport import Reader, Writer

SITTINGS, COUNT = 5, 2000


def main() -> None:
    per_message = []
    with runtime_dir() as rt, Writer("b", capacity=64, pool=4, runtime_dir=rt) as w, Reader("b", runtime_dir=rt) as r:
        for _ in range(SITTINGS):
            start = time.perf_counter()
            for _ in range(COUNT):
                w.publish(b"x" * 64)
                r.receive(timeout=1).release()
            per_message.append((time.perf_counter() - start) / COUNT * 1e6)
    line = (f"| {sys.platform} | {platform.python_version()} | {platform.release() or '-'} | "
            f"{med_range(per_message, '.1f')} |")
    print(line)
    with open(Path(__file__).parent / "results" / "platform_round_trip.md", "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
