"""The console node: one status line per second for a terminal or journald.

    console | 29.9 fps | capture->landmarks p50 18.2 ms max 25.0 | hands 1 | call (Right)
"""

from __future__ import annotations

import time

import numpy as np

from ._node import Node
from .messages import GESTURE, LANDMARKS, describe_gestures, gesture_message, landmarks_message


class Console(Node):
    subscribes = {"landmarks": {"min_capacity": LANDMARKS.itemsize}, "gesture": {"min_capacity": GESTURE.itemsize}}

    def setup(self) -> None:
        self.subscribe("landmarks", self.on_landmarks)
        if self.is_mapped("gesture"):
            self.subscribe("gesture", self.on_gesture)
        self.latencies: list[int] = []
        self.last_landmarks: float | None = None  # monotonic time of the last landmarks message
        self.hands = 0
        self.gesture = "-"
        self.since = time.monotonic()
        self.timer(1.0, self.report)

    def on_landmarks(self, msg) -> None:
        rec = landmarks_message(msg.data)
        self.latencies.append(time.time_ns() - int(rec["capture_ns"]))
        self.last_landmarks = time.monotonic()
        self.hands = int(rec["hand_count"])

    def on_gesture(self, msg) -> None:
        self.gesture = describe_gestures(gesture_message(msg.data))

    def report(self) -> None:
        now = time.monotonic()
        fps = len(self.latencies) / (now - self.since)
        if self.latencies:
            lat = np.array(self.latencies) / 1e6
            timing = f"capture->landmarks p50 {np.median(lat):.1f} ms max {lat.max():.1f}"
        elif self.last_landmarks is None:
            timing = "no landmarks yet"
        else:
            timing = f"no landmarks for {now - self.last_landmarks:.0f} s"
        self.log.info("%.1f fps | %s | hands %d | %s", fps, timing, self.hands, self.gesture)
        self.latencies.clear()
        self.since = now
