"""The gesture node: names what each hand shows, from the geometry of its landmarks.

Uses the world landmarks (metres), so the result does not depend on the hand's size,
distance or rotation in the image. A finger (index to little) is extended when its tip is
more than ``extended`` times as far from the wrist as its knuckle (MCP) and curled when it is
less than ``curled`` times as far; the thumb is out when its tip is more than ``thumb_out``
palm widths from the little finger's knuckle and in when less than ``thumb_in``. The named
gestures follow from which fingers are extended; a finger between the two bounds is neither,
and the hand is then ``none`` (a relaxed hand is not a fist or a thumbs-up).

The bounds are fitted per hand model (``model_complexity`` 0 = lite, 1 = full: their geometry
differs) by ``fit_bounds`` on the 24 labelled photos of shared/testdata/hands, pooling the
landmarks of both hand runtimes (MediaPipe Tasks and LiteRT), so one set serves either. Fitted
on the photos they are scored on, they flatter: the README and ``tests/test_hands.py`` report
leave-one-photo-out accuracy too (fit on 23 photos, score the 24th), which is what to expect of
photos outside the set.
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


#: fitted per model_complexity by fit_bounds (see the module's docstring; tests/test_hands.py refits and compares)
BOUNDS = {0: Bounds(1.36, 1.34, 1.75, 1.40), 1: Bounds(1.20, 1.19, 1.85, 1.25)}

# fingers bitmask (bit 0 thumb ... bit 4 little) -> gesture; thumb-optional ones listed twice
_BY_MASK = {
    0b00000: "fist", 0b11111: "open_palm", 0b10001: "call", 0b11110: "four", 0b10010: "rock", 0b10011: "rock",
    0b00010: "point", 0b00110: "peace", 0b00001: "thumbs_up",
}


def hand_ratios(world: np.ndarray) -> tuple[float, np.ndarray]:
    """(thumb tip to little knuckle in palm widths, each finger's tip-to-wrist over knuckle-to-wrist):
    the numbers the bounds are compared with."""
    w = np.asarray(world, dtype=np.float64)
    palm = np.linalg.norm(w[INDEX_MCP] - w[PINKY_MCP])
    thumb = float(np.linalg.norm(w[THUMB_TIP] - w[PINKY_MCP]) / palm) if palm > 0 else 0.0
    knuckles = np.array([np.linalg.norm(w[mcp] - w[WRIST]) for mcp, _ in FINGERS])
    tips = np.array([np.linalg.norm(w[tip] - w[WRIST]) for _, tip in FINGERS])
    return thumb, np.divide(tips, knuckles, out=np.zeros(4), where=knuckles > 0)


def finger_mask(world: np.ndarray, bounds: Bounds = BOUNDS[0]) -> int | None:
    """Bit i set when finger i is extended (0 thumb, 1 index, ... 4 little); None when a finger
    is neither extended nor curled."""
    thumb, fingers = hand_ratios(world)
    mask = 0
    if thumb > bounds.thumb_out:
        mask |= 1
    elif thumb >= bounds.thumb_in:
        return None
    for bit, ratio in enumerate(fingers, start=1):
        if ratio > bounds.extended:
            mask |= 1 << bit
        elif ratio >= bounds.curled:
            return None
    return mask


def classify(world: np.ndarray, model_complexity: int = 0) -> tuple[str, int]:
    """(gesture name, finger mask; 0 when undecided) of one hand's 21 world landmarks."""
    mask = finger_mask(world, BOUNDS[model_complexity])
    return ("none", 0) if mask is None else (_BY_MASK.get(mask, "none"), mask)


#: the named gestures of the labelled photos (an image's label: its first hand showing one, else none)
PHOTO_LABELS = ("call", "four", "rock")
#: the bounds fit_bounds tries: finger ratios and thumb distances on grids of these steps
FINGER_GRID = np.round(np.arange(1.00, 1.6001, 0.01), 2)
THUMB_GRID = np.round(np.arange(1.00, 2.6001, 0.05), 2)


def _bound_pairs(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    upper, lower = np.meshgrid(grid, grid, indexing="ij")
    keep = lower <= upper
    return upper[keep], lower[keep]


def fit_bounds(photos: list[tuple[str, list[np.ndarray]]]) -> Bounds:
    """The bounds that name the most photos right: ``photos`` are (label, world landmarks of each
    hand found, in the hand node's order) with label one of PHOTO_LABELS or "none". Every pair of
    finger bounds on FINGER_GRID and of thumb bounds on THUMB_GRID is tried at once (numpy); of
    those naming the most photos right, the one nearest the centre of that best region is taken
    (not an edge: a photo just past an edge flips), which scored best left-one-out of the rules
    tried (the README)."""
    hands = [(i, *hand_ratios(w)) for i, (_, worlds) in enumerate(photos) for w in worlds]
    photo = np.array([h[0] for h in hands], int)
    thumb = np.array([h[1] for h in hands])
    fingers = np.array([h[2] for h in hands]).reshape(-1, 4)
    ext, cur = _bound_pairs(FINGER_GRID)
    out, inn = _bound_pairs(THUMB_GRID)
    extended = fingers[None] > ext[:, None, None]  # (finger pairs, hands, 4)
    undecided = (~extended & ~(fingers[None] < cur[:, None, None])).any(-1)
    bits = (extended * (1 << np.arange(1, 5))).sum(-1)
    thumb_out = thumb[None] > out[:, None]  # (thumb pairs, hands)
    thumb_undecided = ~thumb_out & ~(thumb[None] < inn[:, None])
    code = {name: k + 1 for k, name in enumerate(PHOTO_LABELS)}  # 0: no photo label
    table = np.zeros(32, np.int8)
    for mask, name in _BY_MASK.items():
        table[mask] = code.get(name, 0)
    named = np.where(undecided[:, None, :] | thumb_undecided[None], 0, table[bits[:, None, :] | thumb_out[None]])
    label = np.zeros(named.shape[:2] + (len(photos),), np.int8)
    for h in range(len(hands) - 1, -1, -1):  # the first hand showing a photo label wins
        label[:, :, photo[h]] = np.where(named[:, :, h] > 0, named[:, :, h], label[:, :, photo[h]])
    right = (label == np.array([code.get(lbl, 0) for lbl, _ in photos])).sum(-1)
    fi, ti = np.nonzero(right == right.max())
    centre = ((ext[:, None] - ext[fi].mean()) ** 2 + (cur[:, None] - cur[fi].mean()) ** 2) / 0.01**2 + \
        ((out[None] - out[ti].mean()) ** 2 + (inn[None] - inn[ti].mean()) ** 2) / 0.05**2
    f, t = np.unravel_index(np.argmin(np.where(right == right.max(), centre, np.inf)), right.shape)
    return Bounds(float(ext[f]), float(cur[f]), float(out[t]), float(inn[t]))


def photo_label(worlds: list[np.ndarray], bounds: Bounds) -> str:
    """What a photo shows by its hands' world landmarks: the first hand's photo label, else none."""
    names = (_BY_MASK.get(m, "none") if (m := finger_mask(w, bounds)) is not None else "none" for w in worlds)
    return next((n for n in names if n in PHOTO_LABELS), "none")


class Gestures(Node):
    """Subscribes to ``landmarks``, publishes ``gesture`` (the GESTURE layout) per message."""

    model_complexity = Param(0, "the hand node's model_complexity (0 lite, 1 full): the bounds fitted to that model", choices=(0, 1))
    subscribes = {"landmarks": {"min_capacity": LANDMARKS.itemsize}}
    publishes = {"gesture": {"min_capacity": GESTURE.itemsize}}

    def setup(self) -> None:
        if self.model_complexity not in BOUNDS:
            raise NodeSetupError(f"model_complexity must be 0 or 1, got {self.model_complexity}")
        self.out = self.publisher("gesture", message=GESTURE_TYPE)
        self.subscribe("landmarks", self.on_landmarks)

    def on_landmarks(self, msg) -> None:
        rec = landmarks_message(msg.data)
        with self.out.loan(nbytes=GESTURE.itemsize, stamp_ns=msg.stamp_ns) as buf:  # source_seq: msg.seq, the runtime's default
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
