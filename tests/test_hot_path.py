"""The hot path (issue 15): a receive and a publish are one C call each, and what moved into C
(waiting, Message, Loan) keeps every promise the Python code made."""

from __future__ import annotations

import gc
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_launcher import wait_for

from shmlaunch.transport import ClosedError, Message, Reader, Writer


def python_calls(fn) -> tuple[list[str], list[str]]:
    """Run ``fn`` and list the Python functions and the C functions it called, in order."""
    py, c = [], []

    def hook(frame, event, arg):
        if event == "call":
            py.append(frame.f_code.co_name)
        elif event == "c_call" and arg is not sys.setprofile:
            c.append(arg.__name__)

    sys.setprofile(hook)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return py, c


def test_a_receive_is_one_c_call_from_wake_up_to_message(rt):
    w = Writer("t", capacity=256, pool=4, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    got = []

    def receive_one():
        got.append(r.receive(timeout=1.0))

    threading.Timer(0.1, w.publish, args=(b"x" * 256,)).start()  # the receive sleeps first, then wakes
    py, c = python_calls(receive_one)
    assert isinstance(got[0], Message) and bytes(got[0].data) == b"x" * 256
    assert py == ["receive_one", "receive", "wait_seconds"]  # no Python code builds or checks the message
    assert c.count("receive") == 1  # sleeping, waking and taking: one call into _fastpath
    py, c = python_calls(got[0].release)
    assert py == [] and c == ["release"]
    w.close()
    r.close()


def test_a_publish_and_a_loan_are_one_c_call(rt):
    w = Writer("t", capacity=256, pool=4, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    data = np.arange(256, dtype=np.uint8)

    def loan():
        with w.loan() as buf:
            buf[:] = 7

    py, c = python_calls(lambda: w.publish(data))
    assert py == ["<lambda>", "publish"] and c == ["publish"]  # "publish" in py: the property handing out the C method
    py, c = python_calls(loan)
    assert py == ["loan", "loan"] and c.count("loan") == 1
    with r.receive(timeout=1) as msg:
        assert (msg.seq, int(msg.data[0])) == (2, 7)
    w.close()
    r.close()


def test_a_signal_interrupts_a_waiting_receive(rt):
    """The wait is inside the C call: a signal handler still runs, and its exception surfaces."""
    Writer("t", capacity=8, runtime_dir=rt).close()
    r = Reader("t", runtime_dir=rt)

    def raise_timeout(*_):
        raise TimeoutError("alarm")

    old = signal.signal(signal.SIGALRM, raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    start = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match="alarm"):
            r.receive(timeout=None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - start < 5
    r.close()


def sleeping(thread: threading.Thread) -> bool:
    """True while ``thread`` sleeps in the kernel (its state in /proc is S)."""
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] == "S"


def test_closing_a_reader_while_another_thread_waits_on_it(rt):
    Writer("t", capacity=8, runtime_dir=rt).close()
    r = Reader("t", runtime_dir=rt)
    got = []
    t = threading.Thread(target=lambda: got.append(r.receive(timeout=2)))
    t.start()
    wait_for(lambda: sleeping(t), what="the waiter to sleep in receive")
    r.close()
    t.join(5)
    assert got == [None]  # the waiter wakes (at the close, or at its timeout) and touches nothing of the closed reader
    with pytest.raises(ClosedError):
        r.receive(timeout=0)


def test_a_message_released_after_its_reader_closed_is_harmless(rt):
    w = Writer("t", capacity=8, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    w.publish(b"abc")
    msg = r.receive(timeout=1)
    r.close()
    msg.release()
    assert not msg.held
    w.publish(b"def")  # every slot is free again for the writer
    w.close()


def test_a_loan_dropped_without_publish_or_cancel_gives_its_slot_back(rt):
    w = Writer("t", capacity=8, pool=2, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    for _ in range(5):
        loan = w.loan()
        del loan  # neither published nor cancelled
        gc.collect()
    assert w.statistics().dropped == 0
    assert w.publish(b"ok") == 1 and bytes(r.receive(timeout=1).data[:2]) == b"ok"
    w.close()
    r.close()


def test_a_loan_outliving_its_writer_fails_cleanly(rt):
    w = Writer("t", capacity=8, runtime_dir=rt)
    loan = w.loan()
    w.close()
    with pytest.raises(ClosedError, match="writer of topic 't' is closed"):
        loan.publish()
    with pytest.raises(ClosedError):
        w.loan()
    with pytest.raises(ClosedError):
        w.publish(b"x")


def test_strided_and_bytes_like_data_publish_intact(rt):
    w = Writer("t", capacity=64, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    strided = np.arange(64, dtype=np.uint8).reshape(8, 8)[:, ::2]
    w.publish(strided)
    with r.receive(timeout=1) as msg:
        assert bytes(msg.data) == np.ascontiguousarray(strided).tobytes()
    w.publish(memoryview(b"abcdef"), stamp_ns=42, source_seq=9)
    with r.receive(timeout=1) as msg:
        assert (bytes(msg.data), msg.stamp_ns, msg.source_seq) == (b"abcdef", 42, 9)
    with pytest.raises(TypeError):
        w.publish([1, 2, 3])  # not a buffer: never guessed at
    with pytest.raises(ValueError, match="cannot publish 65 bytes to topic 't': capacity is 64 bytes"):
        w.publish(bytes(65))
    w.close()
    r.close()


def test_message_fields_are_read_only_and_copy_detaches(rt):
    w = Writer("t", capacity=8, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    w.publish(b"12345678", stamp_ns=5, source_seq=3)
    msg = r.receive(timeout=1)
    with pytest.raises(AttributeError):
        msg.seq = 9
    kept = msg.copy()
    msg.release()
    assert (kept.held, kept.seq, kept.stamp_ns, kept.source_seq, bytes(kept.data)) == (False, 1, 5, 3, b"12345678")
    assert repr(kept) == "<Message seq=1 uint8[8] released>"
    w.close()
    r.close()
