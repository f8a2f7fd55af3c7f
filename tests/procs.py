"""Bodies of the child processes the transport tests spawn (importable by name for spawn)."""

from __future__ import annotations

import hashlib
import os
import struct
import time

import numpy as np

from shmlaunch.transport import Reader, Writer

CHECK = struct.Struct("<Q16s")  # seq, then the md5 of the rest of the message


def checked_message(seq: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A message that proves its own integrity: its seq and a digest of its random body."""
    body = rng.integers(0, 256, size - CHECK.size, dtype=np.uint8)
    out = np.empty(size, np.uint8)
    out[CHECK.size :] = body
    CHECK.pack_into(out, 0, seq, hashlib.md5(body).digest())
    return out


def verify(data: np.ndarray) -> int:
    """The message's own seq if its digest matches, else -1 (a torn message)."""
    seq, digest = CHECK.unpack_from(data, 0)
    return seq if hashlib.md5(data[CHECK.size :]).digest() == digest else -1


def write_checked(runtime_dir, topic, size, count, ready=None, rate_hz=None, pool=4):
    w = Writer(topic, capacity=size, pool=pool, runtime_dir=runtime_dir)
    if ready is not None:
        ready.wait(30)
    rng = np.random.default_rng(1)
    msgs = [checked_message(i, size, rng) for i in range(64)]
    for i in range(count):
        m = msgs[i % 64]
        struct.pack_into("<Q", m, 0, i)  # seq field changes; digest covers the body only
        w.publish(m)
        if rate_hz:
            time.sleep(1 / rate_hz)
    w.close()


def write_forever(runtime_dir, topic, size, started):
    """Publish checked messages back to back until killed (for kill -9 tests)."""
    w = Writer(topic, capacity=size, pool=3, runtime_dir=runtime_dir)
    rng = np.random.default_rng()
    msgs = [checked_message(0, size, rng) for _ in range(4)]
    started.set()
    i = 0
    while True:
        w.publish(msgs[i % 4])
        i += 1


#: How long a reader waits for the first message: a writer process may take seconds to start
#: (a cold Python, numpy, and under Wine a Windows process).
FIRST_MESSAGE_WAIT = 30.0


def verified_seqs(reader, stop_after_idle):
    """Each received message's own seq (-1: torn), until nothing comes for ``stop_after_idle`` s
    once the first one has come."""
    timeout = FIRST_MESSAGE_WAIT
    while True:
        msg = reader.receive(timeout=timeout)
        timeout = stop_after_idle
        if msg is None:
            return
        with msg:
            yield verify(msg.data)


def read_checked(runtime_dir, topic, ready, results, stop_after_idle=2.0):
    """Receive until the writer goes quiet; report (received, torn, out_of_order, last_seq)."""
    r = Reader(topic, runtime_dir=runtime_dir)
    ready.set()
    received = torn = disorder = 0
    last = -1
    for seq in verified_seqs(r, stop_after_idle):
        if seq < 0:
            torn += 1
        elif seq <= last:
            disorder += 1
        last = max(last, seq)
        received += 1
    results.put((received, torn, disorder, last, r.statistics().missed))
    r.close()


def hold_one(runtime_dir, topic, held, group=None):
    """Receive one message, tell the parent, and hold it until killed."""
    r = Reader(topic, runtime_dir=runtime_dir, group=group)
    msg = r.receive(timeout=10)
    assert msg is not None
    held.set()
    time.sleep(3600)


def read_group_checked(runtime_dir, topic, group, ready, results, stop_after_idle=2.0):
    """A competing-consumer member under load: report (seqs taken in order, torn count)."""
    r = Reader(topic, runtime_dir=runtime_dir, group=group)
    ready.set()
    seqs, torn = [], 0
    for seq in verified_seqs(r, stop_after_idle):
        if seq < 0:
            torn += 1
        else:
            seqs.append(seq)
    results.put((seqs, torn))
    r.close()


def second_writer(runtime_dir, topic, results):
    try:
        Writer(topic, runtime_dir=runtime_dir)
        results.put("opened")
    except Exception as exc:  # the parent checks the type and message
        results.put(f"{type(exc).__name__}: {exc}")


# ----- memory-order litmus bodies (tests/test_memory_order.py)
def _pin(cpu: int | None) -> None:
    """Run on one CPU, so writer and reader sit on different cores (weak ordering shows only there)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def write_stamped(runtime_dir, topic, size, count, cpu, ready):
    """Publish ``count`` messages whose every 8-byte word is the message's own seq, loaned and
    filled in place (the stores a weakly ordered core may make visible late), back to back."""
    _pin(cpu)
    w = Writer(topic, runtime_dir=runtime_dir)
    ready.wait(30)
    words = size // 8
    for _ in range(count):
        with w.loan(nbytes=size) as buf:
            buf.view(np.uint64)[:words] = w.statistics().last_seq + 1  # the seq this loan will be published as
    w.close()


def read_stamped(runtime_dir, topic, cpu, ready, results, count):
    """Receive until the last message; count messages whose words are not all their header's seq
    (a payload store seen after the publish), out of order, or repeated."""
    _pin(cpu)
    r = Reader(topic, runtime_dir=runtime_dir)
    ready.set()
    received = bad = disorder = 0
    last = 0
    deadline = time.monotonic() + 300
    while last < count and time.monotonic() < deadline:
        msg = r.receive(timeout=FIRST_MESSAGE_WAIT)
        if msg is None:
            break
        with msg:
            words = msg.data.view(np.uint64)
            bad += int(np.count_nonzero(words != words[0]) > 0 or words[0] != msg.seq)
            disorder += msg.seq <= last
            last = max(last, msg.seq)
            received += 1
    r.close()
    results.put((received, bad, disorder, last))


def ping_pong(runtime_dir, inbox, outbox, rounds, first, cpu, results):
    """Answer each value on ``inbox`` with value + 1 on ``outbox`` (``first``: start with 0):
    a lost wake-up (a publish the sleeper never hears of) stops the exchange and shows as a timeout."""
    _pin(cpu)
    w = Writer(outbox, runtime_dir=runtime_dir)
    r = Reader(inbox, runtime_dir=runtime_dir)
    value, timeouts = 0, 0
    if first:
        time.sleep(0.5)  # the peer is attached
        w.publish(np.array([0], np.int64))
    while value < rounds:
        msg = r.receive(timeout=10)
        if msg is None:
            timeouts += 1
            break
        with msg:
            value = int(msg.data.view(np.int64)[0]) + 1
        w.publish(np.array([value], np.int64))
    r.close()
    w.close()
    results.put((first, value, timeouts))
