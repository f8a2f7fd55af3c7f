"""Transport benchmark: pool topics against Pipe, ZeroMQ, iceoryx2 and a bare mmap+futex floor.

Separate publisher and subscriber processes (spawned), one transport and case at a time, all
in one run so the rows compare. Latency is one-way: from a monotonic stamp taken just before
the publish call to the subscriber holding the message as a numpy array.

    python bench/transport_bench.py                 # full run, writes bench/results/transport.json
    python bench/transport_bench.py --quick         # shorter, for a smoke check
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from transports import HEADER, TRANSPORTS, Pipe  # noqa: E402

from shmlaunch.testing import runtime_dir  # noqa: E402

FRAME = 1920 * 1080 * 3
CASES = {  # name: (message bytes, rate Hz or None for flat out, seconds)
    "small": (256, 1000, 3.0),
    "frame30": (FRAME, 30, 5.0),
    "framemax": (FRAME, None, 3.0),
}


def subscriber(kind, case, rt, conn, ready, go, done, results):
    size = CASES[case][0]
    t = TRANSPORTS[kind](case, size, rt, conn)
    t.setup_subscriber()
    ready.set()
    # Idle CPU: one blocking receive of 1 s with nothing published, as an idle node waits
    # (after 0.3 s to settle: the first moments of a new process are not idle time).
    t.receive(0.3)
    c0, w0 = time.process_time(), time.monotonic()
    t.receive(1.0)
    idle_cpu = (time.process_time() - c0) / (time.monotonic() - w0)
    go.wait()
    lat, seqs, torn = [], [], 0
    c0, w0 = time.process_time(), time.monotonic()
    first = last = None
    while True:
        msg = t.receive(0.3)
        if msg is None:
            if done.is_set():
                break
            continue
        now = time.monotonic_ns()
        data = t.data(msg)
        seq, stamp = HEADER.unpack_from(data, 0)
        lat.append(now - stamp)
        seqs.append(seq)
        if kind != "shmlaunch pool topic, loan":
            k = seq % 4
            if not (data[16] == data[size // 2] == data[-1] == k):
                torn += 1
        first = first or now
        last = now
        del msg, data
    busy_wall = time.monotonic() - w0
    busy_cpu = (time.process_time() - c0) / busy_wall
    dups = len(seqs) - len(set(seqs)) + sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b < a)
    span = (last - first) / 1e9 if first and last and last > first else 0.0
    results.put({
        "received": len(seqs), "torn": torn, "duplicates": dups,
        "fps": (len(seqs) - 1) / span if span else 0.0,
        "p50_us": float(np.percentile(lat, 50) / 1e3) if lat else None,
        "p90_us": float(np.percentile(lat, 90) / 1e3) if lat else None,
        "p99_us": float(np.percentile(lat, 99) / 1e3) if lat else None,
        "cpu_idle_pct": 100 * idle_cpu, "cpu_busy_pct": 100 * busy_cpu,
    })


def publisher(kind, case, seconds, rt, conn, go, done, sent):
    size, rate, _ = CASES[case]
    t = TRANSPORTS[kind](case, size, rt, conn)
    t.setup_publisher()
    frames = [np.full(size, k, np.uint8) for k in range(4)]
    go.wait()
    seq = 0
    start = time.monotonic()
    period = 1.0 / rate if rate else 0.0
    while time.monotonic() - start < seconds:
        seq += 1
        t.publish(frames[seq % 4], seq)
        if period:
            nxt = start + seq * period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    sent.value = seq
    time.sleep(0.2)
    done.set()
    time.sleep(0.5)  # keep the transport alive while the subscriber drains


def run_one(kind: str, case: str, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    with runtime_dir() as rt:
        TRANSPORTS[kind](case, CASES[case][0], str(rt)).create()
        a, b = ctx.Pipe(duplex=False) if TRANSPORTS[kind] is Pipe else (None, None)
        ready, go, done, results, sent = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Value("q", 0)
        sub = ctx.Process(target=subscriber, args=(kind, case, str(rt), a, ready, go, done, results))
        sub.start()
        ready.wait(60)
        pub = ctx.Process(target=publisher, args=(kind, case, seconds, str(rt), b, go, done, sent))
        pub.start()
        time.sleep(1.8)  # publisher set-up, during the subscriber's settling and 1 s idle receive
        go.set()
        out = results.get(timeout=seconds + 120)
        pub.join(30)
        sub.join(30)
        out["sent"] = sent.value
        return out


def copy_floor() -> dict:
    src = np.random.default_rng(0).integers(0, 255, FRAME, dtype=np.uint8)
    dst = np.empty_like(src)
    warm = []
    for _ in range(30):
        t = time.perf_counter_ns()
        np.copyto(dst, src)
        warm.append(time.perf_counter_ns() - t)
    cold = []
    bufs = [np.random.default_rng(i).integers(0, 255, FRAME, dtype=np.uint8) for i in range(8)]
    for i in range(24):
        t = time.perf_counter_ns()
        np.copyto(dst, bufs[i % 8])
        cold.append(time.perf_counter_ns() - t)
    return {"warm_ms": float(np.median(warm) / 1e6), "rotating_ms": float(np.median(cold) / 1e6)}


def table(results: dict) -> str:
    lines = [
        "| transport | case | p50 µs | p90 µs | p99 µs | delivered fps | sub CPU idle % | sub CPU busy % | torn | dup |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        for kind in TRANSPORTS:
            r = results["runs"].get(f"{kind}|{case}")
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {kind} | {case} | error: {r['error']} | | | | | | | |")
                continue
            lines.append(
                f"| {kind} | {case} | {r['p50_us']:.1f} | {r['p90_us']:.1f} | {r['p99_us']:.1f} | {r['fps']:.0f} | "
                f"{r['cpu_idle_pct']:.1f} | {r['cpu_busy_pct']:.1f} | {r['torn']} | {r['duplicates']} |"
            )
    c = results["copy"]
    lines.append(f"\nIn-process `np.copyto` of one 1920x1080x3 frame: {c['warm_ms']:.2f} ms warm, {c['rotating_ms']:.2f} ms from 8 rotating buffers.")
    return "\n".join(lines)


def targets(results: dict) -> str:
    """The DESIGN.md section 5 targets, checked against the rows of this run."""
    runs = results["runs"]

    def p50(kind, case):
        return runs[f"{kind}|{case}"]["p50_us"]

    pool, loan, iox, floor = "shmlaunch pool topic", "shmlaunch pool topic, loan", "iceoryx2 0.10", "bare floor (mmap + futex)"
    checks = [
        ("small p50 <= 0.8x iceoryx2", p50(pool, "small"), 0.8 * p50(iox, "small"), "µs"),
        ("small p50 within 10 µs of the bare floor", p50(pool, "small"), p50(floor, "small") + 10, "µs"),
        ("small idle CPU 0%", runs[f"{pool}|small"]["cpu_idle_pct"], 0.05, "%"),
        ("frame30 p50 (copy) <= iceoryx2", p50(pool, "frame30"), p50(iox, "frame30"), "µs"),
        ("frame30 p50 (copy) <= 1.05x the bare floor", p50(pool, "frame30"), 1.05 * p50(floor, "frame30"), "µs"),
        ("frame30 loan p50 <= 0.3x the copying frame30 p50", p50(loan, "frame30"), 0.3 * p50(pool, "frame30"), "µs"),
        ("framemax loan p50 <= 2x the small p50", p50(loan, "framemax"), 2 * p50(pool, "small"), "µs"),
    ]
    lines = ["| target | measured | limit | |", "|---|---|---|---|"]
    for name, got, limit, unit in checks:
        lines.append(f"| {name} | {got:.1f} {unit} | {limit:.1f} {unit} | {'met' if got <= limit else f'missed by {got - limit:.1f} {unit}'} |")
    fps, fps_iox = runs[f"{pool}|framemax"]["fps"], runs[f"{iox}|framemax"]["fps"]
    lines.append(f"| framemax delivered fps >= iceoryx2 | {fps:.0f} | {fps_iox:.0f} | "
                 f"{'met' if fps >= fps_iox else f'missed by {fps_iox - fps:.0f} fps ({100 * (1 - fps / fps_iox):.0f}%)'} |")
    torn = sum(r.get("torn", 0) for k, r in runs.items() if k.startswith("shmlaunch"))
    dups = sum(r.get("duplicates", 0) for k, r in runs.items() if k.startswith("shmlaunch"))
    verdict = "met" if torn == dups == 0 else "missed"
    lines.append(f"| zero torn, zero duplicated (pool topic rows) | {torn} torn, {dups} duplicated | 0 | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one second per case")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--repeat", type=int, default=1, help="runs of each row; the row keeps the run with the median p50")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "transport.json"))
    ap.add_argument("--only", nargs="*", help="transport names to run (default all)")
    ap.add_argument("--report", action="store_true", help="only rewrite the .md tables from the existing JSON")
    args = ap.parse_args()
    if args.report:
        results = json.loads(Path(args.out).read_text())
        md = table(results) + "\n\n" + targets(results)
        Path(args.out).with_suffix(".md").write_text(md + "\n")
        print(md)
        return
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "command": " ".join(["python"] + sys.argv), "runs": {},
    }
    for case in args.cases:
        for kind in TRANSPORTS:
            if args.only and kind not in args.only:
                continue
            print(f"{case:9} {kind} ...", end=" ", flush=True)
            try:
                reps = sorted((run_one(kind, case, 1.0 if args.quick else CASES[case][2]) for _ in range(args.repeat)),
                              key=lambda r: r["p50_us"])
                r = reps[len(reps) // 2]
                r["p50_us_all_runs"] = [x["p50_us"] for x in reps]
            except Exception as exc:  # a failing anchor must not hide the other rows
                r = {"error": f"{type(exc).__name__}: {exc}"}
            results["runs"][f"{kind}|{case}"] = r
            print(r.get("error") or f"p50 {r['p50_us']:.1f} µs, {r['fps']:.0f} fps, torn {r['torn']}", flush=True)
    results["copy"] = copy_floor()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    md = table(results)
    if not args.only and args.cases == list(CASES):
        md += "\n\n" + targets(results)
    Path(args.out).with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
