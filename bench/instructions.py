"""Instructions per publish and per receive, counted by valgrind's callgrind (steady state).

Times on these VMs move by tens of percent from one sitting to the next; instruction counts
do not. Callgrind counts only inside the measured loop (collection is switched on and off
around it by a client request, from a three-line C helper built with gcc at run time), and
each figure is the difference between loops of N1 and N2 iterations divided by N2 - N1, so
what remains is one iteration's user-space instructions (system calls count as the
instructions that make them: the kernel is not counted, for any transport). Needs valgrind
(Debian: ``apt-get install valgrind``, which brings valgrind/callgrind.h) and gcc.

A receive is measured as publish+receive minus publish alone. Transports: the pool topic's
copying publish, its loaned publish, and the bare floor of ``transports.Floor`` (an mmap'd slot
pool, one copy, a futex wake; the receive looks at the word and returns the slot's array).

    python bench/instructions.py                 # prints a table and writes bench/results/instructions.json
    python bench/instructions.py --traced        # the same with a tracer attached (shmlaunch trace)
    python bench/instructions.py --loop pool publish 1000    # one loop, uncounted
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N1, N2 = 1000, 5000
TOGGLE_C = "#include <valgrind/callgrind.h>\nvoid toggle(void) { CALLGRIND_TOGGLE_COLLECT; }\n"
SIZE = 256
VARIANTS = {  # row: (transport, loop) pairs whose difference is the row's figure
    "pool topic publish (copy)": (("pool", "publish"), None),
    "pool topic publish (loan)": (("loan", "publish"), None),
    "pool topic receive": (("pool", "both"), ("pool", "publish")),
    "floor publish": (("floor", "publish"), None),
    "floor receive": (("floor", "both"), ("floor", "publish")),
}


def build_toggle(directory: str) -> str:
    src, lib = os.path.join(directory, "toggle.c"), os.path.join(directory, "toggle.so")
    Path(src).write_text(TOGGLE_C)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", lib, src], check=True)
    return lib


def loop(transport: str, what: str, n: int, toggle_lib: str | None = None, traced: bool = False) -> None:
    """Run ``n`` steady-state iterations of ``what`` (publish, or publish then receive), through
    the same transport classes and calls as the latency benchmark's publisher and subscriber."""
    sys.path.insert(0, str(HERE))
    from transports import Floor, PoolTopic, PoolTopicLoan

    from shmlaunch.testing import runtime_dir
    from shmlaunch.transport import TraceSession

    src = np.zeros(SIZE, np.uint8)
    with runtime_dir() as rt:
        t = {"pool": PoolTopic, "loan": PoolTopicLoan, "floor": Floor}[transport]("x", SIZE, str(rt))
        t.create()
        t.setup_publisher()
        both = what == "both"
        if both:
            t.setup_subscriber()
        session = TraceSession.attach(rt) if traced and transport != "floor" else None  # (the floor has no trace points)
        if session is not None:  # wait until this process records (it looks every 0.25 s)
            ring = Path(rt) / f"trace.{os.getpid()}.ring"
            deadline = time.monotonic() + 60
            while not ring.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not ring.exists():
                raise RuntimeError("the process did not start recording for the tracer")
        toggle = ctypes.CDLL(toggle_lib).toggle if toggle_lib else (lambda: None)
        for i in range(1, 1 + n + 200):  # 200 to warm up, then n counted
            if i == 201:
                toggle()
            t.publish(src, i)
            if both:
                msg = t.receive(0.0)
                data = t.data(msg)
                del msg, data
        toggle()
        if session is not None:
            session.detach()
        t.close()
        if hasattr(t, "destroy"):
            t.destroy()


def count(transport: str, what: str, n: int, traced: bool) -> int:
    """User-space instructions of a whole ``loop`` run under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        env = dict(os.environ, PYTHONHASHSEED="0")
        proc = subprocess.run(["valgrind", "--tool=callgrind", "--collect-atstart=no", f"--callgrind-out-file={out}", sys.executable,
                               __file__, "--loop", transport, what, str(n), build_toggle(tmp), *(["--traced"] if traced else [])],
                              env=env, capture_output=True, text=True, timeout=900)
        m = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or not m:
            raise RuntimeError(f"callgrind run failed ({proc.returncode}): {proc.stderr[-800:]}")
        return int(m.group(1))


def per_iteration(transport: str, what: str, traced: bool) -> float:
    return (count(transport, what, N2, traced) - count(transport, what, N1, traced)) / (N2 - N1)


def measure(traced: bool) -> dict:
    cache: dict[tuple[str, str], float] = {}

    def get(key):
        if key not in cache:
            cache[key] = per_iteration(*key, traced)
        return cache[key]

    rows = {}
    for name, (plus, minus) in VARIANTS.items():
        rows[name] = round(get(plus) - (get(minus) if minus else 0.0))
        print(f"{name:28} {rows[name]:>8} instructions", flush=True)
    return rows


def ratios(rows: dict) -> dict:
    return {
        "publish (copy) / floor publish": rows["pool topic publish (copy)"] / rows["floor publish"],
        "publish (loan) / floor publish": rows["pool topic publish (loan)"] / rows["floor publish"],
        "receive / floor receive": rows["pool topic receive"] / rows["floor receive"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop", nargs="+", metavar="ARG", help="TRANSPORT WHAT N [TOGGLE_LIB]: run one loop (what callgrind runs)")
    ap.add_argument("--traced", action="store_true", help="with a tracer attached: every publish and receive is recorded")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.loop:
        loop(args.loop[0], args.loop[1], int(args.loop[2]), *args.loop[3:], traced=args.traced)
        return
    out = args.out or str(HERE / "results" / ("instructions_traced.json" if args.traced else "instructions.json"))
    rows = measure(args.traced)
    result = {"command": f"python bench/instructions.py{' --traced' if args.traced else ''}", "message_bytes": SIZE, "iterations": [N1, N2],
              "instructions": rows, "ratios": {k: round(v, 2) for k, v in ratios(rows).items()}}
    for k, v in result["ratios"].items():
        print(f"{k:32} {v:.2f}x")
    Path(out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
