"""The launcher's process layer without processes: the supervision rules replayed over scripted
histories of starts and exits, the stop sequence in simulated time, and a node's start through
an injected process constructor. Each test runs in milliseconds; no process is started and no
signal is sent."""

from __future__ import annotations

import io
import os

import pytest

from shmlaunch.launch import Printer, load_launch_file
from shmlaunch.launch._children import Children
from shmlaunch.launch._schema import NodeSpec
from shmlaunch.launch._stopping import STOP_TIMEOUT, terminate_then_kill
from shmlaunch.launch._supervisor import MAX_BACKOFF, Supervisor


def spec(name, **kw) -> NodeSpec:
    return NodeSpec(name, node_class=kw.pop("node_class", "m:C"), **kw)


def test_supervisor_respawns_with_backoff_then_gives_up():
    sup = Supervisor([spec("a", respawn_max=2, respawn_delay=1.0)], now=0.0)
    assert sup.due(0.0) == ["a"]
    sup.started("a")
    assert sup.exited("a", -9, 10.0) == "node 'a' exited (killed by SIGKILL (exit code 137)): respawn 1 of 2 in 1 s"
    assert sup.due(10.5) == [] and sup.due(11.0) == ["a"]
    sup.started("a")
    assert sup.exited("a", 1, 20.0) == "node 'a' exited (exit code 1): respawn 2 of 2 in 2 s"
    assert sup.next_deadline() == 22.0
    sup.started("a")
    assert sup.exited("a", 1, 30.0) == "node 'a' exited (exit code 1): gave up after 2 respawns"
    assert sup.finished() and sup.exit_code() == 1


def test_a_crash_loop_backs_off_exponentially_up_to_the_cap_and_the_graph_goes_on():
    """A node that dies at once, 12 times: the delays double from 0.5 s to MAX_BACKOFF and stay
    there; its sibling runs on; after the last respawn the node is given up, the graph's code 1."""
    sup = Supervisor([spec("flaky", respawn_max=10, respawn_delay=0.5), spec("steady")], now=0.0)
    for n in sup.due(0.0):
        sup.started(n)
    now, delays = 0.0, []
    for _ in range(10):
        sup.exited("flaky", 1, now)
        delays.append(sup.next_deadline() - now)
        now = sup.next_deadline()
        assert sup.due(now - 0.01) == [] and sup.due(now) == ["flaky"]
        sup.started("flaky")
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]
    assert sup.exited("flaky", 1, now) == "node 'flaky' exited (exit code 1): gave up after 10 respawns"
    assert not sup.stopping and not sup.finished() and sup.exit_code() == 1  # 'steady' still runs
    sup.exited("steady", 0, now + 1)
    assert sup.finished()


def test_supervisor_stops_the_graph_when_a_required_node_exits():
    sup = Supervisor([spec("a", required=True), spec("b")], now=0.0)
    for n in sup.due(0.0):
        sup.started(n)
    assert sup.exited("a", 0, 1.0) == "node 'a' exited (exit code 0): it is required, so the graph stops"
    assert sup.stopping and sup.exit_code() == 0
    sup2 = Supervisor([spec("a", required=True)], now=0.0)
    sup2.started("a")
    sup2.exited("a", 2 + 1, 1.0)
    assert sup2.exit_code() == 1


def test_a_required_exit_while_a_sibling_waits_to_respawn_cancels_the_respawn():
    sup = Supervisor([spec("a", required=True), spec("b", respawn_max=3, respawn_delay=1.0)], now=0.0)
    for n in sup.due(0.0):
        sup.started(n)
    assert "respawn 1 of 3" in sup.exited("b", 1, 1.0)
    assert sup.exited("a", 1, 1.5).endswith("it is required, so the graph stops")
    assert sup.due(100.0) == [] and sup.exit_code() == 1


def test_a_stop_during_start_starts_nothing_more_and_respawns_nothing():
    """SIGTERM after the first of three nodes started: the other two never start; the started
    one's exit during the stop is reported as it is, without a respawn."""
    sup = Supervisor([spec("a", respawn_max=5), spec("b"), spec("c")], now=0.0)
    assert sup.due(0.0) == ["a", "b", "c"]
    sup.started("a")
    sup.request_stop("received SIGTERM")
    assert sup.due(0.0) == [] and sup.due(50.0) == []
    assert sup.exited("a", -15, 0.2) == "node 'a' exited (killed by SIGTERM (exit code 143))"
    assert sup.nodes["a"].next_start is None and sup.stop_reason == "received SIGTERM" and sup.exit_code() == 0
    sup.request_stop("ran for 5 s")  # the first reason stands
    assert sup.stop_reason == "received SIGTERM"


def test_supervisor_never_respawns_a_node_that_failed_setup():
    sup = Supervisor([spec("a", respawn_max=5)], now=0.0)
    sup.started("a")
    assert sup.exited("a", 3, 1.0) == "node 'a' exited (exit code 3): it could not start, so the graph stops"
    assert sup.due(100.0) == [] and sup.exit_code() == 1


def test_supervisor_ends_the_graph_when_the_last_node_ends_cleanly():
    sup = Supervisor([spec("a", node_class=None, cmd=["true"])], now=0.0)
    sup.started("a")
    assert sup.exited("a", 0, 1.0) == "node 'a' exited (exit code 0)"
    assert sup.finished() and sup.exit_code() == 0


def test_a_node_that_cannot_be_started_is_reported_like_a_shell_and_can_be_respawned():
    sup = Supervisor([spec("a", node_class=None, cmd=["nope"], respawn_max=1)], now=0.0)
    sup.started("a")
    assert sup.exited("a", 127, 0.0) == "node 'a' exited (exit code 127): respawn 1 of 1 in 1 s"


class SimulatedTime:
    """A clock that moves only when the stop sequence waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("obeys", [True, False])
def test_the_stop_sequence_is_polite_first_and_forced_after_the_grace_period(obeys):
    """A process group that stops at the polite signal after 1.2 s, or ignores it: the forced
    one comes only after STOP_TIMEOUT of simulated time, and only when needed."""
    t, sent, killed = SimulatedTime(), [], []
    state = {"alive": True}

    def send(force: bool) -> None:
        sent.append((force, round(t.now, 2)))
        if force:
            state["alive"] = False

    def alive() -> bool:
        if obeys and sent and t.now >= 1.2:
            state["alive"] = False
        return state["alive"]

    terminate_then_kill(send, alive, t.wait, on_kill=lambda: killed.append(round(t.now, 2)), clock=t)
    if obeys:
        assert sent == [(False, 0.0)] and killed == [] and 1.2 <= t.now < 1.3
    else:
        assert [force for force, _at in sent] == [False, True] and sent[0][1] == 0.0 and killed == [sent[1][1]]
        assert STOP_TIMEOUT <= sent[1][1] < STOP_TIMEOUT + 0.1  # the forced stop only after the grace period


def test_the_stop_sequence_does_nothing_when_nothing_runs():
    t, sent = SimulatedTime(), []
    terminate_then_kill(sent.append, lambda: False, t.wait, clock=t)
    assert sent == [] and t.now == 0.0


class FakeProcess:
    """What Children needs of a Popen: a pid and a pipe of output."""

    def __init__(self, argv, **kwargs) -> None:
        self.argv, self.kwargs = argv, kwargs
        self.pid = 4_000_000  # above any pid_max: nothing is ever signalled here
        read, self.write_end = os.pipe()
        self.stdout = os.fdopen(read, "rb")


def _children(tmp_path, popen, cmd="[./robot-driver, --port, /dev/ttyUSB0]"):
    (tmp_path / "g.yaml").write_text(f"name: g\nnodes:\n  driver:\n    cmd: {cmd}\n")
    graph = load_launch_file(tmp_path / "g.yaml")
    out, said = io.StringIO(), []
    return Children(graph, tmp_path, Printer(list(graph.nodes), stream=out, colour=False), said.append, popen=popen), out, said


def test_a_node_is_started_through_the_injected_constructor_and_its_output_printed(tmp_path):
    made = []

    def popen(argv, **kwargs):
        made.append(FakeProcess(argv, **kwargs))
        return made[-1]

    children, out, said = _children(tmp_path, popen)
    assert children.spawn("driver") == 4_000_000 and said == []
    proc = made[0]
    assert proc.argv == ["./robot-driver", "--port", "/dev/ttyUSB0"] and proc.kwargs["cwd"] == tmp_path
    assert proc.kwargs["stdin"] is not None and proc.kwargs["close_fds"] is True
    os.write(proc.write_end, b"port open\n")
    os.close(proc.write_end)
    children.running["driver"].reader.join(5)
    children.pump(0)
    assert "driver" in out.getvalue() and "port open" in out.getvalue()
    proc.stdout.close()


def test_a_node_whose_program_cannot_start_is_said_in_one_line(tmp_path):
    def popen(argv, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    children, _out, said = _children(tmp_path, popen)
    assert children.spawn("driver") is None
    assert said == ["node 'driver': cannot start './robot-driver': No such file or directory"]
    assert children.running == {}
