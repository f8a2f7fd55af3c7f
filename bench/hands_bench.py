"""Hands pipeline benchmark: the shmlaunch graph against the same work in one process.

From a video made of the real photos, at 640x480 and 1280x720, MediaPipe model_complexity 0,
tracking mode, up to 2 hands:

- loop: what a user writes first. read, convert, process(), classify, in one process, as
  fast as it goes. Latency is capture (the frame decoded) to landmarks / to gesture.
- graph: camera -> hands -> gestures, probe via ``shmlaunch``, the camera paced at a set
  rate. Latency as received by the probe (bench/latency_probe.py: it keeps the times in
  memory, as the loop does, so measuring costs the graph no more than it costs the loop);
  per hop: camera -> hands (the frame's capture stamp to the hand node taking it) and
  hands -> probe (publish to receive). CPU% per node process from /proc.
- target pairs: the loop and 2 pinned replicas back to back, ``--pairs`` times (the replicas
  target; the median over pairs is what to quote, since the VM's speed drifts).
- replicas: the same graph with ``replicas: 2`` on the hand node, pinned one per CPU
  (``cpus: all``) unless the row says otherwise.

The scene moves at the same speed in every run: each photo stays in view for HOLD frames of
the loop, i.e. HOLD / loop-fps seconds, so a camera running at F fps holds it for
HOLD * F / loop-fps frames. (A faster camera sees a hand move less between frames; holding
it for 10 frames at every rate would show the replicas, which each see every other frame, a
scene changing twice as fast as the loop sees, and tracking mode would re-detect twice as
often. One row per size keeps the loop's video to show that cost.)

    python bench/hands_bench.py        # about 10 minutes; writes bench/results/hands.json and .md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from shmlaunch import _platform as backend
from shmlaunch.nodes.camera import letterbox
from shmlaunch.nodes.gestures import classify
from shmlaunch.nodes.hands import choose_runtime, make_detector
from shmlaunch.nodes.messages import LANDMARKS

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "testdata" / "hands"
HOLD = 10
#: Camera rates for the replica runs, as multiples of the loop's rate: just above the 1.6x
#: target, below it (the replicas idle a third of the time), and faster than two can go.
REPLICA_CAMERA_RATES = (1.7, 1.4, 2.0)
#: Frames the single-process loop runs for (more than the 24 photos x HOLD of its video).
LOOP_FRAMES = 300
#: The hand node's runtime in every run (--runtime); bench/hand_runtimes.py compares the two.
RUNTIME = "mediapipe"


def make_video(path: Path, width: int, height: int, hold: int) -> None:
    files = sorted(PHOTOS.glob("*/*.jpg"))
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (width, height))
    for f in files:
        frame = letterbox(cv2.imread(str(f)), (height, width, 3))
        for _ in range(hold):
            vw.write(frame)
    vw.release()


def scene_video(tmp: Path, width: int, height: int, hold: int) -> Path:
    """The video of the photos held ``hold`` frames each, made once per size and hold."""
    video = tmp / f"hands-{width}x{height}-hold{hold}.avi"
    if not video.exists():
        make_video(video, width, height, hold)
    return video


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def single_process_loop(video: Path, frames: int) -> dict:
    det = make_detector(choose_runtime(RUNTIME), max_num_hands=2, model_complexity=0, static_image_mode=False)
    cap = cv2.VideoCapture(str(video))
    buf = np.zeros(1, LANDMARKS)
    rec = buf[0]
    rgb = None
    to_landmarks, to_gesture, hands = [], [], []
    c0, t0 = time.process_time(), time.monotonic()
    for _ in range(frames):
        ok, frame = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = cap.read()
        captured = time.perf_counter_ns()
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=rgb)
        n = det.detect_into(rgb, rec)
        to_landmarks.append(time.perf_counter_ns() - captured)
        _ = [classify(rec["hands"][i]["world"]) for i in range(n)]
        to_gesture.append(time.perf_counter_ns() - captured)
        hands.append(n)
    wall = time.monotonic() - t0
    cpu = time.process_time() - c0
    det.close()
    return {"fps": frames / wall, "landmarks_p50_ms": pct(to_landmarks, 50) / 1e6, "landmarks_p99_ms": pct(to_landmarks, 99) / 1e6,
            "gesture_p50_ms": pct(to_gesture, 50) / 1e6, "cpu_pct": 100 * cpu / wall, "hands_per_frame": float(np.mean(hands))}


GRAPH = """name: {name}
topics:
  camera/image:    {{dtype: uint8, shape: [{h}, {w}, 3], pool: 4}}
  hands/landmarks: {{capacity: 2096, pool: 8}}
  hands/gesture:   {{capacity: 64, pool: 8}}
nodes:
  camera:
    node: shmlaunch.nodes.camera:Camera
    params: {{source: {video}, fps: {fps}, loop: true}}
    publish: {{image: camera/image}}
  hands:
    node: shmlaunch.nodes.hands:HandLandmarks
    params: {{max_num_hands: 2, model_complexity: 0, static_image_mode: false, runtime: {runtime}}}
    subscribe: {{image: camera/image}}
    publish: {{landmarks: hands/landmarks}}
    replicas: {replicas}
    cpus: {cpus}
  gestures:
    node: shmlaunch.nodes.gestures:Gestures
    subscribe: {{landmarks: hands/landmarks}}
    publish: {{gesture: hands/gesture}}
  probe:
    node: latency_probe:LatencyProbe
    params: {{path: {out}}}
    subscribe: {{landmarks: hands/landmarks, gesture: hands/gesture}}
    env: {{PYTHONPATH: {bench}}}
"""


def node_pids(runtime_dir: str) -> dict[str, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SHMLAUNCH_RUNTIME_DIR={runtime_dir}".encode() in env:
            for item in env:
                if item.startswith(b"SHMLAUNCH_NODE="):
                    out[item.split(b"=", 1)[1].decode()] = int(entry.name)
    return out


def graph_run(video: Path, w: int, h: int, fps: float, seconds: float, tmp: Path, replicas: int = 1, pinned: bool = False,
              traced: bool = False) -> dict:
    """One graph run; ``traced``: with ``shmlaunch trace`` attached over the measured window (its
    final per-hop table is returned as ``trace``)."""
    name = f"hands-bench-{os.getpid()}-{w}-{replicas}"
    out = tmp / f"{name}.npz"
    launch = tmp / f"{name}.yaml"
    launch.write_text(GRAPH.format(name=name, w=w, h=h, video=video, fps=round(fps, 2), out=out, replicas=replicas, bench=Path(__file__).parent,
                                   runtime=RUNTIME, cpus="all" if pinned else "null"))
    rt = f"/dev/shm/shmlaunch-{os.getuid()}-{name}"
    warmup = 4.0
    proc = subprocess.Popen([sys.executable, "-m", "shmlaunch.launch.cli", str(launch), "--duration", str(warmup + seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(warmup)
    summary = tmp / f"{name}-trace.json"
    tracer = subprocess.Popen([sys.executable, "-m", "shmlaunch.launch.cli", "trace", name, "--duration", str(seconds - 0.5), "--quiet",
                               "--summary", str(summary)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) if traced else None
    pids = node_pids(rt)
    c0 = {n: info.cpu_seconds for n, p in pids.items() if (info := backend.process_info(p)) is not None}
    t0 = time.time_ns()
    time.sleep(seconds - 0.5)
    c1 = {n: info.cpu_seconds for n, p in pids.items() if (info := backend.process_info(p)) is not None}  # (a respawned node: no figure)
    t1 = time.time_ns()
    if tracer is not None:
        traced_out, _ = tracer.communicate(timeout=60)
        if tracer.returncode != 0:
            raise RuntimeError(f"shmlaunch trace exited {tracer.returncode}:\n{traced_out}")
    output, _ = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"graph exited {proc.returncode}:\n{output}")
    rows = np.load(out)
    land = rows["landmarks"][(rows["landmarks"]["capture_ns"] >= t0) & (rows["landmarks"]["capture_ns"] <= t1)]
    gest = rows["gesture"][(rows["gesture"]["capture_ns"] >= t0) & (rows["gesture"]["capture_ns"] <= t1)]
    span = (t1 - t0) / 1e9
    to_land = (land["received_ns"] - land["capture_ns"]) / 1e6
    hands_done = (land["published_ns"] - land["capture_ns"]) / 1e6  # capture -> landmarks published
    hop1 = (land["frame_received_ns"] - land["capture_ns"]) / 1e3
    # The transport's share of hop 1: from when the frame was there *and* the hand node was
    # free (its previous landmarks published) to the node taking it; the rest is queueing.
    # (With replicas the previous frame went to another process, so this is only for one.)
    by_seq = np.sort(land, order="frame_seq")
    hop1_transport = ((by_seq["frame_received_ns"][1:] - np.maximum(by_seq["capture_ns"][1:], by_seq["published_ns"][:-1])) / 1e3
                      if replicas == 1 else [float("nan")])
    hop2 = (land["received_ns"] - land["published_ns"]) / 1e3
    cpu = {n: round(100 * (c1[n] - c0[n]) / ((t1 - t0) / 1e9), 1) for n in c0 if n in c1}
    to_gest = (gest["received_ns"] - gest["capture_ns"]) / 1e6
    return {
        "fps": len(land) / span, "camera_fps": fps,
        "landmarks_published_p50_ms": pct(hands_done, 50),
        "landmarks_at_consumer_p50_ms": pct(to_land, 50), "landmarks_at_consumer_p99_ms": pct(to_land, 99),
        "gesture_at_consumer_p50_ms": pct(to_gest, 50),
        "hop_camera_to_hands_p50_us": pct(hop1, 50), "hop_camera_to_hands_transport_p50_us": pct(hop1_transport, 50),
        "hop_hands_to_consumer_p50_us": pct(hop2, 50),
        "cpu_pct": cpu, "replicas": replicas, "pinned": pinned, "video": video.name,
        "inference_p50_ms": pct(land["inference_ns"] / 1e6, 50),
        "hands_per_frame": float(np.mean(land["hands"])) if len(land) else 0.0,
        **({"trace": json.loads(summary.read_text())} if traced else {}),
    }


def size_runs(w: int, h: int, tmp: Path, seconds: float) -> dict:
    """Every run at one frame size: the loop first, since the graph runs' rates and videos follow its rate."""
    loop = single_process_loop(scene_video(tmp, w, h, HOLD), LOOP_FRAMES)
    print(f"{w}x{h} loop: {loop}", flush=True)
    runs = {"loop": loop}

    def run(key: str, fps: float, replicas: int = 1, pinned: bool = False, same_scene: bool = True) -> None:
        hold = max(1, round(HOLD * fps / loop["fps"])) if same_scene else HOLD
        runs[key] = {**graph_run(scene_video(tmp, w, h, hold), w, h, fps, seconds, tmp, replicas, pinned), "hold": hold}
        print(f"{w}x{h} {key}: {runs[key]}", flush=True)

    first = REPLICA_CAMERA_RATES[0]
    run("graph", loop["fps"])
    run("graph30", 30.0, same_scene=False)  # the loop's own frames: what the graph adds when the node is not busy
    for factor in REPLICA_CAMERA_RATES:
        run(f"replicas2_x{factor}", factor * loop["fps"], replicas=2, pinned=True)
    run(f"replicas2_x{first}_unpinned", first * loop["fps"], replicas=2)
    run(f"replicas2_x{first}_loop_video", first * loop["fps"], replicas=2, pinned=True, same_scene=False)
    return runs


def target_pairs(tmp: Path, seconds: float, repeat: int) -> list[dict]:
    """The replicas target, measured as alternating pairs: the loop, then 2 pinned replicas with
    the camera at REPLICA_CAMERA_RATES[0] x the loop's rate, at 640x480. The loop's own rate
    drifts by several percent between minutes on this VM; a pair taken back to back is what
    can be compared, and the median over pairs is what is reported."""
    factor = REPLICA_CAMERA_RATES[0]
    loop_video = scene_video(tmp, 640, 480, HOLD)
    video = scene_video(tmp, 640, 480, round(HOLD * factor))  # the same scene speed, as in size_runs
    pairs = []
    for i in range(repeat):
        loop = single_process_loop(loop_video, LOOP_FRAMES)
        rep = graph_run(video, 640, 480, factor * loop["fps"], seconds, tmp, 2, True)
        pairs.append({"loop_fps": loop["fps"], "loop_p50_ms": loop["landmarks_p50_ms"], "replicas_fps": rep["fps"],
                      "replicas_p50_ms": rep["landmarks_at_consumer_p50_ms"], "replicas_published_p50_ms": rep["landmarks_published_p50_ms"]})
        print(f"pair {i + 1}: {pairs[-1]}", flush=True)
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--pairs", type=int, default=5, help="loop/replicas pairs for the replicas target (0: none)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "hands.json"))
    ap.add_argument("--runtime", default=RUNTIME, choices=("mediapipe", "litert"), help="the hand node's runtime")
    args = ap.parse_args()
    globals()["RUNTIME"] = args.runtime
    results = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(), "cpus": os.cpu_count(), "runtime": RUNTIME,
               "command": " ".join(["python"] + sys.argv), "runs": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for w, h in ((640, 480), (1280, 720)):
            results["runs"][f"{w}x{h}"] = size_runs(w, h, tmp, args.seconds)
        results["target_pairs"] = target_pairs(tmp, args.seconds, args.pairs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    rows = ["| size | run | fps | capture->landmarks p50 ms | p99 ms | capture->gesture p50 ms | hop camera->hands p50 µs "
            "(transport share) | hop hands->consumer p50 µs | CPU % | hands/frame |", "|---|---|---|---|---|---|---|---|---|---|"]
    for size, r in results["runs"].items():
        lp = r["loop"]
        rows.append(f"| {size} | one process | {lp['fps']:.1f} | {lp['landmarks_p50_ms']:.1f} | {lp['landmarks_p99_ms']:.1f} | "
                    f"{lp['gesture_p50_ms']:.1f} | | | {lp['cpu_pct']:.0f} | {lp['hands_per_frame']:.2f} |")
        for key, g in r.items():
            if key == "loop":
                continue
            label = ("graph" if g["replicas"] == 1 else f"2 hand replicas{'' if g['pinned'] else ', not pinned'}") + \
                f", camera at {g['camera_fps']:.0f} fps" + (", the loop's video" if g["hold"] == HOLD and g["camera_fps"] != lp["fps"] else "")
            cpu = ", ".join(f"{k} {v:.0f}" for k, v in sorted(g["cpu_pct"].items()))
            rows.append(f"| {size} | {label} | {g['fps']:.1f} ({g['fps'] / lp['fps']:.2f}x) | {g['landmarks_at_consumer_p50_ms']:.1f} "
                        f"(published {g['landmarks_published_p50_ms']:.1f}) | {g['landmarks_at_consumer_p99_ms']:.1f} | "
                        f"{g['gesture_at_consumer_p50_ms']:.1f} | {g['hop_camera_to_hands_p50_us']:.0f} "
                        f"({g['hop_camera_to_hands_transport_p50_us']:.0f}) | {g['hop_hands_to_consumer_p50_us']:.0f} | "
                        f"{cpu} | {g['hands_per_frame']:.2f} |")
    pairs = results["target_pairs"]
    if pairs:
        rows += ["", f"Replicas target, {len(pairs)} back-to-back pairs at 640x480 (loop, then 2 pinned replicas, camera at "
                 f"{REPLICA_CAMERA_RATES[0]}x the loop's rate):", "",
                 "| pair | loop fps | replicas fps | x loop | loop p50 ms | replicas p50 ms (published) | difference ms |",
                 "|---|---|---|---|---|---|---|"]
        for i, q in enumerate(pairs, 1):
            rows.append(f"| {i} | {q['loop_fps']:.1f} | {q['replicas_fps']:.1f} | {q['replicas_fps'] / q['loop_fps']:.2f} | "
                        f"{q['loop_p50_ms']:.2f} | {q['replicas_p50_ms']:.2f} ({q['replicas_published_p50_ms']:.2f}) | "
                        f"{q['replicas_p50_ms'] - q['loop_p50_ms']:+.2f} |")
        ratio = np.median([q["replicas_fps"] / q["loop_fps"] for q in pairs])
        diff = np.median([q["replicas_p50_ms"] - q["loop_p50_ms"] for q in pairs])
        diff_pub = np.median([q["replicas_published_p50_ms"] - q["loop_p50_ms"] for q in pairs])
        rows.append(f"| median | | | {ratio:.2f} | | | {diff:+.2f} (published {diff_pub:+.2f}) |")
    md = "\n".join(rows)
    Path(args.out).with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
