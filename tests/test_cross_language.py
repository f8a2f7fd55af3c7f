"""C++ and C# clients against Python on the same topics: checksummed messages, zero torn."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shmlaunch.nodes.messages import LANDMARKS, LANDMARKS_VERSION
from shmlaunch.testing import runtime_dir, unique_name
from shmlaunch.transport import Reader, Writer

ROOT = Path(__file__).resolve().parent.parent
CPP = ROOT / "transport" / "cpp"
CSHARP = ROOT / "transport" / "csharp"


@pytest.fixture(scope="session")
def cpp_build(tmp_path_factory) -> Path:
    if not (shutil.which("cmake") and (shutil.which("g++") or shutil.which("c++"))):
        pytest.skip("no cmake or C++ compiler (apt-get install cmake g++)")
    build = tmp_path_factory.mktemp("cpp-build")
    subprocess.run(["cmake", "-S", str(CPP), "-B", str(build)], check=True, capture_output=True)
    res = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "warning" not in res.stdout + res.stderr
    return build


@pytest.fixture(scope="session")
def csharp_build(tmp_path_factory) -> Path:
    if not (shutil.which("mcs") and shutil.which("mono")):
        pytest.skip("no Mono (apt-get install mono-mcs mono-runtime)")
    build = tmp_path_factory.mktemp("cs-build")
    for exe, main in (("CheckedIO.exe", "CheckedIO.cs"), ("FrameStats.exe", "FrameStats.cs")):
        res = subprocess.run(["mcs", "-unsafe", f"-out:{build / exe}", str(CSHARP / "ShmLaunch.cs"), str(CSHARP / "Layout.g.cs"), str(CSHARP / main)],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
    return build


def peer(kind: str, build: Path, *args) -> list[str]:
    if kind == "cpp":
        return [str(build / "checked_io"), *map(str, args)]
    return ["mono", str(build / "CheckedIO.exe"), *map(str, args)]


def checked(seq: int, size: int) -> np.ndarray:
    m = np.full(size, seq % 251, np.uint8)
    struct.pack_into("<Q", m, 0, seq)
    return m


@pytest.fixture(params=["cpp", "csharp"])
def other(request, tmp_path_factory):
    build = request.getfixturevalue("cpp_build" if request.param == "cpp" else "csharp_build")
    return request.param, build


def env_for(rt: Path) -> dict:
    # Mono keeps a file in /dev/shm unless told not to; nothing may be left there.
    return {**os.environ, "SHMLAUNCH_RUNTIME_DIR": str(rt), "MONO_DISABLE_SHARED_AREA": "1"}


def test_python_writer_to_other_language_reader_zero_torn(rt, other):
    kind, build = other
    n, size = 20000, 4096
    w = Writer("x", capacity=size, pool=4, runtime_dir=rt)
    proc = subprocess.Popen(peer(kind, build, "read", "x", 1500), env=env_for(rt), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    for i in range(n):
        w.publish(checked(i, size))
    out, _ = proc.communicate(timeout=60)
    received, torn, disorder, last = (int(v) for v in out.split()[1::2])
    assert (torn, disorder, last) == (0, 0, n - 1)
    assert received > 100


def test_other_language_writer_to_python_reader_zero_torn(rt, other):
    kind, build = other
    Writer("x", capacity=1024, pool=4, runtime_dir=rt).close()
    r = Reader("x", runtime_dir=rt)
    proc = subprocess.Popen(peer(kind, build, "write", "x", 400, 400), env=env_for(rt), stdout=subprocess.PIPE, text=True)
    seqs, torn = [], 0
    while (msg := r.receive(timeout=5 if not seqs else 1.5)) is not None:
        with msg:
            seq = struct.unpack_from("<Q", msg.data, 0)[0]
            torn += not (msg.data[8:] == seq % 251).all()
            seqs.append(seq)
    assert proc.wait(30) == 0
    assert torn == 0 and seqs == sorted(set(seqs)) and seqs[-1] == 399 and len(seqs) > 100
    assert Writer("x", runtime_dir=rt).publish(checked(0, 1024)) == 401  # a Python writer continues its sequence


def test_cpp_reader_refuses_a_mismatched_capacity_naming_both(rt, cpp_build):
    Writer("camera/image", capacity=921600, runtime_dir=rt)
    res = subprocess.run(peer("cpp", cpp_build, "read", "camera/image", 100, 6220800), env=env_for(rt), capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == ("checked_io: error: TopicMismatch: cannot open topic 'camera/image' for reading: requested capacity is 6220800, "
                                  "the registry says 921600")


def test_second_writer_in_another_language_is_refused(rt, other):
    kind, build = other
    w = Writer("x", capacity=64, runtime_dir=rt)
    res = subprocess.run(peer(kind, build, "write", "x", 1), env=env_for(rt), capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert res.stderr.strip().endswith(f"error: WriterBusy: cannot open topic 'x' for writing: another writer (pid {os.getpid()}) is alive; "
                                       f"a topic has exactly one writer")
    w.close()


def test_cpp_landmark_reader_decodes_the_landmark_message(rt, cpp_build):
    w = Writer("hands/landmarks", capacity=LANDMARKS.itemsize, runtime_dir=rt)
    msg = np.zeros(1, LANDMARKS)
    rec = msg[0]
    rec["version"], rec["hand_count"], rec["frame_seq"] = LANDMARKS_VERSION, 1, 77
    rec["hands"][0]["landmarks"][0] = (0.25, 0.5, 0.0)
    rec["hands"][0]["handedness"] = 1
    w.publish(msg.view(np.uint8))
    res = subprocess.run([str(cpp_build / "landmark_reader"), "hands/landmarks", "1"], env=env_for(rt), capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "frame 77: 1 hand(s) | right wrist (0.250, 0.500)"


def test_cpp_and_csharp_nodes_run_from_a_launch_file(tmp_path, cpp_build, csharp_build):
    name = unique_name("xlang")
    launch = tmp_path / "xlang.yaml"
    launch.write_text(f"""name: {name}
topics:
  numbers: {{dtype: int64, shape: [1], pool: 4}}
nodes:
  counter:
    node: graph_nodes:Counter
    params: {{rate: 50.0}}
    publish: {{out: numbers}}
    env: {{PYTHONPATH: {ROOT / 'tests'}}}
  cpp-stats:
    cmd: [{cpp_build / 'frame_stats'}, numbers]
    subscribe: {{in: numbers}}
  cs-stats:
    cmd: [mono, {csharp_build / 'FrameStats.exe'}, numbers]
    subscribe: {{in: numbers}}
    env: {{MONO_DISABLE_SHARED_AREA: "1"}}
""")
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", str(launch), "--duration", "4"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    cpp_lines = [line for line in res.stdout.splitlines() if line.startswith("cpp-stats") and "msg/s" in line]
    cs_lines = [line for line in res.stdout.splitlines() if line.startswith("cs-stats") and "msg/s" in line]
    assert cpp_lines and cs_lines, res.stdout
    rates = [float(line.split("|", 1)[1].split()[0]) for line in cpp_lines + cs_lines]
    assert max(rates) > 30  # the 50 Hz counter arrives in both languages
    assert "cpp-stats| frame_stats: topic numbers, capacity 8, pool 4, dtype <i8, shape [1]" in res.stdout
    assert time.monotonic() - t0 < 30


# ----- hardening (issue 13): the same refusals in every language, one line each, never a crash
def test_other_language_refuses_a_registry_segment_that_is_a_path(rt, other, tmp_path):
    kind, build = other
    secret = tmp_path / "secret"
    secret.write_bytes(b"SHADOW" * 1000)
    Writer("x", capacity=64, runtime_dir=rt).close()
    reg = rt / "registry.yaml"
    reg.write_text(reg.read_text().replace('"x.pool"', f'"../../../../..{secret}"'))
    res = subprocess.run(peer(kind, build, "read", "x", 1), env=env_for(rt), capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and "SHADOW" not in line
    assert line.endswith(f"topic 'x': segment '../../../../..{secret}' is not a plain segment file name (NAME.pool, no '/' or '..')")


def test_other_language_refuses_another_users_runtime_directory(rt, other):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the directory to another uid")
    kind, build = other
    Writer("x", capacity=64, runtime_dir=rt).close()
    os.chown(rt, 12345, 12345)
    try:
        res = subprocess.run(peer(kind, build, "read", "x", 1), env=env_for(rt), capture_output=True, text=True, timeout=30)
    finally:
        os.chown(rt, 0, 0)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip().endswith(f"cannot open topic 'x' for reading: runtime directory {rt} belongs to uid 12345, "
                                       f"not to this user (0); refusing it")


@pytest.mark.parametrize(("offset", "value"), [(24, 1 << 62), (32, 0), (32, 64), (24, 1 << 63)])
def test_other_language_refuses_a_corrupt_header_without_crashing(rt, other, offset, value):
    kind, build = other
    Writer("x", capacity=64, pool=2, runtime_dir=rt).close()
    with open(rt / "x.pool", "r+b") as f:
        f.seek(offset)
        f.write(struct.pack("<Q", value))
    res = subprocess.run(peer(kind, build, "read", "x", 1), env=env_for(rt), capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res.stdout + res.stderr  # not a segfault (-11) or an unhandled exception
    assert f"segment {rt}/x.pool is corrupt: its header's slot" in res.stderr and "the file size 21760" in res.stderr


# ----- one error vocabulary (issue 28): the same crafted segment, the same error in every language
def _craft(rt: Path, offset: int, fmt: str, value) -> None:
    with open(rt / "x.pool", "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def _truncate(rt: Path, size: int) -> None:
    os.truncate(rt / "x.pool", size)


def _registry_capacity(rt: Path, value: int) -> None:
    reg = rt / "registry.yaml"
    reg.write_text(reg.read_text().replace('"capacity": 64', f'"capacity": {value}'))


def _crafted_cases():
    from shmlaunch.transport import _layout as L

    size = L.SLOTS_OFFSET + 2 * L.slot_stride(64)
    h = {f.name: f.offset for f in L.HEADER_FIELDS}
    return [  # (id, edit, kind, the message after "cannot <action>: ")
        ("magic", lambda rt: _craft(rt, h["magic"], "8s", b"XXXXXXXX"), "SegmentCorrupt",
         "segment {seg} is corrupt: its header's magic is 0x5858585858585858, expected SHMLPOOL"),
        ("version", lambda rt: _craft(rt, h["layout_version"], "<I", 2), "LayoutVersion",
         "segment {seg} has layout version 2, this shmlaunch uses 1"),
        ("pool", lambda rt: _craft(rt, h["pool"], "<I", 0), "SegmentCorrupt", "segment {seg} is corrupt: its header's pool 0 is outside 1..256"),
        ("capacity", lambda rt: _craft(rt, h["capacity"], "<Q", 1 << 41), "SegmentCorrupt",
         f"segment {{seg}} is corrupt: its header's capacity {1 << 41} is outside 1..{1 << 40}"),
        ("slots_offset", lambda rt: _craft(rt, h["slots_offset"], "<Q", 64), "SegmentCorrupt",
         f"segment {{seg}} is corrupt: its header's slots_offset 64 is not a multiple of 64 from 21504 to the file size {size}"),
        ("slot_stride", lambda rt: _craft(rt, h["slot_stride"], "<Q", 1 << 62), "SegmentCorrupt",
         f"segment {{seg}} is corrupt: its header's slot_stride {1 << 62} does not fit: capacity 64 needs at least 128, and 2 slots "
         f"from offset 21504 must end within the file size {size}"),
        ("ndim", lambda rt: _craft(rt, h["ndim"], "<I", 9), "SegmentCorrupt", "segment {seg} is corrupt: its header's ndim 9 is above 8"),
        ("short", lambda rt: _truncate(rt, 100), "SegmentCorrupt", "segment {seg} is 100 bytes, shorter than a header"),
        ("registry", lambda rt: _registry_capacity(rt, 32), "TopicMismatch", "the segment header capacity is 64, the registry says 32"),
    ]


CRAFTED = _crafted_cases()


@pytest.fixture(scope="module")
def clients(request):
    """How each language reads topic 'x': a callable giving (kind, message) of the error."""
    def python(rt):
        try:
            Reader("x", runtime_dir=rt).close()
        except Exception as exc:  # noqa: BLE001 - the kind is what is compared
            return type(exc).__name__.removesuffix("Error"), str(exc)
        return None, "no error"

    def peer_reader(kind):
        build = request.getfixturevalue(f"{kind}_build")

        def run(rt):
            res = subprocess.run(peer(kind, build, "read", "x", 1), env=env_for(rt), capture_output=True, text=True, timeout=30)
            if res.returncode == 0:
                return None, "no error"
            line = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}: {res.stdout}"
            _, _, rest = line.partition("error: ")
            name, _, message = rest.partition(": ")
            return name, message
        return run

    return {"python": python, "cpp": peer_reader("cpp"), "csharp": peer_reader("csharp")}


@pytest.mark.parametrize(("case", "edit", "kind", "message"), CRAFTED, ids=[c[0] for c in CRAFTED])
def test_every_language_refuses_a_crafted_segment_with_the_same_error(rt, clients, case, edit, kind, message):
    Writer("x", capacity=64, pool=2, runtime_dir=rt).close()
    edit(rt)
    seen = {}
    for language, read in clients.items():
        got_kind, got = read(rt)
        seen[language] = (got_kind, got.partition(": ")[2])  # after "cannot <action>: ", which each API words its own way
    expected = (kind, message.format(seg=rt / "x.pool"))
    assert seen == {language: expected for language in clients}


def test_every_language_survives_mutated_segment_headers(rt, clients):
    """200 random mutations of a real segment's header (bytes set to random values, boundary words):
    each client either reads the topic or refuses it with one of the vocabulary's errors; none
    crashes, hangs or says something different from the others."""
    import random

    Writer("x", dtype="uint8", shape=(4, 6, 3), pool=2, runtime_dir=rt).close()
    good = (rt / "x.pool").read_bytes()
    rng = random.Random(28)
    kinds = {"SegmentCorrupt", "LayoutVersion", "TopicMismatch", None}
    for i in range(200):
        header = bytearray(good[:512])
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(0, 160)
            header[at : at + 8] = rng.choice([rng.randbytes(8), b"\xff" * 8, b"\0" * 8, (1 << 63).to_bytes(8, "little")])[: 160 - at]
        (rt / "x.pool").write_bytes(bytes(header[:512]) + good[512:])
        seen = {language: read(rt) for language, read in clients.items()} if i % 10 == 0 else {"python": clients["python"](rt)}
        for language, (kind, message) in seen.items():
            assert kind in kinds, f"mutant {i}: {language} raised {kind}: {message}"
        outcomes = {(kind, message.partition(": ")[2]) for kind, message in seen.values()}
        assert len(outcomes) == 1, f"mutant {i}: the clients disagree: {seen}"


@pytest.mark.parametrize(("field", "edit", "message"), [
    ("shape", ('"shape": [4, 6, 3]', '"shape": [4, 6, 9]'), "the segment header shape is [4, 6, 3], the registry says [4, 6, 9]"),
    ("dtype", ('"typestr": "|u1"', '"typestr": "<u2"'), "the segment header dtype is |u1, the registry says <u2"),
])
def test_other_language_refuses_a_dtype_or_shape_the_header_does_not_repeat(rt, other, field, edit, message):
    kind, build = other
    Writer("x", dtype="uint8", shape=(4, 6, 3), runtime_dir=rt).close()
    reg = rt / "registry.yaml"
    reg.write_text(reg.read_text().replace(*edit).replace('"dtype": "|u1"', '"dtype": "<u2"' if field == "dtype" else '"dtype": "|u1"'))
    res = subprocess.run(peer(kind, build, "read", "x", 1), env=env_for(rt), capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip().endswith(f"cannot open topic 'x' for reading: {message}")


def test_other_language_writers_write_source_seq(rt, other):
    kind, build = other
    Writer("x", capacity=1024, pool=4, runtime_dir=rt).close()
    r = Reader("x", runtime_dir=rt)
    res = subprocess.run(peer(kind, build, "write", "x", 3), env=env_for(rt), capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    msg = r.receive(timeout=5)
    assert msg is not None and (msg.seq, msg.source_seq) == (3, 1002)  # checked_io sends 1000 + its count as the input sequence
    r.close()


def test_cpp_and_csharp_attach_to_a_graph_by_name_and_say_which_graphs_exist(cpp_build, csharp_build):
    graph = unique_name("xlang-by-name")
    env = {k: v for k, v in os.environ.items() if k != "SHMLAUNCH_RUNTIME_DIR"} | {"MONO_DISABLE_SHARED_AREA": "1"}
    with runtime_dir(graph) as rt:
        w = Writer("numbers", dtype="int64", shape=(1,), runtime_dir=rt)
        w.publish(np.array([5], np.int64))
        for argv in ([str(cpp_build / "frame_stats"), "--graph", graph, "numbers", "1.2"],
                     ["mono", str(csharp_build / "FrameStats.exe"), "--graph", graph, "numbers", "1.2"]):
            res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stdout + res.stderr
            assert "topic numbers, capacity 8, pool 4" in res.stdout
            res = subprocess.run([*argv[:-2], "elsewhere", "0.5"], env=env, capture_output=True, text=True, timeout=60)
            assert res.returncode == 2
            assert f"the registry in {rt} does not list it (graphs with a runtime directory: " in res.stderr
            assert graph in res.stderr
        w.close()
