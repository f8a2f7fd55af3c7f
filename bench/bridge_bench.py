"""Bridge benchmark: pool -> bridge -> zenoh -> bridge -> pool across two network namespaces,
side by side in one run with plain zenoh publisher -> subscriber processes sending the same
bytes (the anchor, zenoh's default config), on an unshaped veth link and through tbf.

Runs (``case/link``): ``small`` 256 B at 1 kHz, ``vga`` raw 640x480 at 30 Hz, ``raw`` 1280x720
at 30 Hz, ``jpeg`` the 720p frames JPEG q80 by the bridge (the anchor sends the JPEG bytes),
``mixed`` a 100 Hz small topic beside raw 640x480 at 30 Hz. For each stream: p50 and p99
latency (the receiver's clock minus the stamp taken just before publishing; one machine, one
clock), delivered rate, p50 of the first and last third of the run (a queue would make the
last larger), and the bridge processes' CPU (both hosts, % of one core). On the unshaped link
a third row, "pool hop (one host)", is the same source and probe through one pool topic: the
bridge path has two such hops more than plain zenoh.

Targets (issue 26): small p50 <= plain + 50 us and vga p50 <= plain + 1 ms (unshaped);
mixed over 20 Mbit: the small topic >= 90% of its rate and p50 <= 50 ms; raw 720p30 over
100 Mbit >= 3 fps; the JPEG path's cost over plain zenoh stated.

    python bench/bridge_bench.py                 # as root; about 25 minutes; writes bench/results/bridge.json and .md
    python bench/bridge_bench.py --sittings 1 --seconds 5 --runs small/none
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
#: case -> its streams (topic, kind, rate, jpeg)
CASES = {"small": [("data", "small", 1000.0, False)], "vga": [("data", "vga", 30.0, False)], "raw": [("data", "frame", 30.0, False)],
         "jpeg": [("data", "frame", 30.0, True)], "mixed": [("data", "small", 100.0, False), ("frames", "vga", 30.0, False)]}
RUNS = ("small/none", "vga/none", "jpeg/none", "raw/100mbit", "mixed/20mbit")
TICK = os.sysconf("SC_CLK_TCK")
SETTLE = 4.0
SHAPE = {"small": "[256]", "vga": "[480, 640, 3]", "frame": "[720, 1280, 3]"}


def launch_file(path: Path, name: str, case: str, role: str, out: Path, bridge: str = "") -> Path:
    """A graph with the case's topics and, per stream, a Source (role "source"), a Latency
    probe (role "probe") or both (role "local")."""
    topics = "".join(f"  {t}: {{dtype: uint8, shape: {SHAPE[kind]}, pool: 4}}\n" for t, kind, _r, _j in CASES[case])
    nodes = ""
    for t, kind, rate, _jpeg in CASES[case]:
        if role in ("source", "local"):
            nodes += f"  source-{t}:\n    node: bridge_nodes:Source\n    params: {{rate: {rate}, kind: {kind}}}\n    publish: {{out: {t}}}\n"
        if role in ("probe", "local"):
            nodes += f"  latency-{t}:\n    node: bridge_nodes:Latency\n    params: {{path: {out.with_suffix(f'.{t}.json')}}}\n" \
                     f"    subscribe: {{in: {t}}}\n"
    path.write_text(f"name: {name}\ntopics:\n{topics}nodes:\n{nodes}{bridge}")
    return path


def graphs(tmp: Path, hosts: TwoHosts, case: str, out: Path) -> tuple[Path, Path]:
    """Host A: sources -> pool -> bridge (export); host B: bridge (import) -> pool -> latency probes."""
    exports = "".join(f"    {t}: {{encode: jpeg, quality: 80}}\n" if jpeg else f"    {t}: {{}}\n" for t, _k, _r, jpeg in CASES[case])
    imports = "".join(f"    benchA/{t}: {{}}\n" for t, _k, _r, _j in CASES[case])
    a = launch_file(tmp / "a.yaml", "benchA", case, "source", out,
                    f"bridge:\n  host: a\n  listen: [tcp/{hosts.a.addr}:{PORT}]\n  export:\n{exports}")
    b = launch_file(tmp / "b.yaml", "benchB", case, "probe", out,
                    f"bridge:\n  host: b\n  connect: [tcp/{hosts.a.addr}:{PORT}]\n  import:\n{imports}")
    return a, b


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
    return run_graphs(hosts, case, list(zip((hosts.a, hosts.b), graphs(tmp, hosts, case, out), strict=True)), out, seconds)


def run_local(hosts: TwoHosts, tmp: Path, case: str, seconds: float) -> dict:
    """Source -> Latency through one pool topic on one host: the cost of one pool hop, which the
    bridge path has twice (into the exporter, out of the importer) and plain zenoh has not."""
    out = tmp / f"local-{case}.json"
    return run_graphs(hosts, case, [(hosts.a, launch_file(tmp / "local.yaml", "benchLocal", case, "local", out))], out, seconds)


def run_graphs(hosts: TwoHosts, case: str, placed: list, out: Path, seconds: float) -> dict:
    """Run each launch file on its host; per stream, the latency of what its probe received in the window."""
    for t, *_ in CASES[case]:
        out.with_suffix(f".{t}.json").unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "bench"))
    cli = [sys.executable, "-m", "shmlaunch.launch.cli"]
    procs = [subprocess.Popen(h.command(*cli, str(f), "--no-status", "--quiet"), env=env, cwd=f.parent, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for h, f in placed]
    time.sleep(SETTLE)
    cpu0, t0, wall0 = cpu_of_bridges(hosts), time.monotonic(), time.time_ns()
    time.sleep(seconds)
    cpu1, t1, wall1 = cpu_of_bridges(hosts), time.monotonic(), time.time_ns()
    for p in reversed(procs):
        p.send_signal(signal.SIGTERM)
        p.wait(60)
    rows = {}
    for t, *_ in CASES[case]:
        got = json.loads(out.with_suffix(f".{t}.json").read_text())
        rows[t] = {**summarize([g for g in got if wall0 <= g[0] <= wall1], seconds), "bridge_cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0)}
    return rows


def run_plain(hosts: TwoHosts, tmp: Path, case: str, seconds: float) -> dict:
    out = tmp / f"plain-{case}.json"
    here = str(ROOT / "bench" / "bridge_nodes.py")
    total = SETTLE + seconds
    streams = [f"--stream={t}:{kind}:{rate}" + (":jpeg" if jpeg else "") for t, kind, rate, jpeg in CASES[case]]
    sub = subprocess.Popen(hosts.b.command(sys.executable, here, "sub", "--connect", f"tcp/{hosts.a.addr}:{PORT}", "--seconds",
                                           str(total + 1), "--out", str(out)))
    pub = subprocess.Popen(hosts.a.command(sys.executable, here, "pub", "--listen", f"tcp/{hosts.a.addr}:{PORT}", "--seconds", str(total),
                                           *streams))
    pub.wait(total + 60)
    sub.wait(total + 60)
    got = json.loads(out.read_text())
    rows = {}
    for t, *_ in CASES[case]:
        mine = got.get(t, [])
        start = mine[0][0] + SETTLE * 1e9 if mine else 0
        rows[t] = summarize([g for g in mine if g[0] >= start], seconds)
    return rows


def summarize(got: list, seconds: float) -> dict:
    if not got:
        return {"delivered_hz": 0.0, "p50_us": None, "p99_us": None, "first_third_p50_us": None, "last_third_p50_us": None}
    lat = np.array([g[1] for g in got]) / 1e3
    third = max(1, len(lat) // 3)
    rate = (len(got) - 1) / max((got[-1][0] - got[0][0]) / 1e9, 1e-9) if len(got) > 1 else len(got) / seconds
    return {"delivered_hz": rate, "p50_us": float(np.percentile(lat, 50)), "p99_us": float(np.percentile(lat, 99)),
            "first_third_p50_us": float(np.median(lat[:third])), "last_third_p50_us": float(np.median(lat[-third:]))}


PATHS = ("plain zenoh", "shmlaunch bridge", "pool hop (one host)")


def table(rows: list[dict]) -> str:
    lines = ["| case | link | stream | path | delivered Hz | p50 us | p99 us | p50 first / last third us | bridge CPU % | p50 - plain us |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["case"], r["link"], r["stream"]) for r in rows))
    for case, link, stream in keys:
        for path in PATHS:
            rs = [r for r in rows if (r["case"], r["link"], r["stream"], r["path"]) == (case, link, stream, path)]
            if not rs:
                continue
            diff = med_range([r.get("p50_minus_plain_us") for r in rs], ".0f") if path == "shmlaunch bridge" else "-"
            thirds = f"{med_range([r['first_third_p50_us'] for r in rs], '.0f')} / {med_range([r['last_third_p50_us'] for r in rs], '.0f')}"
            lines.append(f"| {case} | {link} | {stream} | {path} | {med_range([r['delivered_hz'] for r in rs], '.1f')} | "
                         f"{med_range([r['p50_us'] for r in rs], '.0f')} | {med_range([r['p99_us'] for r in rs], '.0f')} | {thirds} | "
                         f"{med_range([r.get('bridge_cpu_pct') for r in rs], '.0f')} | {diff} |")
    return "\n".join(lines)


def targets(rows: list[dict]) -> str:
    """The issue's targets, each met or missed by how much (median [range] over sittings)."""
    def pick(case, link, stream, path, key):
        return [r[key] for r in rows if (r["case"], r["link"], r["stream"], r["path"]) == (case, link, stream, path) and r.get(key) is not None]

    def verdict(values, limit, above: bool, unit: str, fmt=".0f") -> str:
        if not values:
            return "not run"
        med = float(np.median(values))
        ok = med >= limit if above else med <= limit
        return f"{med_range(values, fmt)} {unit}: {'met' if ok else f'missed by {abs(med - limit):{fmt}} {unit}'}"

    lines = ["| target | measured (median [range]) |", "|---|---|"]
    lines.append(f"| small p50 - plain zenoh <= 50 us (unshaped) | "
                 f"{verdict(pick('small', 'none', 'data', 'shmlaunch bridge', 'p50_minus_plain_us'), 50, False, 'us')} |")
    vga = [d / 1000 for d in pick("vga", "none", "data", "shmlaunch bridge", "p50_minus_plain_us")]
    lines.append(f"| raw 640x480 p50 - plain zenoh <= 1 ms (unshaped) | {verdict(vga, 1.0, False, 'ms', '.2f')} |")
    share = [hz / 100 * 100 for hz in pick("mixed", "20mbit", "data", "shmlaunch bridge", "delivered_hz")]
    lines.append(f"| 20 Mbit, raw 640x480 frames saturating it: small topic rate >= 90% | {verdict(share, 90, True, '%')} |")
    age = [us / 1000 for us in pick("mixed", "20mbit", "data", "shmlaunch bridge", "p50_us")]
    lines.append(f"| 20 Mbit, same: small topic p50 age <= 50 ms | {verdict(age, 50, False, 'ms', '.1f')} |")
    fps = pick("raw", "100mbit", "data", "shmlaunch bridge", "delivered_hz")
    lines.append(f"| 100 Mbit, raw 720p30: >= 3 fps | {verdict(fps, 3, True, 'fps', '.1f')} |")
    jpeg = [d / 1000 for d in pick("jpeg", "none", "data", "shmlaunch bridge", "p50_minus_plain_us")]
    lines.append(f"| JPEG 720p30: encode + decode cost (bridge - plain zenoh sending ready JPEG bytes) | "
                 f"{med_range(jpeg, '.1f') if jpeg else 'not run'} ms |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sittings", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", default=",".join(RUNS), help="case/link pairs, e.g. small/none,raw/100mbit")
    ns = ap.parse_args()
    rows = []
    runs = [tuple(r.split("/")) for r in ns.runs.split(",")]
    with tempfile.TemporaryDirectory(prefix="bridge-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for sitting in range(ns.sittings):
            for case, link in runs:
                hosts = TwoHosts()
                try:
                    if link != "none":
                        hosts.a.shape(link)
                    paths = {"plain zenoh": run_plain, "shmlaunch bridge": run_bridge, "pool hop (one host)": run_local}
                    if link != "none" or case == "mixed":
                        del paths["pool hop (one host)"]  # no link in it
                    order = list(paths) if sitting % 2 == 0 else list(reversed(paths))
                    got = {path: paths[path](hosts, tmp, case, ns.seconds) for path in order}
                    for t, *_ in CASES[case]:
                        b, p = got["shmlaunch bridge"][t], got["plain zenoh"][t]
                        if b["p50_us"] is not None and p["p50_us"] is not None:
                            b["p50_minus_plain_us"] = b["p50_us"] - p["p50_us"]
                        for path in order:
                            r = {"case": case, "link": link, "stream": t, "path": path, "sitting": sitting, **got[path][t]}
                            print(json.dumps(r), flush=True)
                            rows.append(r)
                finally:
                    hosts.close()
    md = (f"Bridge benchmark ({ns.sittings} sittings x {ns.seconds:g} s per row, {platform.node()}, {os.cpu_count()} CPUs; "
          f"median [range] over sittings)\n\n{table(rows)}\n\nTargets\n\n{targets(rows)}\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bridge.json").write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    (RESULTS / "bridge.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
