"""A consumer for benchmarks: the times each landmark and gesture message carries, kept in memory.

The single-process loop keeps its timestamps in a list; the graph's measuring consumer must
cost no more than that, or the measurement itself takes CPU from the hand processes (the
JSON recorder spends about 0.4 ms a message rounding and formatting landmarks). At teardown
the rows are written to ``path`` as .npz (arrays ``landmarks`` and ``gesture``).
"""

from __future__ import annotations

import time

import numpy as np

from shmlaunch.nodes import Node, Param
from shmlaunch.nodes.messages import GESTURE, LANDMARKS, gesture_message, landmarks_message

ROW = np.dtype([("frame_seq", "<u8"), ("capture_ns", "<i8"), ("frame_received_ns", "<i8"), ("published_ns", "<i8"),
                ("received_ns", "<i8"), ("inference_ns", "<i8"), ("hands", "<i4")])


class LatencyProbe(Node):
    path = Param("", "the .npz file written at teardown")
    subscribes = {"landmarks": {"min_capacity": LANDMARKS.itemsize}, "gesture": {"min_capacity": GESTURE.itemsize}}

    def setup(self) -> None:
        self.rows: dict[str, list[tuple]] = {"landmarks": [], "gesture": []}
        self.subscribe("landmarks", self.on_landmarks)
        self.subscribe("gesture", self.on_gesture)

    def on_landmarks(self, msg) -> None:
        received = time.time_ns()
        rec = landmarks_message(msg.data)
        self.rows["landmarks"].append((rec["frame_seq"], rec["capture_ns"], rec["received_ns"], msg.publish_ns, received,
                                       rec["inference_ns"], rec["hand_count"]))

    def on_gesture(self, msg) -> None:
        received = time.time_ns()
        g = gesture_message(msg.data)
        self.rows["gesture"].append((g["frame_seq"], g["capture_ns"], 0, msg.publish_ns, received, 0, g["hand_count"]))

    def teardown(self) -> None:
        np.savez(self.path, **{k: np.array(v, ROW) for k, v in self.rows.items()})
