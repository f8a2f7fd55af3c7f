"""Cross-language benchmark: a Python writer to Python, C++ and C# readers of the same topic.

One-way latency from a CLOCK_REALTIME stamp taken just before the Python publish call to the
reader holding the message (the C++/C# peers are transport/*/CheckedIO's ``latency`` mode).
Cases: ``small`` (256 B at 1 kHz) and ``frame30`` (1920x1080x3 at 30 Hz).

    python bench/xlang_bench.py          # builds the peers into bench/build, writes bench/results/xlang.json/.md
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from shmlaunch.testing import runtime_dir
from shmlaunch.transport import Reader, Writer

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / "build"
CASES = {"small": (256, 1000.0, 3.0), "frame30": (1920 * 1080 * 3, 30.0, 5.0)}


def build() -> None:
    subprocess.run(["cmake", "-S", str(ROOT / "transport" / "cpp"), "-B", str(BUILD / "cpp")], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(BUILD / "cpp"), "-j2"], check=True, capture_output=True)
    cs = ROOT / "transport" / "csharp"
    sources = [str(cs / name) for name in ("ShmLaunch.cs", "Layout.g.cs", "CheckedIO.cs")]
    subprocess.run(["mcs", "-unsafe", f"-out:{BUILD / 'CheckedIO.exe'}", *sources], check=True)


def python_reader(topic: str) -> None:
    """The Python peer: same output as the C++/C# ``latency`` mode."""
    r = Reader(topic)
    print("ready", flush=True)
    us = []
    while (msg := r.receive(timeout=1.5)) is not None:
        us.append((time.time_ns() - msg.stamp_ns) / 1e3)
        del msg
    us.sort()
    pct = [us[int(q * (len(us) - 1))] if us else 0.0 for q in (0.5, 0.9, 0.99)]
    print(f"received {len(us)} p50 {pct[0]:.1f} p90 {pct[1]:.1f} p99 {pct[2]:.1f}")


def run(reader: str, case: str) -> dict:
    size, rate, seconds = CASES[case]
    argv = {
        "Python": [sys.executable, __file__, "--reader", "x"],
        "C++": [str(BUILD / "cpp" / "checked_io"), "latency", "x", "1500"],
        "C# (Mono)": ["mono", str(BUILD / "CheckedIO.exe"), "latency", "x", "1500"],
    }[reader]
    with runtime_dir() as rt:
        w = Writer("x", capacity=size, pool=4, runtime_dir=rt)
        env = {"SHMLAUNCH_RUNTIME_DIR": str(rt), "PATH": "/usr/bin:/bin", "MONO_DISABLE_SHARED_AREA": "1"}
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        frames = [np.full(size, k, np.uint8) for k in range(4)]
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            n += 1
            w.publish(frames[n % 4], stamp_ns=time.time_ns())
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        out, _ = proc.communicate(timeout=60)
        w.close()
    f = out.split()
    return {"sent": n, "received": int(f[1]), "p50_us": float(f[3]), "p90_us": float(f[5]), "p99_us": float(f[7])}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--reader":
        python_reader(sys.argv[2])
        return
    build()
    results = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "command": "python bench/xlang_bench.py", "runs": {}}
    rows = ["| writer -> reader | case | p50 µs | p90 µs | p99 µs | received / sent |", "|---|---|---|---|---|---|"]
    for case in CASES:
        for reader in ("Python", "C++", "C# (Mono)"):
            r = run(reader, case)
            results["runs"][f"{reader}|{case}"] = r
            rows.append(f"| Python -> {reader} | {case} | {r['p50_us']:.1f} | {r['p90_us']:.1f} | {r['p99_us']:.1f} | "
                        f"{r['received']} / {r['sent']} |")
            print(rows[-1], flush=True)
    out = ROOT / "bench" / "results" / "xlang.json"
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
