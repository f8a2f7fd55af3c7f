"""What the bridge's importer accepts from the network, without a network: every check of
``_bridge_sample`` on crafted and mutated input (real JPEGs of the bundled sample, real
attachments), and the zenoh config it builds from a launch file's ``bridge:`` section."""

from __future__ import annotations

import json
import random
import time
import tracemalloc

import numpy as np
import pytest

from shmlaunch.nodes._bridge_sample import (
    AgeFilter,
    Rejected,
    check_header,
    check_payload,
    decode,
    jpeg_size,
)
from shmlaunch.nodes._bridge_wire import ATTACHMENT, MAX_METADATA, Metadata, layout_hash
from shmlaunch.transport import TopicConfig

FRAME = TopicConfig.build(dtype="uint8", shape=[48, 64, 3], pool=2)
COUNT = TopicConfig.build(dtype="int64", shape=[1], pool=4)


def meta(config: TopicConfig, encode: str = "raw") -> Metadata:
    return Metadata("robot", "robot", "t", config, encode)


def head(config: TopicConfig, *, seq=1, stamp=None, publish=None, encoding=0, nbytes=8, sent=1, lhash=None) -> bytes:
    now = time.time_ns()
    return ATTACHMENT.pack(lhash or layout_hash(config), seq, now if stamp is None else stamp, now if publish is None else publish, 0,
                           encoding, nbytes, sent)


@pytest.mark.parametrize("kind,attachment", [
    ("attachment", b""), ("attachment", b"short"), ("hash", head(COUNT, lhash=b"\1" * 8)), ("encoding", head(COUNT, encoding=9)),
    ("encoding", head(COUNT, encoding=1)), ("seq", head(COUNT, seq=2**63)), ("seq", head(COUNT, seq=0)),
    ("stamp", head(COUNT, stamp=-1)), ("size", head(COUNT, nbytes=9)),
])
def test_each_bad_attachment_is_rejected_with_its_kind(kind, attachment):
    with pytest.raises(Rejected) as info:
        check_header(attachment, layout_hash(COUNT), meta(COUNT))
    assert info.value.kind == kind and "\n" not in str(info.value)


def test_a_raw_payload_must_be_exactly_the_typed_topics_size_and_what_was_announced():
    m = meta(COUNT)
    good = check_header(head(COUNT), layout_hash(COUNT), m)
    check_payload(np.array([5], np.int64).tobytes(), good, m)
    assert decode(np.array([5], np.int64).tobytes(), good, m).tolist() == [5]
    for payload in (b"1234", b"123456789", b""):
        with pytest.raises(Rejected, match="bytes") as info:
            check_payload(payload, good, m)
        assert info.value.kind == "size"
    blob = TopicConfig.build(capacity=100, pool=2)
    small = check_header(head(blob, nbytes=40), layout_hash(blob), meta(blob))
    check_payload(bytes(40), small, meta(blob))
    with pytest.raises(Rejected):
        check_payload(bytes(41), small, meta(blob))


def _jpeg(shape=(48, 64, 3)) -> bytes:
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed (the 'hands' extra)")
    from shmlaunch.nodes.camera import SAMPLE_DIR, image_files, letterbox

    img = letterbox(cv2.imread(str(image_files(SAMPLE_DIR)[0])), shape)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()


def test_a_jpeg_is_decoded_only_when_its_header_claims_the_topics_size():
    jpeg = _jpeg()
    assert jpeg_size(jpeg) == (48, 64)
    m = meta(FRAME, "jpeg")
    h = check_header(head(FRAME, encoding=1, nbytes=len(jpeg)), layout_hash(FRAME), m)
    check_payload(jpeg, h, m)
    assert decode(jpeg, h, m).shape == (48, 64, 3)
    bigger = _jpeg((96, 128, 3))
    with pytest.raises(Rejected, match="128x96 pixels, the topic is 64x48"):
        check_payload(bigger, h, m)
    sof = jpeg.index(b"\xff\xc0")  # the real frame header, patched to claim 20000x20000 (a bomb's header)
    bomb = jpeg[:sof + 5] + (20000).to_bytes(2, "big") * 2 + jpeg[sof + 9:]
    with pytest.raises(Rejected, match="20000x20000"):
        check_payload(bomb, h, m)
    with pytest.raises(Rejected, match="not a baseline or progressive JPEG") as info:
        check_payload(b"\xff\xd8" + bytes(600), h, m)
    assert info.value.kind == "jpeg"


class Bounded:
    """A block that must finish within ``seconds`` and allocate at most ``mb`` MB at its peak
    (Python allocations, numpy's included): what a peer's bytes may cost the bridge."""

    def __init__(self, seconds: float, mb: float) -> None:
        self.seconds, self.mb = seconds, mb

    def __enter__(self):
        tracemalloc.start()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        took = time.monotonic() - self.t0
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        if exc[0] is None:
            assert took < self.seconds and peak < self.mb, f"{took:.1f} s, peak {peak:.1f} MB"


def test_mutated_jpegs_and_attachments_never_raise_anything_but_a_rejection():
    """500 mutants of a real JPEG and of a real attachment: each is accepted as a frame of the
    topic's shape or rejected with a kind; nothing else escapes, nothing decodes to another shape;
    all of it within bounded time and memory."""
    rng = random.Random(26)
    jpeg, m = _jpeg(), meta(FRAME, "jpeg")
    good = head(FRAME, encoding=1, nbytes=len(jpeg))
    with Bounded(seconds=30, mb=50):
        _mutate_and_check(rng, jpeg, good, m)


def _mutate_and_check(rng: random.Random, jpeg: bytes, good: bytes, m: Metadata) -> None:
    for _ in range(500):
        payload, attachment = bytearray(jpeg), bytearray(good)
        for _ in range(rng.randint(1, 8)):
            target = payload if rng.random() < 0.8 else attachment
            i = rng.randrange(len(target))
            if rng.random() < 0.7:
                target[i] = rng.randrange(256)
            elif rng.random() < 0.5:
                del target[i:i + rng.randint(1, 64)]
            else:
                target[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        try:
            h = check_header(bytes(attachment), layout_hash(FRAME), m)
            check_payload(bytes(payload), h, m)
            assert decode(bytes(payload), h, m).shape == (48, 64, 3)
        except Rejected as r:
            assert r.kind in ("attachment", "hash", "encoding", "seq", "stamp", "size", "jpeg")


def test_the_age_filter_drops_what_waited_beyond_max_age_whatever_the_clock_offset():
    for offset in (0, 5 * 10**9, -7 * 10**9):  # the exporter's clock ahead, behind, or the same
        f = AgeFilter(0.5)
        for _ in range(20):
            f.check(time.time_ns() - offset - 2_000_000)  # 2 ms in flight
        f.check(time.time_ns() - offset - 300_000_000)  # held up 0.3 s: kept
        with pytest.raises(Rejected) as info:
            f.check(time.time_ns() - offset - 3_000_000_000)  # held up through a 3 s outage
        assert info.value.kind == "stale"
    AgeFilter(0).check(1)  # off


def test_the_zenoh_config_listens_only_where_named_and_gives_frames_a_lane_of_their_own(tmp_path):
    pytest.importorskip("zenoh", reason="the 'bridge' extra is not installed")
    from shmlaunch.nodes._bridge_config import access_control, zenoh_config

    got = lambda config, key: json.loads(config.get_json(key))  # noqa: E731
    connect_only = zenoh_config({"connect": ["tcp/10.1.2.3:7447"]}, tmp_path)
    assert got(connect_only, "listen/endpoints") == []
    assert got(connect_only, "connect/endpoints") == ["tcp/10.1.2.3:7447?prio=0-5", "tcp/10.1.2.3:7447?prio=6-7"]
    assert got(connect_only, "scouting/multicast/enabled") is False
    client = zenoh_config({"mode": "client", "connect": ["tcp/10.1.2.3:7447"]}, tmp_path)  # a router's links are its own
    assert got(client, "connect/endpoints") == ["tcp/10.1.2.3:7447"]
    both = zenoh_config({"listen": ["tcp/10.1.2.4:7447"], "connect": ["tcp/10.1.2.3:7447"], "max_topic_mb": 8}, tmp_path)
    assert got(both, "listen/endpoints") == ["tcp/10.1.2.4:7447"]
    assert got(both, "transport/link/rx/max_message_size") == 8 << 20
    acl = access_control(["laptop", "robot-b"])
    assert acl["default_permission"] == "deny"
    own = {r["id"]: r["key_exprs"] for r in acl["rules"]}
    assert own["from laptop"] == ["shmlaunch/*/laptop/**"] and own["from robot-b"] == ["shmlaunch/*/robot-b/**"]
    assert "put" not in next(r for r in acl["rules"] if r["id"] == "ask")["messages"]


ODD_VALUES = ["Infinity", "-Infinity", "NaN", "1e400", "-1", "0", "[]", "{}", "null", "true", '"x"', "2.5", "[1e400]", "[2.5, 3]",
              "99999999999999999999999", '"not a name!"', '"../etc"', "[1099511627776, 1099511627776]"]


def test_mutated_topic_descriptions_are_a_description_or_one_value_error():
    """A peer answers the metadata query with anything: 20,000 mutants of real descriptions (a
    field replaced by an odd JSON value, or bytes flipped) either parse into a description whose
    sizes are within the transport's bounds or raise ValueError with one line; within bounded
    time and memory. (Found here: Infinity as a shape raised OverflowError, which escaped.)"""
    rng = random.Random(28)
    real = [Metadata("robot", "robot", "camera/image", FRAME, "jpeg").to_json(),
            Metadata("robot", "robot", "blob", TopicConfig(100000, 4, message="shmlaunch.landmarks/1"), "raw", 7).to_json()]
    parsed = refused = 0
    with Bounded(seconds=60, mb=50):
        for _ in range(20000):
            text = rng.choice(real)
            if rng.random() < 0.5:
                key = rng.choice(list(json.loads(text)))
                text = text.replace(f'"{key}": ', f'"{key}": {rng.choice(ODD_VALUES)}, "was": ', 1)
            else:
                raw = bytearray(text.encode())
                for _ in range(rng.randint(1, 6)):
                    raw[rng.randrange(len(raw))] = rng.randrange(32, 127)
                text = raw.decode()
            try:
                m = Metadata.from_json(text)
            except ValueError as exc:
                assert "\n" not in str(exc)
                refused += 1
                continue
            parsed += 1
            assert isinstance(m.sent, int) and 1 <= m.config.pool <= 256 and 1 <= m.config.capacity <= 1 << 40
            assert m.nbytes is None or m.nbytes <= m.config.capacity
    assert parsed > 100 and refused > 10000, (parsed, refused)
    with pytest.raises(ValueError, match="at most 4096"):
        Metadata.from_json(" " * (MAX_METADATA + 1))


def test_an_infinite_dimension_is_a_bad_shape_not_an_overflow():
    with pytest.raises(ValueError, match="invalid shape"):
        TopicConfig.build(dtype="uint8", shape=[float("inf")])
