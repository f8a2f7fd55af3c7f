"""The first hour, second round: what a new user still hit (issue 27, items 14 and 15), each
through the command or the API they used."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_launcher import assert_nothing_left, shmlaunch, start, unique_name, wait_for

from shmlaunch.nodes import Node, Param, ParamError, resolve_params
from shmlaunch.nodes.console import Console
from shmlaunch.nodes.messages import LANDMARKS
from shmlaunch.testing import runtime_dir
from shmlaunch.transport import Reader, Writer

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).parent


def test_check_refuses_what_the_run_would_refuse_and_says_everything_at_once(tmp_path):
    res = shmlaunch("check", ROOT / "launch" / "hands.yaml", "complexity:=7")
    assert res.returncode == 2 and "parameter 'model_complexity' of node 'hands' must be one of 0, 1, got 7" in res.stderr, res.stderr
    (tmp_path / "dt.py").write_text("import numpy as np\nfrom shmlaunch.nodes import Node\n\n\nclass Pub(Node):\n"
                                    "    def setup(self):\n        self.out = self.publisher('out', dtype='float32', shape=[4])\n")
    (tmp_path / "g.yaml").write_text("name: g\ntopics:\n  t: {dtype: int64, shape: [4]}\n  bad: {capacity: 8, bogus: 1}\n"
                                     "nodes:\n  p:\n    node: dt:Pub\n    publish: {out: t}\n    whatever: 1\n"
                                     "  q:\n    node: nosuchmod:X\n    subscribe: {in: bad}\n    publish: {out: missing}\n")
    res = shmlaunch("check", "g.yaml", cwd=tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    for expected in ("unknown key 'bogus' in topic 'bad'", "unknown key 'whatever' in node 'p'",
                     "node 'p' publishes port 'out' with dtype float32, but topic 't' (g.yaml:3) has dtype int64",
                     "node 'q' port 'out' uses topic 'missing', which the topics section does not declare",
                     "cannot import node class 'nosuchmod:X'"):
        assert sum(expected in line for line in lines) == 1, (expected, lines)
    assert not any("topic 'bad'" in line and "does not declare" in line for line in lines), lines  # only wrong, not missing


def test_params_declare_choices_and_bounds_and_help_lists_them():
    class N(Node):
        mode = Param("a", "a mode", choices=("a", "b"))
        rate = Param(1.0, "a rate", low=0.0, high=10.0)

    assert resolve_params(N, "n", {"mode": "b", "rate": 10})["rate"] == 10.0
    for given, text in (({"mode": "c"}, "must be one of 'a', 'b', got 'c'"), ({"rate": -1}, "must be from 0.0 to 10.0, got -1.0")):
        with pytest.raises(ParamError, match=re.escape(text)):
            resolve_params(N, "n", given)
    from shmlaunch.nodes import describe_params

    assert "mode (str, one of 'a', 'b', default 'a'): a mode" in describe_params(N)


def test_argument_defaults_may_use_other_arguments_and_a_cycle_is_one_line(tmp_path):
    (tmp_path / "ab.yaml").write_text('name: ab\nargs:\n  a: 3\n  b: "$(arg a)"\n  c: "x-$(arg b)"\n'
                                      'nodes:\n  n: {cmd: [sh, -c, "echo got $(arg c) $(arg b)"]}\n')
    res = shmlaunch("ab.yaml", "a:=5", "--duration", "2", "--no-status", cwd=tmp_path)
    assert res.returncode == 0 and "got x-5 5" in res.stdout, res.stdout + res.stderr
    (tmp_path / "cycle.yaml").write_text('name: cy\nargs:\n  a: "$(arg b)"\n  b: "$(arg a)"\nnodes:\n  n: {cmd: [true]}\n')
    res = shmlaunch("check", "cycle.yaml", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "shmlaunch: error: cycle.yaml:3: args.a: its value '$(arg a)' refers back to itself through $(arg ...)"], res.stderr


def test_a_timeout_must_be_a_number():
    with runtime_dir() as rt, Writer("t", capacity=8, runtime_dir=rt), Reader("t", runtime_dir=rt) as r:
        with pytest.raises(TypeError, match=r"timeout must be seconds \(a number\) or None, got '1' \(str\)"):
            r.receive(timeout="1")
        assert r.receive(timeout=np.int64(0)) is None


def test_help_starts_with_what_shmlaunch_is_and_bundled_files_are_described_in_full():
    res = shmlaunch("--help")
    assert res.returncode == 0 and res.stdout.startswith("shmlaunch: a graph of processes joined by shared-memory pool topics.\n")
    assert "``" not in res.stdout
    described = {line.split()[0]: line for line in res.stdout.splitlines() if line.startswith("  hands")}
    assert all(line.rstrip().endswith((".", ")", "console.")) for line in described.values()), described


def test_record_empty_switches_the_jsonl_recorder_off(tmp_path):
    with runtime_dir() as rt:
        res = subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", "run", "shmlaunch.nodes.recorder:Recorder", "--param", "path=",
                              "--duration", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "SHMLAUNCH_RUNTIME_DIR": str(rt)})
    assert res.returncode == 0 and "recording off (path is empty)" in res.stdout + res.stderr, res.stdout + res.stderr
    assert not (tmp_path / "hands.jsonl").exists()


def test_the_console_says_for_how_long_landmarks_stopped(caplog):
    with runtime_dir() as rt:
        w = Writer("hands/landmarks", capacity=LANDMARKS.itemsize, pool=4, runtime_dir=rt)
        node = Console("console", {}, subscribe={"landmarks": "hands/landmarks"}, runtime_dir=rt)
        node.setup()
        rec = np.zeros(1, LANDMARKS)
        rec["version"], rec["capture_ns"] = 1, time.time_ns()
        w.publish(rec.view(np.uint8))
        node.spin_once(1.0)
        with caplog.at_level(logging.INFO, logger="shmlaunch.node.console"):
            node.report()
            node.since -= 2  # two seconds later, nothing new
            node.last_landmarks -= 2
            node.report()
        node.close()
        w.close()
    said = [r.getMessage() for r in caplog.records]
    assert "capture->landmarks p50" in said[0] and said[1].endswith("| no landmarks for 2 s | hands 0 | -"), said


def test_topic_echo_decodes_where_each_frame_came_from(tmp_path):
    graph = unique_name("src")
    (tmp_path / "g.yaml").write_text(f"name: {graph}\ntopics:\n  camera/image: {{dtype: uint8, shape: [48, 64, 3], pool: 4}}\n"
                                     "  camera/source: {capacity: 232, pool: 8}\nnodes:\n  camera:\n"
                                     "    node: shmlaunch.nodes.camera:Camera\n    params: {fps: 20}\n"
                                     "    publish: {image: camera/image, source: camera/source}\n")
    proc = start(tmp_path / "g.yaml", "--duration", "20", "--no-status")
    try:
        wait_for(lambda: "camera/source" in shmlaunch("topic", "list", "--graph", graph).stdout, what="the camera")
        res = shmlaunch("topic", "echo", "camera/source", "--graph", graph, "-n", "1", timeout=30)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert res.returncode == 0 and re.search(r"source of frame \d+: image folder #\d+ '.+\.jpg'", res.stdout), res.stdout + res.stderr
    assert_nothing_left(graph)


def test_the_license_is_an_spdx_expression():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert any(r.startswith("setuptools>=77") for r in project["build-system"]["requires"])


def test_the_registry_cache_never_serves_a_registry_that_changed_on_disk():
    from shmlaunch.transport import RegistryCorruptError, read_registry

    with runtime_dir() as rt:
        Writer("t", capacity=8, runtime_dir=rt).close()
        assert "t" in read_registry(rt)  # parsed and cached
        path = Path(rt) / "registry.yaml"
        with open(path, "r+b") as f:  # changed in place (same inode), as a hostile or broken writer would
            f.seek(0)
            f.write(b"garbage\n")
        with pytest.raises(RegistryCorruptError):
            read_registry(rt)
