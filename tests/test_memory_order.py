"""Litmus-style stress tests of the orderings the protocol relies on (transport/LAYOUT.md, "Memory order").

On x86 (and on x86 under qemu-user, which keeps the host's strong order) these pass whatever the
barriers; they exist for real ARM boards (Raspberry Pi, Jetson), where a missing one shows: the
writer on one core and the reader on another, back to back, as many messages as fit in a few
seconds. Message passing: a reader that sees a message's state must see its whole payload.
Wake-up: a reader that goes to sleep on the wake word must be woken by every later publish
(a lost wake-up stops a ping-pong and shows as a timeout).
"""

from __future__ import annotations

import os

import procs

from shmlaunch.transport import Writer

CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
WRITER_CPU, READER_CPU = (CPUS[0], CPUS[1]) if len(CPUS) > 1 else (None, None)


def test_message_passing_a_reader_never_sees_a_state_before_the_payload_it_covers(rt, ctx):
    n, size = 20_000, 4096  # 64 cache lines a message, each carrying the seq
    Writer("mp", capacity=size, pool=3, runtime_dir=rt).close()
    ready, results = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=procs.read_stamped, args=(rt, "mp", READER_CPU, ready, results, n))
    writer = ctx.Process(target=procs.write_stamped, args=(rt, "mp", size, n, WRITER_CPU, ready))
    reader.start()
    writer.start()
    writer.join(300)
    received, bad, disorder, last = results.get(timeout=300)
    reader.join(30)
    assert writer.exitcode == 0 and reader.exitcode == 0
    assert (bad, disorder, last) == (0, 0, n)
    assert received > 100


def test_wake_up_a_sleeping_reader_hears_every_publish_in_a_ping_pong(rt, ctx):
    rounds = 3000
    for topic in ("ping", "pong"):
        Writer(topic, dtype="int64", shape=(1,), pool=2, runtime_dir=rt).close()
    results = ctx.Queue()
    a = ctx.Process(target=procs.ping_pong, args=(rt, "pong", "ping", rounds, True, WRITER_CPU, results))
    b = ctx.Process(target=procs.ping_pong, args=(rt, "ping", "pong", rounds, False, READER_CPU, results))
    b.start()
    a.start()
    outcomes = sorted(results.get(timeout=300) for _ in range(2))
    a.join(30)
    b.join(30)
    assert [timeouts for _, _, timeouts in outcomes] == [0, 0]
    assert max(value for _, value, _ in outcomes) >= rounds
