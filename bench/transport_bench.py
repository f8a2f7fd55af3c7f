"""Transport benchmark: pool topics against Pipe, ZeroMQ, iceoryx2 and a bare mmap+futex floor.

Separate publisher and subscriber processes (spawned), one transport and case at a time.
Latency is one-way: from a monotonic stamp taken just before the publish call to the
subscriber holding the message's payload as a numpy array (every transport's subscriber does
the same work; see transports.py). These VMs are noisy from one minute to the next, so a
*sitting* runs every transport and case once, the targets are ratios within one sitting, and
the report gives the median and range of each ratio over all sittings (the order of the
transports rotates from one sitting to the next). Instructions per publish and per receive
(callgrind, see instructions.py) are reported beside the times: they do not move with the noise.

    python bench/transport_bench.py                 # 5 sittings, writes bench/results/transport.json and .md
    python bench/transport_bench.py --quick --sittings 1 --no-instructions   # a smoke check
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from transports import HEADER, TRANSPORTS, Pipe  # noqa: E402

from shmlaunch.nodes.hops import HopTable  # noqa: E402
from shmlaunch.testing import runtime_dir  # noqa: E402
from shmlaunch.transport import TraceSession  # noqa: E402

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
        data = t.data(msg)  # the payload as a numpy array: every transport's subscriber holds one
        now = time.monotonic_ns()
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
        "received": len(seqs), "torn": torn, "duplicates": dups, "seqs_seen": len(set(seqs)),
        "fps": (len(seqs) - 1) / span if span else 0.0,
        "p50_us": float(np.percentile(lat, 50) / 1e3) if lat else None,
        "p90_us": float(np.percentile(lat, 90) / 1e3) if lat else None,
        "p99_us": float(np.percentile(lat, 99) / 1e3) if lat else None,
        "cpu_idle_pct": 100 * idle_cpu, "cpu_busy_pct": 100 * busy_cpu,
    })


def publisher(kind, case, seconds, rt, conn, go, done, sent, publish_us):
    size, rate, _ = CASES[case]
    t = TRANSPORTS[kind](case, size, rt, conn)
    t.setup_publisher()
    frames = [np.full(size, k, np.uint8) for k in range(4)]
    go.wait()
    seq = 0
    start = time.monotonic()
    period = 1.0 / rate if rate else 0.0
    took = []  # how long each publish call takes, in the publisher (where the microseconds go)
    while time.monotonic() - start < seconds:
        seq += 1
        t0 = time.perf_counter_ns()
        t.publish(frames[seq % 4], seq)
        took.append(time.perf_counter_ns() - t0)
        if period:
            nxt = start + seq * period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    sent.value = seq
    publish_us.value = float(np.percentile(took, 50) / 1e3)
    time.sleep(0.2)
    done.set()
    time.sleep(0.5)  # keep the transport alive while the subscriber drains


class Tracer:
    """What ``shmlaunch trace`` does to a graph, in a thread of the benchmark: the trace request
    held and every ring read every 0.1 s into a per-hop table."""

    def __init__(self, rt) -> None:
        self.session = TraceSession.attach(rt)
        self.table = HopTable()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.table.read(self.session)

    def close(self) -> int:
        """Detach; the number of records lost (overwritten before they were read)."""
        self.stop.set()
        self.thread.join()
        self.table.read(self.session)
        self.session.detach()
        return self.table.lost_records


def run_one(kind: str, case: str, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    with runtime_dir() as rt:
        TRANSPORTS[kind](case, CASES[case][0], str(rt)).create()
        tracer = Tracer(rt) if getattr(TRANSPORTS[kind], "traced", False) else None
        a, b = ctx.Pipe(duplex=False) if TRANSPORTS[kind] is Pipe else (None, None)
        ready, go, done, results, sent, publish_us = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Value("q", 0), ctx.Value("d", 0.0)
        sub = ctx.Process(target=subscriber, args=(kind, case, str(rt), a, ready, go, done, results))
        sub.start()
        ready.wait(60)
        pub = ctx.Process(target=publisher, args=(kind, case, seconds, str(rt), b, go, done, sent, publish_us))
        pub.start()
        time.sleep(1.8)  # publisher set-up, during the subscriber's settling and 1 s idle receive
        go.set()
        out = results.get(timeout=seconds + 120)
        pub.join(30)
        sub.join(30)
        out["sent"] = sent.value
        out["publish_call_p50_us"] = publish_us.value
        if tracer is not None:
            out["trace_records_lost"] = tracer.close()
        destroy = getattr(TRANSPORTS[kind](case, CASES[case][0], str(rt)), "destroy", None)
        if destroy:
            destroy()
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


POOL, LOAN, IOX, FLOOR = "shmlaunch pool topic", "shmlaunch pool topic, loan", "iceoryx2 0.10", "bare floor (mmap + futex)"
TRACED = "shmlaunch pool topic, traced"
# name, function of one sitting's runs, limit, "max" (the ratio must stay at or below the limit) or "min",
# and whether the limit must hold in every sitting rather than in the median
TARGETS = [
    ("small p50: pool / iceoryx2", lambda r: p50(r, POOL, "small") / p50(r, IOX, "small"), 0.8, "max", False),
    ("small p50: pool − floor (µs)", lambda r: p50(r, POOL, "small") - p50(r, FLOOR, "small"), 10.0, "max", False),
    ("small: pool subscriber idle CPU (%)", lambda r: r[f"{POOL}|small"]["cpu_idle_pct"], 0.05, "max", False),
    ("small: pool loss (%)", lambda r: unseen(r[f"{POOL}|small"]), 0.0, "max", False),
    ("frame30 p50 (copy): pool / floor", lambda r: p50(r, POOL, "frame30") / p50(r, FLOOR, "frame30"), 1.05, "max", False),
    ("frame30 p50 (copy): pool / iceoryx2", lambda r: p50(r, POOL, "frame30") / p50(r, IOX, "frame30"), 1.0, "max", False),
    ("framemax fps (copy): pool / iceoryx2", lambda r: r[f"{POOL}|framemax"]["fps"] / r[f"{IOX}|framemax"]["fps"], 1.0, "min", True),
    ("small p50: loan / copy", lambda r: p50(r, LOAN, "small") / p50(r, POOL, "small"), 1.0, "max", False),
    ("frame30 p50: loan / copy", lambda r: p50(r, LOAN, "frame30") / p50(r, POOL, "frame30"), 0.3, "max", False),
    ("small p50: traced - untraced (µs)", lambda r: p50(r, TRACED, "small") - p50(r, POOL, "small"), 1.0, "max", False),
    ("frame30 p50: traced - untraced (µs)", lambda r: p50(r, TRACED, "frame30") - p50(r, POOL, "frame30"), 1.0, "max", False),
    ("torn + duplicated (pool rows)", lambda r: sum(v.get("torn", 0) + v.get("duplicates", 0) for k, v in r.items() if k.startswith("shmlaunch")),
     0, "max", True),
]


def unseen(run: dict) -> float:
    """Percent of the published messages the subscriber never saw (a newer one had replaced them)."""
    return 100 * (1 - run["seqs_seen"] / max(1, run["sent"]))


def p50(runs: dict, kind: str, case: str) -> float:
    return runs[f"{kind}|{case}"]["p50_us"]


def spread(values: list[float]) -> str:
    """``median [min-max]``, or the one value."""
    fmt = (lambda v: f"{v:.0f}") if max(abs(v) for v in values) >= 100 else (lambda v: f"{v:.2f}")
    med = fmt(float(np.median(values)))
    return med if len(values) == 1 else f"{med} [{fmt(min(values))}-{fmt(max(values))}]"


def table(results: dict) -> str:
    """Per transport and case: the median and range over sittings of p50, p99 and delivered fps."""
    sittings = [s["runs"] for s in results["sittings"]]
    lines = [
        f"Medians [ranges] over {len(sittings)} sitting(s).",
        "",
        "| transport | case | p50 µs | p99 µs | publish call p50 µs | delivered fps | not seen % | sub CPU idle % | sub CPU busy % | torn | dup |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        for kind in TRANSPORTS:
            rows = [s[f"{kind}|{case}"] for s in sittings if f"{kind}|{case}" in s]
            ok = [r for r in rows if "error" not in r]
            if not rows:
                continue
            if not ok:
                lines.append(f"| {kind} | {case} | error: {rows[0]['error']} | | | | | | | | |")
                continue
            lines.append(
                f"| {kind} | {case} | {spread([r['p50_us'] for r in ok])} | {spread([r['p99_us'] for r in ok])} | "
                f"{spread([r['publish_call_p50_us'] for r in ok]) if all('publish_call_p50_us' in r for r in ok) else '–'} | "
                f"{spread([r['fps'] for r in ok])} | {spread([unseen(r) for r in ok])} | {max(r['cpu_idle_pct'] for r in ok):.1f} | "
                f"{spread([r['cpu_busy_pct'] for r in ok])} | {sum(r['torn'] for r in ok)} | {sum(r['duplicates'] for r in ok)} |"
            )
    c = results["copy"]
    lines.append(f"\nIn-process `np.copyto` of one 1920x1080x3 frame: {c['warm_ms']:.2f} ms warm, {c['rotating_ms']:.2f} ms from 8 rotating buffers.")
    return "\n".join(lines)


def targets(results: dict) -> str:
    """The issue-15 targets: each ratio per sitting, then its median and range and the verdict."""
    sittings = [s["runs"] for s in results["sittings"]]
    lines = ["| target | limit | median [range] | per sitting | |", "|---|---|---|---|---|"]
    for name, f, limit, sense, every in TARGETS:
        try:
            values = [float(f(r)) for r in sittings]
        except (KeyError, TypeError, ZeroDivisionError):
            lines.append(f"| {name} | {limit} | | | not measured (a row failed or is missing) |")
            continue
        judged = (max(values) if sense == "max" else min(values)) if every else float(np.median(values))
        ok = judged <= limit if sense == "max" else judged >= limit
        verdict = "met" if ok else f"missed by {abs(judged - limit):.2f}"
        scope = " (every sitting)" if every else ""
        lines.append(f"| {name} | {'≤' if sense == 'max' else '≥'} {limit}{scope} | {spread(values)} | "
                     f"{', '.join(f'{v:.2f}' for v in values)} | {verdict} |")
    instr = results.get("instructions")
    if instr:
        lines += ["", "Instructions per operation (callgrind, user space, 256 B messages; `python bench/instructions.py`):", "",
                  "| operation | instructions |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in instr["instructions"].items()]
        lines += ["", "| ratio | | limit |", "|---|---|---|"]
        lines += [f"| {k} | {v:.2f}x | ≤ 2x |" for k, v in instr["ratios"].items()]
    return "\n".join(lines)


def sitting(index: int, cases: list[str], only: list[str] | None, quick: bool) -> dict:
    """Every transport and case once; the transports' order rotates with the sitting's index."""
    kinds = [k for k in TRANSPORTS if not only or k in only]
    kinds = kinds[index % len(kinds):] + kinds[: index % len(kinds)]
    runs = {}
    for case in cases:
        for kind in kinds:
            print(f"sitting {index + 1} {case:9} {kind} ...", end=" ", flush=True)
            try:
                r = run_one(kind, case, 1.0 if quick else CASES[case][2])
            except Exception as exc:  # a failing anchor must not hide the other rows
                r = {"error": f"{type(exc).__name__}: {exc}"}
            runs[f"{kind}|{case}"] = r
            print(r.get("error") or f"p50 {r['p50_us']:.1f} µs, {r['fps']:.0f} fps, torn {r['torn']}", flush=True)
    return {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one second per case")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--sittings", type=int, default=5, help="full passes over every transport and case (default 5)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "transport.json"))
    ap.add_argument("--only", nargs="*", help="transport names to run (default all)")
    ap.add_argument("--no-instructions", action="store_true", help="skip the callgrind counts (they need valgrind and take minutes)")
    ap.add_argument("--report", action="store_true", help="only rewrite the .md tables from the existing JSON")
    args = ap.parse_args()
    if args.report:
        results = json.loads(Path(args.out).read_text())
    else:
        results = {
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "command": " ".join(["python"] + sys.argv), "sittings": [],
        }
        for i in range(args.sittings):
            results["sittings"].append(sitting(i, args.cases, args.only, args.quick))
        results["copy"] = copy_floor()
        if not args.no_instructions:
            import instructions

            rows = instructions.measure()
            results["instructions"] = {"instructions": rows, "ratios": {k: round(v, 2) for k, v in instructions.ratios(rows).items()}}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    md = table(results) + "\n\n" + targets(results)
    Path(args.out).with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
