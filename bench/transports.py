"""The transports the benchmark compares, each as a (publisher, subscriber) pair of classes.

Every subscriber does the same work: ``receive`` returns the newest message and ``data`` the
numpy array of its payload, which the harness holds (reads its header and three bytes) before
it takes the arrival time. Every publisher takes the send time just before its publish call.
Every message starts with 16 header bytes: the sequence number and the monotonic time taken
just before the publish call. Copying publishers send one of four pre-filled source frames
(frame k is filled with byte k), so a subscriber can spot a torn message by checking that
the first, middle and last payload bytes all equal ``seq % 4``.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import struct
import time

import numpy as np

from shmlaunch._platform import buffer_address, futex_wait, futex_wake
from shmlaunch.transport import Reader, Writer

HEADER = struct.Struct("<Qq")


def stamp_into(buf: np.ndarray, seq: int) -> None:
    HEADER.pack_into(buf, 0, seq, time.monotonic_ns())


class PoolTopic:
    """shmlaunch pool topic, copying publish."""

    def __init__(self, name: str, size: int, rt: str, conn=None) -> None:
        self.name, self.size, self.rt = name, size, rt

    def setup_publisher(self) -> None:
        self.w = Writer(self.name, runtime_dir=self.rt)

    def publish(self, src: np.ndarray, seq: int) -> None:
        stamp_into(src, seq)
        self.w.publish(src)

    def setup_subscriber(self) -> None:
        self.r = Reader(self.name, runtime_dir=self.rt)

    def receive(self, timeout: float):
        return self.r.receive(timeout)  # Message: .data, released when dropped

    @staticmethod
    def data(msg) -> np.ndarray:
        return msg.data

    def create(self) -> None:
        Writer(self.name, capacity=self.size, pool=4, runtime_dir=self.rt).close()

    def close(self) -> None:
        for end in ("w", "r"):
            if hasattr(self, end):
                getattr(self, end).close()


class PoolTopicLoan(PoolTopic):
    """shmlaunch pool topic, loaned publish: the payload is produced in place, only the header is written."""

    def publish(self, src: np.ndarray, seq: int) -> None:
        t = time.monotonic_ns()
        with self.w.loan() as buf:
            HEADER.pack_into(buf, 0, seq, t)


class Floor:
    """The bare floor: an mmap'd pool of 4 slots, one copy, a futex wake; no holds, no checks."""

    SLOTS = 4

    def __init__(self, name: str, size: int, rt: str, conn=None) -> None:
        self.path = os.path.join(rt, f"floor-{name}")
        self.size = size

    def create(self) -> None:
        with open(self.path, "wb") as f:
            f.truncate(64 + self.SLOTS * self.size)

    def _map(self) -> None:
        fd = os.open(self.path, os.O_RDWR)
        self.mm = mmap.mmap(fd, 64 + self.SLOTS * self.size)
        os.close(fd)
        self.addr, self._pin = buffer_address(self.mm)
        self.slots = [np.frombuffer(self.mm, np.uint8, self.size, 64 + i * self.size) for i in range(self.SLOTS)]
        self.word = np.frombuffer(self.mm, np.uint32, 1, 0)

    setup_publisher = setup_subscriber = _map

    def publish(self, src: np.ndarray, seq: int) -> None:
        stamp_into(src, seq)
        self.slots[seq % self.SLOTS][:] = src
        self.word[0] = seq
        futex_wake(self.addr)

    def receive(self, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            w = int(self.word[0])
            if w != getattr(self, "_seen", 0):
                self._seen = w
                return self.slots[w % self.SLOTS]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            futex_wait(self.addr, w, left)

    @staticmethod
    def data(msg) -> np.ndarray:
        return msg

    def close(self) -> None:
        self.slots = self.word = self._pin = None
        self.mm.close()

    def destroy(self) -> None:
        """Remove the pool's file (shmlaunch's cleanup leaves files it did not make)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Pipe:
    """multiprocessing.Pipe: send_bytes / recv_bytes (two copies through the kernel)."""

    def __init__(self, name: str, size: int, rt: str, conn=None) -> None:
        self.conn = conn

    def create(self) -> None:
        pass

    def setup_publisher(self) -> None:
        pass

    setup_subscriber = setup_publisher

    def publish(self, src: np.ndarray, seq: int) -> None:
        stamp_into(src, seq)
        self.conn.send_bytes(src)

    def receive(self, timeout: float):
        if not self.conn.poll(timeout):
            return None
        return np.frombuffer(self.conn.recv_bytes(), np.uint8)

    @staticmethod
    def data(msg) -> np.ndarray:
        return msg


class Zmq:
    """ZeroMQ PUB/SUB over ipc:// (copying send, zero-copy recv into a frame)."""

    def __init__(self, name: str, size: int, rt: str, conn=None) -> None:
        self.endpoint = f"ipc://{rt}/zmq-{name}"

    def destroy(self) -> None:
        """Remove the ipc socket file (shmlaunch's cleanup leaves files it did not make)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.endpoint[len("ipc://"):])

    def create(self) -> None:
        pass

    def setup_publisher(self) -> None:
        import zmq

        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, 4)
        self.sock.bind(self.endpoint)
        time.sleep(0.5)  # slow joiner: let the subscriber connect

    def setup_subscriber(self) -> None:
        import zmq

        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 4)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(self.endpoint)

    def publish(self, src: np.ndarray, seq: int) -> None:
        stamp_into(src, seq)
        self.sock.send(src, copy=True)

    def receive(self, timeout: float):
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return np.frombuffer(self.sock.recv(copy=False).buffer, np.uint8)

    @staticmethod
    def data(msg) -> np.ndarray:
        return msg


class Iceoryx2:
    """iceoryx2 0.10 publish-subscribe (Slice[u8], one memmove into a loaned sample) + event wake-up."""

    def __init__(self, name: str, size: int, rt: str, conn=None) -> None:
        # one service per run (the runtime directory's name is unique): a service left by an
        # interrupted run can otherwise make the next one fail with HangsInCreation
        self.name, self.size = f"shmlaunch-bench/{os.path.basename(rt)}/{name}", size

    def create(self) -> None:
        pass

    def _open(self):
        import iceoryx2 as iox2

        self.iox2 = iox2
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        svc = (
            self.node.service_builder(iox2.ServiceName.new(self.name))
            .publish_subscribe(iox2.Slice[ctypes.c_uint8])
            .subscriber_max_buffer_size(2)
            .history_size(0)
            .open_or_create()
        )
        ev = self.node.service_builder(iox2.ServiceName.new(self.name + "/ev")).event().open_or_create()
        return svc, ev

    def setup_publisher(self) -> None:
        svc, ev = self._open()
        self.pub = svc.publisher_builder().initial_max_slice_len(self.size).max_loaned_samples(2).create()
        self.notifier = ev.notifier_builder().create()
        time.sleep(0.3)

    def setup_subscriber(self) -> None:
        svc, ev = self._open()
        self.sub = svc.subscriber_builder().create()
        self.listener = ev.listener_builder().create()
        self.payload_type = ctypes.c_uint8 * self.size  # made once: a new ctypes type per message costs 0.8 µs more

    def publish(self, src: np.ndarray, seq: int) -> None:
        stamp_into(src, seq)
        # the slice API's copying send: loan, one memmove, send (Publisher.send_copy takes ctypes values only)
        sample = self.pub.loan_slice_uninit(self.size)
        ctypes.memmove(sample.payload_ptr, src.ctypes.data, self.size)
        sample.assume_init().send()
        self.notifier.notify()

    def receive(self, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            newest = None
            while (s := self.sub.receive()) is not None:
                newest = s
            if newest is not None:
                return newest
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.listener.timed_wait(self.iox2.Duration.from_secs_f64(left))  # collects every pending event

    def data(self, sample) -> np.ndarray:
        # the sample stays alive (and its memory valid) while the harness holds it
        return np.frombuffer(self.payload_type.from_address(sample.payload_ptr), np.uint8)


class PoolTopicTraced(PoolTopic):
    """shmlaunch pool topic, copying publish, with a tracer attached (``shmlaunch trace``): the
    benchmark holds the trace request and reads the rings every 0.1 s, as the command does."""

    traced = True


TRANSPORTS = {
    "multiprocessing.Pipe": Pipe,
    "ZeroMQ PUB/SUB ipc://": Zmq,
    "iceoryx2 0.10": Iceoryx2,
    "bare floor (mmap + futex)": Floor,
    "shmlaunch pool topic": PoolTopic,
    "shmlaunch pool topic, loan": PoolTopicLoan,
    "shmlaunch pool topic, traced": PoolTopicTraced,
}
