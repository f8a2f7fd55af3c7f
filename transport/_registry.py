"""The registry file: one small YAML file per graph listing every topic's static config.

Writers and the launcher add entries under an exclusive lock on ``registry.lock`` and
replace the file atomically (write a temporary file, then rename), so a reader never sees
half a registry and needs no lock to read it. Example::

    layout_version: 1
    topics:
      "camera/image": {"capacity": 2764800, "dtype": "|u1", "pool": 4, "segment": "camera.image.pool", "shape": [720, 1280, 3], "typestr": "|u1"}
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml

from ._errors import SegmentCorruptError
from ._layout import LAYOUT_VERSION, TopicConfig
from ._platform import ByteLock
from ._runtime import REGISTRY_FILE, segment_file_name

LOCK_FILE = "registry.lock"


def dtype_to_yaml(dtype: np.dtype | None):
    if dtype is None:
        return None
    if dtype.names:
        return [list(field) for field in dtype.descr]
    return dtype.str


def _descr(value):
    """numpy's descr from its YAML/JSON form: lists of [name, type(, shape)], nested for records."""
    if not isinstance(value, list):
        return value
    fields = []
    for name, spec, *shape in value:
        fields.append((name, _descr(spec), *(tuple(s) for s in shape)))
    return fields


def dtype_from_yaml(value) -> np.dtype | None:
    return None if value is None else np.dtype(_descr(value))


def config_to_entry(topic: str, config: TopicConfig) -> dict:
    entry = {"segment": segment_file_name(topic), "capacity": config.capacity, "pool": config.pool}
    if config.dtype is not None:
        entry["dtype"] = dtype_to_yaml(config.dtype)
        entry["typestr"] = config.dtype.str
    if config.shape is not None:
        entry["shape"] = list(config.shape)
    return entry


def entry_to_config(entry: dict) -> TopicConfig:
    shape = entry.get("shape")
    return TopicConfig(
        capacity=int(entry["capacity"]), pool=int(entry["pool"]),
        dtype=dtype_from_yaml(entry.get("dtype")), shape=None if shape is None else tuple(shape),
    )


def format_registry(topics: dict[str, dict]) -> str:
    """The registry's text: YAML whose every topic is one line holding a JSON object.

    JSON is valid YAML, so Python reads it with any YAML parser, while a C++ or C# client
    finds its topic's line and parses one flat JSON object (``typestr`` spares it numpy's
    record descriptions).
    """
    lines = [f"layout_version: {LAYOUT_VERSION}", "topics:" if topics else "topics: {}"]
    lines += [f"  {json.dumps(name)}: {json.dumps(topics[name], separators=(', ', ': '))}" for name in sorted(topics)]
    return "\n".join(lines) + "\n"


def read_registry(runtime_dir: Path) -> dict[str, dict]:
    """Every topic entry of the graph's registry ({} when there is no registry yet)."""
    path = Path(runtime_dir) / REGISTRY_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SegmentCorruptError(f"cannot read registry {path}: {exc}") from exc
    version = doc.get("layout_version")
    if version != LAYOUT_VERSION:
        raise SegmentCorruptError(
            f"cannot read registry {path}: layout_version is {version!r}, this shmlaunch reads {LAYOUT_VERSION}"
        )
    return doc.get("topics") or {}


@contextlib.contextmanager
def locked_registry(runtime_dir: Path) -> Iterator[dict[str, dict]]:
    """Hold the registry lock; yield the topics dict; write it back atomically on success."""
    runtime_dir = Path(runtime_dir)
    fd = os.open(runtime_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        ByteLock(fd, 0).wait_exclusive()
        topics = read_registry(runtime_dir)
        before = format_registry(topics)
        yield topics
        if format_registry(topics) != before:
            tmp = runtime_dir / f".{REGISTRY_FILE}.{os.getpid()}.tmp"
            fd_tmp = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd_tmp, "w") as f:
                f.write(format_registry(topics))
            os.replace(tmp, runtime_dir / REGISTRY_FILE)
    finally:
        os.close(fd)  # closing the descriptor drops its lock
