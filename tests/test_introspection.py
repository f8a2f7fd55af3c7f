"""Operating a running graph: list, node/topic commands, stop, systemd, stale data, logs."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_launcher import THREE, assert_nothing_left, node_pids, records, start, wait_for, write_graph

from shmlaunch.launch import Printer
from shmlaunch.launch._state import GraphState
from shmlaunch.transport import Reader, RuntimeDir, Writer, graph_runtime_dir


def graph_state(graph: str) -> GraphState:
    with RuntimeDir.open(graph_runtime_dir(graph)) as rd:
        return GraphState.read(rd)


def cli(*args, timeout=60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def running(tmp_path):
    """A three-node graph whose recorder respawns; yields (graph name, output file, launcher process)."""
    out = tmp_path / "out.jsonl"
    body = THREE.replace("OUT", str(out)).replace("    subscribe: {in: scaled}\n",
                                                   "    subscribe: {in: scaled}\n    respawn: {max: 3, delay: 0.3}\n")
    path, graph = write_graph(tmp_path, body)
    proc = start(path)
    try:
        wait_for(lambda: len(records(out)) > 5, what="the graph to run")
        wait_for(lambda: all(n.state == "running" for n in graph_state(graph).nodes.values()), what="every node to report ready")
        yield graph, out, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert_nothing_left(graph)


def test_list_node_and_topic_commands_describe_the_running_graph(running):
    graph, _, proc = running
    res = cli("list")
    line = next(x for x in res.stdout.splitlines() if x.startswith(graph))
    assert f" {proc.pid} " in line and " 3/3 " in line
    res = cli("node", "list", graph)
    assert res.returncode == 0, res.stderr
    rows = {r.split()[0]: r.split() for r in res.stdout.splitlines()[2:]}
    assert set(rows) == {"counter", "scale", "record"}
    assert all(r[2] == "running" and r[3] == "0" and float(r[4]) >= 0 for r in rows.values())
    res = cli("topic", "list", graph)
    rows = {r.split()[0]: r.split() for r in res.stdout.splitlines()[2:]}
    assert rows["numbers"][1:4] == ["int64[1]", "8", "4"]
    assert rows["numbers"][4:7] == [str(proc_pid_of(graph, "Counter")), "(gen", "1)"]  # the writer cell has spaces
    assert 80 < float(rows["numbers"][8]) < 120  # the 100 Hz counter
    assert rows["scaled"][-1] == "1"  # one reader: the recorder


def proc_pid_of(graph: str, cls: str) -> int:
    return next(p for p in node_pids(graph) if cls.encode() in Path(f"/proc/{p}/cmdline").read_bytes())


def test_topic_echo_hz_and_stats(running):
    graph, _, _ = running
    res = cli("topic", "echo", "scaled", "-n", "3")
    lines = res.stdout.splitlines()
    assert len(lines) == 3 and all(x.startswith("seq ") and " age " in x for x in lines)
    values = [int(x.rsplit("[", 1)[1].rstrip("]")) for x in lines]
    assert all(v % 10 == 0 for v in values) and values == sorted(values)
    res = cli("topic", "hz", "numbers", "-n", "1")
    assert res.stdout.startswith("numbers: ") and 80 < float(res.stdout.split()[1]) < 120
    res = cli("topic", "stats", "scaled", "--graph", graph)
    assert "writer pid" in res.stdout and "(scale), generation 1" in res.stdout
    reader_row = res.stdout.splitlines()[-1].split()
    assert reader_row[1] == "record" and int(reader_row[2]) > 10


def test_commands_work_while_a_node_restarts(running):
    graph, out, _ = running
    recorder = proc_pid_of(graph, "Record")
    os.kill(recorder, signal.SIGKILL)
    wait_for(lambda: _restarts(graph) == 1, what="the restart to show in node list")
    n = len(records(out))
    wait_for(lambda: len(records(out)) > n + 5, what="the respawned recorder")
    res = cli("topic", "stats", "scaled")
    assert res.returncode == 0 and res.stdout.splitlines()[-1].split()[1] == "record"


def _restarts(graph: str) -> int:
    for row in cli("node", "list", graph).stdout.splitlines()[2:]:
        cells = row.split()
        if cells[0] == "record":
            return int(cells[3])
    return -1


def test_stop_ends_the_graph_cleanly(running):
    graph, out, proc = running
    res = cli("stop", graph)
    assert res.returncode == 0 and res.stdout.strip() == f"graph {graph!r} stopped"
    assert proc.wait(10) == 0
    assert records(out)[-1] == {"teardown": True}


def test_tools_say_clearly_when_no_graph_runs():
    res = cli("node", "list", "no-such-graph")
    assert res.returncode == 1
    assert res.stderr.startswith("shmlaunch: error: no graph 'no-such-graph' is running (running: ")
    res = cli("topic", "echo", "no/such/topic")
    assert res.returncode == 1 and res.stderr.strip() == "shmlaunch: error: no running graph has topic 'no/such/topic'"


def test_messages_carry_generation_and_age_and_max_age_skips_stale_data(rt):
    w = Writer("t", capacity=8, runtime_dir=rt)
    w.publish(b"old")
    time.sleep(0.1)
    r = Reader("t", runtime_dir=rt, max_age=0.05)
    assert r.receive_nowait() is None and r.statistics().stale == 1
    w.publish(b"new")
    msg = r.receive(timeout=1)
    assert bytes(msg.data) == b"new" and msg.generation == 1 and 0 <= msg.age_ns < 1e9
    w.close()
    w2 = Writer("t", runtime_dir=rt)
    w2.publish(b"next")
    assert r.receive(timeout=1).generation == 2


def test_systemd_unit_is_valid_and_keeps_shared_memory(tmp_path):
    path, graph = write_graph(tmp_path, THREE.replace("OUT", str(tmp_path / "o.jsonl")))
    user_unit = cli("systemd", path, "--user").stdout
    assert "WantedBy=default.target" in user_unit and "systemctl --user daemon-reload" in user_unit
    unit = tmp_path / f"shmlaunch-{graph}.service"
    res = cli("systemd", path, "-o", unit)
    assert res.returncode == 0, res.stderr
    text = unit.read_text()
    for line in ("Type=notify", "RemoveIPC=no", "Restart=on-failure", "NotifyAccess=main", "WatchdogSec=10", "KillMode=mixed"):
        assert line in text.splitlines()
    assert f"ExecStart={shutil.which('shmlaunch') or sys.executable}" in text and str(path.resolve()) in text
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [x for x in (res.stdout + res.stderr).splitlines() if unit.name in x]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr


def test_launcher_notifies_systemd_ready_and_watchdog(tmp_path):
    path, graph = write_graph(tmp_path, THREE.replace("OUT", str(tmp_path / "o.jsonl")))
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(20)
    env = {**os.environ, "NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([sys.executable, "-m", "shmlaunch.launch.cli", str(path), "--duration", "4"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        got = []
        while not any(m.startswith("WATCHDOG=1") for m in got):
            got.append(sock.recv(4096).decode())
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        sock.close()
    assert got[0].startswith("READY=1\nSTATUS=graph ") and f"MAINPID={proc.pid}" in got[0]
    assert "all 3 nodes are up" in out
    assert_nothing_left(graph)


def test_launcher_says_how_much_room_is_missing_before_starting(tmp_path):
    path, graph = write_graph(tmp_path, "topics:\n  huge: {capacity: 400000000000, pool: 8}\nnodes:\n  a: {cmd: [true], publish: {o: huge}}\n")
    res = cli(path)
    assert res.returncode == 2
    assert res.stderr.startswith(f"shmlaunch: error: not enough room in /dev/shm for graph {graph!r}: its topics need ")
    assert "MiB missing); in Docker, /dev/shm is 64 MiB unless you pass --shm-size" in res.stderr
    assert not graph_runtime_dir(graph).exists()


def test_quiet_and_log_dir_send_node_output_to_files(tmp_path):
    path, graph = write_graph(tmp_path, THREE.replace("OUT", str(tmp_path / "o.jsonl")))
    logs = tmp_path / "logs"
    res = cli(path, "--duration", 2, "--quiet", "--log-dir", logs)
    assert res.returncode == 0
    assert "recording to" not in res.stdout and f"graph {graph!r} stopped" in res.stdout
    assert "INFO recording to" in (logs / "record.log").read_text()


def test_status_footer_stays_below_scrolling_lines():
    out = io.StringIO()
    p = Printer(["cam"], stream=out, colour=False)
    p.set_footer(["NODE STATE", "cam  running"])
    p.line("cam", "hello")
    text = out.getvalue()
    assert text.endswith("cam      | hello\nNODE STATE\ncam  running\n")
    assert "\x1b[2F\x1b[J" in text  # the footer was erased before the line and drawn again after it


def test_status_view_renders_nodes_and_topics(tmp_path):
    from shmlaunch.launch import load_launch_file
    from shmlaunch.launch._state import NodeState
    from shmlaunch.launch._status import StatusView

    path, graph = write_graph(tmp_path, THREE.replace("OUT", str(tmp_path / "o.jsonl")))
    g = load_launch_file(path)
    rt = tmp_path / "rt"
    Writer("numbers", dtype="int64", shape=(1,), runtime_dir=rt).publish(np.array([1], np.int64))
    Writer("scaled", dtype="int64", shape=(1,), runtime_dir=rt).close()
    out = io.StringIO()
    view = StatusView(Printer(list(g.nodes), stream=out, colour=False), rt, g)
    state = GraphState(graph, str(path), str(rt), os.getpid(), time.time_ns(), {"counter": NodeState(pid=os.getpid(), state="running")})
    view.refresh(state, time.monotonic())
    text = out.getvalue()
    assert "counter  " in text and "running" in text and "numbers  int64[1]" in text
