"""The many-topic wait where futex_waitv is missing (kernels before 5.16, qemu-user): taken on
purpose here with SHMLAUNCH_NO_FUTEX_WAITV=1, so it is tested on every machine, not only on
the ones that need it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="futex_waitv is Linux's (Windows waits on events)")

SCRIPT = textwrap.dedent("""
    import logging, sys, threading, time
    import numpy as np
    from shmlaunch.testing import runtime_dir
    from shmlaunch.transport import Reader, Writer, wait_any
    logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s", stream=sys.stdout)
    with runtime_dir() as rt:
        writers = [Writer(f"t{i}", dtype="int64", shape=(1,), pool=2, runtime_dir=rt) for i in range(3)]
        readers = [Reader(f"t{i}", runtime_dir=rt) for i in range(3)]
        threading.Timer(0.3, lambda: writers[2].publish(np.array([7], np.int64))).start()
        t0 = time.monotonic()
        msg = None
        while msg is None and time.monotonic() - t0 < 5:  # wait_any may return early (here every 5 ms): look, then wait again
            wait_any(readers, 5.0)
            msg = readers[2].receive_nowait()
        woke = time.monotonic() - t0
        print("woke after", round(woke, 3), "value", int(msg.data[0]))
        msg.release()
        for x in readers + writers:
            x.close()
""")


def test_waiting_on_several_topics_without_futex_waitv_wakes_for_the_third_and_says_so_in_the_debug_log():
    env = dict(os.environ, SHMLAUNCH_NO_FUTEX_WAITV="1")
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert ("shmlaunch.transport futex_waitv is not available here (ENOSYS: a kernel before 5.16, or an emulator): "
            "waiting on several topics polls the others every 5 ms") in res.stdout
    woke = float(res.stdout.split("woke after ")[1].split()[0])
    assert 0.25 < woke < 4.0 and "value 7" in res.stdout
