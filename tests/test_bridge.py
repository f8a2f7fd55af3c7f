"""A graph across machines over Zenoh: two "hosts" on this machine (network namespaces joined by
a veth pair, a private /dev/shm each), real launchers, real bridges, real zenoh over TCP/TLS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from netns import SwitchedHosts, TwoHosts, why_not, write
from test_launcher import wait_for

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


def logs(graphs) -> Callable[[], str]:
    """What the graphs printed, for a failed wait."""
    return lambda: "\n".join(f"--- {g.log.name}\n{g.text()[-3000:]}" for g in graphs)


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
        wait_for(lambda: len(lines(probe, "landmarks")) >= 10 and len(lines(probe, "image")) >= 10, 90, "landmarks and frames on B",
                 detail=logs(graphs))
        got = lines(probe)
        for port, dtype, shape, nbytes in (("landmarks", "uint8", [2096], 2096), ("image", "uint8", [480, 640, 3], 480 * 640 * 3)):
            rows = [r for r in got if r["port"] == port]
            assert all((r["dtype"], r["shape"], r["nbytes"]) == (dtype, shape, nbytes) for r in rows), rows[:2]
            seqs = [r["seq"] for r in rows]
            assert seqs == sorted(set(seqs)), f"{port}: out of order or repeated: {seqs}"
            assert all(r["stamp_ns"] <= r["received_ns"] for r in rows)
        frames = {r["seq"]: r for r in got if r["port"] == "image"}
        # capture stamps travel: a landmark message carries its frame's stamp (numbers are this host's own)
        stamps = {r["stamp_ns"] for r in frames.values()}
        assert any(r["stamp_ns"] in stamps for r in got if r["port"] == "landmarks")
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
        wait_for(lambda: len(lines(probe, "landmarks")) > before + 3, 30, "landmarks after A's bridge restarted", detail=logs(graphs))
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
def test_a_100_mbit_link_carries_raw_720p_frames_at_the_rate_it_can_and_jpeg_at_the_source_rate(hosts, tmp_path, encode):
    """Raw 1280x720 frames (2.8 MB) at 10 fps need 220 Mbit/s: over 100 Mbit the newest frame
    goes whenever the previous one is through (about 4 per second), never none; JPEG all 10."""
    pytest.importorskip("cv2", reason="OpenCV is not installed (the 'hands' extra)")
    hosts.a.shape("100mbit")
    probe = tmp_path / "probe.jsonl"
    export = "    camera/image: {encode: jpeg, quality: 80}" if encode == "jpeg" else "    camera/image: {}"
    robot = Graph(hosts.a, robot_file(tmp_path, hosts, export=export, **FRAMES_ROBOT), tmp_path / "robot.log")
    laptop = Graph(hosts.b, laptop_file(tmp_path, hosts, probe, **FRAMES_LAPTOP), tmp_path / "laptop.log")
    try:
        wait_for(lambda: len(lines(probe, "image")) >= 3, 60, f"{encode} frames over 100 Mbit", detail=logs((robot, laptop)))
        first = len(lines(probe, "image"))
        time.sleep(6)  # past a silence check
        rate = (len(lines(probe, "image")) - first) / 6
        assert (rate >= 2 if encode == "raw" else rate >= 8), f"{rate:.1f} frames/s"
        assert all(r["mean"] > 0 for r in lines(probe, "image"))
        assert "none arrived" not in laptop.text()
        seqs = [r["seq"] for r in lines(probe, "image")]
        assert seqs == sorted(set(seqs))
    finally:
        for g in (robot, laptop):
            g.stop()


def test_an_import_whose_layout_differs_is_refused_naming_both_sides(hosts, tmp_path):
    probe = tmp_path / "probe.jsonl"
    robot = Graph(hosts.a, robot_file(tmp_path, hosts, export="    camera/image: {}", **FRAMES_ROBOT), tmp_path / "robot.log")
    laptop_topics = "  camera/image: {dtype: uint8, shape: [480, 640, 3], pool: 4}"
    laptop = Graph(hosts.b, laptop_file(tmp_path, hosts, probe, **{**FRAMES_LAPTOP, "topics": laptop_topics}), tmp_path / "laptop.log")
    try:
        wait_for(lambda: "refused" in laptop.text(), 60, "the mismatch to be refused", detail=logs((robot, laptop)))
        line = next(ln for ln in laptop.text().splitlines() if "refused" in ln)
        assert "shape=[720, 1280, 3]" in line and "shape=[480, 640, 3]" in line and "robot" in line, line
        time.sleep(2)
        assert lines(probe) == []
    finally:
        for g in (robot, laptop):
            g.stop()


def _certificates(d: Path, addr: str, names=("robot", "laptop")) -> dict[str, Path]:
    """A CA, and a certificate for each host signed by it (common name = the host's name)."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=shmlaunch test CA")
    for name in names:
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
            wait_for(lambda: len(lines(probe, "small")) >= 10, 60, "messages over mTLS", detail=logs((robot, laptop)))
        else:
            wait_for(lambda: "no peer has connected" in laptop.text(), 60, "the bridge to say it has no peer", detail=logs((robot, laptop)))
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
        wait_for(lambda: "importing robot/vec" in laptop.text(), 60, "the import to start", detail=logs((robot, laptop)))
        listed = laptop.tool("topic", "list")
        assert "float32[16]" in listed.stdout, listed.stdout
        robot.stop()
        robot = Graph(hosts.a, robot_yaml(8), tmp_path / "robot2.log")
        wait_for(lambda: "layout changed mid-run" in laptop.text() and "refused" in laptop.text(), 60, "the change to be caught",
                 detail=logs((robot, laptop)))
        said = [ln for ln in laptop.text().splitlines() if "refused" in ln or "cannot open topic 'vec'" in ln]
        assert said and "capacity is 32" in said[-1] and "64" in said[-1], said
    finally:
        for g in (robot, laptop):
            g.stop()


def hostile(host, tmp_path: Path, connect: list[str], *actions: str, tls: dict | None = None) -> subprocess.Popen:
    """The hostile peer (tests/bridge_hostile.py) in ``host``, dialling ``connect``; its output in a file."""
    doc = {"mode": "peer", "scouting": {"multicast": {"enabled": False}}, "connect": {"endpoints": connect},
           "listen": {"endpoints": []}, "transport": {"shared_memory": {"enabled": False}}}
    if tls:
        doc["transport"]["link"] = {"tls": tls}
    config = write(tmp_path / f"hostile{len(list(tmp_path.glob('hostile*')))}.json", json.dumps(doc))
    out = open(tmp_path / f"{config.stem}.out", "w")  # noqa: SIM115 (the process holds it)
    return subprocess.Popen(host.command(sys.executable, str(TESTS / "bridge_hostile.py"), str(config), *actions), stdout=out,
                            stderr=subprocess.STDOUT, text=True)


def status(graph: Graph, name: str) -> dict:
    """The bridge's bridge.json (graph ``name``), read through its process's private /dev/shm."""
    return json.loads(Path(f"/proc/{graph.node_pid('bridge')}/root/dev/shm/shmlaunch-{os.getuid()}-{name}/bridge.json").read_text())


HOSTILE_TOPICS = """  cnt: {dtype: int64, shape: [1], pool: 4}
  blob: {capacity: 100000, pool: 4}
  img: {dtype: uint8, shape: [48, 64, 3], pool: 4}"""


def test_a_hostile_peer_cannot_stop_flood_or_bloat_an_import_and_each_bad_sample_is_counted(hosts, tmp_path):
    """Every malformed kind, a flood of foreign-hash samples, a 2 GB description and 10,000
    liveliness tokens: the imports go on (the honest counter keeps its rate through the flood),
    each kind is counted and said once, nothing is allocated for the lies."""
    from shmlaunch.transport import LAYOUT_VERSION

    probe = tmp_path / "probe.jsonl"
    robot = Graph(hosts.a, robot_file(tmp_path, hosts, topics=HOSTILE_TOPICS, nodes="""  counter:
    node: graph_nodes:Counter
    params: {rate: 50.0}
    publish: {out: cnt}
  scene:
    node: graph_nodes:Scene
    params: {rate: 20.0}
    publish: {image: img, landmarks: blob}""", export="""    cnt: {}
    blob: {}
    img: {encode: jpeg}"""), tmp_path / "robot.log")
    laptop_yaml = laptop_file(tmp_path, hosts, probe, topics=HOSTILE_TOPICS, subscribe="small: cnt, image: img, landmarks: blob", imports="""
    robot/cnt: {}
    robot/blob: {}
    robot/img: {}
    robot/big: {host: evil}
    robot/big-named: {host: evil}""")
    laptop_yaml.write_text(laptop_yaml.read_text().replace("  connect:", f"  listen: [tcp/{hosts.b.addr}:{PORT}]\n  connect:"))
    laptop = Graph(hosts.b, laptop_yaml, tmp_path / "laptop.log")
    graphs, evil = (robot, laptop), []
    try:
        wait_for(lambda: len(lines(probe, "small")) >= 20 and len(lines(probe, "image")) >= 5, 60, "the imports to run", detail=logs(graphs))
        # an explicit mesh: the robot listens where it was told, the laptop where it was told, nowhere else
        for g, addr in ((robot, hosts.a.addr), (laptop, hosts.b.addr)):
            listening = subprocess.run(g.host.enter(g.proc.pid, "ss", "-Hltn"), capture_output=True, text=True).stdout.split("\n")
            assert [ln.split()[3] for ln in listening if ln.strip()] == [f"{addr}:{PORT}"], listening
        ends = [f"tcp/{hosts.a.addr}:{PORT}", f"tcp/{hosts.b.addr}:{PORT}"]
        evil.append(hostile(hosts.a, tmp_path, ends, "malformed", "robot", "robot"))
        evil[-1].wait(60)
        before = len(lines(probe, "small"))
        evil.append(hostile(hosts.a, tmp_path, ends, "flood", "robot", "robot", "4"))
        evil[-1].wait(60)
        during = len(lines(probe, "small")) - before  # 50 Hz for ~5 s (the flood and its session's start)
        assert during >= 0.9 * 50 * 4, f"only {during} honest messages during a 4 s flood of foreign samples"
        evil.append(hostile(hosts.a, tmp_path, ends, "big", "evil", "robot", "big", str(LAYOUT_VERSION), "tokens", "10000"))
        wait_for(lambda: "more than 1024 remote topics" in laptop.text() and "import 'robot/big' from evil: refused" in laptop.text()
                 and "import 'robot/big-named' from evil: refused" in laptop.text(),
                 30, "the tokens to be capped and the 2 GB description refused", detail=logs(graphs))
        time.sleep(2)
        doc = status(laptop, "laptop")
        imports = doc["imports"]
        assert all(imports[t]["state"] == "importing" for t in ("robot/cnt", "robot/blob", "robot/img")), imports
        rejected = {t: imports[f"robot/{t}"]["rejected"] for t in ("cnt", "blob", "img")}
        for topic, kind, at_least in (("cnt", "seq", 20), ("cnt", "attachment", 40), ("cnt", "encoding", 20), ("cnt", "size", 20),
                                      ("cnt", "stamp", 20), ("cnt", "stale", 20), ("cnt", "hash", 150), ("blob", "size", 20),
                                      ("img", "jpeg", 40)):
            assert rejected[topic].get(kind, 0) >= at_least, (topic, kind, rejected)
        assert "max_topic_mb" in imports["robot/big"]["detail"] and imports["robot/big"]["state"] == "refused"
        named = imports["robot/big-named"]
        assert named["state"] == "refused" and "message type" in named["detail"], named  # refused, not a failed import
        assert len(doc["remote"]) <= 1024 and doc["remote_ignored"] > 0
        assert len(json.dumps(doc)) < 200_000
        text = laptop.text()
        assert "Traceback" not in text and "stopped:" not in text, text[-3000:]
        said = [ln for ln in text.splitlines() if "rejected a sample" in ln]
        assert len(said) <= 12, said  # once per topic and kind (a minute has not passed)
        assert all(r["mean"] >= 0 for r in lines(probe, "small")), "a hostile value reached the local topic"
        rss = int(next(ln for ln in Path(f"/proc/{laptop.node_pid('bridge')}/status").read_text().splitlines()
                       if ln.startswith("VmHWM")).split()[1])
        assert rss < 400_000, f"the bridge's peak RSS is {rss} kB"
        shown = laptop.tool("bridge", "status").stdout
        assert "REJECTED" in shown and "more announced" in shown, shown
    finally:
        for p in evil:
            p.kill()
        codes = [g.stop() for g in graphs]
    assert codes == [0, 0], codes


def small_graphs(tmp_path: Path, a_addr: str, *, robot_extra: str = "", robot_nodes: str = "", export: str = "small: {}",
                 laptop_bridge: str = "", imports: str = "robot/small: {}", probe: Path, laptop_topics: str = "") -> tuple[Path, Path]:
    """robot: a 100 Hz counter on ``small`` (and ``robot_nodes``), exported; laptop: the import, a probe."""
    robot = write(tmp_path / "robot.yaml", f"""name: robot
topics:
  small: {{dtype: int64, shape: [1], pool: 4}}
{robot_extra}nodes:
  counter:
    node: graph_nodes:Counter
    params: {{rate: 100.0}}
    publish: {{out: small}}
{robot_nodes}bridge:
  host: robot
  listen: [tcp/{a_addr}:{PORT}]
  export:
    {export}
""")
    laptop = write(tmp_path / "laptop.yaml", f"""name: laptop
topics:
  small: {{dtype: int64, shape: [1], pool: 4}}
{laptop_topics}nodes:
  probe:
    node: graph_nodes:Probe
    params: {{path: {probe}}}
    subscribe: {{small: small{', image: img' if laptop_topics else ''}}}
bridge:
  host: laptop
  connect: [tcp/{a_addr}:{PORT}]
{laptop_bridge}  import:
    {imports}
""")
    return robot, laptop


def test_two_hosts_exporting_one_topic_are_refused_unless_the_import_names_one(tmp_path):
    """Three hosts on one switch: robot1 and robot2 both export robot/small; an import naming
    no host is refused naming both, one naming robot2 takes robot2's stream only."""
    net = SwitchedHosts(3)
    r1, r2, lap = net.hosts
    probe = tmp_path / "probe.jsonl"
    graphs = []
    try:
        for host, name in ((r1, "robot1"), (r2, "robot2")):
            d = tmp_path / name
            d.mkdir()
            robot, _ = small_graphs(d, host.addr, probe=probe)
            robot.write_text(robot.read_text().replace("host: robot", f"host: {name}"))
            graphs.append(Graph(host, robot, d / "robot.log"))
            time.sleep(4)  # robot1's counter runs ahead of robot2's by ~400
        ends = f"[tcp/{r1.addr}:{PORT}, tcp/{r2.addr}:{PORT}]"
        _, laptop = small_graphs(tmp_path, r1.addr, probe=probe)
        laptop.write_text(laptop.read_text().replace(f"[tcp/{r1.addr}:{PORT}]", ends))
        graphs.append(Graph(lap, laptop, tmp_path / "laptop.log"))
        wait_for(lambda: "exported by hosts" in graphs[-1].text(), 30, "the refusal", detail=logs(graphs))
        said = next(ln for ln in graphs[-1].text().splitlines() if "exported by hosts" in ln)
        assert "robot1, robot2" in said and "host:" in said and lines(probe) == [], said
        graphs.pop().stop()
        laptop.write_text(laptop.read_text().replace("robot/small: {}", "robot/small: {host: robot2}"))
        graphs.append(Graph(lap, laptop, tmp_path / "laptop2.log"))
        wait_for(lambda: len(lines(probe, "small")) >= 200, 30, "robot2's stream", detail=logs(graphs))
        values = [r["mean"] for r in lines(probe, "small")]
        assert values == sorted(values), "two exporters' values mixed into one topic"
        assert "from robot2" in graphs[-1].tool("bridge", "status").stdout
    finally:
        for g in graphs:
            g.stop()
        net.close()


def test_with_mtls_a_peer_can_publish_only_under_its_own_host_name(hosts, tmp_path):
    """robot, laptop and evil hold certificates of one CA and are each other's peers; evil
    sends well-formed samples under the robot's name: zenoh's access control (generated from
    the launch files' tls: sections) drops them, the robot's own samples flow."""
    certs = _certificates(tmp_path, hosts.a.addr, ("robot", "laptop", "evil"))
    probe = tmp_path / "probe.jsonl"
    tls = lambda me, peers: f"  tls: {{ca: ca.pem, certificate: {me}.pem, key: {me}.key, peers: [{peers}]}}\n"  # noqa: E731
    robot, laptop = small_graphs(tmp_path, hosts.a.addr, probe=probe, laptop_bridge=tls("laptop", "robot, evil"))
    robot.write_text(robot.read_text().replace("  listen:", tls("robot", "laptop, evil") + "  listen:").replace("tcp/", "tls/"))
    laptop.write_text(laptop.read_text().replace("tcp/", "tls/").replace(
        "  connect:", f"  listen: [tls/{hosts.b.addr}:{PORT}]\n  connect:"))
    graphs = (Graph(hosts.a, robot, tmp_path / "robot.log"), Graph(hosts.b, laptop, tmp_path / "laptop.log"))
    evil = None
    try:
        wait_for(lambda: len(lines(probe, "small")) >= 20, 60, "messages over mTLS", detail=logs(graphs))
        evil_tls = {"root_ca_certificate": str(certs["ca.pem"]), "enable_mtls": True, "verify_name_on_connect": False,
                    **{f"{side}_{what}": str(certs[f"evil.{ext}"]) for side in ("listen", "connect")
                       for what, ext in (("certificate", "pem"), ("private_key", "key"))}}
        evil = hostile(hosts.a, tmp_path, [f"tls/{hosts.a.addr}:{PORT}", f"tls/{hosts.b.addr}:{PORT}"],
                       "impersonate", "robot", "robot", "small", "4", tls=evil_tls)
        assert evil.wait(60) == 0, (tmp_path / "hostile0.out").read_text()
        assert "impersonated" in (tmp_path / "hostile0.out").read_text()
        got = lines(probe, "small")
        assert got and all(r["mean"] >= 0 for r in got), "a sample under the robot's name from another host was delivered"
        before = len(got)
        time.sleep(1)
        assert len(lines(probe, "small")) > before + 50, "the robot's own stream stopped"
    finally:
        if evil is not None:
            evil.kill()
        for g in graphs:
            g.stop()


def test_a_20_mbit_link_full_of_raw_frames_leaves_small_topics_their_rate(hosts, tmp_path):
    """Raw 640x480 frames at 30 fps (221 Mbit/s) over a 20 Mbit link: frames go at what the link
    carries, newest first, and the 100 Hz small topic beside them keeps its rate, fresh."""
    hosts.a.shape("20mbit")
    probe = tmp_path / "probe.jsonl"
    frames = "  img: {dtype: uint8, shape: [480, 640, 3], pool: 4}\n"
    robot, laptop = small_graphs(tmp_path, hosts.a.addr, probe=probe, robot_extra=frames, laptop_topics=frames,
                                 robot_nodes="  scene:\n    node: graph_nodes:Scene\n    params: {rate: 30.0}\n    publish: {image: img}\n",
                                 export="small: {}\n    img: {}", imports="robot/small: {}\n    robot/img: {}")
    graphs = (Graph(hosts.a, robot, tmp_path / "robot.log"), Graph(hosts.b, laptop, tmp_path / "laptop.log"))
    try:
        wait_for(lambda: len(lines(probe, "image")) >= 3, 60, "frames over 20 Mbit", detail=logs(graphs))
        start = time.time_ns()
        time.sleep(8)
        small = [r for r in lines(probe, "small") if r["received_ns"] > start]
        images = [r for r in lines(probe, "image") if r["received_ns"] > start]
        ages = sorted(r["received_ns"] - r["stamp_ns"] for r in small)
        assert len(small) >= 0.7 * 100 * 8, f"small topic at {len(small) / 8:.1f} Hz"
        assert ages[len(ages) // 2] < 100e6, f"small topic p50 age {ages[len(ages) // 2] / 1e6:.0f} ms"
        assert len(images) >= 8, f"{len(images)} frames in 8 s"
    finally:
        for g in graphs:
            g.stop()


def test_after_an_outage_no_stale_burst_arrives_and_the_importing_host_counts_what_it_receives(hosts, tmp_path):
    """The link goes down for 3 s: what zenoh and TCP held is not delivered as a burst of old
    values. The exporter sends at rate 50 from a 100 Hz counter: the laptop's topic hz says 50
    (its own numbering), bridge status keeps the exporter's sequence number."""
    probe = tmp_path / "probe.jsonl"
    robot, laptop = small_graphs(tmp_path, hosts.a.addr, probe=probe, export="small: {rate: 50}")
    graphs = (Graph(hosts.a, robot, tmp_path / "robot.log"), Graph(hosts.b, laptop, tmp_path / "laptop.log"))
    try:
        wait_for(lambda: len(lines(probe, "small")) >= 50, 60, "the import", detail=logs(graphs))
        hz = graphs[1].tool("topic", "hz", "small", "--count", "2")
        rates = [float(ln.split()[1]) for ln in hz.stdout.splitlines()]
        assert rates and all(40 <= r <= 55 for r in rates), hz.stdout
        seq = graphs[1].tool("topic", "stats", "small").stdout
        remote = status(graphs[1], "laptop")["imports"]["robot/small"]["remote_seq"]
        local = int(seq.split("last seq ")[1].split(",")[0])
        assert remote > 1.5 * local, (remote, local)  # the exporter's counter runs at 100 Hz, this host's at 50
        subprocess.run(["ip", "-n", hosts.a.ns, "link", "set", hosts.a.dev, "down"], check=True)
        time.sleep(3)
        up = time.time_ns()
        subprocess.run(["ip", "-n", hosts.a.ns, "link", "set", hosts.a.dev, "up"], check=True)
        wait_for(lambda: len([r for r in lines(probe, "small") if r["received_ns"] > up]) >= 100, 30, "the import after the outage",
                 detail=logs(graphs))
        late = [r for r in lines(probe, "small") if r["received_ns"] > up]
        old = [r for r in late if r["received_ns"] - r["stamp_ns"] > 1e9]
        assert not old, f"{len(old)} values over 1 s old arrived after the outage"
        # stopped while the link is down: each bridge still exits on its own, in time
        subprocess.run(["ip", "-n", hosts.a.ns, "link", "set", hosts.a.dev, "down"], check=True)
        time.sleep(1)
    finally:
        codes = [g.stop() for g in graphs]
    assert codes == [0, 0] and not any("killing" in g.text() for g in graphs), [g.text()[-1500:] for g in graphs]
