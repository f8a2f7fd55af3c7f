"""The one printer every child's output goes through: ``{time} {node:<w}| {line}``.

On a terminal, each node gets a colour and lines carry the time; otherwise (journald, a log
file, a pipe) lines are plain ``{node:<w}| {line}``, since those add their own timestamps.
Bytes are decoded with errors="replace": a node printing garbage never crashes the launcher,
and a line longer than MAX_LINE bytes is printed in pieces of that size, marked as cut (a node
printing megabytes without a newline costs the launcher no more than MAX_LINE of memory).
If the output stream closes (``shmlaunch FILE | head``), ``broken`` turns True and nothing
more is written there; the launcher then stops the graph cleanly.
``quiet`` keeps node output off the screen (the launcher's own lines stay); ``log_dir``
also appends each node's lines, with the time, to ``<log_dir>/<node>.log``. On a terminal,
a footer (the live status table) can stay below the scrolling lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import TextIO

_COLOURS = ["36", "33", "32", "35", "34", "91", "96", "93", "92", "95"]
#: The longest line kept whole; longer ones are printed in pieces this long.
MAX_LINE = 64 * 1024
CUT_MARK = " [line cut]"


class Printer:
    def __init__(self, names: list[str], stream: TextIO | None = None, colour: bool | None = None, clock=time.time, *,
                 quiet: bool = False, log_dir: str | Path | None = None) -> None:
        self.stream = stream or sys.stdout
        self.colour = self.stream.isatty() if colour is None else colour
        self.width = max([len(n) for n in names] + [len("shmlaunch")])
        self._colours = {n: _COLOURS[i % len(_COLOURS)] for i, n in enumerate(["shmlaunch", *names])}
        self._partial: dict[str, bytes] = {}
        self.clock = clock
        self.quiet = quiet
        self.log_dir = Path(log_dir) if log_dir else None
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self._footer: list[str] = []
        self.broken = False
        self._log_failed = False

    def line(self, name: str, text: str) -> None:
        if self.log_dir and name != "shmlaunch":
            self._log(name, text)
        if self.broken or (self.quiet and name != "shmlaunch"):
            return
        prefix = f"{name:<{self.width}}| "
        if self.colour:
            t = time.strftime("%H:%M:%S", time.localtime(self.clock()))
            prefix = f"\x1b[{self._colours.get(name, '37')}m{t} {prefix}\x1b[0m"
        try:
            self._erase_footer()
            self.stream.write(prefix + text + "\n")
            self._draw_footer()
            self.stream.flush()
        except BrokenPipeError:
            self._close_stream()

    def _log(self, name: str, text: str) -> None:
        """Append to the node's log file; a full or vanished disk costs one warning, not the graph."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.clock()))
        try:
            with open(self.log_dir / f"{name.replace('/', '.')}.log", "a", encoding="utf-8") as f:
                f.write(f"{stamp} {text}\n")
        except OSError as exc:
            if not self._log_failed:
                self._log_failed = True
                self.line("shmlaunch", f"warning: cannot write to {self.log_dir} ({exc.strerror or exc}); the lines are still printed here")
        else:
            self._log_failed = False

    def _close_stream(self) -> None:
        """The reader of our output went away: write nothing more (not even at exit)."""
        self.broken = True
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)

    def set_footer(self, lines: list[str]) -> None:
        """Replace the block kept below the scrolling lines (a terminal only)."""
        if self.broken:
            return
        try:
            self._erase_footer()
            self._footer = list(lines)
            self._draw_footer()
            self.stream.flush()
        except BrokenPipeError:
            self._close_stream()

    def _erase_footer(self) -> None:
        if self._footer:
            self.stream.write(f"\x1b[{len(self._footer)}F\x1b[J")  # up to the footer's first line, clear below

    def _draw_footer(self) -> None:
        for row in self._footer:
            self.stream.write(row + "\n")

    def feed(self, name: str, data: bytes) -> None:
        """Bytes read from a node's output; complete lines are printed, the rest waits."""
        buf = self._partial.get(name, b"") + data
        *lines, rest = buf.split(b"\n")
        for raw in lines:
            self.line(name, raw.rstrip(b"\r").decode("utf-8", errors="replace"))
        while len(rest) >= MAX_LINE:  # bounded: a piece is printed as soon as it is full
            self.line(name, rest[:MAX_LINE].decode("utf-8", errors="replace") + CUT_MARK)
            rest = rest[MAX_LINE:]
        self._partial[name] = rest

    def flush(self, name: str) -> None:
        """The node's output ended: print what is left of its last line."""
        rest = self._partial.pop(name, b"")
        if rest:
            self.line(name, rest.decode("utf-8", errors="replace"))
