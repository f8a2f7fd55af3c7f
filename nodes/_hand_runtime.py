"""Which hand-landmark runtime runs here: MediaPipe Tasks or LiteRT, chosen without ever
loading a library that could abort the process.

MediaPipe 1.x's ``libmediapipe.so`` checks at load for ARMv8.2 features and aborts the process
(SIGILL) on ARMv8.0 cores: Raspberry Pi 4 (Cortex-A72) and 3 (A53), Jetson Nano (A57). Loading
it to find out is not an option, so ``auto`` decides from what the kernel says of the CPU
(``backend.cpu_features()``, /proc/cpuinfo on Linux) and from which packages are installed
(looked up, not imported):

- ``mediapipe``: MediaPipe's own Tasks graph, where it can run (x86-64; aarch64 with every
  feature below). It is the reference the LiteRT runtime is measured against.
- ``litert``: this package's implementation of the same pipeline (``_litert_hands``) on LiteRT,
  which runs on any 64-bit ARM or x86 core.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
from dataclasses import dataclass
from importlib import resources

from shmlaunch import _platform as backend

from .messages import MAX_HANDS

RUNTIMES = ("auto", "mediapipe", "litert")
#: the bundled model files by ``model_complexity``: both runtimes read the same bytes
MODELS = {0: "hand_landmarker_lite.task", 1: "hand_landmarker_full.task"}
#: what libmediapipe.so 1.x checks for at load on aarch64 (it aborts without any one): the
#: kernel's name in /proc/cpuinfo -> the architecture's name
MEDIAPIPE_AARCH64_FEATURES = {
    "atomics": "lse", "asimddp": "dotprod", "lrcpc": "rcpc", "asimdrdm": "rdm", "asimdhp": "fp16", "aes": "aes",
    "crc32": "crc", "sha2": "sha2",
}


class RuntimeUnavailable(RuntimeError):
    """The runtime asked for cannot run here: the message says why and what would."""


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime the hand node will load, and why (the node logs both)."""

    runtime: str
    reason: str


def model_bytes(model_complexity: int) -> bytes:
    """The bundled ``.task`` file for ``model_complexity`` (0 lite, 1 full), from the installed package."""
    return (resources.files("shmlaunch.nodes") / "models" / MODELS[model_complexity]).read_bytes()


def check_options(max_num_hands: int, model_complexity: int) -> None:
    """ValueError naming the option for what neither runtime can do."""
    if not 1 <= max_num_hands <= MAX_HANDS:
        raise ValueError(f"max_num_hands must be 1 to {MAX_HANDS}, got {max_num_hands}")
    if model_complexity not in MODELS:
        raise ValueError(f"model_complexity must be 0 or 1, got {model_complexity}")


def _version(package: str) -> str | None:
    """The installed distribution's version, or None; nothing is imported."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _installed(module: str, package: str) -> str | None:
    return _version(package) if importlib.util.find_spec(module) is not None else None


def mediapipe_blocker(machine: str, features: frozenset[str], version: str) -> str | None:
    """Why MediaPipe ``version`` would abort on this CPU, or None when it can load."""
    if machine.lower() not in ("aarch64", "arm64") or int(version.split(".")[0]) < 1:
        return None  # x86-64 wheels need nothing special; 0.10.x aarch64 wheels load on ARMv8.0
    missing = sorted({name for flag, name in MEDIAPIPE_AARCH64_FEATURES.items() if flag not in features})
    if not missing:
        return None
    return (f"MediaPipe {version} aborts at load on this CPU ({machine}, without {', '.join(missing)}: an ARMv8.0 core "
            f"such as a Raspberry Pi 4 or 3 or a Jetson Nano; it needs ARMv8.2, e.g. a Raspberry Pi 5 or Jetson Orin)")


def choose_runtime(requested: str, *, machine: str | None = None, features: frozenset[str] | None = None,
                   mediapipe_version: str | None = None, litert_version: str | None = None, probe: bool = True) -> RuntimeChoice:
    """The runtime for ``requested`` (auto, mediapipe or litert) on this machine, with the reason.

    The keyword arguments stand in for what is looked up here (tests pass them); with
    ``probe`` the installed packages are looked up when not given.
    """
    if requested not in RUNTIMES:
        raise RuntimeUnavailable(f"runtime must be one of {', '.join(RUNTIMES)}, got {requested!r}")
    machine = machine or platform.machine()
    features = backend.cpu_features() if features is None else features
    if probe:
        mediapipe_version = mediapipe_version or _installed("mediapipe", "mediapipe")
        litert_version = litert_version or _installed("ai_edge_litert", "ai-edge-litert")
    blocker = mediapipe_blocker(machine, features, mediapipe_version) if mediapipe_version else "mediapipe is not installed"
    install = "install the hands extra (README, Quick start)"
    if requested == "mediapipe":
        if blocker:
            raise RuntimeUnavailable(f"runtime 'mediapipe' cannot run here: {blocker}; use runtime 'litert' or 'auto'")
        return RuntimeChoice("mediapipe", f"asked for; MediaPipe {mediapipe_version}")
    if requested == "litert":
        if not litert_version:
            raise RuntimeUnavailable(f"runtime 'litert' cannot run here: ai-edge-litert is not installed; {install}")
        return RuntimeChoice("litert", f"asked for; LiteRT {litert_version}")
    if not blocker:
        return RuntimeChoice("mediapipe", f"auto: MediaPipe {mediapipe_version} runs on this CPU ({machine})")
    if litert_version:
        return RuntimeChoice("litert", f"auto: {blocker}; LiteRT {litert_version} instead")
    raise RuntimeUnavailable(f"no hand runtime can run here: {blocker}, and ai-edge-litert is not installed; {install}")


def make_detector(choice: RuntimeChoice, **options):
    """A detector of the chosen runtime (``detect_into(rgb, rec)``, ``close()``); ``options``
    are HandDetector's: max_num_hands, model_complexity, min_detection_confidence,
    min_tracking_confidence, static_image_mode. Only the chosen runtime's library is imported."""
    if choice.runtime == "mediapipe":
        from ._mediapipe_hands import HandDetector

        return HandDetector(**options)
    from ._litert_hands import LiteRTHandDetector

    return LiteRTHandDetector(**options)
