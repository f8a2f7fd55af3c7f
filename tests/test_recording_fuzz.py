"""Recordings are untrusted input: mutated real recordings (bytes and structure), lying
channels, decompression bombs, FIFOs, gaps, killed players, a full disk. Every outcome is a
result or one error line with a non-zero exit: never a traceback, never exit 0 after lost data,
memory bounded."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_launcher import assert_nothing_left, start, unique_name, wait_for, write_graph

pytest.importorskip("mcap", reason="the 'record' extra is not installed (uv pip install -e '.[record]')")
pytest.importorskip("foxglove", reason="the 'record' extra is not installed (uv pip install -e '.[record]')")

from mcap.writer import CompressionType, Writer  # noqa: E402
from test_record import SCENE, cli, latest, summary_of  # noqa: E402

from shmlaunch.nodes.mcap_records import MAGIC, MAX_CHUNK  # noqa: E402
from shmlaunch.nodes.recording import ENVELOPE, NDARRAY_ENCODING, RecordingReader, recording_files, topic_metadata  # noqa: E402
from shmlaunch.transport import TopicConfig, graph_runtime_dir  # noqa: E402

TESTS = Path(__file__).parent
MUTANTS = 400
#: What one process reading hostile recordings may peak at: two records of MAX_RECORD/MAX_CHUNK
#: (256 MiB each) at the very worst, plus the interpreter with numpy, mcap and protobuf.
RSS_BOUND_MB = 700


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[str, Path]:
    """Real recordings of the scene graph: one zstd-compressed, one uncompressed; with their counts."""
    tmp = tmp_path_factory.mktemp("fuzz-src")
    path, graph = write_graph(tmp, SCENE)
    proc = start(path)
    try:
        wait_for(lambda: latest(graph, "vec", missing=0) > 2, what="the scene to publish")
        out = {}
        for name, compression in (("z", "zstd"), ("n", "none")):
            res = cli("record", tmp / f"{name}.mcap", "--graph", graph, "--duration", "2", "--compression", compression)
            assert res.returncode == 0, res.stderr
            out[name] = tmp / f"{name}.mcap"
            out[name + "-count"] = sum(t["recorded"] for t in summary_of(res.stderr)["topics"].values())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert_nothing_left(graph)
    return out


def played(stderr: list[str]) -> int | None:
    return next((int(m[1]) for line in stderr if (m := re.search(r"played (\d+) messages", line))), None)


def test_mutated_recordings_give_a_result_or_one_line_never_a_traceback_nor_a_silent_loss(recordings, tmp_path):
    out = subprocess.run([sys.executable, str(TESTS / "recording_fuzz.py"), str(tmp_path), "27", str(MUTANTS),
                          str(recordings["z"]), str(recordings["n"])], capture_output=True, text=True, timeout=600, cwd=TESTS)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    peak = rows.pop()["peak_rss_mb"]
    assert len(rows) >= 4 * MUTANTS
    full = {"z": recordings["z-count"], "n": recordings["n-count"], "l": recordings["z-count"]}
    for r in rows:
        what = (r["mutant"], r["tool"], r["stderr"][-3:])
        assert r["escaped"] is None and r["rc"] in (0, 1), what
        if r["tool"] != "camera":
            assert all(line.startswith("shmlaunch: ") for line in r["stderr"]), what
        cut = any("without a footer" in line for line in r["stderr"])  # a killed recorder's file: nothing it holds is lost
        if r["tool"] == "play" and r["rc"] == 0 and not cut:
            assert played(r["stderr"]) == full[r["mutant"][0]], what
        if r["tool"] == "play" and r["rc"] == 1:
            assert r["stderr"][-1].startswith("shmlaunch: error: "), what
    outcomes = {(r["tool"], r["rc"]) for r in rows}
    assert {("play", 0), ("play", 1), ("info", 1), ("recover", 0), ("recover", 1), ("camera", 1)} <= outcomes
    lies = {r["mutant"]: r for r in rows if r["tool"] == "play" and r["mutant"].startswith("lie-")}
    assert all(r["rc"] == 1 for name, r in lies.items() if name != "lie-escape-metadata.mcap"), lies
    assert "invalid topic name '../../etc/x'" in " ".join(lies["lie-topic-escape.mcap"]["stderr"])
    assert peak < RSS_BOUND_MB, f"peak RSS {peak:.0f} MB over {len(rows)} runs"
    assert not [p for p in Path("/dev/shm").iterdir() if "fuzz-27-" in p.name]


def _chunk(compressed: bytes, claimed: int, compression: bytes = b"zstd") -> bytes:
    body = struct.pack("<QQQII", 0, 0, claimed, 0, len(compression)) + compression + struct.pack("<Q", len(compressed)) + compressed
    return struct.pack("<BQ", 0x06, len(body)) + body


def _header() -> bytes:
    body = struct.pack("<I", 9) + b"shmlaunch" + struct.pack("<I", 4) + b"fuzz"
    return MAGIC + struct.pack("<BQ", 0x01, len(body)) + body


PEAK = ("import atexit, sys\nfrom recording_fuzz import peak_rss_mb\nfrom shmlaunch.launch.cli import main\n"
        "atexit.register(lambda: print(f'peak {peak_rss_mb():.0f}', file=sys.stderr))\nsys.exit(main(sys.argv[1:]))")


def _peak_rss_mb(args: list[str]) -> tuple[int, str, float]:
    """(exit code, stderr, the command's own peak RSS in MB: VmHWM at exit, which unlike ru_maxrss
    does not start from the parent's size at fork)."""
    res = subprocess.run([sys.executable, "-c", PEAK, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         timeout=300, cwd=TESTS)
    *lines, last = res.stderr.strip().splitlines()
    return res.returncode, "\n".join(lines), float(last.split()[1])


def test_decompression_bombs_and_lying_lengths_stay_within_the_memory_bound(tmp_path):
    import zstandard

    gib = zstandard.ZstdCompressor().compress(bytes(1 << 30))  # ~33 KB that inflate to 1 GiB
    bombs = {
        "claims-1gib": _header() + _chunk(gib, 1 << 30),  # over MAX_CHUNK: refused before decompressing
        "claims-200mib": _header() + _chunk(gib, 200 << 20),  # inflates past its claim: stopped at the claim
        "claims-64gib-record": MAGIC + struct.pack("<BQ", 0x06, 64 << 30) + bytes(167),  # 184 bytes claiming 64 GiB
        "lz4-claims-200mib": _header() + _chunk(__import__("lz4.frame").frame.compress(bytes(1 << 28)), 200 << 20, b"lz4"),
    }
    for name, data in bombs.items():
        path = tmp_path / f"{name}.mcap"
        path.write_bytes(data)
        for args in (["info", path], ["play", path, "--graph", unique_name("bomb")], ["record", "--recover", path, tmp_path / f"{name}-r.mcap"]):
            code, err, peak = _peak_rss_mb([str(a) for a in args])
            assert "Traceback" not in err and all(line.startswith("shmlaunch: ") for line in err.splitlines()), (name, args[0], err)
            assert peak < RSS_BOUND_MB, (name, args[0], f"{peak:.0f} MB")
            if args[0] != "info" and name != "claims-64gib-record":
                assert code == 1 and "damaged" in err, (name, args[0], err)
    assert MAX_CHUNK < 1 << 30


def _writer_with(path: Path, topic: str, config: TopicConfig, times_s: list[float]) -> None:
    """A recording in shmlaunch's own format with messages at the given times (one channel)."""
    with open(path, "wb") as f:
        w = Writer(f, compression=CompressionType.NONE)
        w.start(profile="shmlaunch", library="test")
        sid = w.register_schema(NDARRAY_ENCODING, NDARRAY_ENCODING, b"{}")
        cid = w.register_channel(topic, NDARRAY_ENCODING, sid, topic_metadata(topic, config))
        t0 = time.time_ns()
        for i, t in enumerate(times_s):
            ns = t0 + int(t * 1e9)
            w.add_message(cid, ns, ENVELOPE.pack(i + 1, 0) + bytes(config.capacity), ns, i + 1)
        w.finish()


def test_play_stops_on_its_duration_in_a_gap_and_never_spins_on_an_empty_pass(tmp_path):
    gap = tmp_path / "gap.mcap"
    _writer_with(gap, "g", TopicConfig.build(8, 2), [0.0, 60.0])
    t0 = time.monotonic()
    res = cli("play", gap, "--duration", "1.5", "--graph", unique_name("gap"), timeout=30)
    assert res.returncode == 0 and time.monotonic() - t0 < 15 and "played 1 messages" in res.stderr, res.stderr
    res = cli("play", gap, "--loop", "--start", "100", "--graph", unique_name("gap"), timeout=30)
    assert res.returncode == 0 and "no message in the chosen range" in res.stderr, res.stderr
    res = cli("play", gap, "--loop", "--topics", "nothing", "--graph", unique_name("gap"), timeout=30)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == (
        f"shmlaunch: error: {gap}: no recorded topic 'nothing' (recorded: g)"), res.stderr


def test_play_of_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.mcap"
    os.mkfifo(fifo)
    for args in (("play", fifo, "--graph", unique_name("fifo")), ("info", fifo), ("record", "--recover", fifo, tmp_path / "o.mcap")):
        res = cli(*args, timeout=20)
        assert res.returncode == 1 and "not a regular file" in res.stderr and "Traceback" not in res.stderr, res.stderr


def _watchdog_of(graph: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"shmlaunch.launch._watchdog" in cmd and str(graph_runtime_dir(graph)).encode() in cmd:
                return int(entry.name)
    return None


def test_a_player_is_a_graph_list_shows_and_a_killed_one_leaves_nothing(tmp_path):
    rec = tmp_path / "long.mcap"
    _writer_with(rec, "g", TopicConfig.build(8, 2), [i * 0.1 for i in range(100)])
    for kill_watchdog_too in (False, True):
        graph = unique_name("replay")
        proc = start("play", rec, "--graph", graph)
        try:
            wait_for(lambda: graph in cli("list").stdout, what="the player's graph in shmlaunch list")  # noqa: B023
            if kill_watchdog_too:  # the worst case: nothing is left to clean up after the player
                os.kill(_watchdog_of(graph), signal.SIGKILL)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        if not kill_watchdog_too:
            wait_for(lambda: not graph_runtime_dir(graph).exists(), 15, "the watchdog to remove the player's graph")  # noqa: B023
            continue
        assert graph_runtime_dir(graph).exists() and graph not in cli("list").stdout
        res = cli("play", rec, "--graph", graph, "--duration", "0.5")  # the next player flushes what was left
        assert res.returncode == 0 and "left by a run that did not stop cleanly" in res.stderr, res.stderr
        wait_for(lambda: not graph_runtime_dir(graph).exists(), 15, "the second player's graph to go")  # noqa: B023


def test_info_shows_what_a_recording_says_without_its_escape_sequences(tmp_path):
    path = tmp_path / "esc.mcap"
    with open(path, "wb") as f:
        w = Writer(f)
        w.start(profile="shmlaunch", library="test")
        w.add_metadata("shmlaunch", {"graph": "\x1b]0;owned\x07g", "host": "\x1b[2J\x1b[31mred", "launch_file": "\x9b31m"})
        sid = w.register_schema("\x1b[5mblink", "jsonschema", b"{}")
        w.register_channel("\x1b[1mbold", "json", sid, {})
        w.finish()
    res = cli("info", path)
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout and "\x07" not in res.stdout and "\x9b" not in res.stdout
    assert "\\x1b[2J\\x1b[31mred" in res.stdout and "\\x1b[1mbold" in res.stdout, res.stdout


def test_recordings_are_private_by_default_and_a_planted_split_file_is_refused_at_start(tmp_path):
    scene, graph = write_graph(tmp_path, SCENE)
    proc = start(scene)
    try:
        wait_for(lambda: latest(graph, "vec", missing=0) > 2, what="the scene to publish")
        res = cli("record", tmp_path / "p.mcap", "--graph", graph, "--duration", "0.5")
        assert res.returncode == 0 and stat.S_IMODE(os.stat(tmp_path / "p.mcap").st_mode) == 0o600, res.stderr
        res = cli("record", tmp_path / "s.mcap", "--graph", graph, "--duration", "0.5", "--mode", "640")
        assert res.returncode == 0 and stat.S_IMODE(os.stat(tmp_path / "s.mcap").st_mode) == 0o640, res.stderr
        (tmp_path / "run_1.mcap").write_bytes(b"planted")
        res = cli("record", tmp_path / "run.mcap", "--graph", graph, "--split-duration", "0.2", "--duration", "1")
        assert res.returncode == 2 and res.stderr.strip() == (
            f"shmlaunch: error: {tmp_path / 'run.mcap'}: run_1.mcap exists in {str(tmp_path)!r}; "
            "a split recording needs every run_N.mcap free"), res.stderr
        assert (tmp_path / "run_1.mcap").read_bytes() == b"planted" and not (tmp_path / "run_0.mcap").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert_nothing_left(graph)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs (a disk that fills up) needs root")
def test_on_a_full_disk_the_summary_counts_exactly_what_the_file_holds(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=640k", "tmpfs", str(disk)], check=True)
    scene, graph = write_graph(tmp_path, SCENE)
    proc = start(scene)
    try:
        wait_for(lambda: latest(graph, "vec", missing=0) > 2, what="the scene to publish")
        res = cli("record", disk / "full.mcap", "--graph", graph, "--duration", "20", timeout=60)
        assert res.returncode == 1 and "cannot write" in res.stderr and "Traceback" not in res.stderr, res.stderr
        counts = {t: c["recorded"] for t, c in summary_of(res.stderr)["topics"].items()}
        assert sum(c["lost"] for c in summary_of(res.stderr)["topics"].values()) > 0, res.stderr
        reader = RecordingReader(recording_files(disk / "full.mcap"))
        held: dict[str, int] = {}
        for p in reader.messages():
            held[p.channel.topic] = held.get(p.channel.topic, 0) + 1
        assert held == {t: n for t, n in counts.items() if n}, (held, counts)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        subprocess.run(["umount", str(disk)], check=False)
    assert_nothing_left(graph)


def test_the_camera_on_a_damaged_recording_fails_in_one_line_after_playing_what_is_intact(recordings, tmp_path):
    data = bytearray(recordings["n"].read_bytes())
    chunk_at = data.index(b"\x06", 300)  # somewhere in the first chunks: zero a page inside the file's data
    data[chunk_at + 2000:chunk_at + 6096] = bytes(4096)
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(bytes(data))
    body = f"""
topics:
  cam/image: {{dtype: uint8, shape: [48, 64, 3], pool: 4}}
nodes:
  camera:
    node: shmlaunch.nodes.camera:Camera
    params: {{source: {bad}, fps: 200, loop: false}}
    publish: {{image: cam/image}}
    required: true
"""
    path, graph = write_graph(tmp_path, body)
    proc = start(path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in out, out
    assert re.search(r"camera .*ERROR end of .*bad\.mcap.*: frames were lost \(.*damaged", out), out
    assert_nothing_left(graph)
