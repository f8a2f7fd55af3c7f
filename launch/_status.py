"""The launcher's live status view on a terminal: one table, redrawn in place every second.

Node output keeps scrolling above it; the table (nodes with state, CPU%, restarts; topics
with rate and last sequence) stays at the bottom. Only on a terminal: under journald or in
a file the launcher prints plain lines.
"""

from __future__ import annotations

from pathlib import Path

from ._introspect import Sampler, node_rows, table, topic_rows
from ._printer import Printer
from ._schema import Graph
from ._state import GraphState

REFRESH = 1.0


class StatusView:
    def __init__(self, printer: Printer, runtime_dir: Path, graph: Graph) -> None:
        self.printer = printer
        self.runtime_dir = runtime_dir
        self.graph = graph
        self.sampler = Sampler.start()
        self.next_refresh = 0.0
        self.topics: dict = {}  # topic name -> open Topic (an observer), kept between refreshes

    def refresh(self, state: GraphState, now: float) -> None:
        nodes = table(node_rows(state, self.sampler, now))
        topics = table(topic_rows(self.runtime_dir, self.sampler, now, self.topics)) if self.graph.topics else []
        self.sampler.when = now
        self.next_refresh = now + REFRESH
        rule = "-" * max(len(x) for x in nodes + topics)
        self.printer.set_footer([rule, *nodes, *topics, rule])

    def clear(self) -> None:
        for topic in self.topics.values():
            topic.close()
        self.topics.clear()
        self.printer.set_footer([])
