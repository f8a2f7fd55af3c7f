"""replicas: N — a slow node spread over processes with competing-consumer reads."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import procs
import pytest
from test_introspection import cli
from test_launcher import assert_nothing_left, node_pids, records, start, wait_for, write_graph

from shmlaunch.launch import LaunchFileError, load_launch_file
from shmlaunch.transport import Reader, Writer

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


def test_group_members_under_load_never_share_a_message_and_never_see_a_torn_one(rt, ctx):
    Writer("t", capacity=4096, pool=4, runtime_dir=rt).close()  # the topic exists before the members open it
    ready = [ctx.Event() for _ in range(3)]
    results = ctx.Queue()
    members = [ctx.Process(target=procs.read_group_checked, args=(rt, "t", "g", ready[i], results)) for i in range(3)]
    for m in members:
        m.start()
    writer = ctx.Process(target=procs.write_checked, args=(rt, "t", 4096, 5000, None, 20000))
    assert all(e.wait(30) for e in ready)
    writer.start()
    writer.join(60)
    taken = [results.get(timeout=30) for _ in members]
    for m in members:
        m.join(10)
    all_seqs = [s for seqs, _ in taken for s in seqs]
    assert sum(torn for _, torn in taken) == 0
    assert len(all_seqs) == len(set(all_seqs))  # each message to at most one member
    assert all(seqs == sorted(seqs) for seqs, _ in taken)  # each member's share in publish order
    assert sum(1 for seqs, _ in taken if len(seqs) > 50) >= 2, [len(seqs) for seqs, _ in taken]  # really shared


def test_a_group_member_killed_holding_a_message_gives_the_slot_back_and_the_message_stays_taken(rt, ctx):
    w = Writer("t", capacity=8, pool=1, runtime_dir=rt)
    other = Reader("t", runtime_dir=rt, group="g")
    plain = Reader("t", runtime_dir=rt)
    w.publish(b"held")
    held = ctx.Event()
    p = ctx.Process(target=procs.hold_one, args=(rt, "t", held, "g"))
    p.start()
    assert held.wait(30)
    assert other.receive_nowait() is None  # the dying member took it
    with plain.receive_nowait() as msg:  # ordinary readers still see it, zero copy and read-only
        assert bytes(msg.data) == b"held" and not msg.data.flags.writeable and not msg.data.flags.owndata
    assert w.publish(b"blocked") is None  # the only slot is held
    p.kill()
    p.join(10)
    assert other.receive_nowait() is None  # the dead member's message is not handed to another
    assert w.publish(b"free") == 2  # its slot came back with its process
    with other.receive(timeout=5) as msg:
        assert msg.seq == 2 and bytes(msg.data) == b"free"


def test_a_held_group_message_is_never_overwritten(rt):
    w = Writer("t", capacity=8, pool=3, runtime_dir=rt)
    member = Reader("t", runtime_dir=rt, group="g")
    w.publish(np.array([1], np.int64))
    msg = member.receive(timeout=5)
    for i in range(2, 40):
        w.publish(np.array([i], np.int64))
    assert msg.data.view(np.int64)[0] == 1 and msg.seq == 1
    msg.release()
    with member.receive(timeout=5) as newest:
        assert newest.data.view(np.int64)[0] == 39


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
            res = cli("node", "list", graph)
            rows.update({r.split()[0]: r.split() for r in res.stdout.splitlines()[2:]})
            return all(rows.get(n, ["", "", ""])[2] == "running" for n in ("counter", "work.0", "work.1", "work.2", "record"))

        wait_for(listed, what="every node running")
        stats = cli("topic", "stats", "numbers", "--graph", graph).stdout.splitlines()[2:]
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    cpus = sorted(os.sched_getaffinity(0))
    for i in range(3):  # round robin over the launcher's CPUs, each replica on one
        assert rows[f"work.{i}"][6:8] == [str(cpus[i % len(cpus)]), "0"]
    assert rows["counter"][7] == "7" and rows["record"][7] == "0"
    readers = {r.split()[1]: r.split() for r in stats}
    assert set(readers) == {"work.0", "work.1", "work.2"}, stats
    for cells in readers.values():  # each member names its group; its gaps are the others' share, not losses
        assert cells[-1] == "work" and cells[3] == "-" and cells[6] == "-"
    assert_nothing_left(graph)
