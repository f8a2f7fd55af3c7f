"""The hand-landmark node: MediaPipe's hand landmarker on the newest camera frame, one message per frame.

Two runtimes give the same message (``runtime``): MediaPipe's own Tasks graph, and the same
models and steps on LiteRT for the CPUs MediaPipe 1.x aborts on (Raspberry Pi 4 and 3,
Jetson Nano). ``auto`` picks without loading either library first (``_hand_runtime``).

Subscribes to ``image`` (BGR uint8, height x width x 3) and publishes ``landmarks`` (the
LANDMARKS layout of ``shmlaunch.nodes.messages``). It always takes the newest frame: a frame
that arrived while the model ran on the previous one is skipped, never queued (latency over
completeness). Frame sequence and capture time travel with the landmarks.
"""

from __future__ import annotations

import time
from importlib import resources

import cv2
import numpy as np

from ._hand_runtime import RUNTIMES, RuntimeUnavailable, choose_runtime, make_detector
from ._litert_hands import LiteRTUnavailable
from ._mediapipe_hands import MediaPipeUnavailable
from ._node import Node, NodeSetupError
from ._params import Param
from .messages import LANDMARKS, LANDMARKS_TYPE, LANDMARKS_VERSION, MAX_HANDS


class HandLandmarks(Node):
    max_num_hands = Param(2, f"hands to look for, 1 to {MAX_HANDS}", low=1, high=MAX_HANDS)
    model_complexity = Param(0, "0 (faster) or 1 (more accurate)", choices=(0, 1))
    min_detection_confidence = Param(0.5, "palm detection threshold", low=0.0, high=1.0)
    min_tracking_confidence = Param(0.5, "landmark tracking threshold (below it, detection runs again)", low=0.0, high=1.0)
    static_image_mode = Param(False, "detect on every frame instead of tracking (for unrelated images)")
    runtime = Param("auto", f"{' | '.join(RUNTIMES)}: auto takes MediaPipe where it can run, else LiteRT", choices=RUNTIMES)
    subscribes = {"image": {"dtype": "uint8", "ndim": 3}}
    publishes = {"landmarks": {"min_capacity": LANDMARKS.itemsize}}

    @staticmethod
    def _detector(params: dict, static_image_mode: bool):
        """(the runtime chosen, a detector on it) for the node's parameters; NodeSetupError, one line, if none can run."""
        try:
            choice = choose_runtime(params["runtime"])
            return choice, make_detector(
                choice, max_num_hands=params["max_num_hands"], model_complexity=params["model_complexity"],
                min_detection_confidence=params["min_detection_confidence"],
                min_tracking_confidence=params["min_tracking_confidence"], static_image_mode=static_image_mode,
            )
        except (RuntimeUnavailable, MediaPipeUnavailable, LiteRTUnavailable, ValueError) as exc:
            raise NodeSetupError(str(exc)) from None

    def setup(self) -> None:
        choice, self.detector = self._detector(self.params, self.static_image_mode)
        self.out = self.publisher("landmarks", message=LANDMARKS_TYPE)
        self.subscribe("image", self.on_frame)
        self.rgb: np.ndarray | None = None
        self.log.info("hand landmarker ready (runtime %s: %s; max_num_hands=%d, %s model, %s)", choice.runtime, choice.reason,
                      self.max_num_hands, ("lite", "full")[self.model_complexity], "static images" if self.static_image_mode else "tracking")

    @classmethod
    def deep_check(cls, params: dict) -> str:
        """Choose the runtime as the node will, load its model and run it on a bundled photo."""
        choice, detector = cls._detector(params, static_image_mode=True)
        photo = resources.files("shmlaunch.nodes") / "sample" / "2-four.jpg"
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(photo.read_bytes(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        rec = np.zeros(1, LANDMARKS)[0]
        found = detector.detect_into(rgb, rec)
        detector.close()
        return (f"runtime {choice.runtime} ({choice.reason}): {('lite', 'full')[params['model_complexity']]} model loaded, "
                f"{found} hand(s) in the bundled {photo.name} in {rec['inference_ns'] / 1e6:.0f} ms")

    def on_frame(self, msg) -> None:
        received = time.time_ns()
        frame = msg.data
        if self.rgb is None or self.rgb.shape != frame.shape:
            self.rgb = np.empty_like(frame)
        cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=self.rgb)
        msg.release()  # the frame is converted: the camera may reuse its slot during the 15-20 ms of inference
        with self.out.loan(nbytes=LANDMARKS.itemsize, stamp_ns=msg.stamp_ns, source_seq=msg.seq) as buf:
            rec = buf.view(LANDMARKS)[0]
            rec["version"] = LANDMARKS_VERSION
            rec["frame_seq"] = msg.seq
            rec["capture_ns"] = msg.stamp_ns
            rec["received_ns"] = received
            self.detector.detect_into(self.rgb, rec)

    def teardown(self) -> None:
        self.detector.close()
