"""The gesture node: names what each hand shows, from the geometry of its landmarks.

Uses the world landmarks (metres), so the result does not depend on the hand's size,
distance or rotation in the image. A finger (index to little) is extended when its tip is
more than ``extended`` times as far from the wrist as its knuckle (MCP) and curled when it is
less than ``curled`` times as far; the thumb is out when its tip is more than ``thumb_out``
palm widths from the little finger's knuckle and in when less than ``thumb_in``. The named
gestures follow from which fingers are extended; a finger between the two bounds is neither,
and the hand is then ``none`` (a relaxed hand is not a fist or a thumbs-up).

The bounds were fitted per hand model (``model_complexity`` 0 = lite, 1 = full: their
geometry differs) on the 24 labelled photos of shared/testdata/hands, landmarks from
MediaPipe's Tasks hand landmarker (see the README for the accuracy measured).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._node import Node, NodeSetupError
from ._params import Param
from .messages import GESTURE, GESTURE_NAMES, GESTURE_TYPE, GESTURE_VERSION, LANDMARKS, landmarks_message

WRIST, THUMB_TIP, INDEX_MCP, PINKY_MCP = 0, 4, 5, 17
FINGERS = ((5, 8), (9, 12), (13, 16), (17, 20))  # (MCP, tip) of index, middle, ring, little


@dataclass(frozen=True)
class Bounds:
    extended: float  # tip-to-wrist over knuckle-to-wrist above this: extended
    curled: float  # ... below this: curled
    thumb_out: float  # thumb tip to little knuckle, in palm widths, above this: out
    thumb_in: float  # ... below this: in


#: fitted per model_complexity (see the module's docstring)
BOUNDS = {0: Bounds(1.32, 1.18, 1.85, 1.60), 1: Bounds(1.21, 1.19, 1.97, 1.75)}

# fingers bitmask (bit 0 thumb ... bit 4 little) -> gesture; thumb-optional ones listed twice
_BY_MASK = {
    0b00000: "fist", 0b11111: "open_palm", 0b10001: "call", 0b11110: "four", 0b10010: "rock", 0b10011: "rock",
    0b00010: "point", 0b00110: "peace", 0b00001: "thumbs_up",
}


def finger_mask(world: np.ndarray, bounds: Bounds = BOUNDS[0]) -> int | None:
    """Bit i set when finger i is extended (0 thumb, 1 index, ... 4 little); None when a finger
    is neither extended nor curled."""
    w = np.asarray(world, dtype=np.float64)
    mask = 0
    palm = np.linalg.norm(w[INDEX_MCP] - w[PINKY_MCP])
    thumb = np.linalg.norm(w[THUMB_TIP] - w[PINKY_MCP]) / palm if palm > 0 else 0.0
    if thumb > bounds.thumb_out:
        mask |= 1
    elif thumb >= bounds.thumb_in:
        return None
    for bit, (mcp, tip) in enumerate(FINGERS, start=1):
        knuckle = np.linalg.norm(w[mcp] - w[WRIST])
        ratio = np.linalg.norm(w[tip] - w[WRIST]) / knuckle if knuckle > 0 else 0.0
        if ratio > bounds.extended:
            mask |= 1 << bit
        elif ratio >= bounds.curled:
            return None
    return mask


def classify(world: np.ndarray, model_complexity: int = 0) -> tuple[str, int]:
    """(gesture name, finger mask; 0 when undecided) of one hand's 21 world landmarks."""
    mask = finger_mask(world, BOUNDS[model_complexity])
    return ("none", 0) if mask is None else (_BY_MASK.get(mask, "none"), mask)


class Gestures(Node):
    """Subscribes to ``landmarks``, publishes ``gesture`` (the GESTURE layout) per message."""

    model_complexity = Param(0, "the hand node's model_complexity (0 lite, 1 full): the bounds fitted to that model")
    subscribes = {"landmarks": {"min_capacity": LANDMARKS.itemsize}}
    publishes = {"gesture": {"min_capacity": GESTURE.itemsize}}

    def setup(self) -> None:
        if self.model_complexity not in BOUNDS:
            raise NodeSetupError(f"model_complexity must be 0 or 1, got {self.model_complexity}")
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
                name, mask = classify(hand["world"], self.model_complexity)
                g["gesture"][i] = GESTURE_NAMES.index(name)
                g["fingers"][i] = mask
                g["handedness"][i] = hand["handedness"]
                g["score"][i] = hand["score"]
