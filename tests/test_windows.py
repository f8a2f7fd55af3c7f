"""Windows: what only Windows has (the runtime folder's DACL, junctions, Job Objects), the C++
client built for Windows against a Python peer, and a graph started and stopped by the launcher.

These run on Windows only. Linux CI runs them under Wine 8 with a Windows CPython
(``.ci/wine``, README "Windows"), together with test_transport.py and test_topic.py, which run
on both systems. The C++ peer (``checked_io.exe``) is built by ``.ci/wine`` with mingw-w64 and
found through SHMLAUNCH_WINDOWS_EXAMPLES.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from platforms import WINDOWS

from shmlaunch import _platform as backend
from shmlaunch.testing import unique_name
from shmlaunch.transport import Reader, RuntimeDir, RuntimeDirError, Writer, graph_runtime_dir, wait_any

pytestmark = pytest.mark.skipif(not WINDOWS, reason="Windows only: .ci/wine runs these under Wine (README, Windows)")

HERE = Path(__file__).parent
EXAMPLES = os.environ.get("SHMLAUNCH_WINDOWS_EXAMPLES")


def _dacl_sddl(path: Path) -> str:
    """The folder's DACL in SDDL ("D:P(A;OICI;FA;;;S-1-5-...)")."""
    from ctypes import wintypes

    advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
    descriptor, dacl, text = ctypes.c_void_p(), ctypes.c_void_p(), wintypes.LPWSTR()
    dacl_information = 4
    assert advapi32.GetNamedSecurityInfoW(str(path), 1, dacl_information, None, None, ctypes.byref(dacl), None, ctypes.byref(descriptor)) == 0
    assert advapi32.ConvertSecurityDescriptorToStringSecurityDescriptorW(descriptor, 1, dacl_information, ctypes.byref(text), None)
    return text.value


def test_the_runtime_folder_grants_nobody_but_this_user(rt):
    Writer("t", capacity=8, runtime_dir=rt).close()
    aces = re.findall(r"\(([^)]*)\)", _dacl_sddl(rt))
    trustees = {ace.split(";")[-1] for ace in aces if ace.startswith("A;")}
    # this user, and the system itself (Wine adds it; Windows keeps the protected DACL as made)
    assert backend.USER_ID in trustees and trustees <= {backend.USER_ID, "SY"}, aces
    assert Path(backend.SHM_ROOT) in rt.parents


def test_a_junction_where_the_runtime_folder_should_be_is_refused(tmp_path):
    import _winapi

    path = graph_runtime_dir(unique_name())
    try:
        _winapi.CreateJunction(str(tmp_path), str(path))
    except OSError as exc:
        if path.is_dir():  # made, but could not be turned into a junction
            os.rmdir(path)
        pytest.skip(f"this Windows cannot make a junction ({exc.strerror}): Wine 8 has none; a real Windows runs this")
    try:
        with pytest.raises(RuntimeDirError, match=r"is a symlink or junction; shmlaunch never follows one"):
            RuntimeDir.open(path)
        with pytest.raises(RuntimeDirError):
            Writer("t", capacity=8, runtime_dir=path)
        assert list(tmp_path.iterdir()) == []
    finally:
        os.rmdir(path)


def test_one_wait_on_several_topics_wakes_for_a_message_on_any_of_them(rt):
    writers = [Writer(f"t{i}", capacity=8, runtime_dir=rt) for i in range(3)]
    readers = [Reader(f"t{i}", runtime_dir=rt) for i in range(3)]
    time.sleep(0.1)  # past the readers' first 50 ms (short slices while a registration settles)
    publisher = threading.Timer(1.0, writers[2].publish, (b"x",))
    publisher.start()
    waits, msg = 0, None
    while msg is None and waits < 100:
        wait_any(readers, timeout=20)  # returns at a message, or at a 250 ms slice (signals run between slices)
        waits += 1
        msg = readers[2].receive_nowait()
    publisher.join()
    assert msg is not None and bytes(msg.data) == b"x"
    assert waits <= 8, f"{waits} wake-ups for one message in about a second: the wait is not sleeping"
    assert readers[0].receive_nowait() is None
    msg.release()
    for x in readers + writers:
        x.close()


# ----- the C++ client, built for Windows
def _checked_message(seq: int, size: int) -> np.ndarray:
    msg = np.full(size, seq % 251, np.uint8)
    struct.pack_into("<Q", msg, 0, seq)
    return msg


@pytest.fixture
def checked_io() -> str:
    if not EXAMPLES:
        pytest.skip("SHMLAUNCH_WINDOWS_EXAMPLES is not set: .ci/wine builds checked_io.exe with mingw-w64 and sets it")
    return str(Path(EXAMPLES) / "checked_io.exe")


def test_a_cpp_reader_gets_a_python_writers_stream_intact(rt, checked_io):
    w = Writer("x", capacity=4096, pool=4, runtime_dir=rt)
    env = dict(os.environ, SHMLAUNCH_RUNTIME_DIR=str(rt))
    peer = subprocess.Popen([checked_io, "read", "x", "3000"], env=env, stdout=subprocess.PIPE, text=True)
    assert peer.stdout.readline().strip() == "ready"
    for i in range(300):
        w.publish(_checked_message(i, 4096))
        time.sleep(0.002)
    out, _ = peer.communicate(timeout=60)
    received, torn, disorder, last = map(int, re.fullmatch(r"received (\d+) torn (\d+) disorder (\d+) last (-?\d+)", out.strip()).groups())
    assert (torn, disorder, last) == (0, 0, 299) and received >= 100, out
    w.close()


def test_a_python_reader_gets_a_cpp_writers_stream_intact(rt, checked_io):
    Writer("x", capacity=1024, pool=4, runtime_dir=rt).close()
    r = Reader("x", runtime_dir=rt)
    env = dict(os.environ, SHMLAUNCH_RUNTIME_DIR=str(rt))
    peer = subprocess.Popen([checked_io, "write", "x", "300", "300"], env=env, stdout=subprocess.PIPE, text=True)
    seqs, timeout = [], 30.0
    while (msg := r.receive(timeout=timeout)) is not None:
        with msg:
            seq = struct.unpack_from("<Q", msg.data)[0]
            assert (np.asarray(msg.data[8:]) == seq % 251).all(), f"message {seq} is torn"
            assert msg.source_seq == 1000 + seq
            seqs.append(seq)
        timeout = 2.0
    assert peer.wait(30) == 0 and peer.stdout.read().strip() == "wrote 300"
    assert seqs == sorted(set(seqs)) and seqs[-1] == 299 and len(seqs) >= 100
    r.close()


# ----- the launcher
def _launch(folder: Path, out: Path, duration: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shmlaunch.launch.cli", "three_nodes.yaml", "--runtime-dir", str(folder), "--duration",
                             duration, "--no-status", f"out:={out}"], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _gone(path: Path, within: float) -> bool:
    deadline = time.monotonic() + within
    while os.path.lexists(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not os.path.lexists(path)


def test_the_launcher_starts_and_stops_a_graph_and_leaves_nothing(tmp_path):
    folder = graph_runtime_dir(unique_name("win"))
    out = tmp_path / "three.jsonl"
    launcher = _launch(folder, out, "8")
    output, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 0, output
    for node in ("counter", "scale", "record"):
        assert f"node '{node}' exited (exit code 0)" in output, output  # stopped on request, not killed
    assert "stopped (SIGBREAK)" in output, output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    scaled = [row["value"] for row in rows if "value" in row]
    assert len(scaled) >= 20 and all(v % 10 == 0 for v in scaled), rows[:3]
    assert rows[-1] == {"teardown": True}  # the record node stopped cleanly
    assert not os.path.lexists(folder)


def test_nodes_die_with_a_killed_launcher_and_the_watchdog_removes_the_graph(tmp_path):
    folder = graph_runtime_dir(unique_name("win"))
    launcher = _launch(folder, tmp_path / "three.jsonl", "600")
    lines = []
    for line in launcher.stdout:
        lines.append(line)
        if "all 3 nodes are up" in line:
            break
    state = json.loads((folder / "graph.json").read_text())
    pids = [node["pid"] for node in state["nodes"].values()]
    assert len(pids) == 3 and all(backend.process_start_time(p) for p in pids), "".join(lines)
    launcher.kill()  # TerminateProcess: no chance to clean up
    launcher.wait(30)
    deadline = time.monotonic() + 15
    while any(backend.process_start_time(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(backend.process_start_time(p) for p in pids), "a node outlived its launcher"
    assert _gone(folder, 30), "the watchdog did not remove the graph's folder"


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", *args], capture_output=True, text=True, timeout=60)


def test_the_operator_tools_see_a_running_graph_and_stop_stops_it_cleanly(tmp_path):
    name = unique_name("win")
    (tmp_path / "g.yaml").write_text((HERE / "three_nodes.yaml").read_text().replace("name: three-nodes", f"name: {name}"))
    launcher = subprocess.Popen([sys.executable, "-m", "shmlaunch.launch.cli", str(tmp_path / "g.yaml"), "--no-status",
                                 f"out:={tmp_path / 'three.jsonl'}"], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in launcher.stdout:
        lines.append(line)
        if "all 3 nodes are up" in line:
            break
    topics, nodes, graphs = _tool("topic", "list", name), _tool("node", "list", name), _tool("list")
    assert re.search(r"^scaled\s+int64\[1\]\s+8\s+4\s+\d+ \(gen 1\)", topics.stdout, re.M), topics.stdout + topics.stderr
    assert all(re.search(rf"^{n}\s+\d+\s+running\s+0\s", nodes.stdout, re.M) for n in ("counter", "scale", "record")), nodes.stdout
    assert re.search(rf"^{name}\s+{launcher.pid}\s.*3/3", graphs.stdout, re.M), graphs.stdout
    stopped = _tool("stop", name)
    output = "".join(lines) + launcher.stdout.read()
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"graph {name!r} stopped", stopped.stdout + stopped.stderr
    assert launcher.wait(30) == 0 and "stopping: received SIGBREAK" in output, output
    assert all(f"node '{n}' exited (exit code 0)" in output for n in ("counter", "scale", "record")), output
    assert not os.path.lexists(graph_runtime_dir(name))
