"""Bridge benchmark: pool -> bridge -> zenoh -> bridge -> pool across two network namespaces,
side by side in one run with plain zenoh publisher -> subscriber processes sending the same
bytes (the anchor), on an unshaped veth link and with tbf at 1 Gbit and 100 Mbit.

Cases: ``small`` (256 B at 1 kHz), ``raw`` (1280x720x3 at 30 Hz), ``jpeg`` (the same frames,
JPEG q80 by the bridge; the anchor sends the JPEG bytes). For each: p50 and p99 latency (the
receiver's clock minus the stamp taken just before publishing; one machine, one clock),
delivered rate, p50 of the first and last third of the run (a queue would make the last
larger), and the bridge processes' CPU (both hosts, % of one core).

A third row per case on the unshaped link, "pool hop (one host)", is the same source and probe
through one pool topic on one host: the bridge path has two such hops more than plain zenoh.

Targets: small p50 within 50 us of plain zenoh; raw 720p30 p50 within 3 ms of plain zenoh;
latency never grows over a run.

    python bench/bridge_bench.py                 # as root; about 10 minutes; writes bench/results/bridge.json and .md
    python bench/bridge_bench.py --seconds 5 --links none
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from netns import TwoHosts  # noqa: E402
from summary import med_range  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PORT = 7447
CASES = {"small": ("small", 1000.0, False), "raw": ("frame", 30.0, False), "jpeg": ("frame", 30.0, True)}
LINKS = ("none", "1gbit", "100mbit")
TICK = os.sysconf("SC_CLK_TCK")
SETTLE = 4.0


def topic_line(kind: str) -> str:
    return "{dtype: uint8, shape: [256], pool: 4}" if kind == "small" else "{dtype: uint8, shape: [720, 1280, 3], pool: 4}"


def source_node(case: str) -> str:
    kind, rate, _jpeg = CASES[case]
    return f"""  source:
    node: bridge_nodes:Source
    params: {{rate: {rate}, kind: {kind}}}
    publish: {{out: data}}
"""


def latency_node(out: Path) -> str:
    return f"""  latency:
    node: bridge_nodes:Latency
    params: {{path: {out}}}
    subscribe: {{in: data}}
"""


def launch_file(path: Path, name: str, case: str, nodes: str, bridge: str = "") -> Path:
    path.write_text(f"name: {name}\ntopics:\n  data: {topic_line(CASES[case][0])}\nnodes:\n{nodes}{bridge}")
    return path


def graphs(tmp: Path, hosts: TwoHosts, case: str, out: Path) -> tuple[Path, Path]:
    """Host A: source -> pool -> bridge (export); host B: bridge (import) -> pool -> latency probe."""
    export = "{encode: jpeg, quality: 80}" if CASES[case][2] else "{}"
    a = launch_file(tmp / "a.yaml", "benchA", case, source_node(case),
                    f"bridge:\n  host: a\n  listen: [tcp/{hosts.a.addr}:{PORT}]\n  export:\n    data: {export}\n")
    b = launch_file(tmp / "b.yaml", "benchB", case, latency_node(out),
                    f"bridge:\n  host: b\n  connect: [tcp/{hosts.a.addr}:{PORT}]\n  import:\n    benchA/data: {{}}\n")
    return a, b


def local_graph(tmp: Path, case: str, out: Path) -> Path:
    """Source -> Latency through one pool topic on one host: the cost of one pool hop, which the
    bridge path has twice (into the exporter, out of the importer) and plain zenoh has not."""
    return launch_file(tmp / "local.yaml", "benchLocal", case, source_node(case) + latency_node(out))


def cpu_of_bridges(hosts: TwoHosts) -> float:
    total = 0.0
    for h in (hosts.a, hosts.b):
        for pid in h.pids():
            try:
                if b"SHMLAUNCH_NODE=bridge" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                    total += (int(fields[11]) + int(fields[12])) / TICK
            except OSError:
                pass
    return total


def run_bridge(hosts: TwoHosts, tmp: Path, case: str, seconds: float) -> dict:
    out = tmp / f"bridge-{case}.json"
    out.unlink(missing_ok=True)
    return run_graphs(hosts, tmp, list(zip((hosts.a, hosts.b), graphs(tmp, hosts, case, out), strict=True)), out, seconds)


def run_local(hosts: TwoHosts, tmp: Path, case: str, seconds: float) -> dict:
    out = tmp / f"local-{case}.json"
    out.unlink(missing_ok=True)
    return run_graphs(hosts, tmp, [(hosts.a, local_graph(tmp, case, out))], out, seconds)


def run_graphs(hosts: TwoHosts, tmp: Path, placed: list, out: Path, seconds: float) -> dict:
    """Run each launch file on its host; the latency of what the Latency node received in the window."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "bench"))
    cli = [sys.executable, "-m", "shmlaunch.launch.cli"]
    procs = [subprocess.Popen(h.command(*cli, str(f), "--no-status", "--quiet"), env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for h, f in placed]
    time.sleep(SETTLE)
    cpu0, t0, wall0 = cpu_of_bridges(hosts), time.monotonic(), time.time_ns()
    time.sleep(seconds)
    cpu1, t1, wall1 = cpu_of_bridges(hosts), time.monotonic(), time.time_ns()
    for p in reversed(procs):
        p.send_signal(signal.SIGTERM)
        p.wait(60)
    row = summarize([g for g in json.loads(out.read_text()) if wall0 <= g[0] <= wall1], seconds)
    row["bridge_cpu_pct"] = 100 * (cpu1 - cpu0) / (t1 - t0)
    return row


def run_plain(hosts: TwoHosts, tmp: Path, case: str, seconds: float) -> dict:
    kind, rate, jpeg = CASES[case]
    out = tmp / f"plain-{case}.json"
    here = str(ROOT / "bench" / "bridge_nodes.py")
    total = SETTLE + seconds
    sub = subprocess.Popen(hosts.b.command(sys.executable, here, "sub", "--connect", f"tcp/{hosts.a.addr}:{PORT}", "--seconds",
                                           str(total + 1), "--out", str(out)))
    pub = subprocess.Popen(hosts.a.command(sys.executable, here, "pub", "--listen", f"tcp/{hosts.a.addr}:{PORT}", "--kind", kind,
                                           "--rate", str(rate), "--seconds", str(total), *(["--jpeg"] if jpeg else [])))
    pub.wait(total + 60)
    sub.wait(total + 60)
    got = json.loads(out.read_text())
    return summarize(got[int(len(got) * SETTLE / total):], seconds)


def summarize(got: list, seconds: float) -> dict:
    if not got:
        return {"delivered_hz": 0.0, "p50_us": None, "p99_us": None, "first_third_p50_us": None, "last_third_p50_us": None}
    lat = np.array([g[1] for g in got]) / 1e3
    third = max(1, len(lat) // 3)
    span = (got[-1][0] - got[0][0]) / 1e9 or seconds
    return {"delivered_hz": len(got) / max(span, 1e-9), "p50_us": float(np.percentile(lat, 50)), "p99_us": float(np.percentile(lat, 99)),
            "first_third_p50_us": float(np.median(lat[:third])), "last_third_p50_us": float(np.median(lat[-third:]))}


def table(rows: list[dict]) -> str:
    lines = ["| case | link | path | delivered Hz | p50 us | p99 us | p50 first / last third us | bridge CPU % | p50 - plain us |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case in CASES:
        for link in LINKS:
            for path in ("plain zenoh", "shmlaunch bridge", "pool hop (one host)"):
                rs = [r for r in rows if (r["case"], r["link"], r["path"]) == (case, link, path)]
                if not rs:
                    continue
                diff = med_range([r.get("p50_minus_plain_us") for r in rs], ".0f") if path == "shmlaunch bridge" else "-"
                thirds = f"{med_range([r['first_third_p50_us'] for r in rs], '.0f')} / {med_range([r['last_third_p50_us'] for r in rs], '.0f')}"
                lines.append(f"| {case} | {link} | {path} | {med_range([r['delivered_hz'] for r in rs], '.1f')} | "
                             f"{med_range([r['p50_us'] for r in rs], '.0f')} | {med_range([r['p99_us'] for r in rs], '.0f')} | {thirds} | "
                             f"{med_range([r.get('bridge_cpu_pct') for r in rs], '.0f')} | {diff} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sittings", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--links", default=",".join(LINKS))
    ns = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bridge-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for sitting in range(ns.sittings):
            for link in ns.links.split(","):
                hosts = TwoHosts()
                try:
                    if link != "none":
                        hosts.a.shape(link)
                    for case in ns.cases.split(","):
                        paths = {"plain zenoh": run_plain, "shmlaunch bridge": run_bridge, "pool hop (one host)": run_local}
                        if link != "none":
                            del paths["pool hop (one host)"]  # no link in it
                        order = list(paths) if sitting % 2 == 0 else list(reversed(paths))
                        got = {}
                        for path in order:
                            got[path] = {"case": case, "link": link, "path": path, "sitting": sitting,
                                         **paths[path](hosts, tmp, case, ns.seconds)}
                        b, p = got["shmlaunch bridge"], got["plain zenoh"]
                        if b["p50_us"] is not None and p["p50_us"] is not None:
                            b["p50_minus_plain_us"] = b["p50_us"] - p["p50_us"]
                        for r in got.values():
                            print(json.dumps(r), flush=True)
                            rows.append(r)
                finally:
                    hosts.close()
    md = (f"Bridge benchmark ({ns.sittings} sittings x {ns.seconds:g} s per row, {platform.node()}, {os.cpu_count()} CPUs; "
          f"median [range] over sittings)\n\n{table(rows)}\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bridge.json").write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    (RESULTS / "bridge.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
