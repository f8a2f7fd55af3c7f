"""The hands graph with real MediaPipe, real OpenCV decoding and the real photos."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from photos import HANDS, needs_photos
from test_launcher import unique_name

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("call", "four", "none", "rock")

cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed (pip install -e '.[hands]')")
pytest.importorskip("mediapipe", reason="MediaPipe is not installed (README, Quick start: uv pip install --override overrides.txt -e '.[hands]')")

from shmlaunch.nodes.camera import Camera, letterbox  # noqa: E402
from shmlaunch.nodes.gestures import BOUNDS, PHOTO_LABELS, fit_bounds, photo_label  # noqa: E402
from shmlaunch.nodes.messages import GESTURE_NAMES, LANDMARKS, LANDMARKS_VERSION, landmarks_message  # noqa: E402
from shmlaunch.transport import Reader, Writer  # noqa: E402


def photos() -> list[tuple[str, Path]]:
    return [(label, p) for label in LABELS for p in sorted((HANDS / label).glob("*.jpg"))]


def image_label(gestures: list[str]) -> str:
    """What an image shows: its first hand with a named gesture, else none."""
    return next((g for g in gestures if g in PHOTO_LABELS), "none")


RUNTIMES = ("mediapipe", "litert")


@pytest.fixture(scope="module")
def detectors():
    """Static-image detectors of both runtimes for model_complexity 0 (lite) and 1 (full)."""
    from shmlaunch.nodes._hand_runtime import choose_runtime, make_detector

    dets = {(r, c): make_detector(choose_runtime(r), static_image_mode=True, max_num_hands=2, model_complexity=c)
            for r in RUNTIMES for c in (0, 1)}
    yield dets
    for det in dets.values():
        det.close()


@pytest.fixture(scope="module", params=[(r, c) for r in RUNTIMES for c in (0, 1)], ids=[f"{r}-{m}" for r in RUNTIMES for m in ("lite", "full")])
def detector(request, detectors):
    """Each runtime and model: both runtimes pass the same detector tests."""
    return detectors[request.param]


def detect(detector, bgr: np.ndarray) -> np.ndarray:
    buf = np.zeros(1, LANDMARKS)
    buf[0]["version"] = LANDMARKS_VERSION
    detector.detect_into(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), buf[0])
    return buf[0]


@needs_photos
def test_landmark_detector_finds_a_hand_in_at_least_20_of_the_24_photos(detector):
    found = [int(detect(detector, cv2.imread(str(p)))["hand_count"]) > 0 for _, p in photos()]
    assert len(found) == 24
    assert sum(found) >= 20, f"hands found in {sum(found)} of 24 photos"


@needs_photos
def test_landmarks_are_plausible(detector):
    rec = detect(detector, cv2.imread(str(HANDS / "four" / "06aa70cc-a12a-4b1e-85cf-e54d44c19a3a.jpg")))
    assert rec["hand_count"] == 1
    hand = rec["hands"][0]
    assert ((hand["landmarks"][:, :2] >= 0) & (hand["landmarks"][:, :2] <= 1)).all()  # normalised to the image
    assert abs(hand["landmarks"][0, 2]) < 1e-3  # z is relative to the wrist
    span = np.linalg.norm(hand["world"][0] - hand["world"][12])
    assert 0.05 < span < 0.3  # wrist to middle fingertip, in metres
    assert rec["image_width"] == 384 and rec["image_height"] == 512 and rec["inference_ns"] > 0


@needs_photos
@pytest.mark.parametrize("complexity", [0, 1], ids=["lite", "full"])
def test_gesture_accuracy_on_the_labelled_photos_in_sample_and_leaving_each_photo_out(detectors, complexity, record_property):
    """The shipped bounds are what fit_bounds gives on all 24 photos (both runtimes' landmarks
    pooled); scored on those same photos they flatter, so each photo is also scored with bounds
    fitted on the other 23 (leave one out): the figure to expect of photos outside the set."""
    hands = {r: [(label, [rec["hands"][i]["world"].copy() for i in range(int(rec["hand_count"]))])
                 for label, p in photos() for rec in [detect(detectors[r, complexity], cv2.imread(str(p)))]] for r in RUNTIMES}
    found = {r: [(label, w) for label, w in rows if w] for r, rows in hands.items()}
    assert BOUNDS[complexity] == fit_bounds(found["mediapipe"] + found["litert"]), "refit the bounds (nodes/gestures.py)"
    in_sample = {r: sum(photo_label(w, BOUNDS[complexity]) == label for label, w in rows) for r, rows in found.items()}
    left_out, misses = dict.fromkeys(RUNTIMES, 0), []
    for i in range(len(photos())):
        bounds = fit_bounds([x for r in RUNTIMES for j, x in enumerate(hands[r]) if j != i and x[1]])
        for r in RUNTIMES:
            label, worlds = hands[r][i]
            if worlds:
                got = photo_label(worlds, bounds)
                left_out[r] += got == label
                misses += [f"{r}: {label} -> {got}"] if got != label else []
    figures = {r: f"{in_sample[r]}/{len(found[r])} in sample, {left_out[r]}/{len(found[r])} left out" for r in RUNTIMES}
    record_property("gesture_accuracy", figures)
    print(f"model_complexity {complexity}: {figures}; left-out misses: {misses}")
    for r in RUNTIMES:
        assert len(found[r]) >= 20 and in_sample[r] / len(found[r]) >= 0.9, figures
        assert left_out[r] / len(found[r]) >= 0.7, figures
    assert abs(in_sample["litert"] - in_sample["mediapipe"]) <= 1  # the runtimes name the same photos, within one


def test_landmark_message_round_trips_through_a_topic(rt):
    w = Writer("hands/landmarks", capacity=LANDMARKS.itemsize, runtime_dir=rt)
    r = Reader("hands/landmarks", runtime_dir=rt)
    sent = np.zeros(1, LANDMARKS)
    rec = sent[0]
    rec["version"], rec["hand_count"], rec["frame_seq"], rec["capture_ns"] = LANDMARKS_VERSION, 2, 77, 123456789
    rec["hands"]["landmarks"] = np.random.default_rng(0).random((4, 21, 3))
    rec["hands"]["handedness"] = [1, 0, 0, 0]
    w.publish(sent.view(np.uint8))
    with r.receive(timeout=1) as msg:
        got = landmarks_message(msg.data)
        assert got.tobytes() == rec.tobytes()
        assert got["frame_seq"] == 77 and got["hands"][0]["handedness"] == 1
    with pytest.raises(ValueError, match=r"^message version is 9, this reader knows 1$"):
        bad = sent.copy()
        bad[0]["version"] = 9
        landmarks_message(bad.view(np.uint8))


@needs_photos
def test_camera_decodes_a_video_file_into_the_topic(rt, tmp_path):
    clip = tmp_path / "clip.avi"
    frames = [letterbox(cv2.imread(str(p)), (240, 320, 3)) for _, p in photos()[:3]]
    vw = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    for f in frames:
        vw.write(f)
    vw.release()
    Writer("camera/image", dtype="uint8", shape=(240, 320, 3), pool=4, runtime_dir=rt).close()
    cam = Camera("camera", {"source": str(clip), "fps": 200.0, "loop": False}, publish={"image": "camera/image"}, runtime_dir=rt)
    r = Reader("camera/image", runtime_dir=rt)
    assert cam.run(duration=10) == 0  # ends by itself at the end of the clip
    msg = r.receive(timeout=1)
    assert msg.seq == 3 and msg.data.shape == (240, 320, 3)
    assert np.abs(msg.data.astype(int) - frames[2].astype(int)).mean() < 8  # the third frame, through MJPEG


def test_camera_source_that_cannot_be_opened_is_one_line(rt, caplog):
    Writer("camera/image", dtype="uint8", shape=(48, 64, 3), runtime_dir=rt).close()
    cam = Camera("camera", {"source": "/no/such/clip.mp4"}, publish={"image": "camera/image"}, runtime_dir=rt)
    with caplog.at_level(logging.ERROR):
        assert cam.run(duration=1) == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["cannot open camera source '/no/such/clip.mp4': no such file, device or folder"]
    assert errors[0].exc_info is None  # no traceback for an expected failure


def test_bundled_hands_graph_passes_the_preflight_check():
    res = subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", "check", str(ROOT / "launch" / "hands.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "graph 'hands' is consistent: 5 nodes, 4 topics" in res.stdout


def run_hands_graph(tmp: Path, *args: str):
    """The hands graph through the launcher on 8 labelled photos, static mode: (photos, recorder lines, stdout)."""
    folder = tmp / "photos"
    folder.mkdir()
    chosen = [(label, p) for label in LABELS for p in sorted((HANDS / label).glob("*.jpg"))[:2]]
    for i, (label, p) in enumerate(chosen):
        shutil.copy(p, folder / f"{i}-{label}.jpg")
    out = tmp / "hands.jsonl"
    res = subprocess.run(
        [sys.executable, "-m", "shmlaunch.launch.cli", str(ROOT / "launch" / "hands.yaml"), f"source:={folder}", "fps:=10",
         f"record:={out}", "static:=true", "complexity:=1", "hold:=0", "width:=384", "height:=512", "--duration", "12",
         "--name", unique_name("hands"), *args],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    files = sorted(folder.iterdir())
    return files, lines, res.stdout


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory):
    """The hands graph with the runtime auto takes here (MediaPipe on x86-64)."""
    return run_hands_graph(tmp_path_factory.mktemp("graph"))


def photo_of(files: list[Path], frame_seq: int) -> Path:
    """The camera cycles the folder one image per frame, so frame n (from 1) is image (n-1) mod count."""
    return files[(frame_seq - 1) % len(files)]


@pytest.fixture(scope="module")
def tasks_landmarker():
    """MediaPipe's own HandLandmarker (IMAGE mode, the full bundle), called directly: the reference."""
    import mediapipe as mp
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.vision import hand_landmarker

    from shmlaunch.nodes._mediapipe_hands import model_bytes

    options = hand_landmarker.HandLandmarkerOptions(base_options=BaseOptions(model_asset_buffer=model_bytes(1)), num_hands=2)
    with hand_landmarker.HandLandmarker.create_from_options(options) as lm:
        yield lambda rgb: lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)))


@needs_photos
def test_landmarks_through_the_graph_equal_mediapipe_in_process(graph_run, tasks_landmarker):
    files, lines, _ = graph_run
    landmarks = [line for line in lines if line["type"] == "landmarks"]
    assert len(landmarks) >= 30
    compared = 0
    for line in landmarks[:40]:
        frame = letterbox(cv2.imread(str(photo_of(files, line["frame_seq"]))), (512, 384, 3))
        ref = tasks_landmarker(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        assert len(line["hands"]) == len(ref.hand_landmarks), photo_of(files, line["frame_seq"]).name
        for i, hand in enumerate(line["hands"]):
            np.testing.assert_allclose(hand["landmarks"], [(p.x, p.y, p.z) for p in ref.hand_landmarks[i]], atol=2e-5)
            np.testing.assert_allclose(hand["world"], [(p.x, p.y, p.z) for p in ref.hand_world_landmarks[i]], atol=2e-5)
            # handedness keeps the legacy meaning, which the Tasks graph reports the other way round
            assert hand["handedness"] == ("Right" if ref.handedness[i][0].category_name == "Left" else "Left")
            compared += 1
    assert compared >= 20


@needs_photos
def test_every_recorded_landmark_line_names_the_photo_it_came_from(graph_run):
    files, lines, _ = graph_run
    landmarks = [line for line in lines if line["type"] == "landmarks"]
    assert landmarks and all("source" in line for line in landmarks)
    for line in landmarks:
        photo = photo_of(files, line["frame_seq"])
        assert line["source"] == {"kind": "image folder", "index": files.index(photo), "name": photo.name}


@needs_photos
def test_full_graph_recorder_gestures_match_the_photos(graph_run):
    files, lines, stdout = graph_run
    gestures = [line for line in lines if line["type"] == "gesture" and line["hands"]]
    assert len(gestures) >= 30
    right = sum(image_label([h["gesture"] for h in g["hands"]]) == photo_of(files, g["frame_seq"]).stem.split("-")[1]
                for g in gestures)
    assert right / len(gestures) >= 0.85, f"{right}/{len(gestures)}"
    assert all(h["gesture"] in GESTURE_NAMES for g in gestures for h in g["hands"])
    assert "console  | INFO" in stdout and " fps | capture->landmarks p50 " in stdout
    mediapipe_noise = [line for line in stdout.splitlines() if "InitGoogle" in line or "INFO: [" in line or " W0000 " in line]
    assert mediapipe_noise == []  # MediaPipe's start-up lines stay out of the log


@needs_photos
def test_the_graph_on_the_litert_runtime_names_the_photos_gestures_as_often():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files, lines, stdout = run_hands_graph(Path(tmp), "runtime:=litert")
    assert "hand landmarker ready (runtime litert: asked for; LiteRT " in stdout
    gestures = [line for line in lines if line["type"] == "gesture" and line["hands"]]
    assert len(gestures) >= 30
    right = sum(image_label([h["gesture"] for h in g["hands"]]) == photo_of(files, g["frame_seq"]).stem.split("-")[1]
                for g in gestures)
    assert right / len(gestures) >= 0.85, f"{right}/{len(gestures)}"
    assert "XNNPACK" not in stdout  # LiteRT's start-up line stays out of the log


@needs_photos
def test_camera_letterboxes_frames_of_another_size(rt, tmp_path):
    clip = tmp_path / "clip.avi"
    frame = letterbox(cv2.imread(str(photos()[0][1])), (240, 320, 3))
    vw = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    vw.write(frame)
    vw.release()
    Writer("camera/image", dtype="uint8", shape=(240, 480, 3), runtime_dir=rt).close()
    cam = Camera("camera", {"source": str(clip), "fps": 100.0, "loop": False}, publish={"image": "camera/image"}, runtime_dir=rt)
    r = Reader("camera/image", runtime_dir=rt)
    assert cam.run(duration=10) == 0
    got = r.receive(timeout=1).data
    assert got[:, :75].max() < 20 and got[:, -75:].max() < 20  # black bars left and right, aspect kept
    assert np.abs(got[:, 80:400].astype(int) - frame.astype(int)).mean() < 8


@needs_photos
def test_hands_node_lets_the_camera_slot_go_before_inference(rt):
    from shmlaunch.nodes.hands import HandLandmarks

    held_during_inference = []

    class Watched(HandLandmarks):
        def setup(self) -> None:
            super().setup()
            detect = self.detector.detect_into

            def watched(rgb, rec):
                held_during_inference.append(self.frame_msg.held)
                return detect(rgb, rec)

            self.detector.detect_into = watched

        def on_frame(self, msg) -> None:
            self.frame_msg = msg
            super().on_frame(msg)

    frame = letterbox(cv2.imread(str(photos()[0][1])), (240, 320, 3))
    w = Writer("camera/image", dtype="uint8", shape=(240, 320, 3), pool=2, runtime_dir=rt)
    Writer("hands/landmarks", capacity=LANDMARKS.itemsize, runtime_dir=rt).close()
    node = Watched("hands", {"static_image_mode": True}, subscribe={"image": "camera/image"}, publish={"landmarks": "hands/landmarks"},
                   runtime_dir=rt)
    threading.Timer(1.0, w.publish, args=(frame,)).start()
    assert node.run(duration=4) == 0
    assert held_during_inference == [False]  # converted, released, then the 15-20 ms of inference


def test_a_missing_system_library_is_one_line_naming_the_package(tmp_path):
    """MediaPipe's Tasks library needs libEGL.so.1: hide it (a private mount namespace, root only) and ask for a detector."""
    lib = next((Path(d) / "libEGL.so.1" for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                                                   "/usr/lib/aarch64-linux-gnu") if (Path(d) / "libEGL.so.1").exists()), None)
    if lib is None or shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root, unshare and libEGL.so.1 installed (to hide it in a private mount namespace)")
    code = ("from shmlaunch.nodes._mediapipe_hands import HandDetector, MediaPipeUnavailable\n"
            "try:\n    HandDetector()\nexcept MediaPipeUnavailable as exc:\n    print(exc)\n")
    res = subprocess.run(["unshare", "-m", "sh", "-c", f'mount --bind /dev/null "{lib.resolve()}" && exec "$0" -c "$1"', sys.executable, code],
                         capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == ("MediaPipe's Tasks library cannot load libEGL.so.1: install it "
                                  "(Debian/Ubuntu: apt-get install libegl1 libgles2; it is in libegl1)"), res.stdout + res.stderr
