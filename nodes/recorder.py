"""The recorder node: landmarks (and gestures) as JSON Lines, safe to ``tail -f``.

One line per message, flushed as it is written, so a reader never sees half a line and a
crash loses at most the message being written. Lines are ``{"type": "landmarks", ...}``
and, when the ``gesture`` port is mapped, ``{"type": "gesture", ...}``; both carry the
camera frame's sequence number and capture time, which is how they join. When the file
passes ``max_bytes`` it is rotated: ``out.jsonl`` -> ``out.jsonl.1`` -> ... -> ``.<backups>``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ._node import Node, NodeSetupError
from ._params import Param
from .messages import GESTURE, LANDMARKS, decode_gesture, decode_landmarks, gesture_message, landmarks_message


class Recorder(Node):
    path = Param("hands.jsonl", "the JSON Lines file to append to")
    max_bytes = Param(50_000_000, "rotate the file when it grows past this size")
    backups = Param(3, "rotated files to keep")
    subscribes = {"landmarks": {"min_capacity": LANDMARKS.itemsize}, "gesture": {"min_capacity": GESTURE.itemsize}}

    def setup(self) -> None:
        self.file_path = Path(self.path)
        try:
            self.file = open(self.file_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in teardown()
        except OSError as exc:
            raise NodeSetupError(f"cannot open recorder file {self.path!r}: {exc.strerror}") from exc
        self.subscribe("landmarks", self.on_landmarks)
        if self.is_mapped("gesture"):
            self.subscribe("gesture", self.on_gesture)
        self.lines = 0
        self.log.info("recording to %s", self.file_path.resolve())

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.file.flush()
        self.lines += 1
        if self.file.tell() >= self.max_bytes:
            self.rotate()

    def rotate(self) -> None:
        self.file.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.file_path.with_name(f"{self.file_path.name}.{i}")
            if older.exists():
                os.replace(older, self.file_path.with_name(f"{self.file_path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.file_path, self.file_path.with_name(f"{self.file_path.name}.1"))
        else:
            self.file_path.unlink()
        self.file = open(self.file_path, "a", encoding="utf-8")  # noqa: SIM115

    def on_landmarks(self, msg) -> None:
        received = time.time_ns()
        d = decode_landmarks(landmarks_message(msg.data))
        self.write({"type": "landmarks", "frame_seq": d.pop("frame_seq"), "capture_ns": d.pop("capture_ns"),
                    "frame_received_ns": d.pop("frame_received_ns"), "published_ns": msg.publish_ns, "received_ns": received, **d})

    def on_gesture(self, msg) -> None:
        received = time.time_ns()
        d = decode_gesture(gesture_message(msg.data))
        hands = [{k: h[k] for k in ("gesture", "fingers", "handedness")} for h in d["hands"]]
        self.write({"type": "gesture", "frame_seq": d["frame_seq"], "capture_ns": d["capture_ns"], "published_ns": msg.publish_ns,
                    "received_ns": received, "hands": hands})

    def teardown(self) -> None:
        self.file.close()
        self.log.info("wrote %d lines", self.lines)
