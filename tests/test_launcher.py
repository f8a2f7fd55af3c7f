"""The launcher and CLI with real processes: start, supervise, stop, leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shmlaunch.testing import unique_name
from shmlaunch.transport import ensure_runtime_dir, graph_runtime_dir

TESTS = Path(__file__).parent


def write_graph(tmp_path: Path, body: str, name: str | None = None) -> tuple[Path, str]:
    """A launch file in tmp_path whose nodes import from the tests folder; returns (path, graph name)."""
    name = name or unique_name("graph")
    path = tmp_path / "graph.yaml"
    path.write_text(f"name: {name}\n" + body.replace("PYTHONPATH_HERE", str(TESTS)))
    return path, name


THREE = """
topics:
  numbers: {dtype: int64, shape: [1], pool: 4}
  scaled: {dtype: int64, shape: [1], pool: 4}
nodes:
  counter:
    node: graph_nodes:Counter
    params: {rate: 100.0}
    publish: {out: numbers}
    env: {PYTHONPATH: PYTHONPATH_HERE}
  scale:
    node: graph_nodes:Scale
    params: {factor: 10}
    subscribe: {in: numbers}
    publish: {out: scaled}
    env: {PYTHONPATH: PYTHONPATH_HERE}
  record:
    node: graph_nodes:Record
    params: {path: OUT}
    subscribe: {in: scaled}
    env: {PYTHONPATH: PYTHONPATH_HERE}
"""


def shmlaunch(*args, cwd=None, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, **kw)


def start(*args, cwd=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shmlaunch.launch.cli", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def node_pids(graph: str) -> list[int]:
    """Processes whose environment names this graph's runtime directory (the nodes)."""
    needle = f"shmlaunch-{os.getuid()}-{graph}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes() or needle in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def wait_for(predicate, timeout=20.0, what="condition", detail=None):
    """Poll ``predicate`` until true, or fail after ``timeout`` s naming ``what`` (and what
    ``detail()`` says: the logs of the processes waited on). The one wait of the test suite."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{detail()}" if detail is not None else ""))


def assert_nothing_left(graph: str) -> None:
    wait_for(lambda: not node_pids(graph), 15, f"the processes of graph {graph} to end")
    wait_for(lambda: not graph_runtime_dir(graph).exists(), 15, f"{graph_runtime_dir(graph)} to be removed")


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_three_node_graph_passes_messages_and_parameters_and_leaves_nothing(tmp_path):
    out = tmp_path / "out.jsonl"
    path, graph = write_graph(tmp_path, THREE.replace("OUT", str(out)))
    res = shmlaunch(path, "--duration", 3)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = records(out)
    values = [r["value"] for r in rows if "value" in r]
    assert len(values) > 50
    assert all(v % 10 == 0 for v in values) and values == sorted(values)  # scaled by the factor param, in order
    assert rows[-1] == {"teardown": True}
    assert "record   | INFO recording to" in res.stdout
    assert f"graph {graph!r} stopped, exit code 0" in res.stdout
    assert_nothing_left(graph)


def test_bundled_three_node_example_runs_from_the_command_line(tmp_path):
    out = tmp_path / "three.jsonl"
    res = shmlaunch(TESTS / "three_nodes.yaml", "--duration", 2, f"out:={out}", "factor:=3", cwd=TESTS)
    assert res.returncode == 0, res.stdout + res.stderr
    values = [r["value"] for r in records(out) if "value" in r]
    assert values and all(v % 3 == 0 for v in values)
    assert_nothing_left("three-nodes")


def test_output_lines_carry_the_node_name(tmp_path):
    out = tmp_path / "out.jsonl"
    path, _ = write_graph(tmp_path, THREE.replace("OUT", str(out)))
    res = shmlaunch(path, "--duration", 3)  # long enough for every node's set-up on a loaded 2-core machine
    lines = [line for line in res.stdout.splitlines() if "recording to" in line]
    assert len(lines) == 1 and lines[0].startswith("record ") and "| INFO recording to" in lines[0]


def test_respawn_brings_back_a_node_killed_with_sigkill(tmp_path):
    out = tmp_path / "out.jsonl"
    body = THREE.replace("OUT", str(out)).replace(
        "    subscribe: {in: scaled}\n", "    subscribe: {in: scaled}\n    respawn: {max: 3, delay: 0.2}\n")
    path, graph = write_graph(tmp_path, body)
    proc = start(path, "--duration", 8)
    try:
        wait_for(lambda: sum(1 for r in records(out) if "value" in r) > 5, what="first records")
        first_pid = [p for p in node_pids(graph) if b"Record" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(first_pid) == 1
        os.kill(first_pid[0], signal.SIGKILL)
        wait_for(lambda: any(b"Record" in Path(f"/proc/{p}/cmdline").read_bytes()
                             for p in node_pids(graph) if p != first_pid[0] and Path(f"/proc/{p}").exists()),
                 what="the respawned recorder")
        n = len(records(out))
        wait_for(lambda: len(records(out)) > n + 5, what="records from the respawned recorder")
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert "node 'record' exited (killed by SIGKILL (exit code 137)): respawn 1 of 3 in 0.2 s" in output
    assert_nothing_left(graph)


def test_death_of_a_required_node_stops_the_graph_with_a_failure(tmp_path):
    body = THREE.replace("OUT", str(tmp_path / "o.jsonl")) + """
  crasher:
    node: graph_nodes:DiesAfter
    params: {seconds: 0.5, code: 4}
    required: true
    env: {PYTHONPATH: PYTHONPATH_HERE}
"""
    path, graph = write_graph(tmp_path, body)
    t0 = time.monotonic()
    res = shmlaunch(path, "--duration", 30)
    assert res.returncode == 1, res.stdout
    assert time.monotonic() - t0 < 20
    assert "node 'crasher' exited (exit code 4): it is required, so the graph stops" in res.stdout
    assert_nothing_left(graph)


def test_node_raising_in_setup_is_reported_with_its_traceback_and_stops_the_graph(tmp_path):
    body = THREE.replace("OUT", str(tmp_path / "o.jsonl")) + """
  broken:
    node: graph_nodes:FailsInSetup
    env: {PYTHONPATH: PYTHONPATH_HERE}
"""
    path, graph = write_graph(tmp_path, body)
    res = shmlaunch(path, "--duration", 30)
    assert res.returncode == 1
    assert "broken   | ERROR setup() failed" in res.stdout
    assert "RuntimeError: camera 7 is not connected" in res.stdout
    assert "node 'broken' exited (exit code 3): it could not start, so the graph stops" in res.stdout
    assert_nothing_left(graph)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_launcher_stops_everything_cleanly(tmp_path, sig):
    out = tmp_path / "out.jsonl"
    path, graph = write_graph(tmp_path, THREE.replace("OUT", str(out)))
    proc = start(path)
    try:
        wait_for(lambda: len(records(out)) > 3, what="the graph to run")
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert f"stopping: received {sig.name}" in output
    assert records(out)[-1] == {"teardown": True}  # the nodes ran teardown()
    assert_nothing_left(graph)


def test_sigkill_of_the_launcher_leaves_no_process_and_nothing_in_dev_shm(tmp_path):
    out = tmp_path / "out.jsonl"
    path, graph = write_graph(tmp_path, THREE.replace("OUT", str(out)))
    proc = start(path)
    try:
        wait_for(lambda: len(records(out)) > 3, what="the graph to run")
        assert graph_runtime_dir(graph).exists() and len(node_pids(graph)) >= 3
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
    assert_nothing_left(graph)
    assert records(out)[-1] == {"teardown": True}  # parent-death SIGTERM let the nodes stop cleanly


def test_node_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    body = THREE.replace("OUT", str(tmp_path / "o.jsonl")) + """
  stubborn:
    node: graph_nodes:IgnoresSigterm
    env: {PYTHONPATH: PYTHONPATH_HERE}
"""
    path, graph = write_graph(tmp_path, body)
    res = shmlaunch(path, "--duration", 3, timeout=60)  # the node's set-up and first timer have run by then
    assert "still running after 5 s, killing: stubborn" in res.stdout
    assert "node 'stubborn' exited (killed by SIGKILL (exit code 137))" in res.stdout
    assert_nothing_left(graph)


def test_second_launch_of_a_running_graph_is_refused(tmp_path):
    path, graph = write_graph(tmp_path, THREE.replace("OUT", str(tmp_path / "o.jsonl")))
    proc = start(path)
    try:
        wait_for(lambda: (graph_runtime_dir(graph) / "registry.yaml").exists(), what="the first launch")
        res = shmlaunch(path, "--duration", 1)
        assert res.returncode == 2
        assert f"shmlaunch: error: graph {graph!r} is already running (launcher pid {proc.pid}," in res.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert_nothing_left(graph)


def test_runtime_directory_left_by_a_crashed_run_is_flushed(tmp_path):
    path, graph = write_graph(tmp_path, THREE.replace("OUT", str(tmp_path / "o.jsonl")))
    stale = ensure_runtime_dir(graph_runtime_dir(graph))  # marked as shmlaunch's, as a crashed run leaves it
    (stale / "numbers.pool").write_bytes(b"garbage from a crash")
    res = shmlaunch(path, "--duration", 1)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"flushing {stale}, left by a run that did not stop cleanly" in res.stdout
    assert_nothing_left(graph)


def test_command_node_runs_and_its_failure_to_start_is_reported(tmp_path):
    body = """
topics:
  t: {capacity: 64}
nodes:
  echo:
    cmd: [sh, -c, 'echo hello from $SHMLAUNCH_NODE; sleep 30']
  missing:
    cmd: [./no-such-binary]
"""
    path, graph = write_graph(tmp_path, body)
    res = shmlaunch(path, "--duration", 1.5)
    assert "echo     | hello from echo" in res.stdout
    assert "node 'missing': cannot start './no-such-binary': No such file or directory" in res.stdout
    assert "node 'missing' exited (exit code 127)" in res.stdout
    assert res.returncode == 1
    assert_nothing_left(graph)


def test_run_a_single_node_alone(tmp_path):
    rt = tmp_path / "rt"
    env = {**os.environ, "SHMLAUNCH_RUNTIME_DIR": str(rt), "PYTHONPATH": str(TESTS)}
    from shmlaunch.transport import Reader, Writer

    Writer("numbers", dtype="int64", shape=(1,), runtime_dir=rt).close()
    proc = subprocess.Popen([sys.executable, "-m", "shmlaunch.launch.cli", "run", "graph_nodes:Counter", "--param", "rate=50",
                             "--publish", "out=numbers", "--duration", "5"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        r = Reader("numbers", runtime_dir=rt)
        first = r.receive(timeout=20)
        assert first is not None
        second = r.receive(timeout=5)
        assert second.data[0] > first.data[0]
        del first, second
        r.close()
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "counter | INFO stopped (SIGINT)" in output


def test_run_rejects_an_unknown_parameter(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS), "SHMLAUNCH_RUNTIME_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", "run", "graph_nodes:Counter", "--param", "rte=5"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert res.stderr.strip() == ("shmlaunch: error: node 'counter' (graph_nodes:Counter) has no parameter 'rte'; it has: rate")
