"""Small nodes the launcher tests run in real processes (importable from the tests folder)."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from shmlaunch.nodes import Node, Param
from shmlaunch.transport import Reader


class Counter(Node):
    """Publishes 0, 1, 2, ... as int64 at ``rate`` Hz."""

    rate = Param(200.0, "messages per second")
    publishes = {"out": {"dtype": "int64"}}

    def setup(self):
        self.out = self.publisher("out")
        self.n = 0
        self.timer(1.0 / self.rate, self.tick)

    def tick(self):
        self.out.publish(np.array([self.n], np.int64))
        self.n += 1


class Scale(Node):
    """Multiplies each value by ``factor``."""

    factor = Param(10, "multiplier")

    def setup(self):
        self.out = self.publisher("out")
        self.subscribe("in", self.on_value)

    def on_value(self, msg):
        self.out.publish(msg.data * self.factor)


class Record(Node):
    """Appends every value it receives to ``path`` as JSON lines; prints a line per message."""

    path = Param("", "where to write")

    def setup(self):
        self.file = open(self.path, "a")  # noqa: SIM115 - closed in teardown()
        self.subscribe("in", self.on_value)
        self.log.info("recording to %s (pid %d)", self.path, os.getpid())

    def on_value(self, msg):
        self.file.write(json.dumps({"seq": msg.seq, "source": msg.source_seq, "value": int(msg.data[0])}) + "\n")
        self.file.flush()

    def teardown(self):
        self.file.write(json.dumps({"teardown": True}) + "\n")
        self.file.close()


class FailsInSetup(Node):
    def setup(self):
        raise RuntimeError("camera 7 is not connected")


class DiesAfter(Node):
    """Exits the process abruptly (os._exit) after ``seconds``: a crash, not a clean stop."""

    seconds = Param(0.5)
    code = Param(1)

    def setup(self):
        self.started = time.monotonic()
        self.timer(0.05, self.check)

    def check(self):
        if time.monotonic() - self.started > self.seconds:
            os._exit(self.code)


class IgnoresSigterm(Node):
    """A badly behaved node: ignores SIGTERM, so only SIGKILL stops it."""

    def setup(self):
        import signal

        self.timer(0.1, lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))


class Work(Node):
    """A slow stage: takes ``work_ms`` per message, notes which input it processed, passes it on."""

    work_ms = Param(30.0)
    log_path = Param("", "file to append 'pid seq' lines to")

    def setup(self):
        self.out = self.publisher("out")
        self.subscribe("in", self.on_value)
        self.file = open(self.log_path, "a")  # noqa: SIM115 - closed in teardown()

    def on_value(self, msg):
        self.file.write(f"{os.getpid()} {msg.seq}\n")
        self.file.flush()
        time.sleep(self.work_ms / 1000)
        self.out.publish(msg.data.copy(), stamp_ns=msg.stamp_ns, source_seq=msg.seq)

    def teardown(self):
        self.file.close()


class FakeHands(Node):
    """A black frame and one hand whose 21 points lie on a horizontal line (for viewer tests)."""

    def setup(self):
        from shmlaunch.nodes.messages import LANDMARKS

        self.image = self.publisher("image")
        self.landmarks = self.publisher("landmarks")
        self.msg = np.zeros(1, LANDMARKS)
        rec = self.msg[0]
        rec["version"], rec["hand_count"] = 1, 1
        rec["hands"][0]["landmarks"][:, 0] = [0.1 + 0.04 * i for i in range(21)]
        rec["hands"][0]["landmarks"][:, 1] = 0.5
        rec["hands"][0]["handedness"], rec["hands"][0]["score"] = 1, 0.9
        self.timer(0.05, self.tick)

    def tick(self):
        with self.image.loan() as frame:
            frame[:] = 0
        self.msg[0]["frame_seq"] = self.image.statistics().last_seq
        self.landmarks.publish(self.msg.view(np.uint8))


class Hoarder(Node):
    """Keeps every message it receives and never releases one (the slowest consumer there is).

    It reads with its own Reader: the node runtime releases a subscription's message when the
    callback returns, so a subscription could not hold one."""

    def setup(self):
        self.kept = []
        self.reader = Reader(self.topic_for("in", "subscribe"), runtime_dir=self.runtime_dir)
        self.timer(0.01, self.take)

    def take(self):
        msg = self.reader.receive_nowait()
        if msg is not None:
            self.kept.append(msg)
            self.log.info("holding %d messages", len(self.kept))


class Stuck(Node):
    """Runs normally for ``after`` seconds, then blocks inside a callback (a hung node: alive,
    not stopped, but its heartbeat goes stale)."""

    after = Param(1.0, "seconds before it hangs")

    def setup(self):
        self.started = time.monotonic()
        self.timer(0.1, self.tick)

    def tick(self):
        if time.monotonic() - self.started > self.after:
            self.log.info("hanging now")
            time.sleep(120)


class Scene(Node):
    """Deterministic content on every kind of topic a recording stores: a frame (uint8 [H, W, 3]) filled with ``seq % 251``, a
    hand-landmark message for that frame (``source_seq`` = the frame's seq), a gesture
    message, and a float32 vector of the frame's number; all stamped with the frame's capture
    time. Frame n (counting from 1) is filled with ``n % 251`` and carries ``source_seq`` n."""

    rate = Param(20.0, "frames per second")

    def setup(self):
        from shmlaunch.nodes.messages import GESTURE_TYPE, LANDMARKS_TYPE

        mapped = lambda port, **kw: self.publisher(port, **kw) if self.is_mapped(port, "publish") else None  # noqa: E731
        self.image = mapped("image")
        self.landmarks = mapped("landmarks", message=LANDMARKS_TYPE)
        self.gesture = mapped("gesture", message=GESTURE_TYPE)
        self.vector = mapped("vector")
        self.timer(1.0 / self.rate, self.tick)

    def tick(self):
        from shmlaunch.nodes.messages import GESTURE, LANDMARKS

        stamp = time.time_ns()
        self.n = n = getattr(self, "n", 0) + 1
        seq = n
        if self.image is not None:
            with self.image.loan(stamp_ns=stamp, source_seq=n) as frame:  # as a node's output image would
                frame[:] = n % 251
            seq = self.image.statistics().last_seq
        if self.landmarks is not None:
            lm = np.zeros(1, LANDMARKS)
            rec = lm[0]
            rec["version"], rec["hand_count"], rec["frame_seq"], rec["capture_ns"] = 1, 1, seq, stamp
            rec["image_height"], rec["image_width"] = self.image.config.shape[:2] if self.image is not None else (48, 64)
            rec["hands"][0]["landmarks"][:, 0] = np.linspace(0.1, 0.9, 21)
            rec["hands"][0]["landmarks"][:, 1] = (seq % 10) / 10
            self.landmarks.publish(lm.view(np.uint8), stamp_ns=stamp, source_seq=seq)
        if self.gesture is not None:
            g = np.zeros(1, GESTURE)
            g[0]["version"], g[0]["hand_count"], g[0]["frame_seq"], g[0]["capture_ns"], g[0]["gesture"][0] = 1, 1, seq, stamp, seq % 9
            self.gesture.publish(g.view(np.uint8), stamp_ns=stamp, source_seq=seq)
        if self.vector is not None:
            self.vector.publish(np.full(self.vector.config.shape, n, np.float32), stamp_ns=stamp, source_seq=seq)


class Probe(Node):
    """Writes one JSON line per message of its ``landmarks``, ``image`` and ``small`` ports (those
    mapped): what the bridge tests check on the importing host."""

    path = Param("", "the JSON Lines file to append to")

    def setup(self):
        self.file = open(self.path, "a", buffering=1)  # noqa: SIM115 (closed in teardown)
        for port in ("landmarks", "image", "small"):
            if self.is_mapped(port):
                self.subscribe(port, lambda msg, port=port: self.on_message(port, msg))

    def on_message(self, port, msg):
        data = msg.data
        self.file.write(json.dumps({"port": port, "seq": msg.seq, "stamp_ns": msg.stamp_ns, "source_seq": msg.source_seq,
                                    "publish_ns": msg.publish_ns, "received_ns": time.time_ns(), "dtype": str(data.dtype),
                                    "shape": list(data.shape), "nbytes": int(data.nbytes), "mean": float(data.mean())}) + "\n")

    def teardown(self):
        self.file.close()


class NativeAbort(Node):
    """Loads ``library`` and calls its ``die()`` (prints, then abort()) under the hand node's
    native-output filter, in setup or in its deep check: what MediaPipe 1.x does on an ARMv8.0 core."""

    library = Param("", "path of the shared library with die()")
    publishes = {"out": {"dtype": "int64"}}

    @classmethod
    def deep_check(cls, params):
        cls._die(params["library"])
        return "not reached"

    @staticmethod
    def _die(library):
        import ctypes

        from shmlaunch.nodes._native_output import filtered_native_output

        with filtered_native_output(("harmless start-up chatter",)):
            ctypes.CDLL(library).die()

    def setup(self):
        self._die(self.library)


class FanOut(Node):
    """Publishes its tick count to ports out0 .. out{ports-1}, ``rate`` times a second."""

    ports = Param(2, "how many output ports")
    rate = Param(20.0, "ticks per second")

    def setup(self):
        self.outs = [self.publisher(f"out{i}") for i in range(self.ports)]
        self.n = 0
        self.timer(1.0 / self.rate, self.tick)

    def tick(self):
        self.n += 1
        for out in self.outs:
            out.publish(np.array([self.n], np.int64))


class FanIn(Node):
    """Subscribes to in0 .. in{ports-1}; writes to ``path`` how many ports have delivered (as ports deliver)."""

    ports = Param(2, "how many input ports")
    path = Param("", "where to write the count")

    def setup(self):
        self.seen = set()
        for i in range(self.ports):
            self.subscribe(f"in{i}", lambda msg, i=i: self.on_value(i))

    def on_value(self, i):
        if i not in self.seen:
            self.seen.add(i)
            with open(self.path, "w") as f:
                f.write(str(len(self.seen)))


class Slow(Node):
    """Passes each value on after ``delay`` seconds of work (a deliberately slow stage)."""

    delay = Param(0.03, "seconds per message")

    def setup(self):
        self.out = self.publisher("out")
        self.subscribe("in", self.on_value)

    def on_value(self, msg):
        time.sleep(self.delay)
        self.out.publish(msg.data.copy(), stamp_ns=msg.stamp_ns)  # source_seq: the node runtime's default, msg.seq
