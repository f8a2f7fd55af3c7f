"""``shmlaunch bridge status`` and ``shmlaunch topic list --remote``: what the graph's bridge
reports in ``bridge.json`` (peers, per-topic rates in and out, what other hosts export)."""

from __future__ import annotations

import argparse
import time

from ._exits import EXIT_FAILED, error
from ._introspect import NoGraphError, add_graph_arguments, chosen_graph, read_bridge_status, table

#: A status older than this means the bridge is not running (it writes one every second).
STALE_AFTER = 5.0


def bridge(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="shmlaunch bridge", description="The bridge of a running graph: peers, links, topics in and out.")
    ap.add_argument("action", choices=["status"])
    add_graph_arguments(ap)
    ns = ap.parse_args(argv)
    try:
        g = chosen_graph(ns)
    except NoGraphError as exc:
        return error(str(exc), EXIT_FAILED)
    status = read_bridge_status(g.runtime_dir)
    if status is None:
        return error(f"graph {g.name!r} has no bridge (no 'bridge:' section in {g.file})", EXIT_FAILED)
    print("\n".join(describe_status(status)))
    return 0


def describe_status(s: dict) -> list[str]:
    age = (time.time_ns() - s.get("written_ns", 0)) / 1e9
    alive = f"status {age:.1f} s old" + ("  (STALE: is the bridge running?)" if age > STALE_AFTER else "")
    lines = [f"bridge of graph {s['graph']!r} on host {s['host']!r} (pid {s.get('pid')}, zenoh {s['zid']}; {alive})",
             f"peers: {', '.join(s['peers']) or 'none connected'}", ""]
    rows = [["EXPORT", "STATE", "ENCODE", "HZ OUT", "MB/s", "SENT", "SKIPPED"]]
    rows += [[t, e["state"], e["encode"], f"{e['hz']:.1f}", f"{e['mb_s']:.2f}", str(e["messages"]), str(e["skipped"])]
             for t, e in sorted(s["exports"].items())]
    if len(rows) > 1:
        lines += table(rows) + [""]
    rows = [["IMPORT", "LOCAL TOPIC", "FROM", "STATE", "HZ IN", "MB/s", "RECEIVED", "REPLACED", "LOST", "REJECTED", "REMOTE SEQ", "DETAIL"]]
    rows += [[r, i["local"], i.get("host") or "-", i["state"], f"{i['hz']:.1f}", f"{i['mb_s']:.2f}", str(i["messages"]), str(i["skipped"]),
              str(i.get("lost", 0)), rejected(i.get("rejected") or {}), str(i.get("remote_seq", 0)), i.get("detail") or ""]
             for r, i in sorted(s["imports"].items())]
    if len(rows) > 1:
        lines += table(rows) + [""]
    return lines + remote_lines(s)


def rejected(kinds: dict) -> str:
    """Samples refused, in all and per kind: ``53 (hash 50, stale 3)``."""
    counts = sorted(((int(n), str(k)) for k, n in kinds.items() if isinstance(n, int) and n > 0), reverse=True)
    if not counts:
        return "0"
    return f"{sum(n for n, _k in counts)} ({', '.join(f'{k} {n}' for n, k in counts)})"


def remote_lines(s: dict) -> list[str]:
    """What other hosts export, as the bridge's liveliness subscription sees it."""
    if not s.get("remote"):
        return ["no other host exports a topic (or none is connected)"]
    more = [f"(and {s['remote_ignored']} more announced, not listed)"] if s.get("remote_ignored") else []
    return table([["HOST", "GRAPH", "TOPIC"]] + [[r["host"], r["graph"], r["topic"]] for r in s["remote"]]) + more
