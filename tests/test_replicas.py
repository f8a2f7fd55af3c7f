"""replicas: N — a slow node spread over processes with competing-consumer reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from shmlaunch.launch import LaunchFileError, load_launch_file
from shmlaunch.transport import Reader, Writer
from test_launcher import assert_nothing_left, node_pids, records, start, wait_for, write_graph

GRAPH = """
topics:
  numbers: {dtype: int64, shape: [1], pool: 8}
  worked: {dtype: int64, shape: [1], pool: 8}
nodes:
  counter:
    node: graph_nodes:Counter
    params: {rate: 60.0}
    publish: {out: numbers}
    env: {PYTHONPATH: PYTHONPATH_HERE}
  work:
    node: graph_nodes:Work
    params: {work_ms: 40.0, log_path: WORKLOG}
    subscribe: {in: numbers}
    publish: {out: worked}
    replicas: 3
    respawn: {max: 2, delay: 0.2}
    env: {PYTHONPATH: PYTHONPATH_HERE}
  record:
    node: graph_nodes:Record
    params: {path: OUT}
    subscribe: {in: worked}
    env: {PYTHONPATH: PYTHONPATH_HERE}
"""


def worklog(path: Path) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_group_members_share_messages_and_others_see_everything(rt):
    w = Writer("t", capacity=8, pool=8, runtime_dir=rt)
    a, b = (Reader("t", runtime_dir=rt, group="g") for _ in range(2))
    plain = Reader("t", runtime_dir=rt)
    got_a, got_b, got_plain = [], [], []
    for i in range(1, 41):
        w.publish(np.array([i], np.int64))
        for reader, got in ((a, got_a), (b, got_b), (plain, got_plain)):
            msg = reader.receive_nowait()
            if msg is not None:
                got.append(msg.seq)
                msg.release()
    assert got_plain == list(range(1, 41))  # an ordinary reader is unaffected
    assert not set(got_a) & set(got_b) and sorted(got_a + got_b) == list(range(1, 41))
    assert a.statistics().taken + b.statistics().taken == 40


def test_replicas_expand_into_grouped_nodes_with_merged_outputs(tmp_path):
    path, _ = write_graph(tmp_path, GRAPH.replace("WORKLOG", "/dev/null").replace("OUT", "/dev/null"))
    g = load_launch_file(path)
    assert sorted(g.nodes) == ["counter", "record", "work.0", "work.1", "work.2"]
    assert g.nodes["work.1"].groups == {"in": "work"} and g.nodes["work.1"].publish == {"out": "worked/1"}
    assert g.nodes["record"].merge == {"in": ["worked/0", "worked/1", "worked/2"]}
    assert sorted(g.topics) == ["numbers", "worked/0", "worked/1", "worked/2"]


def test_replicas_must_be_a_sensible_count(tmp_path):
    path, _ = write_graph(tmp_path, GRAPH.replace("replicas: 3", "replicas: 0"))
    with pytest.raises(LaunchFileError, match=r"node 'work': replicas must be a whole number from 1 to 16, got 0$"):
        load_launch_file(path)


def test_three_replicas_process_each_message_at_most_once_in_order(tmp_path):
    out, log = tmp_path / "out.jsonl", tmp_path / "work.log"
    path, graph = write_graph(tmp_path, GRAPH.replace("WORKLOG", str(log)).replace("OUT", str(out)))
    proc = start(path, "--duration", 10)
    try:
        wait_for(lambda: len(worklog(log)) > 60, what="the replicas to work")
        victims = [p for p in node_pids(graph) if b"Work" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(victims) == 3
        os.kill(victims[0], signal.SIGKILL)  # mid-message: it spends most of its time inside one
        killed_at = len(worklog(log))
        wait_for(lambda: len(worklog(log)) > killed_at + 60, what="work to go on after the kill")
        output, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    done = worklog(log)
    seqs = [s for _, s in done]
    assert len(seqs) == len(set(seqs))  # no input was processed twice
    pids = {p for p, _ in done}
    assert len(pids) >= 4  # three replicas, and the one respawned after the kill
    per_pid = {p: sum(1 for q, _ in done if q == p) for p in pids}
    assert sum(1 for n in per_pid.values() if n > 20) >= 3  # the work really was shared
    # 60 Hz input, 40 ms of work: one process alone could handle 25 Hz; three handle the stream
    assert len(seqs) > 0.8 * max(seqs) - 20
    sources = [r["source"] for r in records(out) if "source" in r]
    assert sources == sorted(sources) and len(sources) == len(set(sources))  # the consumer sees input order
    assert sum(1 for r in records(out) if "source" in r) > 100
    assert "node 'work.0' exited (killed by SIGKILL (exit code 137)): respawn 1 of 2" in output or "exited (killed by SIGKILL" in output
    assert_nothing_left(graph)
    time.sleep(0)


def test_replicas_are_pinned_one_per_cpu_and_nice_is_applied(tmp_path):
    body = (GRAPH.replace("WORKLOG", "/dev/null").replace("OUT", "/dev/null").replace("replicas: 3", "replicas: 3\n    cpus: all")
            .replace("    params: {rate: 60.0}", "    params: {rate: 60.0}\n    nice: 7"))
    path, graph = write_graph(tmp_path, body)
    proc = start(path, "--duration", 30)
    try:
        wait_for(lambda: len(node_pids(graph)) >= 6, what="the nodes to start")  # launcher, watchdog and five nodes
        rows = {}

        def listed() -> bool:
            res = subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", "node", "list", graph], capture_output=True, text=True)
            rows.update({r.split()[0]: r.split() for r in res.stdout.splitlines()[2:]})
            return all(rows.get(n, ["", "", ""])[2] == "running" for n in ("counter", "work.0", "work.1", "work.2", "record"))

        wait_for(listed, what="every node running")
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    cpus = sorted(os.sched_getaffinity(0))
    for i in range(3):  # round robin over the launcher's CPUs, each replica on one
        assert rows[f"work.{i}"][6:8] == [str(cpus[i % len(cpus)]), "0"]
    assert rows["counter"][7] == "7" and rows["record"][7] == "0"
    assert_nothing_left(graph)
