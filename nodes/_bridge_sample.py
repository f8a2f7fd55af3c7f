"""What an importer accepts from the network: every sample is checked against the topic's
description *before* anything is allocated or decoded, and a sample that fails is a
``Rejected`` with a kind (counted per topic, logged once per kind per minute), never an
exception that stops an import.

A peer may send anything under a key it can reach: a missing or short attachment, an
encoding that the exporter did not announce, a payload of the wrong size, a sequence number
or stamp out of range, a JPEG whose header claims 20000x20000 pixels, or samples that are
simply old (a link that comes back after an outage delivers what zenoh and TCP held).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from ._bridge_wire import ATTACHMENT, ENCODINGS, Metadata, as_array

#: Sequence numbers and counts an exporter can send (a pool topic numbers from 1, well below 2^62).
MAX_SEQ = (1 << 62) - 1


class Rejected(Exception):
    """A sample that was not written: ``kind`` (attachment, hash, encoding, size, seq, stamp,
    jpeg or stale; the importer counts anything else as other) and a one-line reason."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


class Header(NamedTuple):
    """A checked attachment (a tuple: made for every sample, in the latency's path)."""

    seq: int
    stamp_ns: int
    publish_ns: int
    source_seq: int
    encoding: str
    nbytes: int
    sent: int


def check_header(head: bytes, layout: bytes, meta: Metadata) -> Header:
    """The attachment, checked against the exporter's description (Rejected otherwise)."""
    if len(head) != ATTACHMENT.size:
        raise Rejected("attachment", f"an attachment of {len(head)} bytes (a shmlaunch sample has {ATTACHMENT.size})")
    lhash, seq, stamp, publish, source_seq, encoding, nbytes, sent = ATTACHMENT.unpack(head)
    if lhash != layout:
        raise Rejected("hash", f"layout hash {lhash.hex()}, the exporter described {layout.hex()}")
    if encoding >= len(ENCODINGS) or ENCODINGS[encoding] != meta.encode:
        raise Rejected("encoding", f"encoding {encoding}, the exporter sends {meta.encode}")
    if not (1 <= seq <= MAX_SEQ and source_seq <= MAX_SEQ and sent <= MAX_SEQ):
        raise Rejected("seq", f"sequence numbers out of range (seq {seq}, source_seq {source_seq}, sent {sent})")
    if stamp < 0 or publish <= 0:
        raise Rejected("stamp", f"stamps out of range (capture {stamp}, publish {publish})")
    if nbytes > meta.config.capacity:
        raise Rejected("size", f"{nbytes} bytes announced, the topic holds {meta.config.capacity}")
    return Header(seq, stamp, publish, source_seq, ENCODINGS[encoding], nbytes, sent)


def check_length(nbytes: int, meta: Metadata) -> None:
    """No payload is larger than the topic's capacity (a JPEG neither: it would be larger than
    the raw frame); checked before a payload is copied."""
    if nbytes > meta.config.capacity:
        raise Rejected("size", f"a sample of {nbytes} bytes, the topic holds {meta.config.capacity}")


def check_raw(payload: bytes, header: Header, meta: Metadata) -> None:
    """A raw payload is what the attachment announced and, on a typed topic, exactly its size."""
    expected = meta.nbytes
    if len(payload) != header.nbytes or (expected is not None and len(payload) != expected):
        want = f"{expected}" if expected is not None else f"at most {meta.config.capacity}"
        raise Rejected("size", f"a sample of {len(payload)} bytes (announced {header.nbytes}, the topic takes {want})")


def check_payload(payload: bytes, header: Header, meta: Metadata) -> None:
    """What can be checked without decoding: the length (``check_length``), a raw payload's
    size (``check_raw``), the dimensions a JPEG's header claims (a bomb is refused before it is
    decoded)."""
    check_length(len(payload), meta)
    if header.encoding == "raw":
        check_raw(payload, header, meta)
        return
    shape = meta.config.shape
    size = jpeg_size(payload)
    if size is None:
        raise Rejected("jpeg", f"a sample of {len(payload)} bytes that is not a baseline or progressive JPEG")
    if size != (shape[0], shape[1]):
        raise Rejected("jpeg", f"a JPEG of {size[1]}x{size[0]} pixels, the topic is {shape[1]}x{shape[0]}")


def decode(payload: bytes, header: Header, meta: Metadata) -> np.ndarray:
    """A payload that passed ``check_payload`` as the topic's array (a JPEG decoded)."""
    if header.encoding == "raw":
        return as_array(meta.config, payload)
    import cv2

    shape = meta.config.shape
    img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR if len(shape) == 3 else cv2.IMREAD_GRAYSCALE)
    if img is None or img.shape != tuple(shape):
        raise Rejected("jpeg", f"a JPEG that did not decode to {list(shape)}")
    return img


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, walking its markers (bounded by the
    payload's length); None for anything else."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return None
        if marker in _SOF:
            if i + 9 > len(data):
                return None
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
        if marker == 0xDA:  # scan data before any frame header
            return None
        i += 2 + length
    return None


class AgeFilter:
    """Drops samples that took ``max_age`` seconds longer than the quickest recent ones.

    The two hosts' clocks need not agree: the delay seen is (receive time - the exporter's
    publish time) = transit + clock offset, and its minimum over the last minute is the
    quickest transit plus the same offset. A sample whose delay exceeds that minimum by more
    than ``max_age`` waited somewhere (zenoh's queue, a TCP buffer during an outage) and is
    older than what newest-only promises. 0 turns the filter off.
    """

    WINDOW = 30.0

    def __init__(self, max_age: float) -> None:
        self.max_ns = int(max_age * 1e9)
        self.mins = [(time.monotonic(), None), (time.monotonic(), None)]  # (start, min delay) of this and the previous window

    def check(self, publish_ns: int) -> None:
        if not self.max_ns:
            return
        delay = time.time_ns() - publish_ns
        now = time.monotonic()
        start, low = self.mins[1]
        if now - start > self.WINDOW:
            self.mins = [self.mins[1], (now, None)]
            start, low = self.mins[1]
        self.mins[1] = (start, delay if low is None else min(low, delay))
        floor = min(m for _s, m in self.mins if m is not None)
        if delay - floor > self.max_ns:
            raise Rejected("stale", f"a sample {(delay - floor) / 1e9:.2f} s older than the link's quickest (max_age "
                                    f"{self.max_ns / 1e9:g} s)")
