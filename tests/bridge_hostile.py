"""A hostile zenoh peer for the bridge tests: ``python bridge_hostile.py CONFIG.json ACTION...``.

It speaks zenoh directly, as any stranger on the network could, and never uses shmlaunch's
code: the attachment layout is written out here as a stranger would copy it. Actions:

- ``malformed HOST GRAPH``: every kind of bad sample at the topics ``cnt`` (int64 [1]), ``blob``
  (untyped, 100000 bytes) and ``img`` (JPEG-exported uint8 [48, 64, 3]) of HOST's graph;
- ``flood HOST GRAPH SECONDS``: samples with a foreign layout hash at 50/s at ``cnt``;
- ``big HOST GRAPH TOPIC VERSION``: answers the topic's description claiming a 2 GB topic, and
  TOPIC-named's with a message type that is not a name;
- ``tokens N``: declares N liveliness tokens;
- ``impersonate HOST GRAPH TOPIC SECONDS``: well-formed samples of value -1 under HOST's name.

CONFIG is a zenoh config (JSON). It prints one line per action done, then sleeps until killed
when an action must stay (queryables, tokens).
"""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import zenoh

ATTACHMENT = struct.Struct("<8sQqqQIIQ")


def describe(session, host: str, graph: str, topic: str) -> dict:
    for _ in range(50):
        for reply in session.get(f"shmlaunch/meta/{host}/{graph}/{topic}", timeout=1.0):
            if reply.ok is not None:
                return json.loads(reply.ok.payload.to_string())
        time.sleep(0.2)
    raise SystemExit(f"no description of {host}/{graph}/{topic}")


def head(layout: bytes, seq: int = 1, stamp: int | None = None, publish: int | None = None, encoding: int = 0, nbytes: int = 8,
         sent: int = 1) -> bytes:
    now = time.time_ns()
    return ATTACHMENT.pack(layout, seq, now if stamp is None else stamp, now if publish is None else publish, 0, encoding, nbytes, sent)


def jpeg_claiming(height: int, width: int, size: int = 600) -> bytes:
    """SOI, a baseline frame header claiming height x width, padding: what a decompression bomb's header looks like."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + bytes([1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1])
    body = b"\xff\xd8" + sof
    return body + b"\x00" * (size - len(body))


def malformed(s, host: str, graph: str) -> None:
    put = lambda topic, payload, attachment=None: s.put(f"shmlaunch/data/{host}/{graph}/{topic}", payload, attachment=attachment,  # noqa: E731
                                                        congestion_control=zenoh.CongestionControl.BLOCK)
    cnt, blob, img = (bytes.fromhex(describe(s, host, graph, t)["hash"]) for t in ("cnt", "blob", "img"))
    eight = np.array([-5], np.int64).tobytes()
    for _ in range(20):
        put("cnt", eight, head(cnt, seq=2**63))  # the sequence number that stopped an import
        put("blob", bytes(105000), head(blob, nbytes=105000))  # larger than the untyped topic
        put("cnt", eight)  # no attachment
        put("cnt", eight, b"short")
        put("cnt", eight, head(cnt, encoding=9))  # an encoding nobody announced
        put("cnt", bytes(4), head(cnt, nbytes=4))  # the wrong size for int64 [1]
        put("cnt", eight, head(cnt, stamp=-1))
        put("img", jpeg_claiming(20000, 20000), head(img, encoding=1, nbytes=600))  # a decompression bomb's header
        put("img", b"\xff\xd8garbage" * 10, head(img, encoding=1, nbytes=100))
        put("cnt", eight, head(cnt, publish=time.time_ns() - 3_000_000_000))  # held up for 3 s
        time.sleep(0.02)
    print("malformed sent", flush=True)


def flood(s, host: str, graph: str, seconds: float) -> None:
    eight = np.array([-7], np.int64).tobytes()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s.put(f"shmlaunch/data/{host}/{graph}/cnt", eight, attachment=head(b"\x01" * 8))
        time.sleep(0.02)
    print("flood done", flush=True)


def big(s, host: str, graph: str, topic: str, version: int) -> list:
    """Answers the description of ``topic`` claiming a 2 GB topic, and of ``topic``-named with a
    message type that is not a name."""
    answers = []
    for name, capacity, message in ((topic, 2 << 30, None), (f"{topic}-named", 8, "not a name!")):
        doc = {"host": host, "graph": graph, "topic": name, "capacity": capacity, "pool": 1, "dtype": None, "shape": None,
               "message": message, "layout_version": version, "encode": "raw", "sent": 0, "hash": "00" * 8}
        key, text = f"shmlaunch/meta/{host}/{graph}/{name}", json.dumps(doc)
        answers.append(s.declare_queryable(key, lambda query, key=key, text=text: query.reply(key, text)))
    print("big answering", flush=True)
    return answers


def main() -> None:
    config = zenoh.Config.from_json5(Path(sys.argv[1]).read_text())
    s = zenoh.open(config)
    time.sleep(1.0)
    args, keep = sys.argv[2:], []
    while args:
        action = args.pop(0)
        if action == "malformed":
            malformed(s, args.pop(0), args.pop(0))
        elif action == "flood":
            flood(s, args.pop(0), args.pop(0), float(args.pop(0)))
        elif action == "big":
            keep += big(s, args.pop(0), args.pop(0), args.pop(0), int(args.pop(0)))
        elif action == "tokens":
            n = int(args.pop(0))
            keep += [s.liveliness().declare_token(f"shmlaunch/live/evil{i % 7}/g{i}/t{i}") for i in range(n)]
            print(f"{n} tokens", flush=True)
        elif action == "impersonate":
            host, graph, topic, seconds = args.pop(0), args.pop(0), args.pop(0), float(args.pop(0))
            layout = bytes.fromhex(describe(s, host, graph, topic)["hash"])
            end, n = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                n += 1
                s.put(f"shmlaunch/data/{host}/{graph}/{topic}", np.array([-1], np.int64).tobytes(),
                      attachment=head(layout, seq=10**9 + n, sent=10**9 + n))
                time.sleep(0.02)
            print(f"impersonated {n}", flush=True)
    if keep:
        time.sleep(3600)


if __name__ == "__main__":
    main()
