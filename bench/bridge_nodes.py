"""The bridge benchmark's processes: a source node, a latency probe node, and the anchor, a plain
zenoh publisher and subscriber sending the same bytes (``python bench/bridge_nodes.py pub|sub``).

Latency is the receiver's CLOCK_REALTIME minus the sender's stamp taken just before it
published: both "hosts" are namespaces of one machine, so they share the clock.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np

from shmlaunch.nodes import Node, Param

STAMP = struct.Struct("<qQ")  # stamp_ns, seq


#: The payloads: 256 bytes, and the bundled sample photo letterboxed to 640x480 and 1280x720 BGR.
SHAPES = {"small": (256,), "vga": (480, 640, 3), "frame": (720, 1280, 3)}


def payload(kind: str) -> np.ndarray:
    if kind == "small":
        return np.arange(256, dtype=np.uint8)
    import cv2

    from shmlaunch.nodes.camera import SAMPLE_DIR, image_files, letterbox

    return letterbox(cv2.imread(str(image_files(SAMPLE_DIR)[0])), SHAPES[kind])


class Source(Node):
    """Publishes the payload at ``rate`` Hz, stamped just before publishing."""

    rate = Param(30.0, "messages per second")
    kind = Param("small", "small, vga or frame")

    def setup(self):
        self.out = self.publisher("out")
        self.data = payload(self.kind).reshape(self.out.config.shape)
        self.timer(1.0 / self.rate, lambda: self.out.publish(self.data, stamp_ns=time.time_ns()))


class Latency(Node):
    """Keeps receive time minus stamp per message in memory; writes them to ``path`` at the end."""

    path = Param("", "where to write the JSON result")

    def setup(self):
        self.got: list[tuple[int, int]] = []
        self.subscribe("in", lambda msg: self.got.append((time.time_ns(), time.time_ns() - msg.stamp_ns)))

    def teardown(self):
        Path(self.path).write_text(json.dumps(self.got))


def zenoh_session(listen: str | None, connect: str | None):
    import zenoh

    c = zenoh.Config()
    c.insert_json5("scouting/multicast/enabled", "false")
    c.insert_json5("transport/shared_memory/enabled", "false")
    if listen:
        c.insert_json5("listen/endpoints", json.dumps([listen]))
    if connect:
        c.insert_json5("connect/endpoints", json.dumps([connect]))
    return zenoh.open(c)


def plain_pub(ns) -> None:
    """The anchor's sender: each ``--stream topic:kind:rate[:jpeg]`` on a thread of its own, the same
    bytes as the bridge sends (JPEG bytes encoded once), zenoh's default config."""
    import threading

    import zenoh

    s = zenoh_session(ns.listen, None)

    def send(topic: str, kind: str, rate: str, jpeg: str = "") -> None:
        data = payload(kind)
        if jpeg:
            import cv2

            data = cv2.imencode(".jpg", data, [cv2.IMWRITE_JPEG_QUALITY, 80])[1]
        body = data.tobytes()
        small = len(body) <= 64 << 10
        pub = s.declare_publisher(f"bench/{topic}", congestion_control=zenoh.CongestionControl.DROP, express=small,
                                  priority=zenoh.Priority.DATA_HIGH if small else zenoh.Priority.DATA_LOW)
        period, seq = 1.0 / float(rate), 0
        start = next_at = time.monotonic()
        while time.monotonic() - start < ns.seconds:
            seq += 1
            pub.put(body, attachment=STAMP.pack(time.time_ns(), seq))
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=send, args=tuple(stream.split(":"))) for stream in ns.stream]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s.close()


def plain_sub(ns) -> None:
    """Records (receive time, latency) per topic into ``--out`` as {topic: [...]}."""
    import zenoh

    got: dict[str, list[tuple[int, int]]] = {}
    s = zenoh_session(None, ns.connect)

    def on(smp) -> None:
        now = time.time_ns()
        got.setdefault(str(smp.key_expr).rpartition("/")[2], []).append((now, now - STAMP.unpack(smp.attachment.to_bytes())[0]))
    s.declare_subscriber("bench/*", on, allowed_origin=zenoh.Locality.REMOTE)
    time.sleep(ns.seconds)
    Path(ns.out).write_text(json.dumps(got))
    s.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["pub", "sub"])
    ap.add_argument("--stream", action="append", default=[], help="topic:kind:rate[:jpeg] (pub)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--listen")
    ap.add_argument("--connect")
    ap.add_argument("--out")
    args = ap.parse_args()
    (plain_pub if args.role == "pub" else plain_sub)(args)
    sys.exit(0)
