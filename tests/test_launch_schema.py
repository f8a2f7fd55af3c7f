"""Launch files: every kind of bad file gets the right one-line error; supervision rules replayed."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shmlaunch.launch import LaunchFileError, Printer, check_graph, load_launch_file, parse_launch_args
from shmlaunch.launch._schema import parse_cpu_list

TESTS = Path(__file__).parent
NODE = f"    node: graph_nodes:Counter\n    env: {{PYTHONPATH: {TESTS}}}\n"

GOOD = f"""name: g
topics:
  numbers: {{dtype: int64, shape: [1]}}
nodes:
  counter:
    node: graph_nodes:Counter
    publish: {{out: numbers}}
    env: {{PYTHONPATH: {TESTS}}}
"""

BAD_FILES = [
    ("name: g\nnodes: [\n", r"^{f}:3: invalid YAML: expected the node content, but found '<stream end>'$"),
    ("name: g\nnodes:\n  a:\n    node: x:Y\n    node: z:W\n", r"^{f}:5: invalid YAML: duplicate key 'node'$"),
    ("- just\n- a list\n", r"^{f}:1: a launch file is a mapping with args, bridge, include, name, nodes, record, topics; got a list$"),
    ("name: g\ntopcs: {}\nnodes:\n  a: {cmd: [true]}\n",
     r"^{f}:2: unknown key 'topcs' in the launch file \(allowed: args, bridge, include, name, nodes, record, topics\)$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nrecord: run.bag\n", r"^{f}:4: record: 'file' must be a file name ending in \.mcap, got 'run\.bag'$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nrecord:\n  file: r.mcap\n  topics: [nope]\n",
     r"^{f}:6: record: topic 'nope' is not declared under 'topics:' \(declared: none\)$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nrecord:\n  file: r.mcap\n  compression: gzip\n",
     r"^{f}:6: record: 'compression' must be one of none, lz4, zstd, got 'gzip'$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nrecord:\n  file: r.mcap\n  split_size: -3\n",
     r"^{f}:6: record: 'split_size' must be a positive number, got -3$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nrecord:\n  file: r.mcap\n  serve: 70000\n",
     r"^{f}:6: record: 'serve' must be a TCP port \(1-65535\), got 70000$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nrecord:\n  file: r.mcap\n  fps: 3\n",
     r"^{f}:6: unknown key 'fps' in 'record' \(allowed: compression, file, serve, split_duration, split_size, topics\)$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nbridge:\n  export: {nope: {}}\n",
     r"^{f}:5: bridge: export 'nope': not a topic of this graph \(declared: none\)$"),
    ("name: g\ntopics:\n  t: {capacity: 64}\nnodes:\n  a: {cmd: [true]}\nbridge:\n  export:\n    t: {encode: jpeg}\n",
     r"^{f}:8: bridge: export 't': 'encode: jpeg' needs a uint8 \[height, width, 3\] topic$"),
    ("name: g\ntopics:\n  t: {capacity: 64}\nnodes:\n  a: {cmd: [true]}\nbridge:\n  connect: [10.0.0.1:7447]\n  export: {t: {}}\n",
     r"^{f}:7: bridge: 'connect' must be a list of zenoh endpoints such as tcp/10.0.0.2:7447, got \['10.0.0.1:7447'\]$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nbridge:\n  import: {landmarks: {}}\n",
     r"^{f}:5: bridge: import 'landmarks': name it <graph>/<topic> \(invalid topic name ''"),
    ("name: g\ntopics:\n  t: {capacity: 64}\nnodes:\n  a: {cmd: [true]}\nbridge:\n  export: {t: {rate: 0}}\n",
     r"^{f}:7: bridge: export 't': 'rate' must be messages per second > 0, got 0$"),
    ("name: g\ntopics:\n  t: {capacity: 64}\nnodes:\n  a: {cmd: [true]}\nbridge:\n  export: {t: {}}\n  import: {h/t: {}}\n",
     r"^{f}:8: bridge: topic 't' is both exported and imported: a loop$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nbridge:\n  mode: star\n  import: {h/t: {}}\n",
     r"^{f}:5: bridge: 'mode' must be one of peer, client, router, got 'star'$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nbridge:\n  host: robot\n", r"^{f}:4: bridge: nothing to export or import"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nbridge:\n  connect: [tls/10.0.0.1:7447]\n  tls: {ca: nope.pem, certificate: bad.yaml, key: bad.yaml, "
     "peers: [laptop]}\n  import: {h/t: {}}\n", r"^{f}:6: bridge: tls 'ca' must name a PEM file, '.*nope\.pem' is not one$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nbridge:\n  connect: [tls/10.0.0.1:7447]\n  tls: {ca: bad.yaml, certificate: bad.yaml, key: bad.yaml, "
     "peers: [a b]}\n  import: {h/t: {}}\n",
     r"^{f}:6: bridge: tls 'peers' must list the host names \(certificate common names\) allowed to connect, got \['a b'\]$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nbridge:\n  connect: [tcp/10.0.0.1:7447]\n  tls: {ca: bad.yaml, certificate: bad.yaml, key: bad.yaml, "
     "peers: [laptop]}\n  import: {h/t: {}}\n",
     r"^{f}:6: bridge: with 'tls', every listen/connect endpoint must be tls/ or quic/, got 'tcp/10\.0\.0\.1:7447'$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nbridge:\n  max_topic_mb: 0\n  import: {h/t: {}}\n",
     r"^{f}:5: bridge: 'max_topic_mb' must be megabytes > 0, got 0$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\nbridge:\n  import: {h/t: {max_age: -1}}\n",
     r"^{f}:5: bridge: import 'h/t': 'max_age' must be seconds >= 0, got -1$"),
    ("name: g\nnodes:\n  mcap-recorder: {cmd: [true]}\nrecord: r.mcap\n",
     r"^{f}:4: 'record' runs a node named 'mcap-recorder', and the graph has one already \({f}:3\): one recording per graph$"),
    ("name: a b\nnodes:\n  a: {cmd: [true]}\n", r"^{f}:1: 'name' must be the graph's name \(1 to 100 letters, digits, '_', '-'\), got 'a b'$"),
    ("name: g\nnodes: {}\n", r"^{f}:1: the launch file declares no nodes$"),
    ("name: g\nnodes:\n  a: {cmd: [true], node: 'x:Y'}\n", r"^{f}:3: node 'a': give exactly one of 'node' \(module:Class\) or 'cmd' \(a command\)$"),
    ("name: g\nnodes:\n  a: {node: not_a_class_path}\n", r"^{f}:3: node 'a': 'node' must be 'module:Class', got 'not_a_class_path'$"),
    ("name: g\nnodes:\n  a:\n    cmd: [true]\n    respwn: true\n",
     r"^{f}:5: unknown key 'respwn' in node 'a' \(allowed: cmd, cpus, cwd, env, nice, node, params, publish, replicas, required, "
     r"respawn, subscribe\)$"),
    ("name: g\nnodes:\n  a:\n    cmd: [true]\n    respawn: {max: -1}\n", r"^{f}:5: node 'a': respawn max must be a whole number >= 0, got -1$"),
    ("name: g\nnodes:\n  a:\n    cmd: [true]\n    required: yes please\n", r"^{f}:5: node 'a': 'required' must be true or false, got 'yes please'$"),
    ("name: g\ntopics:\n  t: {capacity: 64, pool: 0}\nnodes:\n  a: {cmd: [true]}\n", r"^{f}:3: topic 't': invalid pool size 0: 1 to 256 slots$"),
    ("name: g\ntopics:\n  t: {pool: 2}\nnodes:\n  a: {cmd: [true]}\n", r"^{f}:3: topic 't': needs 'capacity' \(bytes\) or 'dtype' and 'shape'$"),
    ("name: g\ntopics:\n  ../etc: {capacity: 8}\nnodes:\n  a: {cmd: [true]}\n", r"^{f}:3: topics: invalid topic name '\.\./etc': use letters"),
    ("name: g\ntopics:\n  t: {dtype: uint9, shape: [2]}\nnodes:\n  a: {cmd: [true]}\n", r"^{f}:3: topic 't': data type 'uint9' not understood$"),
    ("name: g\nnodes:\n  a:\n    cmd: [true]\n    publish: {out: a//b}\n", r"^{f}:5: node 'a' port 'out': invalid topic name 'a//b'"),
    ("name: g\nnodes:\n  a:\n    cmd: [echo, $(arg who)]\n",
     r"^{f}:4: \.nodes\.a\.cmd: unknown launch argument 'who' in '\$\(arg who\)' \(declare it under 'args:'\)$"),
    ("name: g\nnodes:\n  a: {cmd: []}\n", r"^{f}:3: node 'a': 'cmd' must be a non-empty list of strings, got \[\]$"),
    ("name: g\nnodes:\n  a:\n    cmd: [true]\n    params: {x: 1}\n", r"^{f}:5: node 'a': 'params' are for Python nodes; pass arguments in 'cmd'$"),
    ("name: g\ninclude:\n  - {namespace: x}\nnodes:\n  a: {cmd: [true]}\n",
     r"^{f}:3: include: each entry needs 'file' \(and optionally 'namespace', 'args'\), got \{'namespace': 'x'\}$"),
    ("name: g\nnodes:\n  a: {cmd: [true]}\n  a: {cmd: [false]}\n", r"^{f}:4: invalid YAML: duplicate key 'a'$"),
    ("name: g\nnodes:\n  a:\n    cmd: [true]\n    cpus: [zero]\n",
     r"^{f}:5: node 'a': cpus must be a list of CPU numbers, a cpuset string such as '0-3,6', or 'all'; got \['zero'\]$"),
    ("name: g\nnodes:\n  a:\n    cmd: [true]\n    cpus: 3-1\n", r"^{f}:5: node 'a': cpus: range '3-1' runs backwards$"),
    ("name: g\nnodes:\n  a:\n    cmd: [true]\n    nice: 20\n", r"^{f}:5: node 'a': nice must be a whole number from -20 to 19, got 20$"),
]


@pytest.mark.parametrize("text,pattern", BAD_FILES, ids=[f"bad{i}" for i in range(len(BAD_FILES))])
def test_bad_launch_file_gives_one_line_naming_file_and_line(tmp_path, text, pattern):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(LaunchFileError) as info:
        load_launch_file(path)
    assert len(info.value.problems) == 1, info.value.problems
    assert re.match(pattern.replace("{f}", re.escape(str(path))), info.value.problems[0]), info.value.problems[0]


def test_missing_launch_file_is_named():
    with pytest.raises(LaunchFileError, match=r"^/no/such\.yaml: no such launch file$"):
        load_launch_file("/no/such.yaml")


CHECK_CASES = [
    (GOOD.replace("{out: numbers}", "{out: numbrs}"),
     r"node 'counter' port 'out' uses topic 'numbrs', which the topics section does not declare$"),
    (GOOD.replace("graph_nodes:Counter", "graph_nodes:Nope"),
     r"node 'counter': cannot import node class 'graph_nodes:Nope': module 'graph_nodes' has no attribute 'Nope'$"),
    (GOOD.replace("graph_nodes:Counter", "no_such_module:Counter"),
     r"node 'counter': cannot import node class 'no_such_module:Counter': no module named 'no_such_module' \(looked in .+, "
     r"then the installed packages\)$"),
    (GOOD.replace("    publish:", "    params: {rte: 5}\n    publish:"),
     r"node 'counter' \(graph_nodes:Counter\) has no parameter 'rte'; it has: rate$"),
    (GOOD.replace("    publish:", "    params: {rate: fast}\n    publish:"),
     r"parameter 'rate' of node 'counter' must be float, got 'fast' \(str\)$"),
    (GOOD.replace("dtype: int64", "dtype: float32"),
     r"node 'counter' publishes port 'out' with dtype int64, but topic 'numbers' \(.*:3\) has dtype float32$"),
    (GOOD.replace("{out: numbers}", "{out: {topic: numbers, shape: [2]}}"),
     r"node 'counter' publishes port 'out' with shape \[2\], but topic 'numbers' \(.*:3\) has shape \[1\]$"),
    (GOOD + "    cpus: 0,4095\n",
     r"node 'counter': cpus 4095 are not available here \(this launcher may use CPUs [0-9, ]+\)$"),
    (GOOD + "  second:\n    cmd: [true]\n    publish: {x: numbers}\n",
     r"topic 'numbers' has two publishers, nodes 'counter' and 'second'; a topic has exactly one writer$"),
]


@pytest.mark.parametrize("text,pattern", CHECK_CASES, ids=[f"check{i}" for i in range(len(CHECK_CASES))])
def test_preflight_check_names_every_disagreement(tmp_path, text, pattern):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    errors, _ = check_graph(load_launch_file(path))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{path}:")
    assert re.search(pattern, errors[0]), errors[0]


def test_check_command_prints_every_problem_and_exits_2(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GOOD.replace("{out: numbers}", "{out: numbrs}").replace("    publish:", "    params: {rte: 5}\n    publish:"))
    res = subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", "check", str(path)], capture_output=True, text=True)
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("shmlaunch: error:")]
    assert len(errors) == 2


def test_check_command_accepts_a_consistent_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GOOD)
    res = subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", "check", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "graph 'g' is consistent: 1 nodes, 1 topics" in res.stdout


def test_cpu_lists_read_as_taskset_and_systemd_write_them():
    assert parse_cpu_list("0-2,5") == (0, 1, 2, 5)
    assert parse_cpu_list([3, 1, 3]) == (3, 1)
    assert parse_cpu_list(2) == (2,)
    assert parse_cpu_list("all") == tuple(sorted(os.sched_getaffinity(0)))


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_a_priority_the_launcher_may_not_give_is_refused_before_anything_starts(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GOOD + "    nice: -5\n")
    # without CAP_SYS_NICE (and with the usual RLIMIT_NICE of 0) a negative nice would fail in the child
    res = subprocess.run(["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", sys.executable, "-m", "shmlaunch.launch.cli",
                          "check", str(path)], capture_output=True, text=True)
    if "setpriv:" in res.stderr:
        pytest.skip(f"cannot drop CAP_SYS_NICE here: {res.stderr.strip()}")
    assert res.returncode == 2, res.stdout + res.stderr
    assert re.search(r"node 'counter': nice -5 is a higher priority than this launcher's \([-0-9]+\) and raising it needs root, "
                     r"CAP_SYS_NICE or RLIMIT_NICE$", res.stderr.strip()), res.stderr


def test_launch_arguments_are_substituted_with_their_yaml_type(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GOOD.replace("name: g\n", "name: g\nargs: {rate: 5.0, label: x}\n").replace(
        "    publish:", "    params: {rate: $(arg rate)}\n    publish:"))
    graph = load_launch_file(path, parse_launch_args(["rate:=7.5"]))
    assert graph.nodes["counter"].params == {"rate": 7.5}
    with pytest.raises(LaunchFileError, match=r"launch argument 'rat' from the command line is not declared under 'args:' "
                       r"\(declared: label, rate\)$"):
        load_launch_file(path, {"rat": 1})


def test_include_prefixes_nodes_and_topics_with_its_namespace(tmp_path):
    (tmp_path / "arm.yaml").write_text("args: {side: none}\ntopics:\n  joints: {capacity: 64}\nnodes:\n  driver:\n"
                                       "    cmd: [echo, $(arg side)]\n    publish: {out: joints}\n")
    (tmp_path / "robot.yaml").write_text("name: robot\ninclude:\n  - {file: arm.yaml, namespace: left, args: {side: L}}\n"
                                         "  - {file: arm.yaml, namespace: right, args: {side: R}}\n")
    graph = load_launch_file(tmp_path / "robot.yaml")
    assert sorted(graph.nodes) == ["left/driver", "right/driver"]
    assert sorted(graph.topics) == ["left/joints", "right/joints"]
    assert graph.nodes["left/driver"].cmd == ["echo", "L"] and graph.nodes["right/driver"].publish == {"out": "right/joints"}


def test_printer_prefixes_lines_and_survives_bad_bytes():
    out = io.StringIO()
    p = Printer(["camera", "hands"], stream=out, colour=False)
    p.feed("camera", b"first line\nsecond ")
    p.feed("camera", b"half\n\xff\xfe broken\n")
    p.feed("hands", b"no newline at the end")
    p.flush("hands")
    assert out.getvalue().splitlines() == [
        "camera   | first line", "camera   | second half", "camera   | \ufffd\ufffd broken", "hands    | no newline at the end",
    ]


def test_a_parameter_may_not_shadow_the_node_api():
    from shmlaunch.nodes import Node, Param

    with pytest.raises(TypeError, match=r"^Param 'log' of Bad shadows Node.log; give the parameter another name$"):

        class Bad(Node):
            log = Param("x")
