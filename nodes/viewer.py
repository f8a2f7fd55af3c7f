"""The viewer node: what the camera sees, with hand skeletons and gestures, in a plain browser.

Serves over HTTP (standard library only):
  /             a page with the live image and a table of topics and nodes
  /frame.jpg    the next annotated frame (``?after=N``: newer than frame N; waits up to 5 s)
  /stream.mjpg  the same as an MJPEG stream, for VLC, ffplay or an <img> tag
  /snapshot.jpg one annotated frame
  /status.json  the table's data (with ``trace``: the per-hop table while ``shmlaunch trace`` runs)

The page pulls frames one after another (each request waits for the next frame), which
works in every browser, shows the frame rate the viewer can really deliver, and makes each
displayed frame observable (a test can count them); the MJPEG stream is for other clients.
Frames are drawn and JPEG-encoded only while somebody is looking: with no client connected,
the viewer takes each newest frame and lets it go at once.

Access: it binds to 127.0.0.1 unless told otherwise, and every request needs the token as
``?token=...`` or an ``X-Token`` header (127.0.0.1 is open to every user of the machine). The
default token is made at the first start, kept in the graph's runtime directory (this user's
only: ``viewer-<node>.token``), reused by a respawned viewer and logged once, as the URL to
open. ``no_auth: true`` serves without one (a warning says so).

Slow clients: a request's line and headers must arrive within HEADER_SECONDS in all (not per
read), at most MAX_PENDING connections may be at that stage (MAX_PENDING_PER_ADDRESS from one
remote address), and a connection takes one of the MAX_CONNECTIONS serving slots only once its
token checked out: connections that never finish a request cannot starve real clients.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np

from shmlaunch.transport import RuntimeDir, TransportError

from ._node import Node, NodeSetupError
from ._params import Param
from .hops import TRACE_TABLE
from .messages import GESTURE, HAND_CONNECTIONS, LANDMARKS, decode_gesture, gesture_message, hand_count, handedness_label, landmarks_message

BONE_BGR = (255, 255, 255)
POINT_BGR = (0, 0, 255)
WAIT_FOR_FRAME = 5.0
#: A connection that neither sends its request nor takes our bytes for this long is closed.
CONNECTION_TIMEOUT = 30.0
#: At most this many requests served at once (one thread each), counted once their token checked
#: out; more get 503 at once.
MAX_CONNECTIONS = 32
#: A request's line and headers must have arrived within this many seconds.
HEADER_SECONDS = 5.0
#: Connections still sending their request, in all and from one remote (not loopback) address.
MAX_PENDING = 128
MAX_PENDING_PER_ADDRESS = 16

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>shmlaunch viewer</title>
<style>body{font-family:sans-serif;background:#111;color:#ddd;margin:1em}img{max-width:100%;border:1px solid #444}
table{border-collapse:collapse;margin-top:1em}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #333}</style></head>
<body data-frames="0"><h3>shmlaunch viewer <span id="info"></span></h3>
<img id="live" alt="live view">
<table id="topics"></table><table id="nodes"></table><table id="hops"></table>
<script>
const q = new URLSearchParams(location.search); const tok = q.get("token") ? "&token=" + encodeURIComponent(q.get("token")) : "";
let last = 0; const img = document.getElementById("live");
img.onload = () => { document.body.dataset.frames = +document.body.dataset.frames + 1; next(); };
img.onerror = () => setTimeout(next, 500);
function next() { fetch("/frame.seq?after=" + last + tok).then(r => r.text()).then(s => { last = +s;
  img.src = "/frame.jpg?at=" + s + tok; }).catch(() => setTimeout(next, 500)); }
const esc = v => String(v).replace(/[&<>"']/g, c => "&#" + c.charCodeAt(0) + ";");
function rows(el, head, data) { el.innerHTML = "<tr>" + head.map(h => "<th>" + esc(h) + "</th>").join("") + "</tr>" +
  data.map(r => "<tr>" + r.map(c => "<td>" + esc(c) + "</td>").join("") + "</tr>").join(""); }
const ms = v => v === undefined ? "-" : v.toFixed(2);
function hops(t) { if (!t) return [];
  const fig = r => [r.n, ms(r.p50_ms), ms(r.p90_ms), ms(r.p99_ms), ms(r.max_ms)];
  const lost = r => r.overwritten + "/" + r.stale + "/" + r.taken;
  return [].concat(t.queueing.map(r => ["queueing", r.topic + ": " + r.writer + " -> " + r.reader, ...fig(r), lost(r)]),
    t.processing.map(r => ["processing", r.node + ": " + r.input + " -> " + r.output, ...fig(r), ""]),
    t.end_to_end.map(r => ["end to end", r.topic + " at " + r.reader, ...fig(r), ""])); }
function status() { fetch("/status.json?" + tok).then(r => r.json()).then(s => {
  document.getElementById("info").textContent = s.graph ? "- graph " + s.graph : "";
  rows(document.getElementById("topics"), ["topic", "rate Hz", "latency ms", "last seq"],
       s.topics.map(t => [t.topic, t.hz.toFixed(1), t.latency_ms.toFixed(1), t.seq]));
  rows(document.getElementById("nodes"), ["node", "pid", "state", "restarts"], s.nodes.map(n => [n.name, n.pid, n.state, n.restarts]));
  const h = hops(s.trace); rows(document.getElementById("hops"), h.length ? ["per hop (shmlaunch trace)", "", "n", "p50 ms", "p90 ms", "p99 ms",
    "max ms", "overwritten/stale/taken"] : ["per-hop latency: run shmlaunch trace"], h);
}).catch(() => {}); }
next(); status(); setInterval(status, 1000);
</script></body></html>
"""


class _Rate:
    """Messages per second and latency of one subscription, over the last second."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.latency_ms = 0.0
        self.seq = 0

    def add(self, msg) -> None:
        now = time.monotonic()
        self.times = [t for t in self.times if now - t < 1.0] + [now]
        self.latency_ms = (time.time_ns() - msg.stamp_ns) / 1e6
        self.seq = msg.seq

    def hz(self) -> float:
        now = time.monotonic()
        return float(sum(1 for t in self.times if now - t < 1.0))


class Viewer(Node):
    host = Param("127.0.0.1", "address to listen on; 0.0.0.0 exposes the view to the network")
    port = Param(8080, "TCP port (0: any free port, printed in the log)", low=0, high=65535)
    width = Param(640, "width of the served image (height follows the frame's aspect)", low=16, high=7680)
    quality = Param(80, "JPEG quality, 1-100", low=1, high=100)
    token = Param("auto", "required as ?token= or an X-Token header; 'auto': one made at the first start, kept in the "
                  "runtime directory (viewer-<node>.token) and logged as the URL to open")
    no_auth = Param(False, "serve without a token (any user of this machine, or of the network with host 0.0.0.0, sees the view)")
    subscribes = {"image": {"dtype": "uint8", "ndim": 3}, "landmarks": {"min_capacity": LANDMARKS.itemsize},
                  "gesture": {"min_capacity": GESTURE.itemsize}}

    def setup(self) -> None:
        self.cond = threading.Condition()
        self.watchers = 0  # requests waiting for a frame
        self.jpeg: bytes | None = None
        self.frame_no = 0
        self.hands: np.ndarray | None = None
        self.gesture: np.ndarray | None = None
        self.rates = {"image": _Rate()}
        self.subscribe("image", self.on_image)
        for port, handler in (("landmarks", self.on_landmarks), ("gesture", self.on_gesture)):
            if self.is_mapped(port):
                self.rates[port] = _Rate()
                self.subscribe(port, handler)
        self.key = "" if self.no_auth else self._token()
        self.server = _BoundedServer((self.host, self.port), _handler(self))
        threading.Thread(target=self.server.serve_forever, name="viewer-http", daemon=True).start()
        host, port = self.server.server_address[:2]
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            self.log.warning("the view is exposed on %s:%d to the network%s", host, port, " WITHOUT a token" if self.no_auth else "")
        if self.no_auth:
            self.log.warning("serving the view at http://%s:%d/ WITHOUT a token (no_auth): every user of this machine can see it",
                             host, port)
        elif self.token == "auto" and self.new_token:
            self.log.info("serving the view at http://%s:%d/?token=%s (token kept in %s)", host, port, self.key,
                          self.runtime_dir / self.token_file)
        else:
            self.log.info("serving the view at http://%s:%d/ (token %s)", host, port,
                          f"in {self.runtime_dir / self.token_file}" if self.token == "auto" else "as set")

    def _token(self) -> str:
        """The token to require: the one set, or the graph's own for this viewer (made once)."""
        if self.token != "auto":
            if len(self.token) < 8:
                raise NodeSetupError(f"token {self.token!r} is too short (8 characters or more; 'auto' makes one)")
            return self.token
        self.token_file = f"viewer-{self.name}.token"
        self.new_token = False
        with RuntimeDir.open(self.runtime_dir) as rd:
            try:
                key = rd.read_bytes(self.token_file, 256).decode("ascii").strip()
                if len(key) >= 16:
                    return key
            except (FileNotFoundError, UnicodeDecodeError, ValueError):
                pass
            key = secrets.token_urlsafe(18)
            rd.write_atomic(self.token_file, key.encode())
            self.new_token = True
            return key

    # ----- messages
    def on_landmarks(self, msg) -> None:
        self.rates["landmarks"].add(msg)
        self.hands = landmarks_message(msg.data).copy()

    def on_gesture(self, msg) -> None:
        self.rates["gesture"].add(msg)
        self.gesture = gesture_message(msg.data).copy()

    def on_image(self, msg) -> None:
        self.rates["image"].add(msg)
        if not self.watchers:
            return  # nobody is looking: no copy, no drawing, no encoding
        frame = msg.data
        h = round(frame.shape[0] * self.width / frame.shape[1])
        out = cv2.resize(frame, (self.width, h), interpolation=cv2.INTER_AREA)
        self.draw(out)
        ok, jpeg = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(self.quality)])
        if ok:
            with self.cond:
                self.jpeg = jpeg.tobytes()
                self.frame_no += 1
                self.cond.notify_all()

    def draw(self, img: np.ndarray) -> None:
        """The newest landmarks (normalised coordinates) and gesture, drawn onto ``img``."""
        rec = self.hands
        if rec is None:
            return
        h, w = img.shape[:2]
        names = {}
        g = self.gesture
        if g is not None and g["frame_seq"] == rec["frame_seq"]:
            names = {i: h["gesture"] for i, h in enumerate(decode_gesture(g)["hands"])}
        for i in range(hand_count(rec)):
            hand = rec["hands"][i]
            pts = [(int(round(x * w)), int(round(y * h))) for x, y, _ in hand["landmarks"]]
            for a, b in HAND_CONNECTIONS:
                cv2.line(img, pts[a], pts[b], BONE_BGR, 2, cv2.LINE_AA)
            for p in pts:
                cv2.circle(img, p, 4, POINT_BGR, -1, cv2.LINE_AA)
            label = f"{handedness_label(hand['handedness'])} {hand['score']:.2f}" + (f" {names[i]}" if i in names else "")
            x, y = pts[0]
            cv2.putText(img, label, (max(0, x - 40), min(h - 5, y + 25)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 2, cv2.LINE_AA)

    def next_frame(self, after: int) -> tuple[int, bytes] | None:
        """Wait (as a watcher) for a frame newer than ``after``; (number, JPEG) or None."""
        with self.cond:
            self.watchers += 1
            try:
                if self.cond.wait_for(lambda: self.frame_no > after and self.jpeg is not None, WAIT_FOR_FRAME):
                    return self.frame_no, self.jpeg
                return None
            finally:
                self.watchers -= 1

    def status(self) -> dict:
        nodes = []
        graph = None
        try:  # the launcher's graph.json, read as the tools read it: in the checked directory, bounded
            with RuntimeDir.open(self.runtime_dir) as rd:
                doc = json.loads(rd.read_bytes("graph.json", 4 << 20))
            graph = doc["name"]
            nodes = [{"name": n, "pid": v["pid"], "state": v["state"], "restarts": v["restarts"]} for n, v in doc["nodes"].items()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError, TransportError):
            pass
        topics = [{"topic": self.topic_for(p, "subscribe"), "hz": r.hz(), "latency_ms": r.latency_ms, "seq": r.seq}
                  for p, r in self.rates.items()]
        return {"graph": graph, "topics": topics, "nodes": nodes, "frame": self.frame_no, "trace": self._trace_table()}

    def _trace_table(self) -> dict | None:
        """The per-hop table an attached ``shmlaunch trace`` keeps in the runtime directory, checked
        as the page needs it (None when no tracer is attached)."""
        try:
            with RuntimeDir.open(self.runtime_dir) as rd:
                doc = json.loads(rd.read_bytes(TRACE_TABLE, 4 << 20))
        except (OSError, ValueError, TransportError):
            return None
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in _HOP_NAMES):
            return None
        return {k: [r for r in doc[k] if _hop_row_fits(r, names)] for k, names in _HOP_NAMES.items()}

    def teardown(self) -> None:
        self.server.shutdown()
        self.server.server_close()


#: The per-hop table's sections as the page shows them: each row's names (text); its figures are numbers.
_HOP_NAMES = {"queueing": ("topic", "writer", "reader"), "processing": ("node", "input", "output"), "end_to_end": ("topic", "reader")}
_HOP_LOSSES = ("overwritten", "stale", "taken")
_HOP_TIMES = ("p50_ms", "p90_ms", "p99_ms", "max_ms")


def _hop_row_fits(row: object, names: tuple[str, ...]) -> bool:
    """A row the page can show: its names are text, ``n`` and the losses (when there) whole
    numbers, its times (when there) numbers; anything else in ``trace.json`` is left out."""
    if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in names) or type(row.get("n")) is not int:
        return False
    return (all(type(row[k]) is int for k in _HOP_LOSSES if k in row)
            and all(type(row[k]) in (int, float) and row[k] == row[k] for k in _HOP_TIMES if k in row))


class _BoundedServer(ThreadingHTTPServer):
    """A threading HTTP server whose connections are bounded at each stage (see the module's
    docstring): a client that opens hundreds of slow connections can neither make the viewer
    start hundreds of threads nor keep real clients out."""

    daemon_threads = True

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.pending: dict[str, int] = {}  # remote address -> connections still sending their request
        self.lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        address = client_address[0]
        with self.lock:
            remote = not ipaddress.ip_address(address.removeprefix("::ffff:")).is_loopback
            full = sum(self.pending.values()) >= MAX_PENDING or (remote and self.pending.get(address, 0) >= MAX_PENDING_PER_ADDRESS)
            if not full:
                self.pending[address] = self.pending.get(address, 0) + 1
        if full:
            _refuse(request)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def done_pending(self, address: str) -> None:
        with self.lock:
            left = self.pending.get(address, 0) - 1
            if left > 0:
                self.pending[address] = left
            else:
                self.pending.pop(address, None)


def _refuse(sock) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 22\r\nConnection: close\r\n\r\ntoo many connections\r\n")


class _Handler(BaseHTTPRequestHandler):
    """The viewer's HTTP routes; ``viewer`` is set on the subclass ``_handler`` makes."""

    viewer: Viewer
    server_version = "shmlaunch-viewer"
    timeout = CONNECTION_TIMEOUT  # a socket timeout: slow or silent clients are dropped

    def log_message(self, fmt, *args) -> None:  # the node's log, not stderr noise per request
        pass

    def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def handle_one_request(self) -> None:
        """The request line and headers within HEADER_SECONDS in all: a client dripping a byte at a
        time is cut off then (the socket's own timeout is per read)."""
        self.pending = True
        timer = threading.Timer(HEADER_SECONDS, self._too_slow)
        timer.daemon = True
        timer.start()
        try:
            super().handle_one_request()
        finally:
            timer.cancel()
            self._received()

    def _too_slow(self) -> None:
        if self.pending:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _received(self) -> None:
        if self.pending:
            self.pending = False
            self.server.done_pending(self.client_address[0])

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._received()
        url = urlparse(self.path)
        q = parse_qs(url.query)
        key = self.viewer.key
        if key and not any(secrets.compare_digest(key.encode(), given.encode())
                           for given in (q.get("token", [""])[0], self.headers.get("X-Token", ""))):
            self._send(HTTPStatus.UNAUTHORIZED, b"a token is required: ?token=... or an X-Token header\n", "text/plain")
            return
        if not self.server.slots.acquire(blocking=False):
            _refuse(self.connection)
            return
        try:
            self._route(url, q)
        finally:
            self.server.slots.release()

    def _route(self, url, q) -> None:
        raw_after = q.get("after", q.get("at", ["0"]))[0] or "0"
        if not raw_after.isdigit() or len(raw_after) > 18:
            self._send(HTTPStatus.BAD_REQUEST, f"after/at must be a frame number, got {raw_after[:40]!r}\n".encode(), "text/plain")
            return
        route = {"/": self._page, "/frame.seq": self._frame_seq, "/frame.jpg": self._frame, "/snapshot.jpg": self._snapshot,
                 "/stream.mjpg": self._stream, "/status.json": self._status}.get(url.path, self._not_found)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            route(int(raw_after))

    def _page(self, _after: int) -> None:
        self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")

    def _frame_seq(self, after: int) -> None:
        got = self.viewer.next_frame(after)
        self._send(HTTPStatus.OK if got else HTTPStatus.SERVICE_UNAVAILABLE, str(got[0] if got else after).encode(), "text/plain")

    def _frame(self, at: int) -> None:
        self._jpeg(self.viewer.next_frame(at - 1 if at else self.viewer.frame_no))

    def _snapshot(self, _after: int) -> None:
        self._jpeg(self.viewer.next_frame(self.viewer.frame_no))

    def _jpeg(self, got: tuple[int, bytes] | None) -> None:
        if got is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"no frame yet\n", "text/plain")
        else:
            self._send(HTTPStatus.OK, got[1], "image/jpeg", {"X-Frame": str(got[0])})

    def _status(self, _after: int) -> None:
        self._send(HTTPStatus.OK, json.dumps(self.viewer.status()).encode(), "application/json")

    def _not_found(self, _after: int) -> None:
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _stream(self, _after: int) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        seen = self.viewer.frame_no
        while not self.viewer.stopping:
            got = self.viewer.next_frame(seen)
            if got is None:
                continue
            seen, jpeg = got
            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode() + b"\r\n\r\n"
                             + jpeg + b"\r\n")


def _handler(viewer: Viewer) -> type[_Handler]:
    """A handler class bound to ``viewer`` (http.server makes one handler object per request)."""
    return type("Handler", (_Handler,), {"viewer": viewer})
