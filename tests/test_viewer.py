"""The viewer node: annotated JPEGs over HTTP, a token when set, idle when nobody looks, a real browser."""

from __future__ import annotations

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
from test_launcher import assert_nothing_left, node_pids, start, wait_for, write_graph

cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed (pip install -e '.[hands]')")

from shmlaunch.transport import backend  # noqa: E402

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
    params: {port: PORT, width: 320, token: TOKEN}
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
    token = getattr(request, "param", "")
    port = free_port()
    path, graph = write_graph(tmp_path, FAKE.replace("PORT", str(port)).replace("TOKEN", f'"{token}"'))
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


def test_a_bad_frame_number_is_a_400_and_the_viewer_goes_on(viewer_graph):
    base, _ = viewer_graph
    assert get(base + "/frame.jpg?after=abc") == (400, b"after/at must be a frame number, got 'abc'\n")
    assert get(base + "/frame.seq?after=-1")[0] == 400
    assert get(base + "/status.json")[0] == 200


def test_connections_are_capped_and_silent_ones_time_out(monkeypatch):
    """The viewer's HTTP server alone: past MAX_CONNECTIONS a client gets 503 at once, and a
    connection that never sends its request is closed after CONNECTION_TIMEOUT."""
    import threading

    from shmlaunch.nodes import viewer as v

    monkeypatch.setattr(v, "MAX_CONNECTIONS", 3)

    class Slow(v.BaseHTTPRequestHandler):
        timeout = 1.0

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = v._BoundedServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]  # send nothing: each holds a slot
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", port))
        extra.settimeout(5)
        assert extra.recv(100).startswith(b"HTTP/1.1 503 Service Unavailable")
        started = time.monotonic()
        idle[0].settimeout(10)
        assert idle[0].recv(100) == b""  # closed by the server's timeout
        assert time.monotonic() - started < 5
        for s in idle + [extra]:
            s.close()
        wait_for(lambda: get(f"http://127.0.0.1:{port}/")[0] == 200, 10, "a slot to come back")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("viewer_graph", ["s3cret"], indirect=True)
def test_token_is_enforced_when_set(viewer_graph):
    base, _ = viewer_graph
    assert get(base + "/")[0] == 401
    assert get(base + "/snapshot.jpg?token=wrong")[0] == 401
    assert get(base + "/?token=s3cret")[0] == 200
    assert get(base + "/snapshot.jpg", {"X-Token": "s3cret"})[0] == 200


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
    proc = start(ROOT / "launch" / "hands_view.yaml", f"port:={port}", f"record:={tmp_path / 'hands.jsonl'}", "--duration", "120")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=900,800", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(flag)
    browser = None
    try:
        wait_for(lambda: up(f"http://127.0.0.1:{port}/status.json"), 60, "the viewer to serve")
        browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=opts)
        browser.get(f"http://127.0.0.1:{port}/")
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
    assert_nothing_left("hands-view")
