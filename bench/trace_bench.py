"""What a tracer costs and what it shows, on the hands graph at 30 fps (``shmlaunch trace``).

Side by side, sitting after sitting: the hands graph (bench/hands_bench.py's graph: camera at
30 fps from a video of the photos, 640x480, hand node on MediaPipe, gestures, the latency probe)
without a tracer and with ``shmlaunch trace`` attached over the measured window. Reported:

- fps and capture->landmarks p50 at the probe, untraced and traced (the cost of tracing);
- the trace's end to end for ``hands/landmarks`` at the probe against the probe's own
  capture->landmarks p50 in the same run (the two must agree within 0.5 ms);
- the same graph with ``replicas: 2`` (pinned), traced and untraced;
- the replicas target's configuration (bench/hands_bench.py's pairs: the single-process loop,
  then 2 pinned replicas with the camera at 1.7x the loop's rate), traced: the per-hop table
  says where the replicas' extra latency over the loop goes.

    python bench/trace_bench.py --sittings 3     # about 8 minutes; writes bench/results/trace.json and .md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hands_bench import HOLD, LOOP_FRAMES, PHOTOS, REPLICA_CAMERA_RATES, graph_run, scene_video, single_process_loop

from shmlaunch.nodes.hops import format_summary

ROOT = Path(__file__).resolve().parent.parent
FPS = 30.0


def row(summary: dict, section: str, **match) -> dict:
    got = [r for r in summary[section] if all(r.get(k) == v for k, v in match.items())]
    return got[0] if got else {}


def sitting(tmp: Path, seconds: float) -> dict:
    video = scene_video(tmp, 640, 480, HOLD)
    out = {}
    for key, replicas, traced in (("plain", 1, False), ("traced", 1, True), ("replicas2", 2, False), ("replicas2_traced", 2, True)):
        r = graph_run(video, 640, 480, FPS, seconds, tmp, replicas, replicas > 1, traced)
        out[key] = r
        print(f"{key}: fps {r['fps']:.1f} p50 {r['landmarks_at_consumer_p50_ms']:.2f} ms", flush=True)
    return out


def replicas_target(tmp: Path, seconds: float) -> dict:
    """One pair as hands_bench's replicas target measures it, the replicas traced."""
    factor = REPLICA_CAMERA_RATES[0]
    loop = single_process_loop(scene_video(tmp, 640, 480, HOLD), LOOP_FRAMES)
    rep = graph_run(scene_video(tmp, 640, 480, round(HOLD * factor)), 640, 480, factor * loop["fps"], seconds, tmp, 2, True, True)
    t = rep["trace"]
    out = {"loop_fps": loop["fps"], "loop_p50_ms": loop["landmarks_p50_ms"], "replicas_fps": rep["fps"],
           "replicas_p50_ms": rep["landmarks_at_consumer_p50_ms"], "trace": t}
    for i in (0, 1):
        out[f"queue_in_{i}_ms"] = row(t, "queueing", topic="camera/image", reader=f"hands.{i}").get("p50_ms", float("nan"))
        out[f"processing_{i}_ms"] = row(t, "processing", node=f"hands.{i}").get("p50_ms", float("nan"))
        out[f"queue_out_{i}_ms"] = row(t, "queueing", topic=f"hands/landmarks/{i}", reader="probe").get("p50_ms", float("nan"))
        out[f"taken_{i}"] = row(t, "queueing", topic="camera/image", reader=f"hands.{i}").get("n", 0)
    print(f"replicas target: {json.dumps({k: v for k, v in out.items() if k != 'trace'})}", flush=True)
    return out


def median_range(values: list[float]) -> str:
    return f"{np.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sittings", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "trace.json"))
    args = ap.parse_args()
    if not PHOTOS.is_dir():
        sys.exit(f"needs the hand photos in {PHOTOS} (see its NOTICE.md)")
    results = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(), "command": " ".join(["python"] + sys.argv),
               "sittings": []}
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.sittings):
            print(f"sitting {i + 1}", flush=True)
            results["sittings"].append({**sitting(Path(d), args.seconds), "replicas_target": replicas_target(Path(d), args.seconds)})
    Path(args.out).write_text(json.dumps(results, indent=1))
    s = results["sittings"]
    fps_ratio = [x["traced"]["fps"] / x["plain"]["fps"] for x in s]
    p50_diff = [x["traced"]["landmarks_at_consumer_p50_ms"] - x["plain"]["landmarks_at_consumer_p50_ms"] for x in s]
    agree = [row(x["traced"]["trace"], "end_to_end", topic="hands/landmarks", reader="probe").get("p50_ms", float("nan"))
             - x["traced"]["landmarks_at_consumer_p50_ms"] for x in s]
    rep_diff = [x["replicas2"]["landmarks_at_consumer_p50_ms"] - x["plain"]["landmarks_at_consumer_p50_ms"] for x in s]
    lines = [f"Hands graph, 640x480, camera at {FPS:.0f} fps, {args.sittings} sittings of {args.seconds:.0f} s (median [range]):", "",
             "| figure | value |", "|---|---|",
             f"| fps traced / untraced | {median_range(fps_ratio)} |",
             f"| capture->landmarks p50 at the probe, traced - untraced (ms) | {median_range(p50_diff)} |",
             f"| trace's end to end - the probe's own p50, same run (ms) | {median_range(agree)} |",
             f"| capture->landmarks p50, 2 replicas - 1 (ms, untraced) | {median_range(rep_diff)} |", ""]
    lines += [f"Replicas target's configuration (2 pinned replicas, camera at {REPLICA_CAMERA_RATES[0]}x the loop's rate), traced, "
              "p50 ms per sitting:", "",
              "| sitting | loop fps | replicas fps | loop p50 | replicas p50 at the probe | difference | camera->hands.0 / .1 queueing | "
              "hands.0 / .1 processing | landmarks -> probe queueing (0 / 1) | frames hands.0 / .1 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, x in enumerate(s, 1):
        t = x["replicas_target"]
        lines.append(f"| {i} | {t['loop_fps']:.1f} | {t['replicas_fps']:.1f} | {t['loop_p50_ms']:.2f} | {t['replicas_p50_ms']:.2f} | "
                     f"{t['replicas_p50_ms'] - t['loop_p50_ms']:+.2f} | {t['queue_in_0_ms']:.2f} / {t['queue_in_1_ms']:.2f} | "
                     f"{t['processing_0_ms']:.2f} / {t['processing_1_ms']:.2f} | {t['queue_out_0_ms']:.2f} / {t['queue_out_1_ms']:.2f} | "
                     f"{t['taken_0']} / {t['taken_1']} |")
    lines.append("")
    for title, trace in (("traced", s[-1]["traced"]["trace"]), ("2 replicas at 30 fps, traced", s[-1]["replicas2_traced"]["trace"]),
                         ("the replicas target's configuration", s[-1]["replicas_target"]["trace"])):
        lines += [f"Per-hop table, {title}, last sitting (`shmlaunch trace`, ms):", "", "```", format_summary(trace), "```", ""]
    md = "\n".join(lines)
    Path(args.out).with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
