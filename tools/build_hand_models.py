"""Builds the hand-landmarker model bundles shipped in ``nodes/models/``, reproducibly.

The models are MediaPipe's own (Apache License 2.0): the palm detector and the hand landmark
model, lite and full, as shipped inside the ``mediapipe==0.10.21`` wheel on PyPI (the last
release that carried them as files). The Tasks API of ``mediapipe>=1.2`` takes them as one
``.task`` bundle: an uncompressed zip, each member 4-byte aligned, of ``hand_detector.tflite``
and ``hand_landmarks_detector.tflite``. The lite palm detector ships without the TFLite
metadata the Tasks graph requires ("requires specifying NormalizationOptions metadata"); its
input is the full one's (1x192x192x3, mean 0, std 255), so the full model's metadata is copied
into it (a flatbuffers edit through the TFLite schema classes MediaPipe ships; its own
``MetadataPopulator`` does not import in 1.2: it lacks its compiled helper).

Reproducible: the wheel is checked against its SHA-256, zip members get a fixed date, and the
output's SHA-256 is printed; ``--check`` rebuilds into a temporary folder and compares byte
for byte with what is committed. Needs pip (to download the wheel: this is the only step that
uses the network, and it runs here, never at run time) and ``mediapipe>=1.2`` installed.

    python tools/build_hand_models.py           # writes nodes/models/hand_landmarker_{lite,full}.task
    python tools/build_hand_models.py --check   # exit 1 if the committed bundles differ
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "nodes" / "models"
WHEEL = "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
WHEEL_SHA256 = "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3"
PALM = "mediapipe/modules/palm_detection/palm_detection_{}.tflite"
LANDMARK = "mediapipe/modules/hand_landmark/hand_landmark_{}.tflite"
FIXED_DATE = (1980, 1, 1, 0, 0, 0)
METADATA = b"TFLITE_METADATA"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_wheel(directory: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--platform",
                    "manylinux_2_28_x86_64", "--python-version", "3.11", "--dest", str(directory), "mediapipe==0.10.21"],
                   check=True)
    wheel = directory / WHEEL
    got = sha256(wheel.read_bytes())
    if got != WHEEL_SHA256:
        raise SystemExit(f"build_hand_models: {wheel.name} has SHA-256 {got}, expected {WHEEL_SHA256}")
    return wheel


def with_metadata_of(model: bytes, donor: bytes) -> bytes:
    """``model`` with ``donor``'s TFLite metadata (same input tensor, same normalization)."""
    import flatbuffers
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    def unpack(data: bytes):
        return tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel(data, 0))

    source, target = unpack(donor), unpack(model)
    if any(m.name == METADATA for m in target.metadata or []):
        raise SystemExit("build_hand_models: the lite palm model has metadata already: this script no longer applies")
    entry = next(m for m in source.metadata if m.name == METADATA)
    buffer = tfl.BufferT()
    buffer.data = source.buffers[entry.buffer].data
    target.buffers.append(buffer)
    added = tfl.MetadataT()
    added.name, added.buffer = METADATA, len(target.buffers) - 1
    target.metadata = [*(target.metadata or []), added]
    builder = flatbuffers.Builder(len(model) + len(buffer.data) + 4096)
    builder.Finish(target.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def bundle(members: dict[str, bytes], path: Path) -> None:
    """An uncompressed zip, members 4-byte aligned, dated 1980-01-01 (what the Tasks API loads)."""
    from mediapipe.tasks.python.metadata.metadata_writers.model_asset_bundle_utils import AlignZipFile

    with AlignZipFile(path, mode="w", alignment=4) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, FIXED_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compress_type=zipfile.ZIP_STORED)


def build(out: Path, work: Path) -> dict[str, str]:
    with zipfile.ZipFile(download_wheel(work)) as wheel:
        files = {name: wheel.read(name) for v in ("lite", "full") for name in (PALM.format(v), LANDMARK.format(v))}
    palm_full = files[PALM.format("full")]
    palm = {"full": palm_full, "lite": with_metadata_of(files[PALM.format("lite")], palm_full)}
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for variant in ("lite", "full"):
        path = out / f"hand_landmarker_{variant}.task"
        bundle({"hand_detector.tflite": palm[variant], "hand_landmarks_detector.tflite": files[LANDMARK.format(variant)]}, path)
        digests[path.name] = sha256(path.read_bytes())
    return digests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="rebuild into a temporary folder and compare with nodes/models")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out" if args.check else OUT
        digests = build(out, Path(tmp))
        for name, digest in digests.items():
            print(f"{digest}  {name}")
        if args.check:
            differ = [n for n in digests if (OUT / n).read_bytes() != (out / n).read_bytes()]
            if differ:
                print(f"build_hand_models: committed bundles differ from a fresh build: {', '.join(differ)}", file=sys.stderr)
                return 1
            print("build_hand_models: committed bundles are byte-identical to a fresh build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
