"""A graph across machines over Zenoh: two "hosts" on this machine (network namespaces joined by
a veth pair, a private /dev/shm each), real launchers, real bridges, real zenoh over TCP/TLS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netns import TwoHosts, why_not, write

pytest.importorskip("zenoh", reason="the 'bridge' extra is not installed (uv pip install -e '.[bridge]')")

REASON = why_not()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"two hosts cannot be made here: {REASON}")
TESTS = Path(__file__).resolve().parent
PORT = 7447


@pytest.fixture
def hosts():
    pair = TwoHosts()
    try:
        yield pair
    finally:
        pair.close()


class Graph:
    """A launcher running in one host, its output in a file."""

    def __init__(self, host, launch_file: Path, log: Path) -> None:
        self.host, self.log = host, log
        self.out = open(log, "w")  # noqa: SIM115 (closed in stop)
        env = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        self.proc = subprocess.Popen(host.command(sys.executable, "-m", "shmlaunch.launch.cli", str(launch_file), "--no-status"),
                                     stdout=self.out, stderr=subprocess.STDOUT, env=env, cwd=launch_file.parent)

    def text(self) -> str:
        return self.log.read_text()

    def tool(self, *args: str) -> subprocess.CompletedProcess:
        """A shmlaunch command run beside this graph (its network and /dev/shm)."""
        return subprocess.run(self.host.enter(self.proc.pid, sys.executable, "-m", "shmlaunch.launch.cli", *args),
                              capture_output=True, text=True, timeout=30)

    def node_pid(self, node: str) -> int:
        for pid in self.host.pids():
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"SHMLAUNCH_NODE={node}".encode() in env:
                return pid
        raise AssertionError(f"no process of node {node!r} in {self.host.ns}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        finally:
            self.out.close()
        return code


def lines(path: Path, port: str | None = None) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [r for r in rows if port is None or r["port"] == port]


def wait_for(predicate, timeout: float, what: str, graphs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    logs = "\n".join(f"--- {g.log.name}\n{g.text()[-3000:]}" for g in graphs)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def robot_file(tmp_path: Path, hosts, *, export: str, topics: str = "", nodes: str = "") -> Path:
    return write(tmp_path / "robot.yaml", f"""name: robot
topics:
{topics}
nodes:
{nodes}
bridge:
  host: robot
  listen: [tcp/{hosts.a.addr}:{PORT}]
  export:
{export}
""")


def laptop_file(tmp_path: Path, hosts, probe: Path, *, topics: str, imports: str, subscribe: str) -> Path:
    return write(tmp_path / "laptop.yaml", f"""name: laptop
topics:
{topics}
nodes:
  probe:
    node: graph_nodes:Probe
    params: {{path: {probe}}}
    subscribe: {{{subscribe}}}
bridge:
  host: laptop
  connect: [tcp/{hosts.a.addr}:{PORT}]
  import:
{imports}
""")


HANDS_ROBOT = dict(
    topics="""  camera/image: {dtype: uint8, shape: [480, 640, 3], pool: 4}
  hands/landmarks: {capacity: 2096, pool: 8}""",
    nodes="""  camera:
    node: shmlaunch.nodes.camera:Camera
    params: {fps: 10}
    publish: {image: camera/image}
  hands:
    node: shmlaunch.nodes.hands:HandLandmarks
    params: {max_num_hands: 2, model_complexity: 0, static_image_mode: true}
    subscribe: {image: camera/image}
    publish: {landmarks: hands/landmarks}""",
    export="""    hands/landmarks: {}
    camera/image: {encode: jpeg, quality: 80}""",
)
HANDS_LAPTOP = dict(
    topics="""  camera/image: {dtype: uint8, shape: [480, 640, 3], pool: 4}
  hands/landmarks: {capacity: 2096, pool: 8}""",
    imports="""    robot/hands/landmarks: {}
    robot/camera/image: {host: robot}""",
    subscribe="landmarks: hands/landmarks, image: camera/image",
)


def test_a_consumer_on_another_host_gets_landmarks_and_jpeg_frames_in_order_and_survives_a_bridge_restart(hosts, tmp_path):
    pytest.importorskip("mediapipe", reason="MediaPipe is not installed (the 'hands' extra)")
    probe = tmp_path / "probe.jsonl"
    robot = Graph(hosts.a, robot_file(tmp_path, hosts, **HANDS_ROBOT), tmp_path / "robot.log")
    laptop = Graph(hosts.b, laptop_file(tmp_path, hosts, probe, **HANDS_LAPTOP), tmp_path / "laptop.log")
    graphs = (robot, laptop)
    try:
        wait_for(lambda: len(lines(probe, "landmarks")) >= 10 and len(lines(probe, "image")) >= 10, 90, "landmarks and frames on B", graphs)
        got = lines(probe)
        for port, dtype, shape, nbytes in (("landmarks", "uint8", [2096], 2096), ("image", "uint8", [480, 640, 3], 480 * 640 * 3)):
            rows = [r for r in got if r["port"] == port]
            assert all((r["dtype"], r["shape"], r["nbytes"]) == (dtype, shape, nbytes) for r in rows), rows[:2]
            seqs = [r["seq"] for r in rows]
            assert seqs == sorted(set(seqs)), f"{port}: out of order or repeated: {seqs}"
            assert all(r["stamp_ns"] <= r["received_ns"] for r in rows)
        frames = {r["seq"]: r for r in got if r["port"] == "image"}
        # the remote numbering and stamps travel: a landmark message names its frame, with that frame's capture stamp
        linked = [r for r in got if r["port"] == "landmarks" and r["source_seq"] in frames]
        assert linked and all(r["stamp_ns"] == frames[r["source_seq"]]["stamp_ns"] for r in linked)
        assert all(r["mean"] > 0 for r in frames.values()), "a frame arrived black: the JPEG did not decode into the slot"

        # operator views on B: what A exports, and the bridge's traffic
        remote = laptop.tool("topic", "list", "--remote")
        assert remote.returncode == 0 and "robot" in remote.stdout and "hands/landmarks" in remote.stdout, remote.stdout + remote.stderr
        status = laptop.tool("bridge", "status")
        assert status.returncode == 0, status.stderr
        assert "robot/hands/landmarks" in status.stdout and "importing" in status.stdout and "peers: none" not in status.stdout
        listing = laptop.tool("topic", "list")
        assert "bridge from robot" in listing.stdout, listing.stdout

        # A's bridge killed: the launcher restarts it and B's landmarks flow again
        before = len(lines(probe, "landmarks"))
        os.kill(robot.node_pid("bridge"), signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: len(lines(probe, "landmarks")) > before + 3, 30, "landmarks after A's bridge restarted", graphs)
        recovered = time.monotonic() - killed
        assert recovered < 15, f"took {recovered:.1f} s"
    finally:
        codes = [g.stop() for g in graphs]
    assert codes == [0, 0], (codes, robot.text()[-2000:], laptop.text()[-2000:])
    assert "node 'bridge'" in robot.text() and "respawn 1 of" in robot.text(), robot.text()[-2000:]


FRAMES_ROBOT = dict(
    topics="  camera/image: {dtype: uint8, shape: [720, 1280, 3], pool: 4}",
    nodes="""  camera:
    node: shmlaunch.nodes.camera:Camera
    params: {fps: 10}
    publish: {image: camera/image}""",
)
FRAMES_LAPTOP = dict(
    topics="  camera/image: {dtype: uint8, shape: [720, 1280, 3], pool: 4}",
    imports="    robot/camera/image: {}",
    subscribe="image: camera/image",
)


@pytest.mark.parametrize("encode", ["raw", "jpeg"])
def test_a_100_mbit_link_drops_raw_720p_frames_says_so_once_and_jpeg_gets_through(hosts, tmp_path, encode):
    pytest.importorskip("cv2", reason="OpenCV is not installed (the 'hands' extra)")
    hosts.a.shape("100mbit")
    probe = tmp_path / "probe.jsonl"
    export = "    camera/image: {encode: jpeg, quality: 80}" if encode == "jpeg" else "    camera/image: {}"
    robot = Graph(hosts.a, robot_file(tmp_path, hosts, export=export, **FRAMES_ROBOT), tmp_path / "robot.log")
    laptop = Graph(hosts.b, laptop_file(tmp_path, hosts, probe, **FRAMES_LAPTOP), tmp_path / "laptop.log")
    try:
        if encode == "jpeg":
            wait_for(lambda: len(lines(probe, "image")) >= 20, 60, "JPEG frames over 100 Mbit", (robot, laptop))
            assert "none arrived" not in laptop.text()
        else:
            wait_for(lambda: "none arrived" in laptop.text(), 60, "the bridge to say that nothing arrives", (robot, laptop))
            time.sleep(6)  # a second silence check passes: said once
            assert laptop.text().count("none arrived") == 1
            assert "encode: jpeg" in laptop.text() and len(lines(probe, "image")) <= 2
    finally:
        for g in (robot, laptop):
            g.stop()


def test_an_import_whose_layout_differs_is_refused_naming_both_sides(hosts, tmp_path):
    probe = tmp_path / "probe.jsonl"
    robot = Graph(hosts.a, robot_file(tmp_path, hosts, export="    camera/image: {}", **FRAMES_ROBOT), tmp_path / "robot.log")
    laptop_topics = "  camera/image: {dtype: uint8, shape: [480, 640, 3], pool: 4}"
    laptop = Graph(hosts.b, laptop_file(tmp_path, hosts, probe, **{**FRAMES_LAPTOP, "topics": laptop_topics}), tmp_path / "laptop.log")
    try:
        wait_for(lambda: "refused" in laptop.text(), 60, "the mismatch to be refused", (robot, laptop))
        line = next(ln for ln in laptop.text().splitlines() if "refused" in ln)
        assert "shape=[720, 1280, 3]" in line and "shape=[480, 640, 3]" in line and "robot" in line, line
        time.sleep(2)
        assert lines(probe) == []
    finally:
        for g in (robot, laptop):
            g.stop()


def _certificates(d: Path, addr: str) -> dict[str, Path]:
    """A CA, and a certificate for each host signed by it (the robot's names its address)."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=shmlaunch test CA")
    for name in ("robot", "laptop"):
        (d / f"{name}.ext").write_text(f"subjectAltName=IP:{addr},DNS:{name}\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.pem",
            "-days", "2", "-extfile", f"{name}.ext")
    return {p.name: p for p in d.iterdir()}


def _tls_config(path: Path, certs: dict[str, Path], name: str | None, *, listen: str | None = None, connect: str | None = None) -> Path:
    tls = {"root_ca_certificate": str(certs["ca.pem"]), "enable_mtls": True, "verify_name_on_connect": False}
    if name is not None:
        tls.update({"listen_private_key": str(certs[f"{name}.key"]), "listen_certificate": str(certs[f"{name}.pem"]),
                    "connect_private_key": str(certs[f"{name}.key"]), "connect_certificate": str(certs[f"{name}.pem"])})
    doc = {"mode": "peer", "scouting": {"multicast": {"enabled": False}}, "transport": {"link": {"tls": tls}}}
    if listen:
        doc["listen"] = {"endpoints": [listen]}
    if connect:
        doc["connect"] = {"endpoints": [connect]}
    return write(path, json.dumps(doc, indent=1))


@pytest.mark.parametrize("laptop_has_certificate", [True, False])
def test_mutual_tls_connects_with_certificates_and_says_why_not_without(hosts, tmp_path, laptop_has_certificate):
    certs = _certificates(tmp_path, hosts.a.addr)
    endpoint = f"tls/{hosts.a.addr}:{PORT}"
    _tls_config(tmp_path / "robot.json5", certs, "robot", listen=endpoint)
    _tls_config(tmp_path / "laptop.json5", certs, "laptop" if laptop_has_certificate else None, connect=endpoint)
    probe = tmp_path / "probe.jsonl"
    robot_yaml = write(tmp_path / "robot.yaml", """name: robot
topics:
  small: {dtype: int64, shape: [1], pool: 4}
nodes:
  counter:
    node: graph_nodes:Counter
    params: {rate: 20.0}
    publish: {out: small}
bridge:
  host: robot
  config: robot.json5
  export:
    small: {}
""")
    laptop_yaml = write(tmp_path / "laptop.yaml", f"""name: laptop
topics:
  small: {{dtype: int64, shape: [1], pool: 4}}
nodes:
  probe:
    node: graph_nodes:Probe
    params: {{path: {probe}}}
    subscribe: {{small: small}}
bridge:
  host: laptop
  config: laptop.json5
  import:
    robot/small: {{}}
""")
    robot = Graph(hosts.a, robot_yaml, tmp_path / "robot.log")
    laptop = Graph(hosts.b, laptop_yaml, tmp_path / "laptop.log")
    try:
        if laptop_has_certificate:
            wait_for(lambda: len(lines(probe, "small")) >= 10, 60, "messages over mTLS", (robot, laptop))
        else:
            wait_for(lambda: "no peer has connected" in laptop.text(), 60, "the bridge to say it has no peer", (robot, laptop))
            said = next(ln for ln in laptop.text().splitlines() if "no peer has connected" in ln)
            assert "TLS" in said and "certificate" in said and lines(probe) == []
    finally:
        for g in (robot, laptop):
            g.stop()


def test_an_exporter_restarted_with_another_layout_is_caught_mid_run(hosts, tmp_path):
    """The laptop does not declare the topic: its bridge creates it from the robot's description;
    when the robot comes back with another shape, the layout hash in the samples says so."""
    def robot_yaml(shape: int) -> Path:
        return write(tmp_path / f"robot{shape}.yaml", f"""name: robot
topics:
  vec: {{dtype: float32, shape: [{shape}], pool: 4}}
nodes:
  scene:
    node: graph_nodes:Scene
    params: {{rate: 20.0}}
    publish: {{vector: vec}}
bridge:
  host: robot
  listen: [tcp/{hosts.a.addr}:{PORT}]
  export:
    vec: {{}}
""")
    laptop_yaml = write(tmp_path / "laptop.yaml", f"""name: laptop
nodes:
  idle: {{cmd: [sleep, "3600"]}}
bridge:
  host: laptop
  connect: [tcp/{hosts.a.addr}:{PORT}]
  import:
    robot/vec: {{}}
""")
    robot = Graph(hosts.a, robot_yaml(16), tmp_path / "robot.log")
    laptop = Graph(hosts.b, laptop_yaml, tmp_path / "laptop.log")
    try:
        wait_for(lambda: "importing robot/vec" in laptop.text(), 60, "the import to start", (robot, laptop))
        listed = laptop.tool("topic", "list")
        assert "float32[16]" in listed.stdout, listed.stdout
        robot.stop()
        robot = Graph(hosts.a, robot_yaml(8), tmp_path / "robot2.log")
        wait_for(lambda: "layout changed mid-run" in laptop.text() and "refused" in laptop.text(), 60, "the change to be caught",
                 (robot, laptop))
        said = [ln for ln in laptop.text().splitlines() if "refused" in ln or "cannot open topic 'vec'" in ln]
        assert said and "capacity is 32" in said[-1] and "64" in said[-1], said
    finally:
        for g in (robot, laptop):
            g.stop()
