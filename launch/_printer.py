"""The one printer every child's output goes through: ``{time} {node:<w}| {line}``.

On a terminal, each node gets a colour and lines carry the time; otherwise (journald, a log
file, a pipe) lines are plain ``{node:<w}| {line}``, since those add their own timestamps.
Bytes are decoded with errors="replace": a node printing garbage never crashes the launcher.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_COLOURS = ["36", "33", "32", "35", "34", "91", "96", "93", "92", "95"]


class Printer:
    def __init__(self, names: list[str], stream: TextIO | None = None, colour: bool | None = None, clock=time.time) -> None:
        self.stream = stream or sys.stdout
        self.colour = self.stream.isatty() if colour is None else colour
        self.width = max([len(n) for n in names] + [len("shmlaunch")])
        self._colours = {n: _COLOURS[i % len(_COLOURS)] for i, n in enumerate(["shmlaunch", *names])}
        self._partial: dict[str, bytes] = {}
        self.clock = clock

    def line(self, name: str, text: str) -> None:
        prefix = f"{name:<{self.width}}| "
        if self.colour:
            t = time.strftime("%H:%M:%S", time.localtime(self.clock()))
            prefix = f"\x1b[{self._colours.get(name, '37')}m{t} {prefix}\x1b[0m"
        self.stream.write(prefix + text + "\n")
        self.stream.flush()

    def feed(self, name: str, data: bytes) -> None:
        """Bytes read from a node's output; complete lines are printed, the rest waits."""
        buf = self._partial.get(name, b"") + data
        *lines, rest = buf.split(b"\n")
        for raw in lines:
            self.line(name, raw.rstrip(b"\r").decode("utf-8", errors="replace"))
        self._partial[name] = rest

    def flush(self, name: str) -> None:
        """The node's output ended: print what is left of its last line."""
        rest = self._partial.pop(name, b"")
        if rest:
            self.line(name, rest.decode("utf-8", errors="replace"))
