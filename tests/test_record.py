"""Recording and replay in MCAP: shmlaunch record / play / info, the record: section, the camera
playing a recording, crash safety and the live Foxglove server. Real graphs, real files."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_launcher import assert_nothing_left, start, unique_name, wait_for, write_graph

pytest.importorskip("mcap", reason="the 'record' extra is not installed (uv pip install -e '.[record]')")
pytest.importorskip("foxglove", reason="the 'record' extra is not installed (uv pip install -e '.[record]')")
pytest.importorskip("mcap_protobuf", reason="the 'record' extra is not installed (uv pip install -e '.[record]')")

from google.protobuf.unknown_fields import UnknownFieldSet  # noqa: E402
from mcap.exceptions import EndOfFile  # noqa: E402
from mcap.reader import NonSeekingReader, make_reader  # noqa: E402
from mcap_protobuf.decoder import DecoderFactory  # noqa: E402

from shmlaunch.nodes.messages import LANDMARKS, N_LANDMARKS  # noqa: E402
from shmlaunch.transport import Reader, Topic, TopicConfig, TopicNotFoundError, cleanup, graph_runtime_dir, wait_any  # noqa: E402

RATE = 20.0
SCENE = """
topics:
  cam/image: {dtype: uint8, shape: [48, 64, 3], pool: 4}
  hands/landmarks: {capacity: 2096, pool: 8}
  hands/gesture: {capacity: 64, pool: 8}
  vec: {dtype: float32, shape: [16], pool: 4}
nodes:
  scene:
    node: graph_nodes:Scene
    params: {rate: RATE}
    publish: {image: cam/image, landmarks: hands/landmarks, gesture: hands/gesture, vector: vec}
    env: {PYTHONPATH: PYTHONPATH_HERE}
""".replace("RATE", str(RATE))
CONFIGS = {
    "cam/image": TopicConfig.build(pool=4, dtype="uint8", shape=[48, 64, 3]),
    "hands/landmarks": TopicConfig.build(2096, 8),
    "hands/gesture": TopicConfig.build(64, 8),
    "vec": TopicConfig.build(pool=4, dtype="float32", shape=[16]),
}


def cli(*args, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def latest(graph: str, topic: str, missing: int | None = None) -> int:
    """The topic's newest sequence number; ``missing`` while the graph has not created it yet
    (without it, that is an error)."""
    try:
        with Topic.open(topic, runtime_dir=graph_runtime_dir(graph)) as t:
            return t.dynamic().latest_seq
    except TopicNotFoundError:
        if missing is None:
            raise
        return missing


@pytest.fixture
def scene(tmp_path):
    """A running graph publishing a frame, landmarks, a gesture and a vector RATE times a second."""
    path, graph = write_graph(tmp_path, SCENE)
    proc = start(path)
    try:
        wait_for(lambda: latest(graph, "vec", missing=0) > 2, what="the scene to publish")
        yield graph
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert_nothing_left(graph)


def summary_of(stderr: str) -> dict:
    """The counters ``shmlaunch record`` prints at the end."""
    line = next(line for line in stderr.splitlines() if line.startswith("shmlaunch: summary "))
    return json.loads(line.partition("summary ")[2])


def by_channel(path: Path) -> dict[str, list]:
    """Every message of a finished file, decoded where it is protobuf: channel -> [(channel, message, decoded)]."""
    out: dict[str, list] = {}
    factory = DecoderFactory()
    with open(path, "rb") as f:
        for schema, channel, message in make_reader(f).iter_messages(log_time_order=False):
            decoder = factory.decoder_for(channel.message_encoding, schema)
            out.setdefault(channel.topic, []).append((schema, channel, message, decoder(message.data) if decoder else None))
    return out


def recorded_pool_messages(path: Path) -> dict[str, list[tuple[bytes, int, int]]]:
    """Per topic, in order: (payload bytes, stamp_ns, source_seq) as the file stores them."""
    out = {}
    for topic, items in by_channel(path).items():
        if topic.endswith("/annotations"):
            continue
        rows = []
        for _schema, _channel, message, decoded in items:
            if decoded is not None:  # RawImage: stamp in its timestamp, a non-zero source_seq as protobuf field 1001
                extra = {f.field_number: f.data for f in UnknownFieldSet(decoded)}
                rows.append((bytes(decoded.data), decoded.timestamp.seconds * 10**9 + decoded.timestamp.nanos, extra.get(1001, 0)))
            else:
                _seq, source_seq = np.frombuffer(message.data[:16], "<u8")
                rows.append((bytes(message.data[16:]), message.publish_time, int(source_seq)))
        out[topic] = rows
    return out


def test_recording_has_schemas_foxglove_opens_and_plays_back_byte_for_byte(scene, tmp_path):
    out = tmp_path / "run.mcap"
    res = cli("record", out, "--graph", scene, "--duration", 3)
    assert res.returncode == 0, res.stderr
    counts = summary_of(res.stderr)["topics"]
    assert set(counts) == set(CONFIGS)
    assert all(c["recorded"] >= 0.5 * 3 * RATE and c["dropped"] == 0 for c in counts.values()), counts
    channels = by_channel(out)
    assert set(channels) == set(CONFIGS) | {"hands/landmarks/annotations", "hands/gesture/annotations"}
    assert {t: len(v) for t, v in channels.items() if t in CONFIGS} == {t: c["recorded"] for t, c in counts.items()}

    # camera frames: foxglove.RawImage, bgr8, stamped with the capture time
    images = channels["cam/image"]
    schema, _ch, _m, img = images[0]
    assert (schema.name, schema.encoding) == ("foxglove.RawImage", "protobuf")
    assert (img.width, img.height, img.encoding, img.step, len(img.data)) == (64, 48, "bgr8", 192, 48 * 64 * 3)
    vectors = {m.publish_time: int(np.frombuffer(m.data[16:], np.float32)[0]) for _s, _c, m, _d in channels["vec"]}
    for _s, _c, message, img in images:
        stamp = img.timestamp.seconds * 10**9 + img.timestamp.nanos
        assert stamp == message.publish_time
        if stamp in vectors:  # the same frame's number n: every pixel is n % 251, its source_seq n
            assert set(np.frombuffer(img.data, np.uint8)) == {vectors[stamp] % 251}
            assert {f.field_number: f.data for f in UnknownFieldSet(img)} == {1001: vectors[stamp]}

    # landmarks: the raw struct in an envelope, and the skeleton as image annotations (21 points a hand)
    schema, channel, message, _ = channels["hands/landmarks"][0]
    assert schema.name == "shmlaunch.landmarks/1" and channel.message_encoding == "shmlaunch.ndarray"
    assert json.loads(schema.data)["message"] == "shmlaunch.landmarks/1"
    seq, source_seq = np.frombuffer(message.data[:16], "<u8")
    rec = np.frombuffer(message.data[16:], LANDMARKS)[0]
    assert source_seq == rec["frame_seq"] and seq & 0xFFFFFFFF == message.sequence
    assert channel.metadata["shmlaunch.capacity"] == "2096" and channel.metadata["shmlaunch.pool"] == "8"
    for _s, _c, message, ann in channels["hands/landmarks/annotations"]:
        assert [len(p.points) for p in ann.points] == [N_LANDMARKS, 2 * 21]  # the points, then the 21 bones as a line list
        assert ann.points[0].timestamp.seconds * 10**9 + ann.points[0].timestamp.nanos == message.publish_time
    assert all(len(ann.texts) == 1 for *_, ann in channels["hands/gesture/annotations"])
    schema, channel, *_ = channels["vec"][0]
    assert json.loads(schema.data)["dtype"] == "<f4" and json.loads(schema.data)["shape"] == [16]
    with open(out, "rb") as f:
        meta = {m.name: m.metadata for m in make_reader(f).iter_metadata()}
    assert meta["shmlaunch"]["graph"] == scene and meta["shmlaunch"]["launch_file"].endswith("graph.yaml")

    # info
    res = cli("info", out)
    assert res.returncode == 0, res.stderr
    assert "complete (indexed)" in res.stdout and "foxglove.RawImage" in res.stdout and "shmlaunch.landmarks/1" in res.stdout
    n = counts["cam/image"]["recorded"]
    hz = re.search(rf"cam/image\s+foxglove.RawImage\s+{n}\s+([\d.]+)\s", res.stdout)
    assert hz and 0.5 * RATE <= float(hz[1]) <= 1.1 * RATE, res.stdout  # the scene's rate, as info computes it

    # play into a fresh graph: the same bytes, in the same order, with the same stamps and source_seq
    expected = recorded_pool_messages(out)
    assert played_into_fresh_graph(out, "--rate", "2") == expected


def played_into_fresh_graph(path: Path, *args) -> dict[str, list[tuple[bytes, int, int]]]:
    """Play ``path`` into a new graph whose topics this test made, reading everything it publishes."""
    graph = unique_name("replay")
    rd = graph_runtime_dir(graph)
    topics = Topic.create_many(CONFIGS, runtime_dir=rd)
    readers = {name: Reader(name, runtime_dir=rd) for name in CONFIGS}
    got: dict[str, list] = {name: [] for name in CONFIGS}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "shmlaunch.launch.cli", "play", path, "--graph", graph, *args],
                                stderr=subprocess.PIPE, text=True)
        idle_since = None
        while proc.poll() is None or idle_since is None or time.monotonic() - idle_since < 0.5:
            wait_any(list(readers.values()), 0.1)
            fresh = False
            for name, r in readers.items():
                while (msg := r.receive_nowait()) is not None:
                    with msg:
                        got[name].append((msg.data.tobytes(), msg.stamp_ns, msg.source_seq))
                    fresh = True
            if proc.poll() is not None and not fresh:
                idle_since = idle_since or time.monotonic()
        assert proc.returncode == 0, proc.stderr.read()
        assert all(r.statistics().missed == 0 for r in readers.values()), "the test reader fell behind the player"
    finally:
        for r in readers.values():
            r.close()
        for t in topics:
            t.close()
        cleanup(rd)
    return {name: rows for name, rows in got.items() if rows}


def test_play_refuses_a_topic_that_differs_from_the_recording(scene, tmp_path):
    out = tmp_path / "run.mcap"
    assert cli("record", out, "vec", "--graph", scene, "--duration", 1).returncode == 0
    graph = unique_name("replay")
    rd = graph_runtime_dir(graph)
    (topic,) = Topic.create_many({"vec": TopicConfig.build(pool=4, dtype="float32", shape=[8])}, runtime_dir=rd)
    try:
        res = cli("play", out, "--graph", graph)
        assert res.returncode == 1
        assert res.stderr.strip().splitlines()[-1] == (
            "shmlaunch: error: refusing to play into the graph's topic 'vec': it differs from the recorded one (cannot open topic "
            "'vec' for writing: recorded capacity is 64, the registry says 32)"), res.stderr
        with Topic.open("vec", runtime_dir=rd) as t:
            assert t.dynamic().latest_seq == 0  # nothing was written into it
    finally:
        topic.close()
        cleanup(rd)


def test_a_killed_recorder_loses_at_most_its_open_chunk_and_recover_completes_the_file(scene, tmp_path):
    out = tmp_path / "killed.mcap"
    proc = subprocess.Popen([sys.executable, "-m", "shmlaunch.launch.cli", "record", out, "--graph", scene],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)
    published = latest(scene, "vec")  # the scene's vector n goes with its frame n, and vec's seq is n
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    with open(out, "rb") as f, pytest.raises(Exception):  # noqa: B017 (mcap's seeking reader needs the footer)
        make_reader(f).get_summary()
    info = cli("info", out)
    assert info.returncode == 0 and "no footer" in info.stdout, info.stdout + info.stderr
    streamed = []
    with open(out, "rb") as f, pytest.raises(EndOfFile):  # read with mcap's own streaming reader, up to the cut
        for _s, c, m in NonSeekingReader(f).iter_messages(log_time_order=False):
            if c.topic == "vec":
                streamed.append(m)
    last_n = int(np.frombuffer(streamed[-1].data[16:], np.float32)[0])
    assert last_n >= published - RATE * 1.5, f"{published - last_n} frames lost; at most one chunk (1 s) may be"

    recovered = tmp_path / "recovered.mcap"
    res = cli("record", "--recover", out, recovered)
    assert res.returncode == 0, res.stderr
    with open(recovered, "rb") as f:
        summary = make_reader(f).get_summary()
    vec_id = next(c.id for c in summary.channels.values() if c.topic == "vec")
    assert summary.statistics.channel_message_counts[vec_id] == len(streamed)
    played = cli("play", out, "--rate", "20", "--topics", "vec", "--graph", unique_name("replay"))
    assert played.returncode == 0, played.stderr
    assert f"played {len(streamed)} messages on 1 topics" in played.stderr and "without a footer" in played.stderr


def test_a_split_recording_plays_back_in_real_time_as_one(scene, tmp_path):
    out = tmp_path / "split.mcap"
    res = cli("record", out, "vec", "hands/gesture", "--graph", scene, "--duration", 3.5, "--split-duration", 1)
    assert res.returncode == 0, res.stderr
    parts = sorted(tmp_path.glob("split_*.mcap"))
    assert len(parts) >= 3 and not out.exists(), parts
    total, first, last = 0, None, None
    for part in parts:
        with open(part, "rb") as f:
            summary = make_reader(f).get_summary()
        stats = summary.statistics
        total += sum(n for cid, n in stats.channel_message_counts.items() if not summary.channels[cid].topic.endswith("/annotations"))
        first = stats.message_start_time if first is None else first
        last = stats.message_end_time
    res = cli("play", out, "--graph", unique_name("replay"))
    assert res.returncode == 0, res.stderr
    played = re.search(r"played (\d+) messages on 2 topics in ([\d.]+) s; timing error", res.stderr)
    assert played and int(played[1]) == total, res.stderr
    span = (last - first) / 1e9
    assert float(played[2]) >= 0.9 * span, f"{span:.2f} s of recording played in {played[2]} s: not in real time"


def test_launch_file_records_and_the_camera_replays_the_recording(tmp_path):
    first = tmp_path / "first.mcap"
    body = SCENE + f"record:\n  file: {first}\n  topics: [cam/image, vec]\n  compression: lz4\n"
    path, graph = write_graph(tmp_path, body)
    res = cli(path, "--duration", 3, "--no-status", timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert_nothing_left(graph)
    frames = [bytes(img.data) for *_, img in by_channel(first)["cam/image"]]
    assert set(by_channel(first)) == {"cam/image", "vec"} and len(frames) >= 30

    # a camera whose source is that recording, recorded again: the same frames in the same order
    second = tmp_path / "second.mcap"
    cam = (tmp_path / "cam.yaml")
    cam.write_text(f"""name: {unique_name('camera')}
topics:
  camera/image: {{dtype: uint8, shape: [48, 64, 3], pool: 4}}
nodes:
  camera:
    node: shmlaunch.nodes.camera:Camera
    params: {{source: {first}, fps: {RATE}, loop: false}}
    publish: {{image: camera/image}}
    required: true
record: {second}
""")
    res = cli(cam, "--no-status", timeout=90)
    assert res.returncode == 0 and f"end of {first}" in res.stdout + res.stderr, res.stdout + res.stderr
    replayed = [bytes(img.data) for *_, img in by_channel(second)["camera/image"]]
    start_at = frames.index(replayed[0])
    assert start_at <= 3 and replayed == frames[start_at : start_at + len(replayed)] and len(replayed) >= len(frames) - 4


def _websocket(port: int) -> socket.socket:
    """A WebSocket client handshake with the Foxglove server (subprotocol foxglove.sdk.v1)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: foxglove.sdk.v1\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _text_frames(sock: socket.socket, until: float):
    """The server's text frames as JSON (it does not mask; lengths per RFC 6455)."""
    buf = b""
    while time.monotonic() < until:
        buf += sock.recv(65536)
        while len(buf) >= 2:
            n, off = buf[1] & 0x7F, 2
            if n == 126:
                n, off = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                n, off = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < off + n:
                break
            opcode, payload, buf = buf[0] & 0x0F, buf[off : off + n], buf[off + n :]
            if opcode == 1:
                yield json.loads(payload)


def test_record_serves_the_channels_live_to_foxglove_on_localhost(scene, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "shmlaunch.launch.cli", "record", tmp_path / "live.mcap", "--graph", scene,
                             f"--serve={port}", "--no-auth", "--duration", "20"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _port_open(port), what="the Foxglove server")
        with _websocket(port) as sock:
            advertised = set()
            for msg in _text_frames(sock, time.monotonic() + 15):
                if msg.get("op") == "advertise":
                    advertised |= {(c["topic"], c["schemaName"]) for c in msg["channels"]}
                if ("cam/image", "foxglove.RawImage") in advertised and ("hands/landmarks/annotations", "foxglove.ImageAnnotations") in advertised:
                    break
        assert ("cam/image", "foxglove.RawImage") in advertised, advertised
        assert ("hands/landmarks/annotations", "foxglove.ImageAnnotations") in advertised, advertised
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "WITHOUT authentication" in err, err


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_record_play_and_info_say_what_is_wrong_in_one_line(scene, tmp_path):
    existing = tmp_path / "there.mcap"
    existing.write_bytes(b"not mine")
    cases = [
        (("record", existing, "--graph", scene), 2, f"{existing}: exists; give a new file name (a recording is never overwritten)"),
        (("record", tmp_path / "x.bag", "--graph", scene), 2, f"{tmp_path / 'x.bag'}: the file name must end in .mcap"),
        (("record", tmp_path / "x.mcap", "nope", "--graph", scene), 1, "no topic 'nope' in graph at"),
        (("record", tmp_path / "x.mcap", "--graph", "no-such-graph"), 1, "no graph 'no-such-graph' is running"),
        (("play", tmp_path / "missing.mcap"), 2, f"{tmp_path / 'missing.mcap'}: no such recording"),
        (("play", existing, "--remap", "a=b"), 2, "--remap 'a=b': expected FROM:=TO"),
        (("play", existing, "--rate", "0"), 2, "--rate and --duration must be > 0 and --start >= 0 (got 0.0, None, 0.0)"),
        (("info", existing), 1, f"{existing}: not an MCAP file"),
        (("play", existing, "--graph", unique_name("replay")), 1, f"{existing}: not an MCAP file"),
        (("record", "--recover", existing, tmp_path / "out.mcap"), 1, f"{existing}: not an MCAP file"),
    ]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cases.append((("record", tmp_path / "z.mcap", "--graph", scene, f"--serve={port}", "--duration", "1"), 2,
                  "--serve: the Foxglove WebSocket server has no authentication"))
    cases.append((("record", tmp_path / "y.mcap", "--graph", scene, f"--serve={port}", "--no-auth", "--duration", "1"), 1,
                  f"cannot serve on ws://127.0.0.1:{port}: FoxgloveError: Failed to bind port"))
    for args, code, text in cases:
        res = cli(*args)
        assert res.returncode == code and "Traceback" not in res.stderr, (args, res.stderr)
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("shmlaunch: error: ") and text in last, (args, res.stderr)
    busy.close()
    assert existing.read_bytes() == b"not mine" and not (tmp_path / "out.mcap").exists()
