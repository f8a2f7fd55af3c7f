"""Fixed-layout messages of the built-in nodes, as numpy structured dtypes.

These are the byte layouts C++ and C# readers follow (transport/LAYOUT.md, "Message
layouts", repeats the offsets). All little-endian, no padding, version first: a reader
refuses a version it does not know. A topic carrying them is a raw topic (``capacity`` at
least ``itemsize``) whose registry entry names the message type (``LANDMARKS_TYPE``,
``GESTURE_TYPE``, ``FRAME_SOURCE_TYPE``); every reader of these messages (recorder, console, viewer, ``topic echo``)
decodes them with the helpers below, the one place that knows their fields and labels.
"""

from __future__ import annotations

import numpy as np

MAX_HANDS = 4
N_LANDMARKS = 21
#: MediaPipe's 21-point hand skeleton (wrist 0; thumb 1-4; index 5-8; middle 9-12; ring 13-16; little 17-20).
HAND_CONNECTIONS = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (5, 9), (9, 10), (10, 11), (11, 12),
    (9, 13), (13, 14), (14, 15), (15, 16), (13, 17), (0, 17), (17, 18), (18, 19), (19, 20),
)

#: One detected hand, 512 bytes.
HAND = np.dtype([
    ("landmarks", "<f4", (N_LANDMARKS, 3)),  # x, y normalised to the image [0, 1]; z relative to the wrist, same scale as x
    ("world", "<f4", (N_LANDMARKS, 3)),  # metres, origin near the hand's centre
    ("score", "<f4"),  # handedness confidence
    ("handedness", "<u4"),  # 0 left, 1 right (as MediaPipe's legacy API reported it, for a mirrored, selfie image)
])

LANDMARKS_VERSION = 1
#: The hand-landmark message: 48-byte header, then MAX_HANDS hands (the first hand_count are valid). 2096 bytes.
LANDMARKS = np.dtype([
    ("version", "<u4"),
    ("hand_count", "<u4"),
    ("frame_seq", "<u8"),  # sequence number of the camera frame it came from
    ("capture_ns", "<i8"),  # that frame's capture time, CLOCK_REALTIME ns
    ("received_ns", "<i8"),  # when the hand node took the frame, CLOCK_REALTIME ns
    ("inference_ns", "<i8"),  # how long inference took
    ("image_width", "<u4"),
    ("image_height", "<u4"),
    ("hands", HAND, (MAX_HANDS,)),
])

GESTURE_NAMES = ("none", "fist", "open_palm", "call", "four", "rock", "point", "peace", "thumbs_up")
GESTURE_VERSION = 1
#: The gesture message: one entry per hand of the landmark message it was computed from. 64 bytes.
GESTURE = np.dtype([
    ("version", "<u4"),
    ("hand_count", "<u4"),
    ("frame_seq", "<u8"),
    ("capture_ns", "<i8"),
    ("gesture", "<u1", (MAX_HANDS,)),  # index into GESTURE_NAMES
    ("fingers", "<u1", (MAX_HANDS,)),  # bit i set: finger i extended (0 thumb ... 4 little finger)
    ("handedness", "<u1", (MAX_HANDS,)),
    ("reserved", "<u1", (MAX_HANDS,)),
    ("score", "<f4", (MAX_HANDS,)),  # handedness confidence of the hand
    ("reserved2", "<u1", (8,)),
])

FRAME_SOURCE_KINDS = ("device", "video file", "stream", "image folder", "recording")
FRAME_SOURCE_VERSION = 1
#: Where a camera frame came from (provenance), published beside each frame. 232 bytes.
FRAME_SOURCE = np.dtype([
    ("version", "<u4"),
    ("kind", "<u4"),  # index into FRAME_SOURCE_KINDS
    ("frame_seq", "<u8"),  # the camera frame's sequence number
    ("capture_ns", "<i8"),  # its capture time, CLOCK_REALTIME ns
    ("index", "<i8"),  # frame index in the video or stream (from 0), or the image's index in the folder
    ("name", "S200"),  # the image's file name in the folder, the video's file name, or the device or URL (NUL padded)
])


#: The handedness labels of both messages, by their 0/1 code (MediaPipe's spelling).
HANDEDNESS = ("Left", "Right")
#: Message types a topic's registry entry may name (``Writer(..., message=...)``): the
#: record dtype and version of each, so any tool decodes a topic without guessing.
LANDMARKS_TYPE = "shmlaunch.landmarks/1"
GESTURE_TYPE = "shmlaunch.gesture/1"
FRAME_SOURCE_TYPE = "shmlaunch.frame_source/1"


def handedness_label(code) -> str:
    """'Left' or 'Right' for a message's 0/1 handedness code."""
    return HANDEDNESS[1 if int(code) else 0]


def hand_count(rec: np.ndarray) -> int:
    """How many hands of a landmark or gesture record are valid (never more than MAX_HANDS)."""
    return min(int(rec["hand_count"]), MAX_HANDS)


def fill_hands(rec: np.ndarray, image_shape: tuple[int, ...], inference_ns: int, hands) -> int:
    """Write a detector's result into a LANDMARKS record: image size, inference time and, for
    each (landmarks (21, 3), world (21, 3) or None, handedness code, score) of ``hands``, one
    hand (at most MAX_HANDS). Returns the hand count written."""
    rec["inference_ns"] = inference_ns
    rec["image_height"], rec["image_width"] = image_shape[:2]
    n = 0
    for landmarks, world, handedness, score in hands:
        if n == MAX_HANDS:
            break
        hand = rec["hands"][n]
        hand["landmarks"] = landmarks
        hand["world"] = 0.0 if world is None else world
        hand["handedness"] = handedness
        hand["score"] = score
        n += 1
    rec["hand_count"] = n
    return n


def decode_landmarks(rec: np.ndarray, digits: int = 5) -> dict:
    """A LANDMARKS record as plain Python data (what the recorder writes and tools print)."""
    hands = []
    for h in rec["hands"][: hand_count(rec)]:
        hands.append({
            "handedness": handedness_label(h["handedness"]), "score": round(float(h["score"]), 4),
            "landmarks": [[round(float(v), digits) for v in p] for p in h["landmarks"]],
            "world": [[round(float(v), digits) for v in p] for p in h["world"]],
        })
    return {"frame_seq": int(rec["frame_seq"]), "capture_ns": int(rec["capture_ns"]), "frame_received_ns": int(rec["received_ns"]),
            "inference_ms": round(int(rec["inference_ns"]) / 1e6, 3), "image": [int(rec["image_width"]), int(rec["image_height"])],
            "hands": hands}


def decode_gesture(rec: np.ndarray) -> dict:
    """A GESTURE record as plain Python data."""
    return {"frame_seq": int(rec["frame_seq"]), "capture_ns": int(rec["capture_ns"]),
            "hands": [{"gesture": GESTURE_NAMES[int(rec["gesture"][i])] if rec["gesture"][i] < len(GESTURE_NAMES) else "unknown",
                       "fingers": int(rec["fingers"][i]), "handedness": handedness_label(rec["handedness"][i]),
                       "score": round(float(rec["score"][i]), 4)} for i in range(hand_count(rec))]}


def describe_gestures(rec: np.ndarray) -> str:
    """'call (Right), none (Left)', or 'no hand': one line for people (console, topic echo)."""
    hands = decode_gesture(rec)["hands"]
    return ", ".join(f"{h['gesture']} ({h['handedness']})" for h in hands) or "no hand"


def as_message(data: np.ndarray, dtype: np.dtype, version: int) -> np.ndarray:
    """The raw bytes of a received message as a record of ``dtype`` (zero copy), version checked."""
    raw = data.view(np.uint8).reshape(-1)
    if raw.nbytes < dtype.itemsize:
        raise ValueError(f"message of {raw.nbytes} bytes is shorter than {dtype.itemsize}, the size of version {version}")
    rec = raw[: dtype.itemsize].view(dtype)[0]
    if rec["version"] != version:
        raise ValueError(f"message version is {int(rec['version'])}, this reader knows {version}")
    return rec


def landmarks_message(data: np.ndarray) -> np.ndarray:
    """A received hand-landmark message as a LANDMARKS record (zero copy)."""
    return as_message(data, LANDMARKS, LANDMARKS_VERSION)


def gesture_message(data: np.ndarray) -> np.ndarray:
    """A received gesture message as a GESTURE record (zero copy)."""
    return as_message(data, GESTURE, GESTURE_VERSION)


def frame_source_message(data: np.ndarray) -> np.ndarray:
    """A received frame-source message as a FRAME_SOURCE record (zero copy)."""
    return as_message(data, FRAME_SOURCE, FRAME_SOURCE_VERSION)


def decode_frame_source(rec: np.ndarray) -> dict:
    """A FRAME_SOURCE record as plain Python data (what the recorder writes beside the landmarks)."""
    kind = int(rec["kind"])
    return {"kind": FRAME_SOURCE_KINDS[kind] if kind < len(FRAME_SOURCE_KINDS) else "unknown", "index": int(rec["index"]),
            "name": bytes(rec["name"]).rstrip(b"\0").decode("utf-8", "replace")}
