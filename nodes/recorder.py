"""The recorder node: landmarks (and gestures) as JSON Lines, safe to ``tail -f``.

One line per message, flushed as it is written, so a reader never sees half a line and a
crash loses at most the message being written. Lines are ``{"type": "landmarks", ...}``
and, when the ``gesture`` port is mapped, ``{"type": "gesture", ...}``; both carry the
camera frame's sequence number and capture time, which is how they join. When the ``source``
port is mapped (the camera's provenance topic), each landmarks line also says which input it
came from: ``"source": {"kind": "image folder", "index": 3, "name": "4-none.jpg"}``. The join is
exact: provenance is taken before landmarks in each wake-up and kept for the last SOURCES_KEPT
frames, and a landmarks line whose frame's provenance has not arrived yet waits for it (at most
SOURCE_WAIT seconds; then it is written without, and counted). When the file passes
``max_bytes`` it is rotated: ``out.jsonl`` -> ``out.jsonl.1`` -> ... -> ``.<backups>``.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from pathlib import Path

from ._heartbeat import start_dir
from ._node import Node, NodeSetupError
from ._params import Param
from .messages import (
    FRAME_SOURCE,
    GESTURE,
    LANDMARKS,
    decode_frame_source,
    decode_gesture,
    decode_landmarks,
    frame_source_message,
    gesture_message,
    landmarks_message,
)

#: frames whose provenance is kept for the landmarks still to come (a few seconds of frames)
SOURCES_KEPT = 256
#: how long a landmarks line waits for its frame's provenance
SOURCE_WAIT = 0.5


class Recorder(Node):
    path = Param("auto", "the JSON Lines file to append to ('auto': hands.jsonl in the directory shmlaunch was started in; "
                 "'': write nothing)")
    max_bytes = Param(50_000_000, "rotate the file when it grows past this size", low=1)
    backups = Param(3, "rotated files to keep", low=0)
    subscribes = {"landmarks": {"min_capacity": LANDMARKS.itemsize}, "gesture": {"min_capacity": GESTURE.itemsize},
                  "source": {"min_capacity": FRAME_SOURCE.itemsize}}

    def setup(self) -> None:
        self.lines = 0
        if self.path == "":
            self.file = None
            self.log.info("recording off (path is empty)")
            return
        # never beside the launch file by default: for a pip-installed user that is site-packages
        self.file_path = start_dir() / "hands.jsonl" if self.path == "auto" else Path(self.path)
        try:
            self.file = open(self.file_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in teardown()
        except OSError as exc:
            raise NodeSetupError(f"cannot open recorder file {str(self.file_path.absolute())!r}: {exc.strerror}") from exc
        self.sources: OrderedDict[int, dict] = OrderedDict()  # frame_seq -> provenance, the newest SOURCES_KEPT
        self.waiting: OrderedDict[int, tuple[float, dict]] = OrderedDict()  # frame_seq -> (since, landmarks line)
        self.unsourced = 0
        if self.is_mapped("source"):  # first: each wake-up takes a frame's provenance before its landmarks
            self.subscribe("source", self.on_source)
            self.timer(SOURCE_WAIT / 5, self.flush_waiting)
        self.subscribe("landmarks", self.on_landmarks)
        if self.is_mapped("gesture"):
            self.subscribe("gesture", self.on_gesture)
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

    def on_source(self, msg) -> None:
        rec = frame_source_message(msg.data)
        frame = int(rec["frame_seq"])
        self.sources[frame] = decode_frame_source(rec)
        while len(self.sources) > SOURCES_KEPT:
            self.sources.popitem(last=False)
        waiting = self.waiting.pop(frame, None)
        if waiting is not None:
            self.write({**waiting[1], "source": self.sources[frame]})

    def flush_waiting(self, force: bool = False) -> None:
        """Write the landmarks lines that waited SOURCE_WAIT for a provenance that never came."""
        now = time.monotonic()
        while self.waiting and (force or now - next(iter(self.waiting.values()))[0] >= SOURCE_WAIT):
            _, (_, line) = self.waiting.popitem(last=False)
            self.unsourced += 1
            self.write(line)

    def on_landmarks(self, msg) -> None:
        received = time.time_ns()
        d = decode_landmarks(landmarks_message(msg.data))
        line = {"type": "landmarks", "frame_seq": d.pop("frame_seq"), "capture_ns": d.pop("capture_ns"),
                "frame_received_ns": d.pop("frame_received_ns"), "published_ns": msg.publish_ns, "received_ns": received, **d}
        source = self.sources.get(line["frame_seq"])
        if source is not None:
            line["source"] = source
        elif self.is_mapped("source"):
            self.waiting[line["frame_seq"]] = (time.monotonic(), line)
            return
        self.write(line)

    def on_gesture(self, msg) -> None:
        received = time.time_ns()
        d = decode_gesture(gesture_message(msg.data))
        hands = [{k: h[k] for k in ("gesture", "fingers", "handedness")} for h in d["hands"]]
        self.write({"type": "gesture", "frame_seq": d["frame_seq"], "capture_ns": d["capture_ns"], "published_ns": msg.publish_ns,
                    "received_ns": received, "hands": hands})

    def teardown(self) -> None:
        if self.file is None:
            return
        self.flush_waiting(force=True)
        self.file.close()
        unsourced = f" ({self.unsourced} landmarks lines without their frame's source: it never came)" if self.unsourced else ""
        self.log.info("wrote %d lines%s", self.lines, unsourced)
