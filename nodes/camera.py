"""The camera node: frames from a device, a video file, a stream URL or a folder of images.

Publishes BGR uint8 frames of the topic's shape (height, width, 3) on port ``image``, each
stamped with its capture time. Frames are decoded straight into a loaned slot of the topic
when the source's size matches (``VideoCapture.read(image=slot)``); otherwise they are
letterboxed into it (scaled with their aspect ratio kept). ``source: auto`` takes /dev/video0 when it opens and the
bundled sample photos otherwise, so a graph runs on a machine with no camera. An ``.mcap`` file
made by ``shmlaunch record`` plays its frames as if they came from the camera.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np

from ._node import Node, NodeError, NodeSetupError
from ._params import Param
from .messages import FRAME_SOURCE, FRAME_SOURCE_KINDS, FRAME_SOURCE_TYPE, FRAME_SOURCE_VERSION

SAMPLE_DIR = Path(__file__).parent / "sample"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def letterbox(img: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``img`` scaled to fit ``shape`` with its aspect ratio kept, centred on black: a hand
    stretched out of proportion is a different hand to a landmark model."""
    h, w = shape[:2]
    scale = min(w / img.shape[1], h / img.shape[0])
    nw, nh = max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))
    out = np.zeros(shape, np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y : y + nh, x : x + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


class _Folder:
    """A folder of images, decoded once and resized to the topic's shape, cycled forever;
    each image is repeated for ``repeat`` frames (a still scene filmed at the frame rate)."""

    live = False
    kind = "image folder"

    def __init__(self, folder: Path, shape: tuple[int, int, int], repeat: int = 1) -> None:
        files = image_files(folder)
        if not files:
            raise NodeSetupError(f"cannot open camera source {str(folder)!r}: the folder has no images")
        self.frames = []
        for f in files:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise NodeSetupError(f"cannot open camera source {str(folder)!r}: {f.name} is not a readable image")
            self.frames.append(letterbox(img, shape))
        self.names = [f.name for f in files]
        self.repeat = max(1, repeat)
        self.index = 0

    def read_into(self, out: np.ndarray) -> bool:
        self.shown = (self.index // self.repeat) % len(self.frames)
        np.copyto(out, self.frames[self.shown])
        self.index += 1
        return True

    def position(self) -> tuple[int, str]:
        """(index, name) of the frame read last: the image's place in the folder and its file name."""
        return self.shown, self.names[self.shown]

    def release(self) -> None:
        self.frames = []


class _Capture:
    """cv2.VideoCapture: a device, a file or a URL. Decodes into the slot when sizes match."""

    def __init__(self, source: str | int, live: bool, loop: bool, width: int, height: int, fps: float) -> None:
        self.cap = cv2.VideoCapture(source)
        self.kind = "device" if live else "stream" if "://" in str(source) else "video file"
        self.name = Path(source).name if self.kind == "video file" else str(source)
        self.index = -1
        if not self.cap.isOpened():
            raise NodeSetupError(f"cannot open camera source {source!r}: no such device, file or stream (or no codec for it)")
        self.live = live
        self.loop = loop
        if live:
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            self.cap.set(cv2.CAP_PROP_FPS, fps)
        self.tmp: np.ndarray | None = None

    def read_into(self, out: np.ndarray) -> bool:
        ok, frame = self.cap.read(image=out)
        if not ok and self.loop and not self.live:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self.index = -1
            ok, frame = self.cap.read(image=out)
        if not ok:
            return False
        self.index += 1
        if frame is not out and frame.ctypes.data != out.ctypes.data:  # other size: OpenCV allocated a new frame
            np.copyto(out, letterbox(frame, out.shape))
        return True

    def position(self) -> tuple[int, str]:
        """(index, name) of the frame read last: its index in the video or stream, and the source's name."""
        return self.index, self.name

    def release(self) -> None:
        self.cap.release()


class _Recording:
    """The first image topic of an MCAP recording (``shmlaunch record``), frame by frame at the
    node's pace, letterboxed to the topic's shape when sizes differ."""

    live = False
    kind = "recording"

    def __init__(self, path: Path, loop: bool, log: logging.Logger) -> None:
        from .recording import RecordingError, check_record_extra, image_frames

        self.path, self.loop, self.index, self.lost = path, loop, -1, []
        self.errors = (RecordingError, OSError)

        def lost(lines: list[str]) -> None:  # a damaged recording: said at each pass, fails the node at its end
            for line in lines:
                log.warning("%s", line)
            self.lost = lines

        self.open = lambda: image_frames(path, on_loss=lost)
        try:
            check_record_extra()
            self.frames = self.open()
            self.pending = next(self.frames)
        except self.errors as exc:
            raise NodeSetupError(f"cannot open camera source {str(path)!r}: {exc}") from None

    def read_into(self, out: np.ndarray) -> bool:
        got, self.pending = self.pending, None
        try:
            if got is None:
                got = next(self.frames, None)
            if got is None and self.loop:
                self.frames, self.index = self.open(), -1
                got = next(self.frames, None)
        except self.errors as exc:
            raise NodeError(f"camera source {str(self.path)!r}: {exc}") from None
        if got is None and self.lost:
            raise NodeError(f"end of {str(self.path)!r}: frames were lost ({self.lost[0]})")
        if got is None:
            return False
        pixels, _capture_ns = got
        self.index += 1
        np.copyto(out, pixels if pixels.shape == out.shape else letterbox(pixels, out.shape))
        return True

    def position(self) -> tuple[int, str]:
        """(index, name) of the frame read last: its place among the recording's frames, the file's name."""
        return self.index, self.path.name

    def release(self) -> None:
        self.frames = iter(())


class Camera(Node):
    """Publishes camera frames (BGR, the topic's shape) with their capture time."""

    source = Param("auto", "'auto', a device index or /dev/videoN, a video file, an rtsp:// or http:// URL, a folder of images, "
                   "or an .mcap recording (its first image topic)",
                   type=(str, int))
    width = Param(640, "width asked of a live camera (frames are resized to the topic's shape anyway)", low=1)
    height = Param(480, "height asked of a live camera", low=1)
    fps = Param(30.0, "frames per second: the pace for files and folders, asked of a live camera", low=0.01, high=1000.0)
    loop = Param(True, "start a video file again at its end (folders always cycle)")
    image_seconds = Param(0.0, "for a folder: how long each image is shown (0: one frame each)", low=0.0)
    publishes = {"image": {"dtype": "uint8", "ndim": 3}, "source": {"min_capacity": FRAME_SOURCE.itemsize}}

    def setup(self) -> None:
        self.out = self.publisher("image")
        shape = self.out.config.shape
        if self.out.config.dtype != np.uint8 or shape is None or len(shape) != 3 or shape[2] != 3:
            raise NodeSetupError(f"topic {self.out.topic!r} must be uint8 with shape [height, width, 3] for a camera")
        self.src = self._open(self.source, shape)
        # provenance (optional port): where each frame came from, published right after it
        self.provenance = self.publisher("source", message=FRAME_SOURCE_TYPE) if self.is_mapped("source", "publish") else None
        self.log.info("publishing %s frames of %dx%d to %r from %s", "live" if self.src.live else f"{self.fps:g} fps",
                      shape[1], shape[0], self.out.topic, self.describe)
        self.frames = self.dropped = 0
        self.timer(1.0 / self.fps, self.grab)

    def _open(self, source, shape):
        if source == "auto":
            if os.path.exists("/dev/video0"):
                try:
                    self.describe = "/dev/video0"
                    return _Capture(0, True, False, self.width, self.height, self.fps)
                except NodeSetupError:
                    self.log.warning("/dev/video0 exists but does not open; using the bundled sample")
            self.describe = f"the bundled sample ({SAMPLE_DIR})"
            return self._folder(SAMPLE_DIR, shape)
        if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
            self.describe = f"camera {source}"
            return _Capture(int(source), True, False, self.width, self.height, self.fps)
        if "://" in source:
            self.describe = source
            return _Capture(source, True, False, self.width, self.height, self.fps)
        path = Path(source)
        self.describe = source
        if path.is_dir():
            return self._folder(path, shape)
        if path.suffix == ".mcap":  # a recording (or a split one's stem)
            return _Recording(path, self.loop, self.log)
        if not path.exists():
            raise NodeSetupError(f"cannot open camera source {str(path.absolute())!r}: no such file, device or folder")
        return _Capture(str(path), source.startswith("/dev/"), self.loop, self.width, self.height, self.fps)

    def _folder(self, path: Path, shape) -> _Folder:
        return _Folder(path, shape, repeat=round(self.image_seconds * self.fps))

    def grab(self) -> None:
        loan = self.out.loan()
        if loan.dropped:
            self.dropped += 1  # every slot is held by slow readers: skip this frame, never wait
            return
        with loan as slot:
            if not self.src.read_into(slot):
                loan.cancel()
                self.log.info("end of %s after %d frames", self.describe, self.frames)
                self.shutdown("end of source")
                return
            loan.stamp_ns = time.time_ns()
        self.frames += 1
        if self.provenance is not None:
            self._publish_source(loan.seq, loan.stamp_ns)

    def _publish_source(self, frame_seq: int, capture_ns: int) -> None:
        index, name = self.src.position()
        with self.provenance.loan(nbytes=FRAME_SOURCE.itemsize, stamp_ns=capture_ns, source_seq=frame_seq) as buf:
            rec = buf.view(FRAME_SOURCE)[0]
            rec["version"], rec["kind"] = FRAME_SOURCE_VERSION, FRAME_SOURCE_KINDS.index(self.src.kind)
            rec["frame_seq"], rec["capture_ns"], rec["index"] = frame_seq, capture_ns, index
            rec["name"] = name.encode("utf-8")[: FRAME_SOURCE.fields["name"][0].itemsize]

    def teardown(self) -> None:
        self.src.release()
        if self.dropped:  # a slow reader held every slot: say how often that cost a frame
            self.log.info("published %d frames; skipped %d because every slot was held by readers", self.frames, self.dropped)
