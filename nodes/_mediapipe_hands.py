"""Everything that touches MediaPipe: the hand landmarker of its Tasks API.

Uses the official ``mediapipe`` (1.2 or later: wheels for Linux x86_64 and aarch64, Windows,
macOS; numpy 2). The models are this package's own files, ``nodes/models/hand_landmarker_
{lite,full}.task``, built from MediaPipe's Apache-2.0 models by ``tools/build_hand_models.py``
(see ``nodes/models/NOTICE.md``) and read from the installed package: nothing is downloaded,
ever. ``model_complexity`` 0 selects the lite bundle, 1 the full one, as the legacy API did.

Two differences from the legacy ``solutions.hands`` are handled here, so that the LANDMARKS
message means what it always meant:
- Handedness: the Tasks graph names each hand the other way round from the legacy API (whose
  meaning the message layout and the gesture node keep: 1 = a right hand, as the legacy API
  reported it on the same pixels). The label is mirrored here.
- Tracking: VIDEO mode needs strictly increasing timestamps; frames get a monotonic one.

MediaPipe's Tasks library needs ``libEGL.so.1`` and ``libGLESv2.so.2`` even on a CPU; without
them the detector fails with one line naming the Debian package to install.
"""

from __future__ import annotations

import time

import numpy as np

from ._hand_runtime import check_options, model_bytes
from ._native_output import filtered_native_output
from .messages import fill_hands

#: the shared libraries MediaPipe's Tasks C library loads, and the Debian/Ubuntu packages with them
SYSTEM_LIBRARIES = {"libEGL.so.1": "libegl1", "libGLESv2.so.2": "libgles2"}
# Lines MediaPipe's C++ side writes straight to file descriptor 2 while it starts and stops
# (about features the hand path does not use, or plain progress); anything else is passed on.
_HARMLESS = ("Created TensorFlow Lite XNNPACK delegate", "All log messages before absl::InitializeLog()",
             "inference_feedback_manager.cc", "landmark_projection_calculator.cc", "XNNPACK CPU accelerator registered",
             "Flatbuffer model initialized directly", "Creating LiteRT environment", "RegisterAccelerator:",
             "DestroyAccelerator:", "gl_context.cc", "Logging before InitGoogle()",
             "Input tensor memory is not aligned according to LiteRt", "Feedback manager requires a model with a single signature")


class MediaPipeUnavailable(RuntimeError):
    """MediaPipe or a system library it needs is missing: the message says what to install."""


def _missing_library(exc: OSError) -> MediaPipeUnavailable | None:
    for lib, package in SYSTEM_LIBRARIES.items():
        if lib in str(exc):
            return MediaPipeUnavailable(f"MediaPipe's Tasks library cannot load {lib}: install it "
                                        f"(Debian/Ubuntu: apt-get install {' '.join(SYSTEM_LIBRARIES.values())}; it is in {package})")
    return None


class HandDetector:
    """MediaPipe's hand landmarker on RGB uint8 images, writing results straight into a LANDMARKS record."""

    def __init__(self, *, max_num_hands: int = 2, model_complexity: int = 0, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5, static_image_mode: bool = False) -> None:
        check_options(max_num_hands, model_complexity)
        with filtered_native_output(_HARMLESS):  # MediaPipe's C++ start-up lines stay out of the node's log (and an abort's do not)
            try:  # ~1.5 s (it imports OpenCV and matplotlib): only when a detector is made
                import mediapipe as mp
                from mediapipe.tasks.python.core.base_options import BaseOptions
                from mediapipe.tasks.python.vision import hand_landmarker
                from mediapipe.tasks.python.vision.core.vision_task_running_mode import VisionTaskRunningMode
            except ImportError as exc:
                raise MediaPipeUnavailable(f"cannot import mediapipe ({exc}): install the hands extra (README, Quick start)") from None
            self._image = lambda rgb: mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
            self._static = static_image_mode
            mode = VisionTaskRunningMode.IMAGE if static_image_mode else VisionTaskRunningMode.VIDEO
            options = hand_landmarker.HandLandmarkerOptions(
                base_options=BaseOptions(model_asset_buffer=model_bytes(model_complexity)), running_mode=mode,
                num_hands=max_num_hands, min_hand_detection_confidence=min_detection_confidence,
                min_hand_presence_confidence=min_tracking_confidence, min_tracking_confidence=min_tracking_confidence,
            )
            self._last_ms = 0
            self._sizes: set[tuple[int, ...]] = set()  # image sizes seen: the first of each logs set-up lines
            try:
                self._landmarker = hand_landmarker.HandLandmarker.create_from_options(options)
            except OSError as exc:
                raise (_missing_library(exc) or exc) from None
            self._run(np.zeros((64, 64, 3), np.uint8))  # warm up: the first call sets the graph up

    def _run(self, rgb: np.ndarray):
        image = self._image(np.ascontiguousarray(rgb))
        if self._static:
            return self._landmarker.detect(image)
        self._last_ms = max(self._last_ms + 1, time.monotonic_ns() // 1_000_000)  # strictly increasing, as VIDEO mode needs
        return self._landmarker.detect_for_video(image, self._last_ms)

    def detect_into(self, rgb: np.ndarray, rec: np.ndarray) -> int:
        """Run the model on ``rgb`` and fill ``rec`` (a LANDMARKS record): hand_count, hands[],
        image size and inference time. Returns the hand count."""
        if rgb.shape in self._sizes:
            t0 = time.perf_counter_ns()
            result = self._run(rgb)
        else:
            self._sizes.add(rgb.shape)
            with filtered_native_output(_HARMLESS):
                t0 = time.perf_counter_ns()
                result = self._run(rgb)
        world = result.hand_world_landmarks
        # handedness mirrored: see the module's docstring
        hands = (([(p.x, p.y, p.z) for p in result.hand_landmarks[i]], [(p.x, p.y, p.z) for p in world[i]] if world else None,
                  1 if result.handedness[i][0].category_name == "Left" else 0, result.handedness[i][0].score)
                 for i in range(len(result.hand_landmarks)))
        return fill_hands(rec, rgb.shape, time.perf_counter_ns() - t0, hands)

    def close(self) -> None:
        with filtered_native_output(_HARMLESS):
            self._landmarker.close()
