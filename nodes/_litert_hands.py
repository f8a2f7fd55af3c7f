"""Hand landmarks without MediaPipe: its published hand pipeline, written here, on LiteRT.

Why: MediaPipe 1.x's native library aborts at load on ARMv8.0 cores (Raspberry Pi 4 and 3,
Jetson Nano: no LSE atomics, no dot product), the boards most robots carry. LiteRT
(``ai-edge-litert``, Google's TFLite runtime; wheels for Linux x86_64/aarch64 and Windows)
runs the two ``.tflite`` models inside this package's own ``.task`` bundles on any of them.
The steps around the models follow MediaPipe's published graphs (``hand_detector_graph.cc``,
``hand_landmarks_detector_graph.cc``, ``hand_landmarker_graph.cc`` and the calculators they
configure), one small function per step so each can be tested alone:

1. ``letterbox_input``: the whole image, aspect kept (zero borders), to the palm model's
   192x192 RGB float input in [0, 1].
2. ``decode_palms``: 2016 SSD anchors (``ssd_anchors``), sigmoid scores at or above
   ``min_detection_confidence``, box and 7 keypoints = raw / 192 + anchor centre.
3. ``weighted_nms``: IoU 0.3, each kept palm the score-weighted mean of those it absorbs.
4. ``unletterbox``: back to coordinates normalised to the image.
5. ``palm_to_rect`` + ``transform_rect``: a rectangle rotated so that the wrist (keypoint 0)
   to middle-finger base (keypoint 2) points up, shifted by -0.5 of its height, squared on
   its long side and scaled 2.6: the hand's region of interest.
6. ``crop_rect``: that rotated square cropped to the landmark model's 224x224 input
   (replicated borders).
7. The landmark model: 21 x (x, y, z) in crop pixels, hand presence, handedness, 21 world
   landmarks in metres. ``project_landmarks`` / ``rotate_world`` put them back in the image.
8. VIDEO mode (``static_image_mode`` false): ``landmarks_to_rect`` + ``transform_rect``
   (scale 2.0, shift -0.1) give the next frame's region; the palm model runs only while fewer
   hands than ``max_num_hands`` are tracked, new palms overlapping a tracked hand are dropped
   (``rect_iou`` above ``min_tracking_confidence``), and ``duplicate_hands`` removes two
   tracks that converged on one hand.

Coordinates: a ``Rect`` is normalised to the image (centre, width, height) with a rotation
in radians; landmarks are (x, y) normalised to the image and z in the same scale as x.
"""

from __future__ import annotations

import math
import time
import zipfile
from dataclasses import dataclass
from io import BytesIO

import cv2
import numpy as np

from ._hand_runtime import check_options, model_bytes
from ._native_output import filtered_native_output
from .messages import fill_hands

PALM_MODEL = "hand_detector.tflite"
LANDMARK_MODEL = "hand_landmarks_detector.tflite"
#: the palm model's anchor grid (MediaPipe's SsdAnchorsCalculator options for it)
ANCHOR_STRIDES = (8, 16, 16, 16)
NMS_IOU = 0.3
PALM_SCALE, PALM_SHIFT_Y = 2.6, -0.5
TRACK_SCALE, TRACK_SHIFT_Y = 2.0, -0.1
#: z of the landmark model is in input pixels; MediaPipe divides it by the input width and by 0.4
Z_NORMALIZE = 0.4
WRIST, PALM_MIDDLE_KEYPOINT = 0, 2
_HARMLESS = ("Created TensorFlow Lite XNNPACK delegate",)


class LiteRTUnavailable(RuntimeError):
    """ai-edge-litert is not installed, or a model cannot be loaded: the message says which."""


@dataclass(frozen=True)
class Rect:
    """A rotated rectangle normalised to the image: centre, width, height, rotation (radians)."""

    cx: float
    cy: float
    w: float
    h: float
    rotation: float = 0.0


@dataclass
class Hand:
    """One hand found in an image."""

    landmarks: np.ndarray  # (21, 3): x, y normalised to the image, z in the scale of x
    world: np.ndarray  # (21, 3) metres
    right: bool  # the handedness model's own label ("Right" as MediaPipe Tasks names it)
    handedness_score: float
    presence: float
    rect: Rect  # the region the landmarks were found in


def normalize_radians(angle: float) -> float:
    """``angle`` in [-pi, pi)."""
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def ssd_anchors(size: int = 192, strides: tuple[int, ...] = ANCHOR_STRIDES) -> np.ndarray:
    """Anchor centres (N, 2), normalised: per stride, a grid of cells, two anchors per layer
    and cell (aspect ratio 1 and its interpolated scale); layers with the same stride share a
    grid. All anchors are 1x1 (fixed size), so only their centres matter."""
    centres = []
    i = 0
    while i < len(strides):
        stride, layers = strides[i], 0
        while i < len(strides) and strides[i] == stride:
            layers, i = layers + 1, i + 1
        cells = math.ceil(size / stride)
        grid = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        cell_centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(cell_centres, 2 * layers, axis=0))
    return np.concatenate(centres)


def _warp(image: np.ndarray, rect_px: tuple, size: int, border: int) -> np.ndarray:
    """The rotated pixel rectangle ``((cx, cy), (w, h), degrees)`` of ``image`` onto a
    ``size`` x ``size`` float32 RGB image in [0, 1] (corner to corner, bilinear)."""
    corners = cv2.boxPoints(rect_px)  # bottom-left, top-left, top-right, bottom-right
    target = np.array([[0, size], [0, 0], [size, 0]], np.float32)
    matrix = cv2.getAffineTransform(corners[:3].astype(np.float32), target)
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=0)
    return crop.astype(np.float32) * np.float32(1 / 255)


def letterbox_input(rgb: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """The whole image in a ``size`` square, aspect kept and centred on zero borders; returns
    it and the padding (x, y) on each side as a fraction of the square."""
    height, width = rgb.shape[:2]
    side = max(width, height)
    tensor = _warp(rgb, ((width / 2, height / 2), (side, side), 0.0), size, cv2.BORDER_CONSTANT)
    return tensor, ((1 - width / side) / 2, (1 - height / side) / 2)


def decode_palms(boxes: np.ndarray, scores: np.ndarray, anchors: np.ndarray, size: int,
                 min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The palm model's raw outputs, (N, 18) and (N, 1), as (scores (K,), boxes (K, 4) as
    xmin, ymin, xmax, ymax, keypoints (K, 7, 2)) of the anchors scoring at least ``min_score``,
    normalised to the model's input."""
    score = 1 / (1 + np.exp(-np.clip(scores.reshape(-1), -100, 100)))
    keep = np.flatnonzero(score >= min_score)
    raw, centre = boxes.reshape(-1, 18)[keep] / size, anchors[keep]
    xy = raw[:, 0:2] + centre
    half = raw[:, 2:4] / 2
    keypoints = raw[:, 4:18].reshape(-1, 7, 2) + centre[:, None, :]
    return score[keep], np.concatenate([xy - half, xy + half], axis=1), keypoints


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one (xmin, ymin, xmax, ymax) box with each of ``others`` (N, 4)."""
    lo = np.maximum(box[:2], others[:, :2])
    hi = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(scores: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray,
                 iou: float = NMS_IOU) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """Best first: each palm with the score of the best anchor and the score-weighted mean box
    and keypoints of every anchor overlapping it by more than ``iou`` (itself included)."""
    order = np.argsort(-scores, kind="stable")
    palms = []
    while order.size:
        overlap = box_iou(boxes[order[0]], boxes[order]) > iou
        group, order = order[overlap], order[~overlap]
        weights = scores[group][:, None]
        total = weights.sum()
        palms.append((float(scores[group[0]]), (boxes[group] * weights).sum(0) / total,
                      (keypoints[group] * weights[:, :, None]).sum(0) / total))
    return palms


def unletterbox(points: np.ndarray, padding: tuple[float, float]) -> np.ndarray:
    """Points (..., 2) normalised to the letterboxed square, normalised to the image instead."""
    pad = np.asarray(padding, np.float32)
    return (points - pad) / (1 - 2 * pad)


def palm_to_rect(box: np.ndarray, keypoints: np.ndarray, width: int, height: int) -> Rect:
    """The palm's box (xmin, ymin, xmax, ymax), rotated so that wrist -> middle-finger base points up."""
    (x0, y0), (x1, y1) = keypoints[WRIST], keypoints[PALM_MIDDLE_KEYPOINT]
    rotation = normalize_radians(math.pi / 2 - math.atan2(-(y1 - y0) * height, (x1 - x0) * width))
    return Rect(float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2, float(box[2] - box[0]), float(box[3] - box[1]), rotation)


def transform_rect(rect: Rect, width: int, height: int, scale: float, shift_y: float) -> Rect:
    """Shift the rectangle along its own up axis by ``shift_y`` of its height, make it a square
    on its long side (in pixels) and scale it by ``scale``."""
    r = rect.rotation
    cx = rect.cx - height * rect.h * shift_y * math.sin(r) / width
    cy = rect.cy + rect.h * shift_y * math.cos(r)
    side = max(rect.w * width, rect.h * height)
    return Rect(cx, cy, side / width * scale, side / height * scale, r)


def crop_rect(rgb: np.ndarray, rect: Rect, size: int) -> np.ndarray:
    """The rotated region ``rect`` of the image as the landmark model's input (replicated borders)."""
    height, width = rgb.shape[:2]
    px = ((rect.cx * width, rect.cy * height), (rect.w * width, rect.h * height), math.degrees(rect.rotation))
    return _warp(rgb, px, size, cv2.BORDER_REPLICATE)


def project_landmarks(raw: np.ndarray, rect: Rect, size: int) -> np.ndarray:
    """The landmark model's (21, 3) crop-pixel output, normalised to the whole image."""
    local = raw.reshape(-1, 3) / size
    x, y = local[:, 0] - 0.5, local[:, 1] - 0.5
    cos, sin = math.cos(rect.rotation), math.sin(rect.rotation)
    out = np.empty_like(local)
    out[:, 0] = (cos * x - sin * y) * rect.w + rect.cx
    out[:, 1] = (sin * x + cos * y) * rect.h + rect.cy
    out[:, 2] = local[:, 2] / Z_NORMALIZE * rect.w
    return out


def rotate_world(raw: np.ndarray, rotation: float) -> np.ndarray:
    """World landmarks (metres) turned by the region's rotation about z."""
    world = raw.reshape(-1, 3).copy()
    cos, sin = math.cos(rotation), math.sin(rotation)
    x, y = world[:, 0].copy(), world[:, 1].copy()
    world[:, 0] = cos * x - sin * y
    world[:, 1] = sin * x + cos * y
    return world


def landmarks_to_rect(landmarks: np.ndarray, width: int, height: int) -> Rect:
    """The rectangle around all 21 landmarks, rotated so that the wrist points down, as
    MediaPipe Tasks' HandLandmarksToRect computes it for tracking (its rotation reference is
    the wrist and the mean of points 4, 6 and 8 of the list it is given)."""
    pts = landmarks[:, :2] * (width, height)
    x0, y0 = pts[0]
    x1, y1 = ((pts[4] + pts[8]) / 2 + pts[6]) / 2
    rotation = normalize_radians(math.pi / 2 - math.atan2(-(y1 - y0), x1 - x0))
    centre = (landmarks[:, :2].min(0) + landmarks[:, :2].max(0)) / 2 * (width, height)
    back = -rotation
    rel = pts - centre
    turned = rel @ np.array([[math.cos(back), math.sin(back)], [-math.sin(back), math.cos(back)]], np.float32)
    lo, hi = turned.min(0), turned.max(0)
    mid = (lo + hi) / 2
    cos, sin = math.cos(rotation), math.sin(rotation)
    cx = mid[0] * cos - mid[1] * sin + centre[0]
    cy = mid[0] * sin + mid[1] * cos + centre[1]
    return Rect(float(cx / width), float(cy / height), float((hi[0] - lo[0]) / width), float((hi[1] - lo[1]) / height), rotation)


def rect_iou(a: Rect, b: Rect) -> float:
    """IoU of two rectangles' axis-aligned extents (what MediaPipe's hand association compares)."""
    box = np.array([a.cx - a.w / 2, a.cy - a.h / 2, a.cx + a.w / 2, a.cy + a.h / 2])
    other = np.array([[b.cx - b.w / 2, b.cy - b.h / 2, b.cx + b.w / 2, b.cy + b.h / 2]])
    return float(box_iou(box, other)[0])


def duplicate_hands(hands: list[Hand], width: int, height: int) -> set[int]:
    """Indices of hands that repeat an earlier one: at least 10 of 21 landmarks closer than
    0.2 of the hand's size (the longest side of wrist, index base, little-finger base) and
    landmark boxes overlapping by IoU above 0.2."""
    scale = np.array([width, height], np.float32)
    pts = [h.landmarks[:, :2] * scale for h in hands]
    size = [max(np.linalg.norm(p[0] - p[5]), np.linalg.norm(p[5] - p[17]), np.linalg.norm(p[17] - p[0])) for p in pts]
    bounds = [np.concatenate([h.landmarks[:, :2].min(0), h.landmarks[:, :2].max(0)]) for h in hands]
    kept: list[int] = []
    dropped: set[int] = set()
    for i in range(len(hands)):
        for j in kept:
            close = np.linalg.norm(pts[i] - pts[j], axis=1) < max(size[i], size[j]) * 0.2
            if close.sum() >= 10 and box_iou(bounds[i], bounds[j][None])[0] > 0.2:
                dropped.add(i)
                break
        else:
            kept.append(i)
    return dropped


def _model(task: bytes, member: str, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise LiteRTUnavailable(f"cannot import ai_edge_litert ({exc}): install the hands extra (README, Quick start)") from None
    try:
        content = zipfile.ZipFile(BytesIO(task)).read(member)
        with filtered_native_output(_HARMLESS):  # LiteRT's start-up line stays out of the log
            interpreter = Interpreter(model_content=content, num_threads=threads)
            interpreter.allocate_tensors()
    except (zipfile.BadZipFile, KeyError, ValueError, RuntimeError) as exc:
        raise LiteRTUnavailable(f"cannot load {member} from the hand model bundle: {exc}") from None
    return interpreter


class _Model:
    """One LiteRT interpreter: its square input size, and a call returning its outputs in model order."""

    def __init__(self, task: bytes, member: str, threads: int) -> None:
        self.interpreter = _model(task, member, threads)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.size = int(self.interpreter.get_input_details()[0]["shape"][1])
        self.outputs = [d["index"] for d in self.interpreter.get_output_details()]

    def __call__(self, tensor: np.ndarray) -> list[np.ndarray]:
        self.interpreter.set_tensor(self.input, tensor[None])
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(i) for i in self.outputs]


class LiteRTHandLandmarker:
    """MediaPipe's hand landmarker (IMAGE or VIDEO mode) on LiteRT, from a ``.task`` bundle's bytes."""

    def __init__(self, task: bytes, *, max_num_hands: int = 2, min_detection_confidence: float = 0.5,
                 min_presence_confidence: float = 0.5, min_tracking_confidence: float = 0.5,
                 static_image_mode: bool = False, threads: int = 1) -> None:
        self.palm = _Model(task, PALM_MODEL, threads)
        self.landmark = _Model(task, LANDMARK_MODEL, threads)
        self.anchors = ssd_anchors(self.palm.size)
        self.max_num_hands = max_num_hands
        self.min_detection = min_detection_confidence
        self.min_presence = min_presence_confidence
        self.min_tracking = min_tracking_confidence
        self.static = static_image_mode
        self.tracked: list[Rect] = []  # VIDEO mode: the regions the previous frame's hands give

    def detect_palms(self, rgb: np.ndarray) -> list[Rect]:
        """Hand regions from the palm model, best first, at most ``max_num_hands``."""
        height, width = rgb.shape[:2]
        tensor, padding = letterbox_input(rgb, self.palm.size)
        boxes, scores = self.palm(tensor)
        found = decode_palms(boxes, scores, self.anchors, self.palm.size, self.min_detection)
        rects = []
        for _, box, keypoints in weighted_nms(*found)[: self.max_num_hands]:
            corners = unletterbox(box.reshape(2, 2), padding).ravel()
            palm = palm_to_rect(corners, unletterbox(keypoints, padding), width, height)
            rects.append(transform_rect(palm, width, height, PALM_SCALE, PALM_SHIFT_Y))
        return rects

    def landmarks_in(self, rgb: np.ndarray, rect: Rect) -> Hand | None:
        """The hand in region ``rect``, or None when the model says no hand is there."""
        raw, presence, handedness, world = self.landmark(crop_rect(rgb, rect, self.landmark.size))
        presence = float(presence.reshape(-1)[0])
        if presence < self.min_presence:
            return None
        right = float(handedness.reshape(-1)[0])
        return Hand(project_landmarks(raw, rect, self.landmark.size), rotate_world(world, rect.rotation),
                    right > 0.5, max(right, 1 - right), presence, rect)

    def _regions(self, rgb: np.ndarray) -> list[Rect]:
        if self.static:
            return self.detect_palms(rgb)
        regions = list(self.tracked)
        if len(regions) < self.max_num_hands:
            for rect in self.detect_palms(rgb):
                if not any(rect_iou(rect, kept) > self.min_tracking for kept in regions):
                    regions.append(rect)
        return regions[: self.max_num_hands]

    def detect(self, rgb: np.ndarray) -> list[Hand]:
        """The hands in an RGB uint8 image (height x width x 3)."""
        height, width = rgb.shape[:2]
        hands = [h for h in (self.landmarks_in(rgb, r) for r in self._regions(rgb)) if h is not None]
        dropped = duplicate_hands(hands, width, height) if len(hands) > 1 else set()
        hands = [h for i, h in enumerate(hands) if i not in dropped]
        if not self.static:
            self.tracked = [transform_rect(landmarks_to_rect(h.landmarks, width, height), width, height, TRACK_SCALE, TRACK_SHIFT_Y)
                            for h in hands]
        return hands


class LiteRTHandDetector:
    """The hand node's LiteRT runtime: HandDetector's interface (``detect_into``, ``close``) on
    ``LiteRTHandLandmarker``, with the bundled model of ``model_complexity``."""

    def __init__(self, *, max_num_hands: int = 2, model_complexity: int = 0, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5, static_image_mode: bool = False, threads: int = 1) -> None:
        check_options(max_num_hands, model_complexity)
        self.landmarker = LiteRTHandLandmarker(
            model_bytes(model_complexity), max_num_hands=max_num_hands, min_detection_confidence=min_detection_confidence,
            min_presence_confidence=min_tracking_confidence, min_tracking_confidence=min_tracking_confidence,
            static_image_mode=static_image_mode, threads=threads)

    def detect_into(self, rgb: np.ndarray, rec: np.ndarray) -> int:
        """Run the models on ``rgb`` and fill ``rec`` (a LANDMARKS record); returns the hand count.
        Handedness is written as the MediaPipe runtime writes it (the model's "Right" is 0)."""
        t0 = time.perf_counter_ns()
        hands = self.landmarker.detect(rgb)
        return fill_hands(rec, rgb.shape, time.perf_counter_ns() - t0,
                          ((h.landmarks, h.world, 0 if h.right else 1, h.handedness_score) for h in hands))

    def close(self) -> None:
        """Nothing to release but memory (the interpreters go with the object)."""
