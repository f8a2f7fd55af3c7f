"""What native libraries print to file descriptor 2, filtered, and never lost when they abort.

MediaPipe's C++ side writes start-up chatter straight to fd 2 (bypassing ``sys.stderr``). The
hand node used to send fd 2 to a temporary file and copy the useful lines back afterwards; a
library that aborts the process inside that window (MediaPipe 1.x on an ARMv8.0 core: ``FATAL
ERROR: This binary was compiled with lse enabled ...``, then SIGILL) took its last words with
it, and the log said only "killed by SIGILL". Here fd 2 goes through a pipe to a small filter
*process* instead: if this process dies mid-call, the filter still holds the pipe, reads all
that was written, and passes every line that is not known chatter to the original fd 2 (the
launcher's pipe, or the terminal).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

# The filter: argv[1:] are the harmless markers; every other line goes to stdout as it arrives.
_FILTER = """
import sys
harmless = [m.encode() for m in sys.argv[1:]]
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if line.strip() and not any(m in line for m in harmless):
        out.write(line)
        out.flush()
"""
#: the longest the filter may take to pass on the last lines once the block ends
FILTER_DRAIN_TIMEOUT = 10.0


@contextlib.contextmanager
def filtered_native_output(harmless: tuple[str, ...]) -> Iterator[None]:
    """Send fd 2 through a filter process while the block runs: lines containing one of
    ``harmless`` are dropped, all others reach the original fd 2, even if the block kills
    the process (abort, SIGILL). The original fd 2 is back when the block ends."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        filt = subprocess.Popen([sys.executable, "-I", "-S", "-c", _FILTER, *harmless], stdin=subprocess.PIPE,
                                stdout=saved, stderr=subprocess.DEVNULL)
    except OSError:  # no way to start a process: the chatter passes unfiltered, and nothing is hidden
        os.close(saved)
        yield
        return
    os.dup2(filt.stdin.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        filt.stdin.close()
        try:
            filt.wait(FILTER_DRAIN_TIMEOUT)
        except subprocess.TimeoutExpired:
            filt.kill()
            filt.wait()
