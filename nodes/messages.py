"""Fixed-layout messages of the built-in nodes, as numpy structured dtypes.

These are the byte layouts C++ and C# readers follow (transport/LAYOUT.md, "Message
layouts", repeats the offsets). All little-endian, no padding, version first: a reader
refuses a version it does not know. A topic carrying them is a raw topic (``capacity`` at
least ``itemsize``); decode a message with ``LANDMARKS.view`` helpers below.
"""

from __future__ import annotations

import numpy as np

MAX_HANDS = 4
N_LANDMARKS = 21

#: One detected hand, 512 bytes.
HAND = np.dtype([
    ("landmarks", "<f4", (N_LANDMARKS, 3)),  # x, y normalised to the image [0, 1]; z relative to the wrist, same scale as x
    ("world", "<f4", (N_LANDMARKS, 3)),  # metres, origin near the hand's centre
    ("score", "<f4"),  # handedness confidence
    ("handedness", "<u4"),  # 0 left, 1 right (as MediaPipe reports it: assumes a mirrored, selfie image)
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
