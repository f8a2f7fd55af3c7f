"""Graphs of hundreds of topics: a node waiting on more than futex_waitv's 128 words, a recorder
of them all, open-file limits raised or refused before anything starts, and a systemd unit run
the way systemd runs it."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from test_launcher import assert_nothing_left, shmlaunch, start, unique_name, wait_for, write_graph
from test_record import summary_of

from shmlaunch.transport import graph_runtime_dir

TESTS = Path(__file__).parent


def fan_graph(n: int, out: Path) -> str:
    topics = "".join(f"  t/{i}: {{dtype: int64, shape: [1], pool: 2}}\n" for i in range(n))
    pub = ", ".join(f"out{i}: t/{i}" for i in range(n))
    sub = ", ".join(f"in{i}: t/{i}" for i in range(n))
    return f"""
topics:
{topics}nodes:
  fanout:
    node: graph_nodes:FanOut
    params: {{ports: {n}, rate: 20}}
    publish: {{{pub}}}
    env: {{PYTHONPATH: PYTHONPATH_HERE}}
  fanin:
    node: graph_nodes:FanIn
    params: {{ports: {n}, path: {out}}}
    subscribe: {{{sub}}}
    env: {{PYTHONPATH: PYTHONPATH_HERE}}
"""


def count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def test_a_node_hears_all_of_130_topics_and_record_takes_them_all(tmp_path):
    n = 130
    out = tmp_path / "seen.txt"
    path, graph = write_graph(tmp_path, fan_graph(n, out))
    proc = start(path)
    try:
        wait_for(lambda: count(out) == n, 60, f"the fan-in node to hear all {n} topics")
        res = shmlaunch("record", tmp_path / "all.mcap", "--graph", graph, "--duration", "2", timeout=120)
        assert res.returncode == 0, res.stderr
        topics = summary_of(res.stderr)["topics"]
        assert len(topics) == n and all(t["recorded"] > 0 for t in topics.values()), topics
        listed = shmlaunch("topic", "list", "--graph", graph, timeout=120)
        assert listed.returncode == 0 and sum(1 for x in listed.stdout.splitlines() if x.startswith("t/")) == n
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert_nothing_left(graph)


def _limited(soft: int, hard: int, *args: str) -> subprocess.CompletedProcess:
    cmd = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "shmlaunch.launch.cli", *args))
    return subprocess.run(["sh", "-c", f"ulimit -Sn {soft} && ulimit -Hn {hard} && exec {cmd}"], capture_output=True, text=True,
                          timeout=180)


def test_a_graph_past_the_soft_file_limit_runs_and_one_past_the_hard_limit_is_refused_before_starting(tmp_path):
    n = 600  # 2 descriptors a topic: over 1024 in each node, under 4096
    out = tmp_path / "seen.txt"
    path, graph = write_graph(tmp_path, fan_graph(n, out))
    res = _limited(1024, 4096, str(path), "--duration", "25", "--no-status")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert count(out) == n, res.stdout[-2000:]
    assert_nothing_left(graph)
    res = _limited(512, 512, str(path), "--duration", "5")
    need = 64 + 2 * n + 3 * 2  # the launcher: a spare, 2 a topic while it creates them, 3 a node
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"shmlaunch: error: graph {graph!r} needs about {need} open files (its launcher: 2 a topic); the limit is 512: "
        f"raise it (ulimit -n {need}; LimitNOFILE={need} in a systemd unit)"], res.stderr
    assert not graph_runtime_dir(graph).exists() and not count(tmp_path / "never.txt")


def _unit_fields(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_the_systemd_unit_runs_in_the_directory_it_was_made_in(tmp_path):
    """The unit's ExecStart=, WorkingDirectory=, Environment= and LimitNOFILE= used as systemd uses
    them (a notify socket, SIGTERM to stop): relative paths land in the directory the unit was
    made in, never beside the launch file (inside site-packages for a bundled one)."""
    files, here = tmp_path / "files", tmp_path / "here"
    files.mkdir()
    here.mkdir()
    graph = unique_name("unit")
    # a node writes where the graph was started ($SHMLAUNCH_START_DIR: the recorder's default place)
    (files / "g.yaml").write_text(f"name: {graph}\nnodes:\n  w: {{cmd: [sh, -c, 'echo hi > \"$SHMLAUNCH_START_DIR/out.txt\"; "
                                  "exec sleep 60']}\n")
    res = shmlaunch("systemd", files / "g.yaml", cwd=here)
    assert res.returncode == 0, res.stderr
    unit = _unit_fields(res.stdout)
    assert unit["WorkingDirectory"] == str(here) and unit["LimitNOFILE"] == "524288"
    if shutil.which("systemd-analyze"):
        (tmp_path / f"shmlaunch-{graph}.service").write_text(res.stdout)
        check = subprocess.run(["systemd-analyze", "verify", str(tmp_path / f"shmlaunch-{graph}.service")], capture_output=True, text=True)
        assert not [x for x in (check.stdout + check.stderr).splitlines() if f"shmlaunch-{graph}" in x], check.stderr
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, **dict(kv.split("=", 1) for kv in [unit["Environment"]]))
    limit = int(unit["LimitNOFILE"])
    limit = min(limit, int(subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout))
    proc = subprocess.Popen(["sh", "-c", f'ulimit -n {limit} && exec "$@"', "unit", *shlex.split(unit["ExecStart"])],
                            cwd=unit["WorkingDirectory"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert sock.recv(4096).decode().startswith("READY=1")
        wait_for(lambda: (here / "out.txt").exists(), 10, "the node's relative file")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        sock.close()
    assert proc.returncode == 0, out
    assert (here / "out.txt").read_text() == "hi\n" and not (files / "out.txt").exists()
    assert_nothing_left(graph)
