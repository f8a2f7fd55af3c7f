"""The documented byte layout, the public surface, and a full /dev/shm."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

import shmlaunch.transport as transport
from shmlaunch.transport import OutOfSpaceError, Reader, Writer
from shmlaunch.transport import _layout as L


def test_header_fields_sit_at_the_documented_offsets(rt):
    w = Writer("t", dtype="<f4", shape=(3, 5), pool=3, runtime_dir=rt)
    w.publish(np.ones((3, 5), np.float32), stamp_ns=42)
    raw = (rt / "t.pool").read_bytes()
    u32 = lambda off: struct.unpack_from("<I", raw, off)[0]  # noqa: E731
    u64 = lambda off: struct.unpack_from("<Q", raw, off)[0]  # noqa: E731
    assert raw[0:8] == b"SHMLPOOL"
    assert (u32(8), u32(12), u64(16)) == (1, 3, 60)
    assert u64(24) == 128 and u64(32) == 21504  # stride: 64 header + 60 payload, rounded to 64; slots after the tables
    assert (u64(40), u32(48)) == (4, 2)
    assert raw[56:88].rstrip(b"\0") == b"<f4"
    assert (u64(88), u64(96), u64(104)) == (3, 5, 0)
    assert u32(256) == (1 << 8) | 0  # wake word: seq 1 in slot 0
    assert (u64(264), u64(272), u64(280)) == (1, os.getpid(), 1)
    slot0 = 21504
    assert (u64(slot0), u64(slot0 + 8), u64(slot0 + 16), u64(slot0 + 32)) == (2, 60, 42, 1)
    assert np.frombuffer(raw, np.float32, 15, slot0 + 64).tolist() == [1.0] * 15
    assert len(raw) == 21504 + 3 * 128


def test_layout_constants_agree_with_the_structs():
    assert L.STATIC.size == 152 and L.STATIC.size <= L.WAKE_OFFSET
    assert L.SLOT.size <= L.SLOT_HEADER_SIZE and L.HEADER_SIZE % L.ALIGN == 0
    assert L.WRITER_OFFSET + L.WRITER.size <= L.HEADER_SIZE
    assert L.slot_stride(1) == 128 and L.slot_stride(0) == 64 and L.slot_stride(6220800) % 64 == 0
    assert L.LOCK_SLOT0 + L.MAX_POOL <= L.LOCK_READER0  # lock byte ranges do not overlap
    assert L.READER_ENTRY.size == 64 and L.GROUPS_OFFSET == L.READERS_OFFSET + 64 * L.MAX_READERS == 4608
    assert L.GROUP_ENTRY_SIZE == 2112 and L.SLOTS_OFFSET == 4608 + 8 * 2112 == 21504 and L.SLOTS_OFFSET % L.ALIGN == 0
    assert L.LOCK_READER0 + L.MAX_READERS <= L.LOCK_GROUP_TABLE < L.LOCK_CLAIM0


def test_layout_document_lists_every_header_field():
    doc = (Path(transport.__file__).parent / "LAYOUT.md").read_text()
    for field in ("magic", "layout_version", "pool", "capacity", "slot_stride", "slots_offset", "itemsize", "ndim",
                  "dtype", "shape", "wake", "latest_seq", "writer_pid", "writer_generation", "writer_attach_ns",
                  "waiters", "wake_id", "state", "length", "source_ns", "publish_ns", "generation", "source_seq", "name", "claims"):
        assert f"`{field}`" in doc, field


def test_public_api_is_pinned():
    assert sorted(transport.__all__) == sorted([
        "ENV_RUNTIME_DIR", "LAYOUT_VERSION", "MARKER_FILE", "SHM_ROOT", "ClosedError", "GroupsFullError", "LayoutVersionError", "Loan",
        "LockBusyError", "Message", "OutOfSpaceError", "PlatformUnavailableError", "Reader", "ReaderInfo", "ReaderStatistics",
        "RegistryCorruptError", "RuntimeDir", "RuntimeDirError", "SegmentCorruptError", "Topic", "TopicConfig", "TopicExistsError",
        "TopicMismatchError", "TopicNotFoundError", "TopicState", "TraceRecord", "TraceSession", "TransportError", "Writer",
        "WriterBusyError", "WriterStatistics", "cleanup", "clear_trace_request", "default_runtime_dir", "ensure_runtime_dir",
        "graph_runtime_dir", "graphs_present", "new_run_id", "read_registry",
        "record_callback", "runtime_dir_prefix", "validate_graph_name", "validate_topic_name", "wait_any",
    ])


@pytest.fixture
def small_tmpfs():
    """A 1 MiB tmpfs standing in for a full /dev/shm (needs permission to mount)."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    mnt = Path(tempfile.mkdtemp(prefix="shml-tmpfs-"))
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip() or 'mount failed'}); needs root or CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: a leaked mapping cannot keep it busy
        mnt.rmdir()


def test_full_shm_is_a_clear_error_at_creation_and_leaves_nothing(small_tmpfs):
    rt = small_tmpfs / "graph"
    expected = r"^\[Errno 28\] cannot create topic 'big': .* has \d+ bytes free, the segment needs 4215872 \(capacity=4194304 pool=1\)$"
    with pytest.raises(OutOfSpaceError, match=expected):
        Writer("big", capacity=1 << 22, pool=1, runtime_dir=rt)
    assert sorted(p.name for p in rt.iterdir()) == [".shmlaunch-runtime", "registry.lock"]
    with Writer("small", capacity=1024, runtime_dir=rt) as small, Reader("small", runtime_dir=rt) as reader:
        small.publish(b"ok")  # what fits still works
        assert bytes(reader.receive(timeout=1).copy().data) == b"ok"


def test_message_layouts_sit_at_the_documented_offsets():
    from shmlaunch.nodes.messages import GESTURE, HAND, LANDMARKS

    assert (LANDMARKS.itemsize, HAND.itemsize, GESTURE.itemsize) == (2096, 512, 64)
    offsets = {name: LANDMARKS.fields[name][1] for name in LANDMARKS.names}
    assert offsets == {"version": 0, "hand_count": 4, "frame_seq": 8, "capture_ns": 16, "received_ns": 24, "inference_ns": 32,
                       "image_width": 40, "image_height": 44, "hands": 48}
    assert {n: HAND.fields[n][1] for n in HAND.names} == {"landmarks": 0, "world": 252, "score": 504, "handedness": 508}
    assert {n: GESTURE.fields[n][1] for n in GESTURE.names} == {
        "version": 0, "hand_count": 4, "frame_seq": 8, "capture_ns": 16, "gesture": 24, "fingers": 28, "handedness": 32,
        "reserved": 36, "score": 40, "reserved2": 56}


def _doc_table(start: str) -> list[tuple[int, int, str | None]]:
    """(offset, size, field) rows of the first table after the LAYOUT.md line starting with ``start``."""
    lines = (Path(transport.__file__).parent / "LAYOUT.md").read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(start))
    rows: list[tuple[int, int, str | None]] = []
    for line in lines[i + 1 :]:
        m = re.match(r"\| (\d+) \| (\d+) \| (?:`(\w+)`)? ?\|", line)
        if m:
            rows.append((int(m[1]), int(m[2]), m[3]))
        elif rows and not line.startswith("|"):
            break
    return rows


def _tiles(rows: list[tuple[int, int, str | None]], size: int) -> bool:
    ends = [0] + [off + n for off, n, _ in rows]
    return [off for off, _, _ in rows] == ends[:-1] and ends[-1] == size


@pytest.mark.parametrize("start,dtype_name,size", [("### Gesture", "GESTURE", 64), ("Hand `h`", "HAND", 512),
                                                   ("### Hand landmarks", "LANDMARKS", 48), ("### Frame source", "FRAME_SOURCE", 232)])
def test_layout_document_tables_match_the_message_dtypes(start, dtype_name, size):
    from shmlaunch.nodes import messages

    dtype = getattr(messages, dtype_name)
    rows = _doc_table(start)
    assert _tiles(rows, size), rows  # every byte documented once, in order (LANDMARKS: the 48-byte header)
    by_offset = {off: (name, sub.itemsize) for name, (sub, off, *_) in dtype.fields.items()}
    for off, n, name in rows:
        field, itemsize = by_offset[off]
        assert itemsize == n and (field == name if name else field.startswith("reserved")), (off, n, name, field)


@pytest.mark.parametrize("start,fmt,size,names", [
    ("### Reader table", L.READER_ENTRY.format, L.READER_ENTRY.size,
     ["pid", "received", "missed", "last_seq", "last_age_ns", "last_receive_ns", "stale", "group"]),
    ("### Slots", L.SLOT.format + "16x", L.SLOT_HEADER_SIZE, ["state", "length", "source_ns", "publish_ns", "generation", "source_seq", None]),
])
def test_layout_document_tables_match_the_structs(start, fmt, size, names):
    rows = _doc_table(start)
    assert _tiles(rows, size), rows  # every byte documented once, in order
    assert [name for _, _, name in rows] == names
    fields = re.findall(r"\d*[a-zA-Z]", fmt.lstrip("<"))
    assert [n for _, n, _ in rows] == [struct.calcsize("<" + c) for c in fields]
