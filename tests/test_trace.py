"""``shmlaunch trace`` on real graphs: per-hop attribution, losses, the trace file, cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_cross_language import cpp_build  # noqa: F401 - a fixture
from test_launcher import THREE, assert_nothing_left, shmlaunch, start, wait_for, write_graph

from shmlaunch import _platform as backend
from shmlaunch.nodes.hops import TRACE_TABLE, HopTable, format_summary
from shmlaunch.testing import runtime_dir
from shmlaunch.transport import Reader, TraceSession, Writer, graph_runtime_dir

pytestmark = pytest.mark.skipif(not backend.TRACING, reason="trace points are in the Linux hot path only")

# test_launcher's three nodes, with the middle one slow
SLOW_GRAPH = THREE.replace("scaled", "slowed").replace("  scale:\n    node: graph_nodes:Scale\n    params: {factor: 10}",
                                                       "  slow:\n    node: graph_nodes:Slow\n    params: {delay: 0.03}")


def trace_files(graph: str) -> list[str]:
    rt = graph_runtime_dir(graph)
    return sorted(n for n in os.listdir(rt) if n.startswith("trace") and n != "trace.wake") if rt.exists() else []


@pytest.fixture
def slow_graph(tmp_path):
    out = tmp_path / "out.jsonl"
    path, graph = write_graph(tmp_path, SLOW_GRAPH.replace("OUT", str(out)))
    proc = start(path)
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 200, 30, "the graph to run")
        yield graph
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    assert_nothing_left(graph)


def rows(summary: dict, section: str, **match) -> list[dict]:
    return [r for r in summary[section] if all(r[k] == v for k, v in match.items())]


def test_trace_attributes_the_slow_node_s_delay_to_its_processing_and_waiting_to_its_input_edge(slow_graph, tmp_path):
    out = tmp_path / "trace.json"
    assert trace_files(slow_graph) == []  # no tracer: no process records anything
    res = shmlaunch("trace", "--graph", slow_graph, "--duration", 3, "--out", out, "--quiet")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    wait_for(lambda: trace_files(slow_graph) == [], 5, "every trace file to go")
    with graph_runtime_dir(slow_graph).joinpath("graph.json").open() as f:
        assert json.load(f)  # the graph runs on
    text = res.stdout
    assert "QUEUEING" in text and "PROCESSING" in text and "slow  numbers -> slowed" in text
    check_trace_events(json.loads(out.read_text()), {"counter", "slow", "record"})


def test_per_hop_figures_from_a_live_session(slow_graph):
    session = TraceSession.attach(graph_runtime_dir(slow_graph))
    table = HopTable()
    try:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            time.sleep(0.1)
            table.read(session)
    finally:
        left = session.detach()
    assert left == []
    s = table.summary()
    print(format_summary(s))
    [slow] = rows(s, "processing", node="slow", input="numbers", output="slowed")
    assert slow["n"] >= 40 and 28 <= slow["p50_ms"] < 200  # the 30 ms of work, attributed to the slow node
    [into_slow] = rows(s, "queueing", topic="numbers", writer="counter", reader="slow")
    [into_record] = rows(s, "queueing", topic="slowed", writer="slow", reader="record")
    # a new number every 10 ms waits for the slow node to finish (newest first: the rest are overwritten)
    assert into_slow["p50_ms"] > 1.0 and into_slow["p50_ms"] > 5 * into_record["p50_ms"]
    assert into_slow["overwritten"] > into_slow["n"]  # about two of every three numbers
    assert into_record["overwritten"] == 0 and into_record["stale"] == into_record["taken"] == 0
    [cb] = rows(s, "callback", node="slow", input="numbers")
    assert 28 <= cb["p50_ms"] < 200
    [e2e] = rows(s, "end_to_end", topic="slowed", reader="record")
    assert e2e["p50_ms"] >= slow["p50_ms"]  # the number's stamp is carried through the slow node


def check_trace_events(doc: dict, names: set[str]) -> None:
    """The Chrome trace-event format: required fields, one process track per traced process,
    every flow start matched by its end, slices with a duration."""
    events = doc["traceEvents"]
    assert events and doc["displayTimeUnit"] == "ms"
    for e in events:
        assert {"name", "ph", "pid", "tid", "ts"} <= e.keys(), e
        assert isinstance(e["ts"], (int, float)) and isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert e["ph"] in {"M", "X", "s", "f"}
        if e["ph"] == "X":
            assert e["dur"] >= 0
    process_names = [e for e in events if e["ph"] == "M" and e["name"] == "process_name"]
    pids = [e["pid"] for e in process_names]
    assert len(pids) == len(set(pids))  # one track per process
    assert {e["args"]["name"].split(" (")[0] for e in process_names} >= names
    slice_pids = {e["pid"] for e in events if e["ph"] == "X"}
    assert slice_pids <= set(pids)
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert starts and starts.keys() == ends.keys()
    for fid, s in starts.items():
        assert ends[fid]["ts"] >= s["ts"] and ends[fid].get("bp") == "e"
    # a frame followed from the first node to the last: publish -> receive across processes
    assert any(starts[i]["pid"] != ends[i]["pid"] for i in starts)


def test_a_killed_tracer_leaves_the_graph_untouched_and_a_second_tracer_waits_its_turn(slow_graph):
    """(The fixture then checks that the graph still stops with exit 0 and leaves nothing.)"""
    tracer = subprocess.Popen([sys.executable, "-m", "shmlaunch.launch.cli", "trace", slow_graph], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: sum(n.endswith(".ring") for n in trace_files(slow_graph)) >= 3, 10, "every node to record")
        table = graph_runtime_dir(slow_graph) / TRACE_TABLE  # what the viewer shows, kept up to date each second
        wait_for(lambda: table.exists() and '"slow"' in table.read_text(), 10, "the table for the viewer")
        assert {"queueing", "processing", "end_to_end"} <= json.loads(table.read_text()).keys()
        res = shmlaunch("trace", slow_graph, "--duration", 1)
        assert res.returncode == 1 and "another tracer (pid" in res.stderr and "Traceback" not in res.stderr
        tracer.kill()
        tracer.communicate(timeout=10)
        wait_for(lambda: trace_files(slow_graph) == [], 10, "the request, the table and every ring to go")
        res = shmlaunch("trace", slow_graph, "--duration", 1.5, "--quiet")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "slow  numbers -> slowed" in res.stdout
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.communicate()


def _ring_of_a_real_process(rd: Path) -> bytes:
    """The bytes of this process's trace ring after some traffic."""
    w = Writer("t", capacity=64, pool=4, runtime_dir=rd)
    r = Reader("t", runtime_dir=rd)
    session = TraceSession.attach(rd)
    try:
        wait_for(lambda: any(n.startswith("trace.") and n.endswith(".ring") for n in os.listdir(rd)), 5, "this process to record")
        for i in range(50):
            w.publish(np.full(8, i, np.uint8), source_seq=i)
            with r.receive(1):
                pass
        name = f"trace.{os.getpid()}.ring"
        data = (rd / name).read_bytes()
        assert len(session.poll()) == 150  # 50 publishes, receives and releases
    finally:
        session.detach()
        w.close()
        r.close()
    return data


def test_rings_are_read_as_untrusted_files(tmp_path):
    rng = np.random.default_rng(7)
    with runtime_dir() as rd:
        real = _ring_of_a_real_process(rd)
        session = TraceSession.attach(rd)
        try:
            os.symlink(tmp_path / "elsewhere", rd / "trace.11.ring")
            os.mkfifo(rd / "trace.12.ring")
            (rd / "trace.13.ring").write_bytes(b"SHMLTRCE" + bytes(200))  # no capacity, wrong size
            big = bytearray(real[:128]) + bytes(64 * (1 << 20))  # a ring 32 times the size shmlaunch makes
            big[12:16], big[24:32] = (1 << 20).to_bytes(4, "little"), (14).to_bytes(8, "little")
            (rd / "trace.14.ring").write_bytes(bytes(big))
            lying = bytearray(real)  # a head far past anything written: one poll reads at most one ring's worth
            lying[16:24], lying[24:32] = (1 << 62).to_bytes(8, "little"), (15).to_bytes(8, "little")
            (rd / "trace.15.ring").write_bytes(bytes(lying))
            mutants = 0
            for i in range(300):
                data = bytearray(real[: 128 + 64 * 200])
                data[12:16] = (256).to_bytes(4, "little")  # a ring of 256 records, which this length is not...
                data = data[: 128 + 64 * 256] if i % 2 else data + bytes(64 * 56)  # ... unless padded
                for _ in range(int(rng.integers(1, 20))):
                    data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
                pid = 4_000_000 + i
                data[24:32] = pid.to_bytes(8, "little") if i % 3 else data[24:32]
                (rd / f"trace.{pid}.ring").write_bytes(bytes(data))
                mutants += 1
            records = session.poll()  # never raises
            table = HopTable(keep=True)
            for pid, ring in session.rings.items():
                table.add_process(pid, ring.name, ring.clock_offset)
            table.add(records)
            table.format()
            json.dumps(table.trace_events())
            assert all(1 <= r.kind <= 6 for r in records)
            assert {"trace.11.ring", "trace.12.ring", "trace.13.ring", "trace.14.ring"} <= session.refused.keys()
            assert session.rings[15].lost >= (1 << 62) - 32_768 and sum(r.pid == 15 for r in records) <= 32_768
            assert len(session.rings) + len(session.refused) >= mutants
        finally:
            session.detach(wait=0)
            for name in os.listdir(rd):
                if name.startswith("trace.") and name != "trace.wake":
                    os.unlink(rd / name)


def test_lost_records_are_counted_when_a_ring_wraps_before_it_is_read():
    with runtime_dir() as rd:
        w = Writer("t", capacity=8, pool=2, runtime_dir=rd)
        session = TraceSession.attach(rd)
        try:
            wait_for(lambda: w.publish(b"x") and session.poll(), 5, "this process to record")
            first = w.statistics().last_seq + 1
            for _ in range(40_000):
                w.publish(b"x")
            got = session.poll()
            ring = session.rings[os.getpid()]
            assert len(got) == 32_768 and ring.lost == 40_000 - 32_768
            assert [r.seq for r in got] == list(range(first + 40_000 - 32_768, first + 40_000))
        finally:
            session.detach()
            w.close()


def test_the_cpp_client_records_its_publishes_receives_and_releases(cpp_build):  # noqa: F811 - the fixture
    with runtime_dir() as rd:
        Writer("x", capacity=4096, pool=4, runtime_dir=rd).close()
        env = {**os.environ, "SHMLAUNCH_RUNTIME_DIR": str(rd)}
        session = TraceSession.attach(rd)
        reader = subprocess.Popen([str(cpp_build / "checked_io"), "read", "x", "3000"], env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert reader.stdout.readline().strip() == "ready"
            writer = subprocess.run([str(cpp_build / "checked_io"), "write", "x", "600", "200"], env=env, capture_output=True, text=True,
                                    timeout=60)
            assert writer.returncode == 0, writer.stderr
            out, _ = reader.communicate(timeout=30)
            assert "torn 0" in out
            table = HopTable(keep=True)
            table.read(session)
            records = table.kept
            names = {ring.name for ring in session.rings.values()}
        finally:
            left = session.detach()
            if reader.poll() is None:
                reader.kill()
        assert "checked_io" in names and len(session.refused) == 0
        kinds = {(r.pid, r.kind) for r in records}
        assert {(reader.pid, 2), (reader.pid, 3), (writer_pid := next(p for p, _ in kinds if p != reader.pid), 1)} <= kinds
        [row] = table.summary()["queueing"]
        assert row["topic"] == "x" and row["writer"] == f"checked_io[{writer_pid}]" and row["reader"] == f"checked_io[{reader.pid}]"
        assert row["n"] > 100 and row["p50_ms"] < 50
        assert left == [] and not [n for n in os.listdir(rd) if n.endswith(".ring") or n == "trace.request"]  # rings gone at exit


def test_mistakes_are_one_line_and_a_stopping_graph_ends_the_trace(tmp_path):
    for args, says in ((["--duration", "0"], "--duration 0.0: a positive number"), (["--out", tmp_path / "t.txt"], "a .json file"),
                       (["--graph", "no-such-graph-here"], "no graph 'no-such-graph-here' is running")):
        res = shmlaunch("trace", *args)
        assert res.returncode in (1, 2) and says in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    out = tmp_path / "out.jsonl"
    path, graph = write_graph(tmp_path, SLOW_GRAPH.replace("OUT", str(out)))
    launcher = start(path, "--duration", 4)
    wait_for(lambda: out.exists() and out.stat().st_size > 100, 30, "the graph to run")
    res = shmlaunch("trace", graph, "--quiet", "--summary", tmp_path / "table.json")
    assert res.returncode == 0 and f"graph {graph!r} stopped" in res.stdout, res.stdout + res.stderr
    assert rows(json.loads((tmp_path / "table.json").read_text()), "processing", node="slow")
    launcher.communicate(timeout=30)
    assert launcher.returncode == 0
    assert_nothing_left(graph)


def test_a_forked_child_never_writes_into_its_parent_s_ring():
    with runtime_dir() as rd:
        w = Writer("t", capacity=8, pool=4, runtime_dir=rd)
        session = TraceSession.attach(rd)
        try:
            wait_for(lambda: f"trace.{os.getpid()}.ring" in os.listdir(rd), 5, "this process to record")
            pid = os.fork()
            if pid == 0:  # the child publishes 100 messages, untraced, and leaves at once
                for _ in range(100):
                    w.publish(b"c")
                os._exit(0)
            assert os.waitpid(pid, 0)[1] == 0
            for _ in range(10):
                w.publish(b"p")
            records = [r for r in session.poll() if r.pid == os.getpid()]
            assert [r.kind for r in records] == [1] * 10  # the parent's ten publishes, none of the child's hundred
        finally:
            session.detach()
            w.close()
