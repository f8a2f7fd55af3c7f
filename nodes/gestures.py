"""The gesture node: names what each hand shows, from the geometry of its landmarks.

Uses the world landmarks (metres), so the result does not depend on the hand's size,
distance or rotation in the image. A finger (index to little) is extended when its tip is
more than EXTENDED times as far from the wrist as its knuckle (MCP); the thumb is extended
when its tip is more than THUMB_OUT palm widths from the little finger's knuckle. The named
gestures then follow from which fingers are extended. The thresholds were fitted to the 24
labelled photos in shared/testdata/hands (see the README for the accuracy measured).
"""

from __future__ import annotations

import numpy as np

from ._node import Node
from .messages import GESTURE, GESTURE_NAMES, GESTURE_TYPE, GESTURE_VERSION, LANDMARKS, landmarks_message

EXTENDED = 1.45
THUMB_OUT = 1.5
WRIST, THUMB_TIP, INDEX_MCP, PINKY_MCP = 0, 4, 5, 17
FINGERS = ((5, 8), (9, 12), (13, 16), (17, 20))  # (MCP, tip) of index, middle, ring, little

# fingers bitmask (bit 0 thumb ... bit 4 little) -> gesture; thumb-optional ones listed twice
_BY_MASK = {
    0b00000: "fist", 0b11111: "open_palm", 0b10001: "call", 0b11110: "four", 0b10010: "rock", 0b10011: "rock",
    0b00010: "point", 0b00110: "peace", 0b00001: "thumbs_up",
}


def finger_mask(world: np.ndarray) -> int:
    """Bit i set when finger i is extended (0 thumb, 1 index, ... 4 little)."""
    w = np.asarray(world, dtype=np.float64)
    mask = 0
    palm = np.linalg.norm(w[INDEX_MCP] - w[PINKY_MCP])
    if palm > 0 and np.linalg.norm(w[THUMB_TIP] - w[PINKY_MCP]) / palm > THUMB_OUT:
        mask |= 1
    for bit, (mcp, tip) in enumerate(FINGERS, start=1):
        knuckle = np.linalg.norm(w[mcp] - w[WRIST])
        if knuckle > 0 and np.linalg.norm(w[tip] - w[WRIST]) / knuckle > EXTENDED:
            mask |= 1 << bit
    return mask


def classify(world: np.ndarray) -> tuple[str, int]:
    """(gesture name, finger mask) of one hand's 21 world landmarks."""
    mask = finger_mask(world)
    return _BY_MASK.get(mask, "none"), mask


class Gestures(Node):
    """Subscribes to ``landmarks``, publishes ``gesture`` (the GESTURE layout) per message."""

    subscribes = {"landmarks": {"min_capacity": LANDMARKS.itemsize}}
    publishes = {"gesture": {"min_capacity": GESTURE.itemsize}}

    def setup(self) -> None:
        self.out = self.publisher("gesture", message=GESTURE_TYPE)
        self.subscribe("landmarks", self.on_landmarks)

    def on_landmarks(self, msg) -> None:
        rec = landmarks_message(msg.data)
        with self.out.loan(nbytes=GESTURE.itemsize, stamp_ns=msg.stamp_ns, source_seq=int(rec["frame_seq"])) as buf:
            g = buf.view(GESTURE)[0]
            g["version"] = GESTURE_VERSION
            g["frame_seq"] = rec["frame_seq"]
            g["capture_ns"] = rec["capture_ns"]
            n = int(rec["hand_count"])
            g["hand_count"] = n
            for i in range(n):
                hand = rec["hands"][i]
                name, mask = classify(hand["world"])
                g["gesture"][i] = GESTURE_NAMES.index(name)
                g["fingers"][i] = mask
                g["handedness"][i] = hand["handedness"]
                g["score"][i] = hand["score"]
