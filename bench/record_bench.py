"""Recording benchmark: the hand graph at 1280x720 and 30 fps with the MCAP recorder running.

Each sitting runs the bundled hands.yaml (camera on the bundled photos, MediaPipe tracking,
model_complexity 0, gestures, the JSONL recorder, console) once per mode, the order rotating
between sittings:

- ``off``: no MCAP recorder (the reference for the hand node's rate);
- ``none``, ``lz4``, ``zstd``: ``mcap:=FILE`` with that chunk compression (the ``record:``
  section of hands.yaml, i.e. ``shmlaunch record`` as a node of the graph).

Measured over a window after a warm-up: camera frames published and landmark messages made
(the topics' sequence numbers, read as an observer), the recorder's CPU (% of one core, from
/proc) and what it wrote (MB/s); over the recorder's whole run its own counters: every frame
published while it ran is recorded, skipped (the topic moved on before it looked) or dropped
(its queue was full). Then, once the kernel has written the recording back to disk
(``os.sync()``), each recording is played into a graph of its own and ``shmlaunch play``
reports its timing error (actual minus planned publish time).

Targets: 0 frames dropped with none and lz4 while the hand node keeps >= 95% of its rate
without the recorder; play's p99 timing error under 2 ms at rate 1. The recorder fsyncs each
finished chunk (what backs "a power cut loses at most a second"): its summary says how many
and how long they took, reported as fsyncs and milliseconds in fsync per second of recording.

    python bench/record_bench.py                  # 3 sittings of 60 s per mode: about 15 minutes
    python bench/record_bench.py --sittings 1 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from summary import med_range

from shmlaunch.transport import Topic, graph_runtime_dir

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODES = ("off", "none", "lz4", "zstd")
WARMUP = 8.0
GRAPH = "hands"
TICK = os.sysconf("SC_CLK_TCK")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "shmlaunch.launch.cli", *args]


def latest(topic: str) -> int:
    with Topic.open(topic, runtime_dir=graph_runtime_dir(GRAPH)) as t:
        return t.dynamic().latest_seq


def recorder_pid() -> int | None:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"shmlaunch.launch.cli" in cmd and b"record" in cmd:
                return int(pid)
    return None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_for_graph(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if latest("hands/landmarks") > 0:
                return
        except Exception:  # noqa: BLE001 (not there yet)
            pass
        time.sleep(0.2)
    raise RuntimeError("the hands graph did not start")


def run_mode(mode: str, seconds: float, workdir: Path) -> dict:
    mcap = workdir / f"{mode}.mcap"
    logs = workdir / f"logs-{mode}"
    launch_file = workdir / f"bench-{mode}.yaml"
    record = "" if mode == "off" else f"record: {{file: {mcap}, compression: {mode}}}\n"
    launch_file.write_text(f"""name: {GRAPH}
include:
  - file: hands.yaml
    args: {{width: 1280, height: 720, fps: 30, static: false, complexity: 0, record: {workdir / 'hands.jsonl'}}}
{record}""")
    args = [str(launch_file), "--duration", str(WARMUP + seconds + 120), "--no-status", "--quiet", "--log-dir", str(logs)]
    proc = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir)
    wait_for_graph()
    time.sleep(WARMUP)
    pid = recorder_pid() if mode != "off" else None
    c0, l0, t0 = latest("camera/image"), latest("hands/landmarks"), time.monotonic()
    cpu0 = cpu_seconds(pid) if pid else 0.0
    size0 = mcap.stat().st_size if mode != "off" else 0
    time.sleep(seconds)
    c1, l1, t1 = latest("camera/image"), latest("hands/landmarks"), time.monotonic()
    cpu1 = cpu_seconds(pid) if pid else 0.0
    size1 = mcap.stat().st_size if mode != "off" else 0
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"the graph failed ({mode}):\n{out[-3000:]}")
    wall = t1 - t0
    row = {"mode": mode, "camera_fps": (c1 - c0) / wall, "hands_fps": (l1 - l0) / wall}
    if mode != "off":
        log = (logs / "mcap-recorder.log").read_text()
        whole = json.loads(re.search(r"shmlaunch: summary (\{.*\})", log)[1])
        summary = whole["topics"]["camera/image"]
        row.update({"fsyncs_per_s": whole["fsyncs"] / whole["seconds"], "fsync_ms_per_s": 1000 * whole["fsync_seconds"] / whole["seconds"],
                    "lost": summary["lost"]})
        row.update({"recorded": summary["recorded"], "skipped": summary["skipped"], "dropped": summary["dropped"],
                    "published": summary["recorded"] + summary["skipped"] + summary["dropped"],
                    "recorder_cpu_pct": 100 * (cpu1 - cpu0) / wall, "mb_per_s": (size1 - size0) / 1e6 / wall})
        row.update(play_timing(mcap))
        mcap.unlink()
    return row


def play_timing(mcap: Path) -> dict:
    # The recording was just written: wait until the kernel has written it back to disk, so
    # that its background write-back (gigabytes without compression) is not measured as play's.
    os.sync()
    res = subprocess.run(cli("play", str(mcap), "--graph", "record-bench-replay"), capture_output=True, text=True, timeout=600)
    m = re.search(r"timing error p50 ([\d.]+) ms, p99 ([\d.]+) ms, max ([\d.]+) ms", res.stderr)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"play failed: {res.stderr[-2000:]}")
    return {"play_p50_ms": float(m[1]), "play_p99_ms": float(m[2]), "play_max_ms": float(m[3])}


def table(rows: list[dict]) -> str:
    lines = ["| mode | frames recorded / published | skipped | dropped | hand fps vs off | recorder CPU % | MB/s | fsyncs/s | "
             "ms in fsync per s | play p50 / p99 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        rs = [r for r in rows if r["mode"] == mode]
        if not rs:
            continue
        if mode == "off":
            lines.append(f"| off | - | - | - | {med_range([r['hands_fps'] for r in rs], '.1f')} fps | - | - | - | - | - |")
            continue
        lines.append(f"| {mode} | {sum(r['recorded'] for r in rs)} / {sum(r['published'] for r in rs)} | "
                     f"{sum(r['skipped'] for r in rs)} | {sum(r['dropped'] for r in rs)} | {med_range([r['hands_ratio'] for r in rs], '.3f')} | "
                     f"{med_range([r['recorder_cpu_pct'] for r in rs], '.0f')} | {med_range([r['mb_per_s'] for r in rs], '.0f')} | "
                     f"{med_range([r['fsyncs_per_s'] for r in rs], '.1f')} | {med_range([r['fsync_ms_per_s'] for r in rs], '.0f')} | "
                     f"{med_range([r['play_p50_ms'] for r in rs], '.2f')} / {med_range([r['play_p99_ms'] for r in rs], '.2f')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sittings", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--modes", default=",".join(MODES))
    ns = ap.parse_args()
    modes = ns.modes.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="record-bench-", dir=os.environ.get("RECORD_BENCH_DIR")) as tmp:
        for sitting in range(ns.sittings):
            order = modes[sitting % len(modes):] + modes[: sitting % len(modes)]
            got = {}
            for mode in order:
                got[mode] = run_mode(mode, ns.seconds, Path(tmp))
                got[mode]["sitting"] = sitting
                print(json.dumps(got[mode]), flush=True)
            for r in got.values():
                r["hands_ratio"] = r["hands_fps"] / got["off"]["hands_fps"] if "off" in got else float("nan")
            rows += got.values()
    md = (f"Recording benchmark ({ns.sittings} sittings x {ns.seconds:g} s per mode, {platform.node()}, "
          f"{os.cpu_count()} CPUs; median [range] over sittings, counts summed)\n\n{table(rows)}\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "record.json").write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    (RESULTS / "record.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
