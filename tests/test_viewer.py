"""The viewer node: annotated JPEGs over HTTP, a token when set, idle when nobody looks, a real browser."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_launcher import assert_nothing_left, node_pids, start, unique_name, wait_for, write_graph

cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed (pip install -e '.[hands]')")

from shmlaunch import _platform as backend  # noqa: E402
from shmlaunch.transport import graph_runtime_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

FAKE = """
topics:
  camera/image: {dtype: uint8, shape: [480, 640, 3], pool: 4}
  hands/landmarks: {capacity: 2096, pool: 4}
nodes:
  fake:
    node: graph_nodes:FakeHands
    publish: {image: camera/image, landmarks: hands/landmarks}
    env: {PYTHONPATH: PYTHONPATH_HERE}
  viewer:
    node: shmlaunch.nodes.viewer:Viewer
    params: {port: PORT, width: 320, AUTH}
    subscribe: {image: camera/image, landmarks: hands/landmarks}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, headers: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def up(url: str) -> bool:
    try:
        return get(url, timeout=2)[0] in (200, 401)
    except OSError:
        return False


@pytest.fixture
def viewer_graph(tmp_path, request):
    token = getattr(request, "param", None)  # None: no_auth; "auto": the viewer's own; else that token
    port = free_port()
    auth = "no_auth: true" if token is None else f'token: "{token}"'
    path, graph = write_graph(tmp_path, FAKE.replace("PORT", str(port)).replace("AUTH", auth))
    proc = start(path, "--duration", 60)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: up(base + "/status.json"), 30, "the viewer to serve")
        yield base, graph
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
        assert_nothing_left(graph)


def landmarks_seen(base: str) -> bool:
    doc = json.loads(get(base + "/status.json")[1])
    return any(t["topic"] == "hands/landmarks" and t["seq"] > 0 for t in doc["topics"])


def test_snapshot_is_a_jpeg_of_the_configured_size_with_the_skeleton_drawn(viewer_graph):
    base, _ = viewer_graph
    wait_for(lambda: landmarks_seen(base), 20, "the viewer to have landmarks to draw")
    code, body = get(base + "/snapshot.jpg")
    assert code == 200
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (240, 320, 3)
    y = 120
    for i in (0, 7, 20):  # landmark points are drawn in red (BGR 0, 0, 255)
        b, g, r = (int(v) for v in img[y, round((0.1 + 0.04 * i) * 320)])
        assert r > 150 and b < 100 and g < 100, (i, (b, g, r))
    assert img[y, 5].max() < 40 and img[40, 160].max() < 40  # off the skeleton the frame stays black
    assert img[y, round(0.12 * 320) + 1].min() > 150 or img[y, round(0.12 * 320) + 1][2] > 150  # a bone (white) between points


def test_page_and_status_are_served(viewer_graph):
    base, graph = viewer_graph
    code, page = get(base + "/")
    assert code == 200 and b"<img id=\"live\"" in page
    code, status = get(base + "/status.json")
    doc = json.loads(status)
    assert doc["graph"] == graph and {t["topic"] for t in doc["topics"]} == {"camera/image", "hands/landmarks"}
    assert {n["name"] for n in doc["nodes"]} == {"fake", "viewer"}
    assert doc["trace"] is None and b"run shmlaunch trace" in page  # no tracer attached


def test_the_page_shows_the_per_hop_table_while_a_tracer_is_attached(viewer_graph):
    base, graph = viewer_graph
    tracer = start("trace", graph, "--duration", 20, "--quiet")
    try:
        wait_for(lambda: (json.loads(get(base + "/status.json")[1])["trace"] or {}).get("queueing"), 20, "the table on the viewer")
        trace = json.loads(get(base + "/status.json")[1])["trace"]
        assert any(r["topic"] == "camera/image" and r["writer"] == "fake" and r["reader"] == "viewer" and r["n"] > 0
                   for r in trace["queueing"])
    finally:
        tracer.terminate()
        tracer.communicate(timeout=30)
    assert tracer.returncode == 0
    wait_for(lambda: json.loads(get(base + "/status.json")[1])["trace"] is None, 10, "the table to go with the tracer")


def test_a_bad_frame_number_is_a_400_and_the_viewer_goes_on(viewer_graph):
    base, _ = viewer_graph
    assert get(base + "/frame.jpg?after=abc") == (400, b"after/at must be a frame number, got 'abc'\n")
    assert get(base + "/frame.seq?after=-1")[0] == 400
    assert get(base + "/status.json")[0] == 200


def test_connections_are_capped_and_slow_ones_are_cut_off(monkeypatch):
    """The viewer's HTTP server alone: past MAX_PENDING connections still sending their request a
    client gets 503 at once, and a request that drips in is cut off HEADER_SECONDS after it began
    (not per read)."""
    import threading

    from shmlaunch.nodes import viewer as v

    monkeypatch.setattr(v, "MAX_PENDING", 3)
    monkeypatch.setattr(v, "HEADER_SECONDS", 1.5)

    class Probe(v._Handler):
        viewer = type("V", (), {"key": "", "stopping": False})()

        def _route(self, url, q):
            self._send(200, b"ok", "text/plain")

    server = v._BoundedServer(("127.0.0.1", 0), Probe)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]  # each holds a pending place
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", port))
        extra.settimeout(5)
        assert extra.recv(100).startswith(b"HTTP/1.1 503 Service Unavailable")
        started = time.monotonic()
        idle[0].settimeout(0.4)
        closed = False
        while not closed and time.monotonic() - started < 10:  # one byte every 0.4 s: never idle long enough to time out
            with contextlib.suppress(OSError):
                idle[0].sendall(b"G")
            with contextlib.suppress(TimeoutError):
                closed = idle[0].recv(100) == b""
        assert closed and time.monotonic() - started < 4, time.monotonic() - started
        for s in idle + [extra]:
            s.close()
        wait_for(lambda: get(f"http://127.0.0.1:{port}/")[0] == 200, 10, "a place to come back")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("viewer_graph", ["auto"], indirect=True)
def test_by_default_a_token_is_made_kept_private_and_slow_clients_cannot_keep_a_real_one_out(viewer_graph):
    base, graph = viewer_graph
    token_file = graph_runtime_dir(graph) / "viewer-viewer.token"
    assert os.stat(token_file).st_mode & 0o077 == 0
    token = token_file.read_text().strip()
    assert len(token) >= 16 and get(base + "/snapshot.jpg")[0] == 401 and get(base + "/snapshot.jpg?token=" + token)[0] == 200
    drips = [socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) for _ in range(40)]  # slowloris
    try:
        for s in drips:
            s.sendall(b"G")
        started = time.monotonic()
        assert get(base + "/status.json", {"X-Token": token}, timeout=5)[0] == 200
        assert time.monotonic() - started < 3
    finally:
        for s in drips:
            s.close()


@pytest.mark.parametrize("viewer_graph", ["s3cret-token"], indirect=True)
def test_token_is_enforced_when_set(viewer_graph):
    base, _ = viewer_graph
    assert get(base + "/")[0] == 401
    assert get(base + "/snapshot.jpg?token=wrong")[0] == 401
    assert get(base + "/?token=s3cret-token")[0] == 200
    assert get(base + "/snapshot.jpg", {"X-Token": "s3cret-token"})[0] == 200


def test_viewer_uses_almost_no_cpu_with_no_client(viewer_graph):
    _, graph = viewer_graph
    pid = next(p for p in node_pids(graph) if b"Viewer" in Path(f"/proc/{p}/cmdline").read_bytes())
    time.sleep(1.0)
    c0, t0 = backend.process_info(pid).cpu_seconds, time.monotonic()
    time.sleep(3.0)
    busy = 100 * (backend.process_info(pid).cpu_seconds - c0) / (time.monotonic() - t0)
    assert busy < 10, f"viewer used {busy:.1f}% of a core with no client while frames arrive at 20 Hz"


def test_page_updates_in_a_real_headless_chromium(tmp_path):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    port = free_port()
    graph = unique_name("hands-view")
    proc = start(ROOT / "launch" / "hands_view.yaml", f"port:={port}", f"record:={tmp_path / 'hands.jsonl'}", "--duration", "120",
                 "--name", graph)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=900,800", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(flag)
    browser = None
    try:
        wait_for(lambda: up(f"http://127.0.0.1:{port}/status.json"), 60, "the viewer to serve")
        browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=opts)
        token = (graph_runtime_dir(graph) / "viewer-viewer.token").read_text().strip()  # the viewer's own, made at its start
        browser.get(f"http://127.0.0.1:{port}/?token={token}")
        wait_for(lambda: int(browser.execute_script("return document.body.dataset.frames")) >= 3, 60, "the image to update")
        wait_for(lambda: "hands/landmarks" in browser.find_element("id", "topics").text, 10, "the topic table")
        shot = tmp_path / "viewer.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("SHMLAUNCH_SCREENSHOT_DIR"):  # how the README's picture is made
            shutil.copy(shot, Path(os.environ["SHMLAUNCH_SCREENSHOT_DIR"]) / "viewer.png")
    finally:
        if browser is not None:
            browser.quit()
        proc.terminate()
        proc.communicate(timeout=30)
    assert_nothing_left(graph)


def test_the_per_hop_table_file_is_read_as_untrusted_input(tmp_path):
    """trace.json mutated byte by byte and field by field: the viewer shows only rows of the
    right types, or no table, and never raises; a file past 4 MiB is not read at all."""
    from types import SimpleNamespace

    from shmlaunch.nodes.hops import TRACE_TABLE
    from shmlaunch.nodes.viewer import Viewer
    from shmlaunch.testing import runtime_dir

    real = {"queueing": [{"topic": "camera/image", "writer": "camera", "reader": "hands", "n": 580, "overwritten": 0, "stale": 0,
                          "taken": 3, "p50_ms": 0.1, "p90_ms": 0.137, "p99_ms": 0.215, "max_ms": 1.213}],
            "processing": [{"node": "hands", "input": "camera/image", "output": "hands/landmarks", "n": 581, "overwritten": 0,
                            "stale": 0, "taken": 0, "p50_ms": 15.683, "p90_ms": 20.8, "p99_ms": 24.9, "max_ms": 28.2}],
            "end_to_end": [{"topic": "hands/landmarks", "reader": "probe", "n": 0, "overwritten": 0, "stale": 0, "taken": 0}],
            "callback": [], "writer_drops": {}, "lost_records": 0}
    strange = [None, "x", -1, 1.5, float("nan"), True, [], {}, "9" * 400, [1, 2], {"n": 1}]
    rng = np.random.default_rng(3)
    with runtime_dir() as rd:
        viewer = SimpleNamespace(runtime_dir=rd)
        (rd / TRACE_TABLE).write_text(json.dumps(real))
        assert Viewer._trace_table(viewer) == {k: real[k] for k in ("queueing", "processing", "end_to_end")}
        text = json.dumps(real).encode()
        for i in range(600):
            if i % 2:  # bytes: flips, cuts, insertions
                data = bytearray(text)
                for _ in range(int(rng.integers(1, 8))):
                    data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
                data = bytes(data[: int(rng.integers(1, len(data) + 1))]) if i % 3 == 0 else bytes(data)
            else:  # structure: a field, a row or a section replaced by something of another type
                doc = json.loads(text)
                section = ["queueing", "processing", "end_to_end"][i % 3]
                pick = strange[int(rng.integers(0, len(strange)))]
                if i % 4 == 0:
                    doc[section] = pick
                elif i % 8 == 2:
                    doc[section].append(pick)
                else:
                    doc[section][0][list(doc[section][0])[int(rng.integers(0, len(doc[section][0])))]] = pick
                data = json.dumps(doc).encode()
            (rd / TRACE_TABLE).write_bytes(data)
            table = Viewer._trace_table(viewer)
            if table is None:
                continue
            for section, rows in table.items():
                for r in rows:
                    assert type(r["n"]) is int
                    assert all(isinstance(r[k], str) for k in r if k in ("topic", "writer", "reader", "node", "input", "output"))
                    assert all(type(r[k]) in (int, float) and r[k] == r[k] for k in r if k.endswith("_ms")), (section, r)
        (rd / TRACE_TABLE).write_bytes(b"[" + b" " * (4 << 20) + b"]")
        assert Viewer._trace_table(viewer) is None
