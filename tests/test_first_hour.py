"""A new user's first hour: paths, node modules, attaching to a running graph, the README's own
examples, and the command line telling what it can do. Real processes, real /dev/shm."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_launcher import unique_name, wait_for

from shmlaunch.launch import parse_launch_args
from shmlaunch.launch._loading import launch_arguments
from shmlaunch.launch._state import running_graphs
from shmlaunch.transport import SHM_ROOT, graph_runtime_dir

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SHMLAUNCH = [sys.executable, "-m", "shmlaunch.launch.cli"]
#: The console script pip/uv installed: what a new user types (python -m puts the current
#: directory on sys.path; the script does not, so the README's examples run through it).
INSTALLED = [str(Path(sys.executable).with_name("shmlaunch"))] if Path(sys.executable).with_name("shmlaunch").exists() else SHMLAUNCH
HELLO = '''from shmlaunch.nodes import Node


class Hello(Node):
    def setup(self):
        self.log.info("hello from %s", __file__)
        self.shutdown("said hello")
'''


def shmlaunch(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*SHMLAUNCH, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def ours_in_shm() -> set[str]:
    prefix = f"shmlaunch-{os.geteuid()}-"
    return {n for n in os.listdir(SHM_ROOT) if n.startswith(prefix)}


def test_command_line_paths_are_relative_to_the_current_directory(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "frames").mkdir()
    args = parse_launch_args(["source:=clip.mp4", "record:=out.jsonl", "folder:=frames", "mode:=auto", "index:=0",
                              "url:=rtsp://cam/1", "abs:=/dev/video0", "topic:=hands/landmarks"], tmp_path)
    assert args == {"source": str(tmp_path / "clip.mp4"), "record": str(tmp_path / "out.jsonl"), "folder": str(tmp_path / "frames"),
                    "mode": "auto", "index": 0, "url": "rtsp://cam/1", "abs": "/dev/video0", "topic": "hands/landmarks"}


def test_a_source_given_on_the_command_line_is_opened_from_the_current_directory(tmp_path):
    pytest.importorskip("cv2", reason="OpenCV is not installed (the hands extra)")
    import cv2
    import numpy as np

    graphs, frames = tmp_path / "graphs", tmp_path / "frames"
    graphs.mkdir()
    frames.mkdir()
    cv2.imwrite(str(frames / "a.png"), np.full((48, 64, 3), 200, np.uint8))
    (graphs / "cam.yaml").write_text(
        "name: first-hour-cam\nargs: {source: auto}\ntopics:\n  image: {dtype: uint8, shape: [48, 64, 3]}\n"
        "nodes:\n  camera: {node: shmlaunch.nodes.camera:Camera, params: {source: $(arg source), fps: 20.0}, publish: {image: image}}\n")
    ok = shmlaunch("graphs/cam.yaml", "source:=frames", "--duration", "2", "--no-status", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"from {tmp_path / 'frames'}" in ok.stdout
    bad = shmlaunch("graphs/cam.yaml", "source:=missing.mp4", "--duration", "5", "--no-status", cwd=tmp_path)
    assert bad.returncode != 0
    assert f"cannot open camera source '{tmp_path / 'missing.mp4'}': no such file, device or folder" in bad.stdout + bad.stderr


def test_node_modules_are_found_beside_the_launch_file_then_in_the_current_directory(tmp_path):
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    (tmp_path / "hello_here.py").write_text(HELLO)
    (graphs / "g.yaml").write_text("name: first-hour-mods\nnodes:\n  hello: {node: hello_here:Hello}\n")
    res = shmlaunch("graphs/g.yaml", "--duration", "10", "--no-status", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"hello from {tmp_path / 'hello_here.py'}" in res.stdout
    (graphs / "hello_here.py").write_text(HELLO)  # beside the launch file wins over the current directory
    res = shmlaunch("graphs/g.yaml", "--duration", "10", "--no-status", cwd=tmp_path)
    assert f"hello from {graphs / 'hello_here.py'}" in res.stdout, res.stdout + res.stderr
    (graphs / "bad.yaml").write_text("name: first-hour-bad\nnodes:\n  x: {node: nowhere_module:X}\n")
    res = shmlaunch("check", "graphs/bad.yaml", cwd=tmp_path)
    assert res.returncode == 2
    assert "no module named 'nowhere_module' (looked in " in res.stderr
    assert str(graphs) in res.stderr and f"{tmp_path}," in res.stderr  # the launch file's folder, then the current directory


def readme_block(first_line: str) -> str:
    """The README code block whose first line is ``first_line``."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"README has no code block starting with {first_line!r}")


def test_the_readme_scale_example_works_as_written_and_leaves_nothing(tmp_path):
    (tmp_path / "scale.py").write_text(readme_block("# scale.py"))
    (tmp_path / "scale.yaml").write_text(readme_block("# scale.yaml"))
    command = readme_block("shmlaunch scale.yaml").strip()
    attach = next(line for line in readme_block("shmlaunch run scale:Scale").splitlines() if "--graph scale" in line)
    before = ours_in_shm()
    assert graph_runtime_dir("scale").name not in before, "a graph called 'scale' runs already"
    graph = subprocess.Popen([*INSTALLED, *command.split()[1:]], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    wait_for(lambda: any(g.name == "scale" and all(n.state == "running" for n in g.nodes.values()) for g in running_graphs()),
             what="the scale graph to be up")  # then attach a node to it by its name, as the README shows
    probe = subprocess.run([*INSTALLED, *attach.split()[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    out, _ = graph.communicate(timeout=60)
    assert graph.returncode == 0, out
    assert re.search(r"scale +\| INFO 2 -> 6\n", out), out
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert re.search(r" -> \d+00\n", probe.stdout + probe.stderr), probe.stdout + probe.stderr
    wait_for(lambda: not graph_runtime_dir("scale").exists(), 10, "the graph's directory to go with it")
    assert graph_runtime_dir("default").exists() == (graph_runtime_dir("default").name in before)  # the probe made no 'default' graph


def test_run_attaches_to_the_only_running_graph(tmp_path):
    (tmp_path / "scale.py").write_text(readme_block("# scale.py"))
    (tmp_path / "scale.yaml").write_text(readme_block("# scale.yaml"))
    graph = subprocess.Popen([*SHMLAUNCH, "scale.yaml", "--duration", "6", "--no-status"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: any(g.name == "scale" and all(n.state == "running" for n in g.nodes.values()) for g in running_graphs()),
                 what="the scale graph to be up")
        others = [g.name for g in running_graphs() if g.name != "scale"]
        if others:
            pytest.skip(f"other graphs are running now ({others}): 'the only running graph' is not testable")
        probe = shmlaunch("run", "scale:Scale", "--name", "probe2", "--param", "factor=7", "--subscribe", "in=numbers",
                          "--publish", "out=seven", "--duration", "2", cwd=tmp_path)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert re.search(r" -> \d*[17]\d*\n", probe.stdout + probe.stderr)
    finally:
        graph.send_signal(signal.SIGINT)
        graph.communicate(timeout=60)


@pytest.mark.parametrize("command", [
    ["node", "list", "--graph", "nosuch-graph"], ["topic", "list", "--graph", "nosuch-graph"], ["stop", "--graph", "nosuch-graph"],
    ["topic", "echo", "t", "--graph", "nosuch-graph"], ["run", "shmlaunch.nodes.console:Console", "--graph", "nosuch-graph"],
])
def test_every_tool_takes_the_graph_by_name(command, tmp_path):
    res = shmlaunch(*command, cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no graph 'nosuch-graph' is running" in res.stderr


def test_a_topic_that_is_not_there_names_the_directory_and_the_graphs(tmp_path):
    from shmlaunch.testing import runtime_dir
    from shmlaunch.transport import Reader, TopicNotFoundError, Writer

    with runtime_dir("first-hour-present") as rt:
        Writer("here", capacity=8, runtime_dir=rt).close()
        with pytest.raises(TopicNotFoundError) as err:
            Reader("elsewhere", runtime_dir=rt)
    text = str(err.value)
    assert f"the registry in {rt} does not list it" in text
    assert "graphs with a runtime directory: " in text and "first-hour-present" in text


def test_version_and_the_bundled_launch_files(tmp_path):
    res = shmlaunch("--version", cwd=tmp_path)
    assert res.returncode == 0 and re.fullmatch(r"shmlaunch \S+ \(segment layout 1, Python 3\.\d+\.\d+\)\n", res.stdout), res.stdout
    res = shmlaunch(cwd=tmp_path)
    assert res.returncode == 0
    assert "hands.yaml " in res.stdout and "hands_view.yaml " in res.stdout and "Bundled launch files" in res.stdout


def test_file_help_lists_its_arguments_with_defaults_and_comments(tmp_path):
    res = shmlaunch("hands.yaml", "--help", cwd=tmp_path)  # a bundled file, by its name, from any directory
    assert res.returncode == 0, res.stderr
    assert re.search(r"complexity +default 1 +0 is faster, 1 more accurate", res.stdout), res.stdout
    assert re.search(r"source +default 'auto' +auto, a device index", res.stdout)


def test_hands_view_passes_every_hands_argument_through():
    hands = {a.name: a.default for a in launch_arguments(ROOT / "launch" / "hands.yaml")}
    view = {a.name: a.default for a in launch_arguments(ROOT / "launch" / "hands_view.yaml")}
    assert {k: view.get(k) for k in hands} == hands
    include = yaml.safe_load((ROOT / "launch" / "hands_view.yaml").read_text())["include"][0]
    assert include["args"] == {k: f"$(arg {k})" for k in hands}


def test_readme_cites_nothing_outside_the_repository():
    assert not re.search(r"\bissues? ?-?\d+\b", README, re.I), re.search(r".{40}\bissues? ?-?\d+\b.{40}", README, re.I).group(0)
    assert "DESIGN.md" not in README and "shared/notes" not in README


def test_a_read_only_install_runs_the_bundled_graph_and_records_in_the_current_directory(tmp_path):
    """The package (here: the whole checkout, with its venv) read-only, as a system install is."""
    pytest.importorskip("mediapipe", reason="MediaPipe is not installed (the hands extra)")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a read-only bind mount in a private mount namespace)")
    graph = unique_name("hands")
    script = (f'mount --bind "{ROOT}" "{ROOT}" && mount -o remount,bind,ro "{ROOT}" && cd "{tmp_path}" && '
              f'exec "$0" -m shmlaunch.launch.cli hands.yaml --duration 12 --no-status --name {graph}')
    res = subprocess.run(["unshare", "-m", "sh", "-c", script, sys.executable], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"recording to {tmp_path / 'hands.jsonl'}" in res.stdout
    lines = (tmp_path / "hands.jsonl").read_text().splitlines()
    assert any('"type":"landmarks"' in line for line in lines)
    assert not graph_runtime_dir(graph).exists()
