"""The hand node's two runtimes side by side: MediaPipe Tasks and this package's LiteRT pipeline.

Same bundled models, same frames (the 24 photos and the 6 bundled ones, letterboxed to
640x480), same process; in each sitting the two runtimes run the frames alternately, frame by
frame, so the VM's drifting speed hits both alike. Per runtime and mode (IMAGE: the palm model
on every frame; VIDEO: tracking, the palm model only while a hand is missing), model (lite,
full) and sitting: frames per second of detect() alone and CPU seconds per frame (MediaPipe
may use more than one thread). The figure to quote is the median over sittings of LiteRT's
fps / MediaPipe's fps, with its range.

    python bench/hand_runtimes.py            # 3 sittings, about 3 minutes; bench/results/hand_runtimes.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from shmlaunch.nodes.camera import letterbox
from shmlaunch.nodes.hands import choose_runtime, make_detector
from shmlaunch.nodes.messages import LANDMARKS

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "testdata" / "hands"
RUNTIMES = ("mediapipe", "litert")


def frames(width: int = 640, height: int = 480, hold: int = 5) -> list[np.ndarray]:
    """RGB frames: each photo held ``hold`` frames (tracking sees a still hand, then a cut)."""
    files = sorted(PHOTOS.glob("*/*.jpg")) + sorted((ROOT / "nodes" / "sample").glob("*.jpg"))
    out = []
    for f in files:
        rgb = cv2.cvtColor(letterbox(cv2.imread(str(f)), (height, width, 3)), cv2.COLOR_BGR2RGB)
        out += [rgb] * hold
    return out


def thread_cpu() -> float:
    """CPU seconds of this whole process (MediaPipe and LiteRT worker threads included)."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def sitting(video: list[np.ndarray], static: bool, complexity: int) -> dict:
    dets = {r: make_detector(choose_runtime(r), max_num_hands=2, model_complexity=complexity, static_image_mode=static) for r in RUNTIMES}
    rec = np.zeros(1, LANDMARKS)[0]
    wall = dict.fromkeys(RUNTIMES, 0.0)
    cpu = dict.fromkeys(RUNTIMES, 0.0)
    hands = dict.fromkeys(RUNTIMES, 0)
    for r in RUNTIMES:  # warm up: the first calls set graphs and delegates up
        for frame in video[:5]:
            dets[r].detect_into(frame, rec)
    for i, frame in enumerate(video):
        order = RUNTIMES if i % 2 == 0 else RUNTIMES[::-1]
        for r in order:
            c0, t0 = thread_cpu(), time.perf_counter()
            hands[r] += dets[r].detect_into(frame, rec)
            wall[r] += time.perf_counter() - t0
            cpu[r] += thread_cpu() - c0
    for det in dets.values():
        det.close()
    n = len(video)
    return {r: {"fps": n / wall[r], "ms_per_frame": 1e3 * wall[r] / n, "cpu_ms_per_frame": 1e3 * cpu[r] / n,
                "hands_per_frame": hands[r] / n} for r in RUNTIMES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sittings", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "hand_runtimes.json"))
    args = ap.parse_args()
    if not PHOTOS.is_dir():
        sys.exit(f"the hand photos are not at {PHOTOS} (see shared/testdata/hands/NOTICE.md)")
    video = frames()
    results = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(), "cpus": os.cpu_count(),
               "machine": platform.machine(), "frames": len(video), "command": " ".join(["python"] + sys.argv), "rows": {}}
    for static in (True, False):
        for complexity in (0, 1):
            key = f"{'IMAGE' if static else 'VIDEO'} {('lite', 'full')[complexity]}"
            results["rows"][key] = [sitting(video, static, complexity) for _ in range(args.sittings)]
            print(key, json.dumps(results["rows"][key]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    rows = ["| mode, model | MediaPipe fps | LiteRT fps | LiteRT / MediaPipe, median [range] | CPU ms per frame MediaPipe / LiteRT | "
            "hands per frame MediaPipe / LiteRT |", "|---|---|---|---|---|---|"]
    for key, runs in results["rows"].items():
        ratios = [s["litert"]["fps"] / s["mediapipe"]["fps"] for s in runs]
        med = {r: {k: float(np.median([s[r][k] for s in runs])) for k in runs[0][r]} for r in RUNTIMES}
        rows.append(f"| {key} | {med['mediapipe']['fps']:.1f} | {med['litert']['fps']:.1f} | {np.median(ratios):.2f} "
                    f"[{min(ratios):.2f}-{max(ratios):.2f}] | {med['mediapipe']['cpu_ms_per_frame']:.1f} / {med['litert']['cpu_ms_per_frame']:.1f} | "
                    f"{med['mediapipe']['hands_per_frame']:.2f} / {med['litert']['hands_per_frame']:.2f} |")
    md = "\n".join(rows)
    Path(args.out).with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
