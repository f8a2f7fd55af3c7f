"""shmlaunch: a graph of processes joined by shared-memory pool topics.

    shmlaunch FILE [key:=value ...] [--duration S]     run a graph (also: shmlaunch launch FILE)
              [--quiet] [--log-dir DIR] [--no-status]
    shmlaunch check FILE [key:=value ...] [--deep]     validate a launch file, start nothing (--deep: load each node's models)
    shmlaunch run module:Class [--graph G] [--param k=v ...]   run one node alone, attached to a running graph
    shmlaunch list                                     running graphs
    shmlaunch node list [GRAPH | --graph G]            nodes: pid, state, restarts, CPU%, RSS, CPUs, nice
    shmlaunch topic list [GRAPH | --graph G] [--remote]  topics: type, writer, last seq, Hz, MB/s, readers
                                                       (--remote: the topics other hosts export)
    shmlaunch bridge status [GRAPH | --graph G]        the bridge: peers, topics in and out, rates, drops
    shmlaunch topic echo TOPIC [--graph G] [-n N]      messages, decoded where the type is known
    shmlaunch topic hz TOPIC [--graph G]               publish rate, once a second
    shmlaunch topic stats TOPIC [--graph G]            writer and per-reader counters
    shmlaunch stop [GRAPH | --graph G]                 stop a running graph cleanly
    shmlaunch record FILE.mcap [TOPIC ...] [--graph G]  record topics to MCAP (Foxglove opens it)
              [--duration S] [--split-size MB] [--split-duration S] [--compression none|lz4|zstd] [--serve [PORT]]
    shmlaunch record --recover IN.mcap OUT.mcap        make a killed recorder's file complete
    shmlaunch play FILE.mcap [--rate R] [--loop] [--start S] [--topics T ...] [--remap A:=B] [--graph G]
    shmlaunch info FILE.mcap                           topics, schemas, counts, rates, duration of a recording
    shmlaunch trace [GRAPH | --graph G] [--duration S] [--out trace.json] [--summary table.json]
                                                       where each hop's latency goes, live (Perfetto trace with --out)
    shmlaunch systemd FILE [--user] [-o UNIT]          a systemd unit for the graph
    shmlaunch FILE --help                              the launch arguments FILE declares, with defaults
    shmlaunch --version

Exit codes: 0 clean stop (including SIGINT/SIGTERM and --duration); 1 a node failed or a
required node died (or, for the tools, no such graph or topic); 2 a bad launch file,
argument or parameter (nothing was started).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import sys
from pathlib import Path

from shmlaunch.nodes import (
    EXIT_BAD_CONFIG,
    NodeClassError,
    ParamError,
    configure_logging,
    describe_params,
    load_node_class,
    parse_cli_value,
)
from shmlaunch.nodes.recording import RecordingError, check_record_extra
from shmlaunch.transport import LAYOUT_VERSION, TransportError, validate_graph_name

from . import _tools
from ._bridge_tools import bridge
from ._check import check_graph
from ._deep_check import deep_check_graph
from ._exits import EXIT_FAILED, error
from ._graphdir import GraphRunningError, NoRoomError
from ._launcher import Launcher
from ._loading import BUNDLED, launch_arguments, load_launch_file, parse_launch_args
from ._mcap_tools import info
from ._play import play
from ._printer import Printer
from ._record import record
from ._schema import LaunchFileError
from ._systemd import unit_text
from ._trace import trace


def resolve_launch_file(name: str) -> Path:
    """A path as given, else a launch file shipped with shmlaunch (``launch/hands.yaml`` works
    from any directory once installed)."""
    path = Path(name)
    if path.exists():
        return path
    packaged = BUNDLED / path.name
    return packaged if packaged.exists() else path


def _file_arguments(name: str) -> str:
    """The launch arguments a launch file declares: name, default and its comment."""
    path = resolve_launch_file(name)
    try:
        args = launch_arguments(path)
    except (LaunchFileError, OSError) as exc:
        return f"\n{exc}"
    if not args:
        return f"\n{path} declares no launch arguments."
    width = max(len(a.name) for a in args)
    lines = [f"\nlaunch arguments of {path} (set with name:=value):"]
    lines += [f"  {a.name:{width}}  default {a.default!r:14}  {a.comment}".rstrip() for a in args]
    return "\n".join(lines)


def _launch(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="shmlaunch", description="Run a graph from a launch file.")
    ap.add_argument("file", help="launch file (YAML)")
    ap.add_argument("args", nargs="*", help="launch arguments, key:=value")
    ap.add_argument("--duration", type=float, help="stop cleanly after this many seconds")
    ap.add_argument("--runtime-dir", help="override the graph's runtime directory (default <SHM_ROOT>/shmlaunch-<user>-<name>; Linux: /dev/shm)")
    ap.add_argument("--quiet", action="store_true", help="do not print the nodes' output (the launcher's own lines stay)")
    ap.add_argument("--log-dir", help="also append each node's output to DIR/<node>.log")
    ap.add_argument("--no-status", action="store_true", help="no live status table, even on a terminal")
    ap.add_argument("--name", help="run the graph under this name instead of the file's (two copies of one file side by side)")
    if any(a in ("-h", "--help") for a in argv) and argv and not argv[0].startswith("-"):
        ap.print_help()
        print(_file_arguments(argv[0]))
        return 0
    ns = ap.parse_intermixed_args(argv)
    try:
        if ns.name is not None:
            validate_graph_name(ns.name)
    except ValueError as exc:
        return error(f"--name: {exc}")
    try:
        graph = load_launch_file(resolve_launch_file(ns.file), parse_launch_args(ns.args, Path.cwd()))
        if ns.name is not None:
            graph.name = ns.name
        printer = Printer(list(graph.nodes), quiet=ns.quiet, log_dir=ns.log_dir)
        return Launcher(graph, printer, duration=ns.duration, runtime_dir=ns.runtime_dir,
                        status=False if ns.no_status else None).run()
    except (LaunchFileError, GraphRunningError, NoRoomError, TransportError) as exc:
        return error(str(exc))
    except OSError as exc:  # e.g. the runtime directory's parent is not writable
        return error(f"{exc.filename or 'shmlaunch'}: {exc.strerror or exc}")


def _check(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="shmlaunch check", description="Validate a launch file; start nothing.")
    ap.add_argument("file")
    ap.add_argument("args", nargs="*", help="launch arguments, key:=value")
    ap.add_argument("--deep", action="store_true", help="also load each node's models and native libraries, each in a process of "
                    "its own (finds a board that cannot run the graph, e.g. MediaPipe on a Raspberry Pi 4)")
    ns = ap.parse_intermixed_args(argv)
    try:
        graph = load_launch_file(resolve_launch_file(ns.file), parse_launch_args(ns.args, Path.cwd()))
    except LaunchFileError as exc:
        return error(str(exc))
    errors, warnings = check_graph(graph)
    for w in warnings:
        print(f"shmlaunch: warning: {w}", file=sys.stderr)
    if errors:
        return error("\n".join(errors))
    if ns.deep:
        errors, reports = deep_check_graph(graph)
        for line in reports:
            print(f"{graph.file}: {line}")
        if errors:
            return error("\n".join(errors), EXIT_FAILED)
    print(f"{graph.file}: graph {graph.name!r} is consistent: {len(graph.nodes)} nodes, {len(graph.topics)} topics")
    return 0


def _run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="shmlaunch run", description="Run one node alone, attached to a running graph's topics "
                                 "(--graph, or the only running graph), else to $SHMLAUNCH_RUNTIME_DIR or the 'default' graph.")
    ap.add_argument("node", help="module:Class of a Node subclass")
    ap.add_argument("--graph", help="the running graph whose topics to use (default: the only running graph, if exactly one runs)")
    ap.add_argument("--name", help="node name (default: the class name in lower case)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="set a parameter (repeatable)")
    ap.add_argument("--publish", action="append", default=[], metavar="PORT=TOPIC", help="map a publisher port to a topic")
    ap.add_argument("--subscribe", action="append", default=[], metavar="PORT=TOPIC", help="map a subscription port to a topic")
    ap.add_argument("--duration", type=float, help="stop cleanly after this many seconds")
    ap.add_argument("--help-params", action="store_true", help="list the node's parameters and exit")
    ns = ap.parse_intermixed_args(argv)
    if os.getcwd() not in sys.path and "" not in sys.path:  # the installed console script does not look here; python -m does
        sys.path.insert(0, os.getcwd())
    try:
        cls = load_node_class(ns.node)
    except NodeClassError as exc:
        return error(str(exc))
    if ns.help_params:
        print(f"{ns.node} parameters:\n{describe_params(cls)}")
        return 0
    pairs = {}
    for opt, items in (("--param", ns.param), ("--publish", ns.publish), ("--subscribe", ns.subscribe)):
        pairs[opt] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key:
                return error(f"{opt} {item!r}: expected KEY=VALUE")
            pairs[opt][key] = parse_cli_value(value) if opt == "--param" else value
    try:
        runtime_dir = _tools.attach_dir(ns.graph)
    except _tools.NoGraphError as exc:
        return error(str(exc), EXIT_FAILED)
    name = ns.name or cls.__name__.lower()
    configure_logging(name)
    try:
        node = cls(name, pairs["--param"], publish=pairs["--publish"], subscribe=pairs["--subscribe"], runtime_dir=runtime_dir)
    except (ParamError, ValueError) as exc:
        error(str(exc))
        return EXIT_BAD_CONFIG
    return node.run(ns.duration)


def _systemd(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="shmlaunch systemd", description="Write a systemd unit that runs the graph.")
    ap.add_argument("file")
    ap.add_argument("args", nargs="*", help="launch arguments for the unit's command line, key:=value")
    ap.add_argument("--user", action="store_true", help="a user unit (systemctl --user)")
    ap.add_argument("-o", "--output", help="write the unit here (default: standard output)")
    ap.add_argument("--workdir", default=".", help="the graph's working directory, where relative paths such as a recorder's file "
                    "land (default: this directory)")
    ns = ap.parse_intermixed_args(argv)
    try:
        path = resolve_launch_file(ns.file)
        graph = load_launch_file(path, parse_launch_args(ns.args, Path.cwd()))
    except LaunchFileError as exc:
        return error(str(exc))
    if not Path(ns.workdir).is_dir():
        return error(f"--workdir {ns.workdir}: no such directory")
    text = unit_text(graph, path, ns.args, ns.user, Path(ns.workdir))
    if ns.output:
        Path(ns.output).write_text(text)
        print(f"wrote {ns.output}")
    else:
        print(text, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _dispatch(argv)
    except BrokenPipeError:  # `shmlaunch topic echo T | head`: the reader has all it wanted
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor complain at exit
        return 0


def _bundled() -> str:
    """The launch files shipped with shmlaunch, each with the first line of its header comment."""
    lines = ["Bundled launch files (run one by its name from any directory, e.g. shmlaunch hands.yaml):"]
    for path in sorted(BUNDLED.glob("*.yaml")):
        first = path.read_text(encoding="utf-8").splitlines()[:1]
        about = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        lines.append(f"  {path.name:18} {about}")
    lines.append(f"  (in {BUNDLED}; shmlaunch FILE --help lists a file's launch arguments)")
    return "\n".join(lines)


def _version() -> str:
    try:
        version = importlib.metadata.version("shmlaunch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    return f"shmlaunch {version} (segment layout {LAYOUT_VERSION}, Python {platform.python_version()})"


def _dispatch(argv: list[str]) -> int:
    commands = {"run": _run, "check": _check, "launch": _launch, "systemd": _systemd, "list": _tools.list_graphs,
                "node": _tools.node, "topic": _tools.topic, "stop": _tools.stop, "record": record, "play": play, "info": info,
                "bridge": bridge, "trace": trace}
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + _bundled(), flush=True)
        return 0
    if argv[0] == "--version":
        print(_version())
        return 0
    if argv[0] in ("record", "play", "info"):
        try:
            check_record_extra()
        except RecordingError as exc:
            return error(str(exc))
    if argv[0] in commands:
        return commands[argv[0]](argv[1:])
    return _launch(argv)


if __name__ == "__main__":
    sys.exit(main())
