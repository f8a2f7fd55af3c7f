"""The Node base class: the whole lifecycle of a node lives in this module.

A node is a subclass of ``Node``. It declares parameters with ``Param``, opens publishers and
subscriptions by *port name* in ``setup()`` (the launch file maps ports to topics, as ROS
remapping does; an unmapped port uses its own name as the topic), and reacts in callbacks
and timers. ``run()`` is the whole life: setup, spin, teardown, with SIGINT/SIGTERM ending
the spin promptly and every held slot released on the way out.

    class Doubler(Node):
        factor = Param(2.0, "what to multiply by")

        def setup(self):
            self.out = self.publisher("out", dtype="float32", shape=(4,))
            self.subscribe("in", self.on_input)

        def on_input(self, msg):
            self.out.publish(msg.data * self.factor)

Spinning: one thread sleeps on every subscription's futex word at once (futex_waitv) with a
timeout at the next timer's deadline, so an idle node uses no CPU and a message is handled
microseconds after it is published. Callbacks run one at a time on that thread.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from shmlaunch import _platform as backend
from shmlaunch.transport import (
    Message,
    Reader,
    TransportError,
    Writer,
    default_runtime_dir,
    record_callback,
    validate_topic_name,
    wait_any,
)

from ._heartbeat import HEARTBEAT, beat
from ._params import declared_params, resolve_params

#: Exit codes of a node process (the launcher reads them).
EXIT_OK = 0
EXIT_FAILED = 1  # a callback or teardown raised
EXIT_BAD_CONFIG = 2  # unknown or ill-typed parameter, bad port mapping
EXIT_SETUP_FAILED = 3  # setup() raised: not respawned, the launcher stops the graph


class NodeError(Exception):
    """Raise from a callback for an expected failure (a source that lost data): the node stops
    with EXIT_FAILED and one log line, without a traceback."""


class NodeSetupError(Exception):
    """Raise from setup() for an expected failure (a missing camera, a bad source): the node
    exits with EXIT_SETUP_FAILED and one log line, without a traceback."""


class Subscription:
    """A port's reader and the callback that gets each new message (newest first, none queued).

    A port subscribed to a replicated topic (the outputs of a node with ``replicas: N``) has
    one reader per replica's copy and delivers in input order: by each message's
    ``source_seq``, dropping one that arrives after a newer one was delivered.
    """

    def __init__(self, port: str, topic: str, readers: list[Reader], callback: Callable[[Message], Any], ordered: bool) -> None:
        self.port = port
        self.topic = topic
        self.readers = readers
        self.callback = callback
        self.ordered = ordered
        self.last_key = 0
        self.dropped_out_of_order = 0
        self.trace_ids = [r.trace_id for r in readers]  # each reader's topic, as trace records name it

    def poll(self) -> list[tuple[Message, int]]:
        """The new messages to deliver now, in order, each with its topic's trace id."""
        msgs = [(m, t) for r, t in zip(self.readers, self.trace_ids, strict=True) if (m := r.receive_nowait()) is not None]
        if not self.ordered:
            return msgs
        out = []
        for m, t in sorted(msgs, key=lambda mt: mt[0].source_seq or mt[0].seq):
            key = m.source_seq or m.seq
            if key <= self.last_key:
                self.dropped_out_of_order += 1
                m.release()
                continue
            self.last_key = key
            out.append((m, t))
        return out

    def statistics(self):
        return self.readers[0].statistics() if len(self.readers) == 1 else [r.statistics() for r in self.readers]


class Timer:
    """Calls ``callback()`` every ``period`` seconds on the node's thread; ticks missed while a
    callback ran long are skipped, not queued."""

    def __init__(self, period: float, callback: Callable[[], Any]) -> None:
        if not period > 0:
            raise ValueError(f"invalid timer period {period!r}: a positive number of seconds")
        self.period = float(period)
        self.callback = callback
        self.next = time.monotonic() + self.period
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Node:
    """Base class of every node. Override ``setup()`` (and ``teardown()``); see the module docs.

    ``name`` defaults to the class name in lower case; ``params`` are checked against the
    class's Param declarations; ``publish`` / ``subscribe`` map port names to topic names;
    ``runtime_dir`` is the graph's (default: ``$SHMLAUNCH_RUNTIME_DIR``); ``groups`` and
    ``merge`` are set by the launcher for replicated nodes and their consumers.

    ``publishes`` / ``subscribes`` optionally tell the launcher's pre-flight check what each
    port needs of its topic: ``{"image": {"dtype": "uint8", "ndim": 3}}`` (keys: dtype,
    shape, ndim, capacity, min_capacity, pool).
    """

    publishes: ClassVar[dict[str, dict]] = {}
    subscribes: ClassVar[dict[str, dict]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        """A Param named like a Node attribute (``log``, ``name``, ``timer`` ...) would silently
        break the node: refuse it when the class is defined."""
        super().__init_subclass__(**kwargs)
        for name in declared_params(cls):
            if name in _NODE_NAMES:
                raise TypeError(f"Param {name!r} of {cls.__name__} shadows Node.{name}; give the parameter another name")

    def __init__(
        self,
        name: str | None = None,
        params: dict[str, Any] | None = None,
        *,
        publish: dict[str, str] | None = None,
        subscribe: dict[str, str] | None = None,
        runtime_dir: str | Path | None = None,
        groups: dict[str, str] | None = None,
        merge: dict[str, list[str]] | None = None,
    ) -> None:
        self._node_name = name or type(self).__name__.lower()
        self._groups = dict(groups or {})  # port -> competing-consumer group (this node is one of several replicas)
        self._merge = dict(merge or {})  # port -> the copies of a replicated topic, read in input order
        self._param_values = resolve_params(type(self), self._node_name, params or {})
        self._publish_map = dict(publish or {})
        self._subscribe_map = dict(subscribe or {})
        self.runtime_dir = Path(runtime_dir) if runtime_dir else default_runtime_dir()
        self.log = logging.getLogger(f"shmlaunch.node.{self._node_name}")
        self._writers: list[Writer] = []
        self._subscriptions: list[Subscription] = []
        self._timers: list[Timer] = []
        self._stop_reason: str | None = None

    # ----- hooks
    @classmethod
    def deep_check(cls, params: dict[str, Any]) -> str:
        """Load what this node needs to run (models, native libraries, devices) with ``params``
        (resolved, the launch file's), open no topic, and say in one line what was loaded; raise
        to fail. ``shmlaunch check --deep`` calls it in a process of its own, so a library that
        aborts the process is found before the graph runs. The default loads nothing."""
        return ""

    def setup(self) -> None:
        """Open publishers and subscriptions, start timers. Runs once before spinning."""

    def teardown(self) -> None:
        """Release what setup() acquired beyond ports (devices, files). Runs once at the end."""

    # ----- ports
    @property
    def name(self) -> str:
        return self._node_name

    @property
    def params(self) -> dict[str, Any]:
        """Every parameter's value in force (a copy)."""
        return dict(self._param_values)

    def is_mapped(self, port: str, direction: str = "subscribe") -> bool:
        """True when the launch file (or the caller) mapped ``port`` to a topic: an optional
        port left unmapped is one the node may do without."""
        return port in (self._publish_map if direction == "publish" else self._subscribe_map)

    def topic_for(self, port: str, direction: str) -> str:
        mapping = self._publish_map if direction == "publish" else self._subscribe_map
        return validate_topic_name(mapping.get(port, port))

    def publisher(self, port: str, *, capacity: int | None = None, pool: int | None = None, dtype=None, shape=None,
                  message: str | None = None) -> Writer:
        """The writer of the topic mapped to ``port``. What is declared here must agree with
        the topic (as the launcher created it), or TopicMismatchError names both values.
        ``message`` names the message type it sends, so tools can decode the topic."""
        writer = Writer(self.topic_for(port, "publish"), capacity, pool, dtype=dtype, shape=shape, runtime_dir=self.runtime_dir,
                        message=message)
        self._writers.append(writer)
        return writer

    def subscribe(self, port: str, callback: Callable[[Message], Any], *, capacity=None, pool=None, dtype=None, shape=None,
                  max_age: float | None = None) -> Subscription:
        """Call ``callback(msg)`` with each newest message of the topic mapped to ``port``.

        The message is held (its slot is not overwritten) until the callback returns; call
        ``msg.copy()`` to keep it longer. With ``max_age`` (seconds), messages published longer
        ago than that are skipped and counted as stale (``statistics().stale``).
        """
        topic = self.topic_for(port, "subscribe")
        topics = self._merge.get(port, [topic])
        readers = []
        try:
            for t in topics:
                readers.append(Reader(t, capacity=capacity, pool=pool, dtype=dtype, shape=shape, runtime_dir=self.runtime_dir,
                                      max_age=max_age, group=self._groups.get(port)))
        except BaseException:
            for r in readers:
                r.close()
            raise
        sub = Subscription(port, topic, readers, callback, ordered=port in self._merge)
        self._subscriptions.append(sub)
        return sub

    def timer(self, period: float, callback: Callable[[], Any]) -> Timer:
        """Call ``callback()`` every ``period`` seconds."""
        t = Timer(period, callback)
        self._timers.append(t)
        return t

    # ----- running
    def shutdown(self, reason: str = "requested") -> None:
        """Ask the spin loop to end after the current callback (safe from callbacks and signals)."""
        if self._stop_reason is None:
            self._stop_reason = reason

    @property
    def stopping(self) -> bool:
        return self._stop_reason is not None

    def spin_once(self, timeout: float | None = None) -> bool:
        """Run every due timer and every subscription with a new message; if none, sleep up to
        ``timeout`` (None: until the next timer or message). Returns True if anything ran."""
        ran = False
        now = time.monotonic()
        for t in self._timers:
            if not t.cancelled and now >= t.next:
                t.next += t.period * (1 + int((now - t.next) // t.period))
                t.callback()
                ran = True
        for sub in self._subscriptions:
            for msg, trace_id in sub.poll():
                self._handle(sub, msg, trace_id)
                ran = True
            if self._stop_reason is not None:
                return ran
        if ran:
            return True
        live = [t.next for t in self._timers if not t.cancelled]
        if live:
            until_timer = max(min(live) - time.monotonic(), 0.0)
            timeout = until_timer if timeout is None else min(timeout, until_timer)
        readers = [r for s in self._subscriptions for r in s.readers]
        if readers:
            wait_any(readers, timeout)
        elif timeout is None:
            backend.wait_for_signal()
        else:
            time.sleep(timeout)
        return False

    def _handle(self, sub: Subscription, msg: Message, trace_id: int) -> None:
        """One callback: while it runs, what the node publishes names ``msg`` as its input
        (``source_seq``, unless the call gives one), and an attached tracer sees its start and end."""
        for w in self._writers:
            w.default_source_seq = msg.seq
        with msg:
            record_callback(trace_id, msg, end=False)
            try:
                sub.callback(msg)
            finally:
                record_callback(trace_id, msg, end=True)
                for w in self._writers:
                    w.default_source_seq = 0

    def spin(self, duration: float | None = None) -> None:
        """Handle messages and timers until shutdown(), a signal, or ``duration`` seconds.
        Wakes at least every HEARTBEAT seconds to tell the launcher it is alive."""
        end = None if duration is None else time.monotonic() + duration
        next_beat = 0.0
        while self._stop_reason is None:
            now = time.monotonic()
            if now >= next_beat:
                beat(self._node_name)
                next_beat = now + HEARTBEAT
            wait = next_beat - now
            if end is not None:
                left = end - now
                if left <= 0:
                    self.shutdown(f"ran for {duration} s")
                    break
                wait = min(wait, left)
            self.spin_once(wait)

    def close(self) -> None:
        """Close every port: held slots are released, the topics stay for the rest of the graph."""
        for sub in self._subscriptions:
            for r in sub.readers:
                r.close()
        for w in self._writers:
            w.close()
        self._subscriptions.clear()
        self._writers.clear()
        self._timers.clear()

    def run(self, duration: float | None = None) -> int:
        """The node's whole life in this process: setup, spin, teardown. Returns an exit code.

        SIGINT and SIGTERM (Windows: also Ctrl-Break and the launcher's stop request) end the
        spin (after the running callback); teardown always runs once setup succeeded; ports are
        closed whatever happens.
        """

        def on_signal(signum, _frame):
            self.shutdown(signal.Signals(signum).name)

        old = {s: signal.signal(s, on_signal) for s in backend.STOP_SIGNALS}
        stop_listening = backend.listen_for_stop()  # Windows: the launcher's stop request, console or not
        try:
            try:
                self.setup()
            except (NodeSetupError, TransportError) as exc:  # expected, self-explaining: one line, no traceback
                self.log.error("%s", exc)
                return EXIT_SETUP_FAILED
            except Exception:
                self.log.exception("setup() failed")
                return EXIT_SETUP_FAILED
            code = EXIT_OK
            try:
                self.spin(duration)
            except NodeError as exc:
                self.log.error("%s", exc)
                code = EXIT_FAILED
            except Exception:
                self.log.exception("a callback raised; stopping")
                code = EXIT_FAILED
            try:
                self.teardown()
            except Exception:
                self.log.exception("teardown() failed")
                code = EXIT_FAILED
            if code == EXIT_OK:
                self.log.info("stopped (%s)", self._stop_reason)
            return code
        finally:
            self.close()
            stop_listening()
            for s, handler in old.items():
                signal.signal(s, handler)


_NODE_NAMES = {n for n in dir(Node) if not n.startswith("__")} | {"log", "runtime_dir"}


def configure_logging(node_name: str | None = None, level: int = logging.INFO) -> None:
    """Log lines to stdout: ``LEVEL message``, prefixed with the node name when run alone
    (under the launcher, the launcher's printer adds the prefix and the time)."""
    handler = logging.StreamHandler(sys.stdout)
    prefix = f"{node_name} | " if node_name else ""
    handler.setFormatter(logging.Formatter(prefix + "%(levelname)s %(message)s"))
    root = logging.getLogger("shmlaunch")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def describe_params(cls) -> str:
    """One line per declared parameter: name, type, default and help (for ``--help-params``)."""
    lines = []
    for name, p in sorted(declared_params(cls).items()):
        default = "required" if p.required else f"default {p.default!r}"
        allowed = f", {p.allowed()}" if p.allowed() else ""
        lines.append(f"  {name} ({p.type_name()}{allowed}, {default}): {p.help}")
    return "\n".join(lines) or "  (no parameters)"
