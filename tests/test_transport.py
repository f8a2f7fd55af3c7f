"""Pool topics: behaviour in one process and across real processes, on real /dev/shm."""

from __future__ import annotations

import os
import stat
import threading
import time

import numpy as np
import procs
import pytest
from platforms import posix_only

from shmlaunch.transport import (
    ClosedError,
    Reader,
    Topic,
    TopicConfig,
    TopicMismatchError,
    TopicNotFoundError,
    Writer,
    WriterBusyError,
    read_registry,
)


def test_message_crosses_processes_intact(rt, ctx):
    ready, results = ctx.Event(), ctx.Queue()
    Writer("demo/topic", capacity=4096, pool=4, runtime_dir=rt).close()
    reader = ctx.Process(target=procs.read_checked, args=(rt, "demo/topic", ready, results, 1.0))
    reader.start()
    assert ready.wait(30)
    writer = ctx.Process(target=procs.write_checked, args=(rt, "demo/topic", 4096, 200, None, 500))
    writer.start()
    writer.join(60)
    received, torn, disorder, last, _ = results.get(timeout=30)
    reader.join(10)
    assert (torn, disorder, last) == (0, 0, 199)
    assert received >= 150  # at 500 Hz a reader keeps up with nearly every message


def test_receive_returns_the_newest_message_and_then_nothing(rt):
    w = Writer("t", capacity=64, pool=4, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    for i in range(1, 6):
        w.publish(bytes([i]) * 8)
    msg = r.receive(timeout=1)
    assert (msg.seq, bytes(msg.data)) == (5, bytes([5]) * 8)
    assert r.receive_nowait() is None
    assert r.receive(timeout=0.05) is None
    assert r.statistics().received == 1


def test_first_receive_sees_what_was_published_before_the_reader_opened(rt):
    w = Writer("t", capacity=16, runtime_dir=rt)
    w.publish(b"early")
    assert bytes(Reader("t", runtime_dir=rt).receive(timeout=1).data) == b"early"


def test_sequence_gaps_count_as_missed(rt):
    w = Writer("t", capacity=16, pool=2, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    w.publish(b"1")
    r.receive(timeout=1).release()
    for _ in range(4):
        w.publish(b"x")
    assert r.receive(timeout=1).seq == 5
    assert r.statistics().missed == 3


def test_loan_publishes_in_place(rt):
    w = Writer("img", dtype=np.uint8, shape=(4, 6, 3), pool=2, runtime_dir=rt)
    r = Reader("img", runtime_dir=rt)
    loan = w.loan(stamp_ns=123)
    with loan as frame:
        assert frame.shape == (4, 6, 3) and frame.flags.writeable
        frame[:] = 7
    assert loan.seq == 1
    msg = r.receive(timeout=1)
    assert msg.data.shape == (4, 6, 3) and (msg.data == 7).all() and msg.stamp_ns == 123


def test_loan_that_raises_or_is_cancelled_publishes_nothing(rt):
    w = Writer("t", capacity=32, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    with pytest.raises(RuntimeError), w.loan() as buf:
        buf[:] = 1
        raise RuntimeError("camera read failed")
    loan = w.loan(nbytes=4)
    with loan as buf:
        buf[:] = 2
        loan.cancel()
    assert r.receive(timeout=0.05) is None
    assert w.publish(b"ok") == 1


def test_held_message_is_never_overwritten(rt):
    w = Writer("t", capacity=1024, pool=3, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    w.publish(np.full(1024, 1, np.uint8))
    held = r.receive(timeout=1)
    for i in range(2, 100):
        assert w.publish(np.full(1024, i % 256, np.uint8)) is not None
    assert (held.data == 1).all() and held.seq == 1
    newest = r.receive(timeout=1)
    assert newest.seq == 99 and (newest.data == 99).all()


def test_writer_drops_when_every_slot_is_held(rt):
    w = Writer("t", capacity=8, pool=2, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    w.publish(b"a")
    m1 = r.receive(timeout=1)
    w.publish(b"b")
    m2 = r.receive(timeout=1)
    assert w.publish(b"c") is None
    with w.loan(nbytes=1) as buf:  # a loan is dropped exactly as a publish is: no exception, nothing published
        buf[:] = 7
    assert w.statistics().dropped == 2 and w.statistics().last_seq == 2
    m1.release()
    assert w.publish(b"c") == 3
    loan = w.loan()
    assert not loan.dropped
    del m2


def test_pool_of_one_lets_a_read_and_a_write_never_overlap(rt):
    w = Writer("t", capacity=8, pool=1, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    w.publish(b"first")
    msg = r.receive(timeout=1)
    assert w.publish(b"second") is None  # the reader holds the only slot: the write fails at once
    msg.release()
    late = Reader("t", runtime_dir=rt)  # has not seen "first" yet
    loan = w.loan(nbytes=6)
    with loan as buf:
        buf[:] = np.frombuffer(b"second", np.uint8)
        assert late.receive_nowait() is None  # the writer holds the slot: the read fails at once
        assert late.statistics().busy == 1
    assert bytes(r.receive(timeout=1).data) == b"second"
    assert bytes(late.receive(timeout=1).data) == b"second"


def test_message_released_by_garbage_collection_frees_its_slot(rt):
    w = Writer("t", capacity=8, pool=1, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    w.publish(b"x")
    msg = r.receive(timeout=1)
    assert w.publish(b"y") is None
    del msg
    assert w.publish(b"y") == 2


def test_copy_detaches_from_the_slot(rt):
    w = Writer("t", capacity=8, pool=1, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    w.publish(b"keep")
    with r.receive(timeout=1) as msg:
        kept = msg.copy()
    w.publish(b"over")
    assert bytes(kept.data) == b"keep" and not kept.held


def test_receive_times_out_without_using_cpu_and_releases_the_gil(rt):
    w = Writer("t", capacity=8, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    spins = 0
    done = threading.Event()

    def spin():
        nonlocal spins
        while not done.is_set():
            spins += 1

    t = threading.Thread(target=spin)
    cpu0 = time.thread_time()
    t0 = time.monotonic()
    t.start()
    assert r.receive(timeout=0.3) is None
    done.set()
    t.join()
    waited = time.monotonic() - t0
    assert 0.29 <= waited < 5
    assert time.thread_time() - cpu0 < 0.05  # the waiting thread itself used no CPU
    assert spins > 1000  # another thread ran while it waited
    w.close()


def test_waiting_reader_wakes_when_a_message_arrives(rt):
    w = Writer("t", capacity=8, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    threading.Timer(0.1, w.publish, args=(b"late",)).start()
    msg = r.receive(timeout=10)
    assert msg is not None and bytes(msg.data) == b"late"


def test_several_reader_processes_each_get_the_stream(rt, ctx):
    Writer("t", capacity=512, pool=4, runtime_dir=rt).close()
    results = ctx.Queue()
    readies = [ctx.Event() for _ in range(3)]
    readers = [ctx.Process(target=procs.read_checked, args=(rt, "t", e, results, 1.0)) for e in readies]
    for p in readers:
        p.start()
    for e in readies:
        assert e.wait(30)
    writer = ctx.Process(target=procs.write_checked, args=(rt, "t", 512, 300, None, 300))
    writer.start()
    writer.join(60)
    outcomes = [results.get(timeout=30) for _ in readers]
    for p in readers:
        p.join(10)
    for received, torn, disorder, last, _ in outcomes:
        assert (torn, disorder, last) == (0, 0, 299) and received >= 200


def test_stress_100k_messages_three_readers_zero_torn_zero_disorder(rt, ctx):
    n = 100_000
    Writer("stress", capacity=2048, pool=4, runtime_dir=rt).close()
    results = ctx.Queue()
    readies = [ctx.Event() for _ in range(3)]
    readers = [ctx.Process(target=procs.read_checked, args=(rt, "stress", e, results, 2.0)) for e in readies]
    for p in readers:
        p.start()
    for e in readies:
        assert e.wait(30)
    writer = ctx.Process(target=procs.write_checked, args=(rt, "stress", 2048, n))
    writer.start()
    writer.join(300)
    assert writer.exitcode == 0
    outcomes = [results.get(timeout=60) for _ in readers]
    total = 0
    for received, torn, disorder, last, _missed in outcomes:
        assert torn == 0 and disorder == 0 and last == n - 1
        total += received
    assert total > 3 * 1000  # readers keep pace with part of a writer running flat out


def test_kill_9_of_the_writer_mid_write_never_delivers_a_torn_message(rt, ctx):
    size = 4 << 20  # a 4 MB copy takes a millisecond or more, so most kills land mid-write
    Writer("k", capacity=size, pool=3, runtime_dir=rt).close()
    r = Reader("k", runtime_dir=rt)
    seen = {"torn": 0, "good": 0, "seqs": []}
    stop = threading.Event()

    def read():
        while not stop.is_set():
            msg = r.receive(timeout=0.05)
            if msg is None:
                continue
            with msg:
                ok = procs.verify(msg.data) >= 0
            seen["good" if ok else "torn"] += 1
            seen["seqs"].append(msg.seq)

    t = threading.Thread(target=read)
    t.start()
    rng = np.random.default_rng(7)
    odd_after_kill = 0
    try:
        for _ in range(50):
            started = ctx.Event()
            p = ctx.Process(target=procs.write_forever, args=(rt, "k", size, started))
            p.start()
            assert started.wait(30)
            time.sleep(rng.uniform(0.005, 0.05))
            p.kill()
            p.join(10)
            states = [int(np.frombuffer(r._seg.mm, np.uint64, 1, off)[0]) for off in r._seg.slot_offsets]
            odd_after_kill += any(s & 1 for s in states)
    finally:
        stop.set()
        t.join()
    assert seen["torn"] == 0
    assert seen["good"] > 50
    assert seen["seqs"] == sorted(seen["seqs"]) and len(set(seen["seqs"])) == len(seen["seqs"])
    assert odd_after_kill >= 10  # the kills really did land mid-write
    w = Writer("k", runtime_dir=rt)  # a new writer attaches and continues the sequence
    assert w.publish(np.zeros(16, np.uint8)) > max(seen["seqs"])


def test_kill_9_of_a_reader_holding_a_slot_gives_the_slot_back(rt, ctx):
    w = Writer("t", capacity=8, pool=1, runtime_dir=rt)
    w.publish(b"held")
    held = ctx.Event()
    p = ctx.Process(target=procs.hold_one, args=(rt, "t", held))
    p.start()
    assert held.wait(30)
    assert w.publish(b"blocked") is None
    p.kill()
    p.join(10)
    assert w.publish(b"free") == 2


def test_second_writer_in_another_process_is_refused(rt, ctx):
    w = Writer("t", capacity=8, runtime_dir=rt)
    results = ctx.Queue()
    p = ctx.Process(target=procs.second_writer, args=(rt, "t", results))
    p.start()
    p.join(30)
    assert results.get(timeout=5) == (
        f"WriterBusyError: cannot open topic 't' for writing: another writer (pid {os.getpid()}) is alive;"
        " a topic has exactly one writer"
    )
    w.close()


def test_second_writer_in_the_same_process_is_refused_and_told_so(rt):
    first = Writer("t", capacity=8, runtime_dir=rt)
    with pytest.raises(WriterBusyError, match=rf"^cannot open topic 't' for writing: another Writer of this topic is open in this "
                       rf"process \(pid {os.getpid()}\); close\(\) it first$"):
        Writer("t", runtime_dir=rt)
    first.close()


def test_a_writer_dropped_without_close_releases_the_topic(rt):
    w = Writer("t", capacity=8, runtime_dir=rt)
    w.publish(b"x")
    del w
    again = Writer("t", capacity=8, runtime_dir=rt)
    assert again.publish(b"y") == 2
    again.close()


def test_writer_of_a_dead_process_is_replaced_and_the_sequence_continues(rt, ctx):
    p = ctx.Process(target=procs.write_checked, args=(rt, "t", 64, 10))
    p.start()
    p.join(30)
    w = Writer("t", runtime_dir=rt)
    assert w.statistics().generation == 2
    assert w.publish(bytes(64)) == 11


def test_reader_declaring_another_capacity_is_refused_naming_both(rt):
    Writer("camera/image", capacity=921600, runtime_dir=rt)
    with pytest.raises(
        TopicMismatchError,
        match=r"^cannot open topic 'camera/image' for reading: requested capacity is 6220800, the registry says 921600$",
    ):
        Reader("camera/image", capacity=6220800, runtime_dir=rt)


def test_writer_declaring_another_pool_is_refused_while_a_reader_is_attached(rt):
    Writer("t", capacity=64, pool=4, runtime_dir=rt).close()
    r = Reader("t", runtime_dir=rt)
    with pytest.raises(TopicMismatchError, match=r"^cannot open topic 't' for writing: requested pool is 2, the registry says 4$"):
        Writer("t", capacity=64, pool=2, runtime_dir=rt)
    r.close()


def test_registry_disagreeing_with_the_segment_header_is_refused(rt):
    Writer("t", capacity=64, pool=4, runtime_dir=rt).close()
    path = rt / "registry.yaml"
    text = path.read_text()
    path.write_text(text.replace('"capacity": 64', '"capacity": 128'))
    with pytest.raises(TopicMismatchError, match=r"^cannot open topic 't' for reading: the segment header capacity is 64, the registry says 128$"):
        Reader("t", runtime_dir=rt)


def test_reader_of_an_unknown_topic_is_told_so(rt):
    with pytest.raises(TopicNotFoundError, match=r"^cannot open topic 'nope' for reading: the registry in .* "
                       r"does not list it \(graphs with a runtime directory: "):
        Reader("nope", runtime_dir=rt)


def test_a_writer_never_replaces_an_existing_topic_re_creating_is_explicit(rt, ctx):
    p = ctx.Process(target=procs.write_checked, args=(rt, "t", 64, 3))
    p.start()
    p.join(30)
    with pytest.raises(TopicMismatchError, match=r"^cannot open topic 't' for writing: requested capacity is 256, the registry says 64$"):
        Writer("t", capacity=256, pool=2, runtime_dir=rt)
    Topic.create("t", TopicConfig(256, 2), runtime_dir=rt, recreate=True).close()  # nobody uses the old one
    w = Writer("t", capacity=256, pool=2, runtime_dir=rt)
    assert (w.config.capacity, w.config.pool) == (256, 2)
    assert read_registry(rt)["t"]["capacity"] == 256
    assert w.publish(b"x") == 1


def test_oversize_data_raises_and_publishes_nothing(rt):
    w = Writer("t", capacity=16, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    with pytest.raises(ValueError, match=r"^cannot publish 17 bytes to topic 't': capacity is 16 bytes$"):
        w.publish(bytes(17))
    assert r.receive_nowait() is None and w.statistics().last_seq == 0


def test_typed_topic_refuses_data_of_another_dtype_or_shape(rt):
    w = Writer("t", dtype="float32", shape=(2, 3), runtime_dir=rt)
    with pytest.raises(ValueError, match=r"^cannot publish to topic 't': data dtype is float64, the topic's is float32$"):
        w.publish(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"^cannot publish to topic 't': data shape is \[3, 2\], the topic's is \[2, 3\]$"):
        w.publish(np.zeros((3, 2), np.float32))
    w.publish(np.arange(6, dtype=np.float32).reshape(2, 3))
    msg = Reader("t", runtime_dir=rt).receive(timeout=1)
    assert msg.data.dtype == np.float32 and msg.data.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_dtype_without_shape_gives_a_one_dimensional_array(rt):
    w = Writer("t", capacity=64, dtype="<u4", runtime_dir=rt)
    w.publish(np.array([1, 2, 3], "<u4"))
    assert Reader("t", runtime_dir=rt).receive(timeout=1).data.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    "name",
    ["", "/abs", "a/../b", "..", "a//b", "a/", "a b", "a\0b", "x.y", "~", "a/./b", "é", "x" * 201, None, 7],
)
def test_bad_topic_names_are_refused(rt, name):
    with pytest.raises(ValueError, match=r"^invalid topic name "):
        Writer(name, capacity=8, runtime_dir=rt)
    assert sorted(p.name for p in rt.iterdir()) in ([".shmlaunch-runtime"], [".shmlaunch-runtime", "registry.lock"])


@posix_only("file modes; on Windows the folder's DACL (test_windows.py)")
def test_runtime_directory_and_files_are_private(rt):
    Writer("a/b", capacity=8, runtime_dir=rt)
    assert stat.S_IMODE(rt.stat().st_mode) == 0o700
    for p in rt.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert (rt / "a.b.pool").exists()


def test_use_after_close_raises(rt):
    w = Writer("t", capacity=8, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    w.close()
    r.close()
    with pytest.raises(ClosedError, match=r"^writer of topic 't' is closed$"):
        w.publish(b"x")
    with pytest.raises(ClosedError, match=r"^reader of topic 't' is closed$"):
        r.receive(timeout=0)
    for use in (r.writer_alive, r.same_file, lambda: r.trace_id, r.receive_nowait):  # every reader method, the same error
        with pytest.raises(ClosedError, match=r"^reader of topic 't' is closed$"):
            use()


def test_unlink_removes_the_segment_and_its_registry_entry(rt):
    w = Writer("t", capacity=8, runtime_dir=rt)
    w.unlink()
    assert read_registry(rt) == {} and not (rt / "t.pool").exists()


def test_invalid_declarations_are_refused(rt):
    with pytest.raises(ValueError, match=r"^invalid pool size 0: 1 to 256 slots$"):
        Writer("t", capacity=8, pool=0, runtime_dir=rt)
    with pytest.raises(ValueError, match=r"^invalid capacity -1: a positive number of bytes$"):
        Writer("t", capacity=-1, runtime_dir=rt)
    with pytest.raises(TopicNotFoundError, match=r"^cannot open topic 't' for writing: it does not exist yet"):
        Writer("t", runtime_dir=rt)


def test_record_dtype_round_trips_through_the_registry(rt):
    from shmlaunch.nodes.messages import LANDMARKS

    Writer("lm", dtype=LANDMARKS, shape=(1,), runtime_dir=rt).close()
    r = Reader("lm", runtime_dir=rt)
    assert r.config.dtype == LANDMARKS and r.config.shape == (1,)
    assert read_registry(rt)["lm"]["typestr"] == "|V2096"


def test_received_views_are_read_only(rt):
    w = Writer("t", dtype="uint8", shape=(2, 2), runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    w.publish(np.ones((2, 2), np.uint8))
    msg = r.receive(timeout=1)
    with pytest.raises(ValueError, match="read-only"):
        msg.data[0, 0] = 7  # a consumer must not change what other readers see
    assert msg.copy().data.flags.writeable
