"""Many-topic benchmark: how long a graph of N topics takes to start, and what the live status
view costs the launcher at N topics (issue 13, item 19: targets 1000 topics created in under
5 s, the status view under 5% of a core at 300 topics).

Each figure is a real launcher process on a real /dev/shm, repeated ``--runs`` times; the
median and range are reported.

- start: from spawning ``shmlaunch FILE`` to its line "graph ...: N topics in ..., starting"
  (printed once every topic exists), so Python's own start-up (shown apart) is included;
- status view: the launcher's CPU (from /proc) over ``--window`` seconds with the view on,
  minus the same with it off, as a percentage of one core;
- tools on a running graph of N topics: ``shmlaunch topic list`` from spawn to exit, and
  ``shmlaunch record`` from spawn to its line "recording N topics" (every topic opened).

    python bench/topics_bench.py               # about 3 minutes; writes bench/results/topics.json and .md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shmlaunch import _platform as backend

ROOT = Path(__file__).resolve().parent.parent
VIEW_CODE = """import sys
from shmlaunch.launch import Launcher, Printer, load_launch_file
g = load_launch_file(sys.argv[1])
sys.exit(Launcher(g, Printer(list(g.nodes), colour=False), duration=float(sys.argv[2]), status=sys.argv[3] == "on").run())
"""


def launch_file(folder: Path, n: int, tag: str) -> Path:
    path = folder / f"topics-{n}-{tag}.yaml"
    topics = "".join(f"  t{i}: {{capacity: 64, pool: 4}}\n" for i in range(n))
    path.write_text(f"name: bench-topics-{os.getpid()}-{tag}\ntopics:\n{topics}nodes:\n  idle: {{cmd: [sleep, '600']}}\n")
    return path


def start_seconds(path: Path, n: int) -> float:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "shmlaunch.launch.cli", str(path), "--duration", "0.5", "--no-status"],
                            stdout=subprocess.PIPE, text=True)
    took = None
    for line in proc.stdout:
        if took is None and f": {n} topics in " in line:
            took = time.monotonic() - t0
    if proc.wait() != 0 or took is None:
        raise SystemExit(f"the {n}-topic graph did not start cleanly (exit {proc.returncode})")
    return took


def tool_seconds(path: Path, n: int, tmp: Path) -> tuple[float, float]:
    """(topic list, record start) in seconds, on the running graph of ``path``."""
    graph = path.read_text().split("\n", 1)[0].removeprefix("name: ")
    proc = subprocess.Popen([sys.executable, "-m", "shmlaunch.launch.cli", str(path), "--duration", "120", "--no-status"],
                            stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if f": {n} topics in " in line:
                break
        t0 = time.monotonic()
        listed = subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", "topic", "list", "--graph", graph], capture_output=True,
                                text=True, check=True)
        listing = time.monotonic() - t0
        assert sum(1 for x in listed.stdout.splitlines() if x.startswith("t")) == n
        out = tmp / f"r-{time.monotonic_ns()}.mcap"
        t0 = time.monotonic()
        rec = subprocess.Popen([sys.executable, "-m", "shmlaunch.launch.cli", "record", str(out), "--graph", graph, "--duration", "0.2"],
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        started = None
        for line in rec.stderr:
            if started is None and f"recording {n} topics" in line:
                started = time.monotonic() - t0
        if rec.wait() != 0 or started is None:
            raise SystemExit(f"record on the {n}-topic graph failed (exit {rec.returncode})")
        out.unlink(missing_ok=True)
        return listing, started
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def python_start_seconds() -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import shmlaunch.launch"], check=True)
    return time.monotonic() - t0


def cpu_seconds(pid: int) -> float:
    return backend.process_info(pid).cpu_seconds


def launcher_cpu_percent(path: Path, view: str, window: float) -> float:
    """The launcher's CPU over ``window`` seconds once the graph runs (the view refreshes every second)."""
    # Output to a file, not a pipe nobody reads (a full pipe would block the launcher: 0% CPU).
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-c", VIEW_CODE, str(path), str(window + 6), view], stdout=log,
                                stderr=subprocess.STDOUT)
        time.sleep(4)  # start-up and the first refreshes are not the steady state
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(window)
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        proc.wait(timeout=60)
    if proc.returncode != 0:
        raise SystemExit(f"the status-view run ended with exit code {proc.returncode}")
    return 100 * (c1 - c0) / (t1 - t0)


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--window", type=float, default=10.0, help="seconds of launcher CPU measured per status-view run")
    ap.add_argument("--sizes", default="100,300,1000", help="topic counts to start")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "topics.json"))
    args = ap.parse_args()
    results = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(), "cpus": os.cpu_count(),
               "python_start_s": summary([python_start_seconds() for _ in range(args.runs)]), "start_s": {}, "view_cpu_pct": {},
               "topic_list_s": {}, "record_start_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in map(int, args.sizes.split(",")):
            path = launch_file(Path(tmp), n, "start")
            results["start_s"][n] = summary([start_seconds(path, n) for _ in range(args.runs)])
            print(f"{n} topics: start {results['start_s'][n]['median']:.2f} s", flush=True)
        for n in (1000,):
            path = launch_file(Path(tmp), n, "tools")
            runs = [tool_seconds(path, n, Path(tmp)) for _ in range(args.runs)]
            results["topic_list_s"][n] = summary([r[0] for r in runs])
            results["record_start_s"][n] = summary([r[1] for r in runs])
            print(f"{n} topics: topic list {results['topic_list_s'][n]['median']:.2f} s, record start "
                  f"{results['record_start_s'][n]['median']:.2f} s", flush=True)
        for n in (300,):
            path = launch_file(Path(tmp), n, "view")
            runs = {view: [launcher_cpu_percent(path, view, args.window) for _ in range(max(args.runs // 2, 2))] for view in ("off", "on")}
            results["view_cpu_pct"][n] = {"off": summary(runs["off"]), "on": summary(runs["on"]),
                                          "view": statistics.median(runs["on"]) - statistics.median(runs["off"])}
            print(f"{n} topics: launcher CPU {statistics.median(runs['off']):.2f}% without the view, "
                  f"{statistics.median(runs['on']):.2f}% with it", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    md = [f"Measured {results['when']} (Python {results['python']}, {results['cpus']} CPUs): `python bench/topics_bench.py`",
          "", "| what | median | range | target |", "|---|---|---|---|"]
    ps = results["python_start_s"]
    md.append(f"| Python start-up and import (included below) | {ps['median']:.2f} s | {ps['min']:.2f}-{ps['max']:.2f} s | |")
    for n, r in results["start_s"].items():
        target = "under 5 s" if n == 1000 else ""
        md.append(f"| graph of {n} topics: launch to all topics created | {r['median']:.2f} s | {r['min']:.2f}-{r['max']:.2f} s | {target} |")
    for key, what in (("topic_list_s", "`shmlaunch topic list`"), ("record_start_s", "`shmlaunch record`: spawn to every topic open")):
        for n, r in results[key].items():
            md.append(f"| {what} on a graph of {n} topics | {r['median']:.2f} s | {r['min']:.2f}-{r['max']:.2f} s | linear in topics |")
    for n, r in results["view_cpu_pct"].items():
        md.append(f"| launcher CPU at {n} topics, status view off | {r['off']['median']:.2f}% | {r['off']['min']:.2f}-{r['off']['max']:.2f}% | |")
        md.append(f"| launcher CPU at {n} topics, status view on | {r['on']['median']:.2f}% | {r['on']['min']:.2f}-{r['on']['max']:.2f}% "
                  f"| under 5% |")
    Path(args.out).with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
