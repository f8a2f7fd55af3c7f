"""The registry file: one small file per graph listing every topic's static config.

Writers and the launcher add entries under an exclusive lock on ``registry.lock`` and
replace the file atomically (write a fresh temporary file, then rename), so a reader never
sees half a registry and needs no lock to read it. Example::

    layout_version: 1
    topics:
      "camera/image": {"capacity": 2764800, "dtype": "|u1", "pool": 4, "segment": "camera.image.pool", "shape": [720, 1280, 3], "typestr": "|u1"}

The text is valid YAML, but it is read as what it is, lines of JSON: no YAML feature (an
alias, a tag) can make reading it slow or large, and a C++ or C# client finds its topic's
line and parses one flat JSON object. Every entry is checked field by field; a bad one is a
RegistryCorruptError naming the file, line, topic and value (another release's registry is a
LayoutVersionError).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from shmlaunch._platform import ByteLock

from . import _layout as L
from ._errors import LayoutVersionError, LockBusyError, RegistryCorruptError
from ._layout import LAYOUT_VERSION, TopicConfig
from ._runtime import REGISTRY_FILE, RuntimeDir, note_lock_holder, segment_file_name, validate_segment_name, validate_topic_name

LOCK_FILE = "registry.lock"
#: How long a registry update waits for another one before naming the holder.
LOCK_WAIT = 5.0
#: Bounds on what a registry may hold (1000s of topics fit many times over).
MAX_REGISTRY_BYTES = 16 << 20
MAX_LINE = 8192
_FIELDS = {"segment", "capacity", "pool", "dtype", "typestr", "shape", "message"}
_MESSAGE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*")
MAX_MESSAGE_LEN = 100


def dtype_to_yaml(dtype: np.dtype | None):
    if dtype is None:
        return None
    if dtype.names:
        return [list(field) for field in dtype.descr]
    return dtype.str


def _descr(value):
    """numpy's descr from its JSON form: lists of [name, type(, shape)], nested for records."""
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
    if config.message is not None:
        entry["message"] = config.message
    return entry


def validate_message_type(name: object) -> str:
    """A message type name: letters, digits, '_', '.', '-' in parts joined by '/' (ValueError otherwise)."""
    if not isinstance(name, str) or len(name) > MAX_MESSAGE_LEN or not _MESSAGE_RE.fullmatch(name):
        raise ValueError(f"message type {str(name)[:60]!r} is not a name like 'shmlaunch.landmarks/1'")
    return name


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def entry_to_config(entry: dict) -> TopicConfig:
    """The TopicConfig of a registry entry; ValueError names the first field that is wrong."""
    if not isinstance(entry, dict):
        raise ValueError(f"the entry is a {type(entry).__name__}, not a mapping")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}")
    validate_segment_name(entry.get("segment"))
    capacity, pool, shape = entry.get("capacity"), entry.get("pool"), entry.get("shape")
    if not _whole(capacity) or not 1 <= capacity <= L.MAX_CAPACITY:
        raise ValueError(f"capacity {capacity!r} is not a whole number of bytes from 1 to {L.MAX_CAPACITY}")
    if not _whole(pool) or not 1 <= pool <= L.MAX_POOL:
        raise ValueError(f"pool {pool!r} is not a whole number from 1 to {L.MAX_POOL}")
    if shape is not None and (not isinstance(shape, list) or not 1 <= len(shape) <= L.MAX_NDIM
                              or not all(_whole(x) and 0 < x <= L.MAX_CAPACITY for x in shape)):
        raise ValueError(f"shape {shape!r} is not 1 to {L.MAX_NDIM} positive whole numbers")
    try:
        dtype = dtype_from_yaml(entry.get("dtype"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"dtype {entry.get('dtype')!r} is not a numpy dtype ({exc})") from None
    if shape is not None and dtype is None:
        raise ValueError("shape is given without a dtype")
    if shape is not None and dtype.itemsize * math.prod(shape) > capacity:
        raise ValueError(f"dtype x shape {dtype.itemsize * math.prod(shape)} bytes exceeds capacity {capacity}")
    message = entry.get("message")
    if message is not None:
        validate_message_type(message)
    return TopicConfig(capacity=capacity, pool=pool, dtype=dtype, shape=None if shape is None else tuple(shape),
                       segment=entry["segment"], message=message)


def format_registry(topics: dict[str, dict]) -> str:
    """The registry's text: a header, then each topic on one line holding a JSON object."""
    lines = [f"layout_version: {LAYOUT_VERSION}", "topics:" if topics else "topics: {}"]
    lines += [f"  {json.dumps(name)}: {json.dumps(topics[name], separators=(', ', ': '))}" for name in sorted(topics)]
    return "\n".join(lines) + "\n"


def parse_registry(text: str, where: str) -> dict[str, dict]:
    """Every topic entry of a registry's text (as ``format_registry`` writes it), checked.

    Strict on purpose: anything else is a RegistryCorruptError naming ``where``:line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()

    def bad(lineno: int, why: str, kind: type = RegistryCorruptError) -> Exception:
        return kind(f"cannot read registry {where}:{lineno}: {why}")

    head = lines[0].strip() if lines else ""
    if not head.startswith("layout_version:"):
        raise bad(1, f"expected 'layout_version: {LAYOUT_VERSION}', got {head[:60]!r}")
    version = head.partition(":")[2].strip()
    if version != str(LAYOUT_VERSION):
        raise bad(1, f"layout_version is {version[:20]!r}, this shmlaunch reads {LAYOUT_VERSION}", LayoutVersionError)
    if len(lines) < 2 or lines[1].strip() not in ("topics:", "topics: {}"):
        raise bad(2, "expected 'topics:'")
    topics: dict[str, dict] = {}
    for lineno, line in enumerate(lines[2:], start=3):
        if len(line) > MAX_LINE:
            raise bad(lineno, f"line longer than {MAX_LINE} characters")
        name_text, sep, body = line.strip().partition(": ")
        try:
            name = json.loads(name_text) if sep else None
            entry = json.loads(body) if sep else None
        except ValueError:
            name = entry = None
        if not isinstance(name, str):
            raise bad(lineno, f"expected '\"topic\": {{...}}', got {line.strip()[:60]!r}")
        try:
            validate_topic_name(name)
            entry_to_config(entry)
        except ValueError as exc:
            raise bad(lineno, f"topic {name[:60]!r}: {exc}") from None
        if name in topics:
            raise bad(lineno, f"topic {name!r} is listed twice")
        topics[name] = entry
    return topics


def read_registry(runtime_dir: Path | RuntimeDir) -> dict[str, dict]:
    """Every topic entry of the graph's registry ({} when there is no registry yet)."""
    if isinstance(runtime_dir, RuntimeDir):
        return _copy(_read(runtime_dir))
    with RuntimeDir.open(runtime_dir) as rd:
        return _copy(_read(rd))


def registry_entry(rd: RuntimeDir, topic: str) -> dict | None:
    """One topic's registry entry (None: not listed): what opening a topic needs, in time that
    does not grow with the number of topics once the registry was parsed."""
    entry = _read(rd).get(topic)
    return None if entry is None else dict(entry)


def _copy(topics: dict[str, dict]) -> dict[str, dict]:
    return {name: dict(entry) for name, entry in topics.items()}


#: The last registry parsed per runtime directory, by the file's identity: opening 2000 topics
#: parses a 2000-line registry once, not 2000 times (the registry is only ever replaced whole,
#: so a new version is a new file).
_parsed: dict[str, tuple[tuple, dict[str, dict]]] = {}
_PARSED_KEPT = 8


def _identity(rd: RuntimeDir) -> tuple:
    st = rd.lstat(REGISTRY_FILE)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _read(rd: RuntimeDir) -> dict[str, dict]:
    try:
        before = _identity(rd)
    except FileNotFoundError:
        return {}
    except OSError:
        before = None
    cached = _parsed.get(str(rd.path))
    if before is not None and cached is not None and cached[0] == before:
        return cached[1]  # never handed out: callers get copies
    topics = _read_file(rd)
    with contextlib.suppress(OSError):
        if before is not None and _identity(rd) == before:
            if len(_parsed) >= _PARSED_KEPT:
                _parsed.clear()
            _parsed[str(rd.path)] = (before, topics)
    return topics


def _read_file(rd: RuntimeDir) -> dict[str, dict]:
    where = rd.path / REGISTRY_FILE
    try:
        raw = rd.read_bytes(REGISTRY_FILE, MAX_REGISTRY_BYTES)
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise RegistryCorruptError(f"cannot read registry: {exc}") from None
    except OSError as exc:
        raise RegistryCorruptError(f"cannot read registry {where}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RegistryCorruptError(f"cannot read registry {where}: not UTF-8 text") from None
    return parse_registry(text, str(where))


def lock_exclusive(lock: ByteLock, timeout: float, what: str, holder) -> None:
    """Take ``lock`` within ``timeout`` s, or raise LockBusyError naming ``holder()``."""
    if not lock.try_exclusive_within(timeout):
        raise LockBusyError(f"{what} has been held for more than {timeout:g} s by {holder()} "
                            f"(stopped or hung? end it, and the lock goes with it)")


@contextlib.contextmanager
def locked_registry(rd: RuntimeDir, timeout: float = LOCK_WAIT) -> Iterator[dict[str, dict]]:
    """Hold the registry lock; yield the topics dict; write it back atomically on success."""
    fd = rd.open_file(LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        def holder() -> str:
            pid = rd.lock_holder(LOCK_FILE)
            return f"pid {pid}" if pid else "another process"

        lock_exclusive(ByteLock(fd, 0), timeout, f"the registry lock {rd.path / LOCK_FILE}", holder)
        note_lock_holder(fd)  # who holds it, for the message above
        topics = _read(rd)
        before = format_registry(topics)
        yield topics
        after = format_registry(topics)
        if after != before:
            rd.write_atomic(REGISTRY_FILE, after.encode())
    finally:
        os.close(fd)  # closing the descriptor drops its lock
