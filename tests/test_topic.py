"""The public Topic handle: three verbs with typed errors, the static config apart from the live state."""

from __future__ import annotations

import os
import re
import struct

import numpy as np
import pytest
from platforms import posix_only

from shmlaunch.transport import (
    LAYOUT_VERSION,
    ClosedError,
    GroupsFullError,
    LayoutVersionError,
    Reader,
    SegmentCorruptError,
    Topic,
    TopicConfig,
    TopicExistsError,
    TopicMismatchError,
    TopicNotFoundError,
    Writer,
    WriterBusyError,
)


def test_create_gives_the_static_config_with_layout_version_and_segment_name(rt):
    with Topic.create("cam/image", TopicConfig.build(dtype="uint8", shape=(4, 6, 3), pool=3), runtime_dir=rt) as t:
        assert t.config == TopicConfig(72, 3, np.dtype("uint8"), (4, 6, 3), LAYOUT_VERSION, "cam.image.pool")


def test_create_refuses_an_existing_topic_unless_asked_to_re_create_it(rt):
    Topic.create("t", TopicConfig(64, 4), runtime_dir=rt).close()
    with pytest.raises(TopicExistsError, match=rf"^cannot create topic 't': it exists already in {re.escape(str(rt))}; open it, or re-create it "
                       r"explicitly \(recreate=True\)$"):
        Topic.create("t", TopicConfig(64, 4), runtime_dir=rt)
    with Topic.create("t", TopicConfig(128, 2), runtime_dir=rt, recreate=True) as t:
        assert (t.config.capacity, t.config.pool) == (128, 2)


def test_re_creating_a_topic_in_use_is_refused(rt):
    w = Writer("t", capacity=64, runtime_dir=rt)
    with pytest.raises(WriterBusyError, match=r"^cannot create topic 't' again: its segment .* is in use"):
        Topic.create("t", TopicConfig(64, 4), runtime_dir=rt, recreate=True)
    w.close()


def test_open_of_a_missing_topic_says_it_does_not_exist(rt):
    with pytest.raises(TopicNotFoundError, match=r"^cannot open topic 'nope' for reading: the registry in .* "
                       r"does not list it \(graphs with a runtime directory: "):
        Topic.open("nope", runtime_dir=rt)


def test_open_checks_what_it_expects_naming_both_values(rt):
    Topic.create("t", TopicConfig(64, 4), runtime_dir=rt).close()
    with pytest.raises(TopicMismatchError, match=r"^cannot open topic 't' for reading: requested pool is 8, the registry says 4$"):
        Topic.open("t", runtime_dir=rt, expect={"pool": 8})
    with Topic.open("t", runtime_dir=rt, expect=TopicConfig(64, 4)) as t:
        assert t.config.capacity == 64


def test_open_or_create_creates_then_opens_and_never_replaces(rt):
    with Topic.open_or_create("t", TopicConfig(64, 4), runtime_dir=rt) as t:
        assert t.config.pool == 4
    with Topic.open_or_create("t", TopicConfig(64, 4), runtime_dir=rt) as t:
        assert t.config.pool == 4
    with pytest.raises(TopicMismatchError, match=r"^cannot open or create topic 't': requested capacity is 32, the registry says 64$"):
        Topic.open_or_create("t", TopicConfig(32, 4), runtime_dir=rt)


def test_another_layout_version_is_its_own_error(rt):
    Topic.create("t", TopicConfig(64, 4), runtime_dir=rt).close()
    with open(rt / "t.pool", "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 2))
    with pytest.raises(LayoutVersionError, match=r"^cannot open topic 't' for reading: segment .* has layout version 2, "
                       r"this shmlaunch uses 1$"):
        Topic.open("t", runtime_dir=rt)
    reg = rt / "registry.yaml"
    reg.write_text(reg.read_text().replace("layout_version: 1", "layout_version: 2"))
    with pytest.raises(LayoutVersionError, match=r"^cannot read registry .*:1: layout_version is '2', this shmlaunch reads 1$"):
        Topic.open("t", runtime_dir=rt)


def test_a_corrupt_segment_is_its_own_error(rt):
    Topic.create("t", TopicConfig(64, 4), runtime_dir=rt).close()
    with open(rt / "t.pool", "r+b") as f:
        f.seek(32)
        f.write(struct.pack("<Q", 64))
    with pytest.raises(SegmentCorruptError, match=r"is corrupt: its header's slots_offset 64"):
        Topic.open("t", runtime_dir=rt)


def test_a_full_group_table_is_not_a_mismatch(rt):
    Writer("t", capacity=8, runtime_dir=rt).close()
    readers = [Reader("t", runtime_dir=rt, group=f"g{i}") for i in range(8)]
    with pytest.raises(GroupsFullError, match=r"^cannot join group 'g8' of topic 't': it has 8 groups already$"):
        Reader("t", runtime_dir=rt, group="g8")
    for r in readers:
        r.close()


def test_dynamic_is_a_snapshot_of_writer_newest_message_readers_and_groups(rt):
    with Topic.create("t", TopicConfig(64, 4), runtime_dir=rt) as t:
        d = t.dynamic()
        assert (d.writer_alive, d.latest_seq, d.readers, d.groups) == (False, 0, (), ())
        w = t.writer()
        r = t.reader()
        g = t.reader(group="workers")
        w.publish(b"hello", stamp_ns=123)
        with r.receive(timeout=1), g.receive(timeout=1):
            pass
        d = t.dynamic()
        assert d.writer_alive and d.writer_pid == os.getpid() and d.writer_generation == 1
        assert (d.latest_seq, d.latest_source_ns, d.latest_length) == (1, 123, 5) and d.latest_publish_ns > 0
        assert d.groups == ("workers",)
        assert sorted((x.pid, x.received, x.last_seq, x.group or "") for x in d.readers) == [(os.getpid(), 1, 1, ""),
                                                                                                (os.getpid(), 1, 1, "workers")]
        w.close()
        r.close()
        g.close()
        assert not t.dynamic().writer_alive and t.dynamic().readers == ()


def test_a_topic_is_an_observer_and_closing_it_keeps_the_topic(rt):
    w = Writer("t", capacity=8, runtime_dir=rt)
    t = Topic.open("t", runtime_dir=rt)
    assert t.dynamic().readers == ()  # not counted as a reader
    t.close()
    with pytest.raises(ClosedError, match=r"^topic 't' is closed$"):
        t.dynamic()
    assert Topic.open("t", runtime_dir=rt).config.capacity == 8
    w.close()


def test_unlink_destroys_the_topic_and_same_file_notices(rt):
    t = Topic.create("t", TopicConfig(8, 2), runtime_dir=rt)
    other = Topic.open("t", runtime_dir=rt)
    assert other.same_file()
    t.unlink()
    assert not other.same_file()
    with pytest.raises(TopicNotFoundError):
        Topic.open("t", runtime_dir=rt)
    other.close()


def test_a_config_is_checked_as_a_declaration_is(rt):
    with pytest.raises(ValueError, match=r"^invalid pool size 0: 1 to 256 slots$"):
        Topic.create("t", TopicConfig(8, 0), runtime_dir=rt)
    with pytest.raises(TypeError, match=r"^expected a TopicConfig, got dict"):
        Topic.create("t", {"capacity": 8}, runtime_dir=rt)


def test_a_writer_names_its_message_type_and_the_registry_keeps_it(rt):
    Topic.create("lm", TopicConfig(2096, 4), runtime_dir=rt).close()
    assert Topic.open("lm", runtime_dir=rt).config.message is None
    w = Writer("lm", runtime_dir=rt, message="shmlaunch.landmarks/1")
    assert Topic.open("lm", runtime_dir=rt).config.message == "shmlaunch.landmarks/1"
    w.close()
    with pytest.raises(TopicMismatchError, match=r"^cannot open topic 'lm' for writing: requested message is x/2, "
                       r"the registry says shmlaunch.landmarks/1$"):
        Writer("lm", runtime_dir=rt, message="x/2")
    with pytest.raises(ValueError, match=r"^message type '\.\./x' is not a name like 'shmlaunch.landmarks/1'$"):
        Writer("lm", runtime_dir=rt, message="../x")


def test_tools_decode_a_topic_by_its_declared_message_type_not_by_its_size(rt):
    from shmlaunch.launch._introspect import summarize
    from shmlaunch.nodes.messages import LANDMARKS, LANDMARKS_TYPE

    msg = np.zeros(1, LANDMARKS)
    msg[0]["version"], msg[0]["hand_count"], msg[0]["frame_seq"] = 1, 1, 42
    msg[0]["hands"][0]["handedness"], msg[0]["hands"][0]["score"] = 1, 0.5
    lines = {}
    for name, message in (("typed", LANDMARKS_TYPE), ("raw", None)):
        w = Writer(name, capacity=LANDMARKS.itemsize, runtime_dir=rt, message=message)
        r = Reader(name, runtime_dir=rt, observer=True)
        w.publish(msg)
        got = r.receive(timeout=1)
        lines[name] = summarize(r, got, got.data)
        got.release()
        r.close()
        w.close()
    assert "landmarks frame 42: 1 hand(s) | Right 0.50 wrist (0.000, 0.000)" in lines["typed"]
    assert f"{LANDMARKS.itemsize} bytes: 01 00 00 00 01 00 00 00 2a" in lines["raw"]


def test_a_listed_topic_whose_segment_was_removed_is_made_again_from_the_registry(rt):
    Writer("t", dtype="float32", shape=(3,), pool=2, runtime_dir=rt).close()
    (rt / "t.pool").unlink()
    w = Writer("t", runtime_dir=rt)  # nothing declared: the registry's description is used
    assert (w.config.dtype, w.config.shape, w.config.pool) == (np.dtype("float32"), (3,), 2)
    w.close()


@posix_only("Wine cannot plant a symlink that it then reports as one (test_windows.py checks reparse points by the API)")
def test_a_symlink_at_a_segment_name_is_a_one_line_error_for_every_verb(rt, tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x" * 30000)
    Writer("t", capacity=8, runtime_dir=rt).close()
    (rt / "t.pool").unlink()
    (rt / "t.pool").symlink_to(target)
    try:
        for attempt in (lambda: Writer("t", runtime_dir=rt), lambda: Topic.open("t", runtime_dir=rt), lambda: Reader("t", runtime_dir=rt)):
            with pytest.raises(SegmentCorruptError, match=r"t\.pool: Too many levels of symbolic links$"):
                attempt()
        assert target.read_bytes() == b"x" * 30000
    finally:
        (rt / "t.pool").unlink()
