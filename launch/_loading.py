"""Loading a launch file: YAML in, ``$(arg ...)`` substituted, includes followed, into a Graph.

Includes are bounded (MAX_INCLUDE_DEPTH deep, MAX_INCLUDES in all); an included file's nodes
and topics are prefixed with its namespace, and its nodes' relative paths start from its own
folder. The schema itself (what each key may hold) is ``_schema.py``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shmlaunch.transport import validate_graph_name

from ._replicas import expand_replicas
from ._schema import (
    INCLUDE_KEYS,
    NODE_NAME_RE,
    TOP_KEYS,
    Graph,
    LaunchFileError,
    NodeSpec,
    ns_join,
    parse_bridge,
    parse_node,
    parse_record,
    parse_topic,
    unknown_keys,
)
from ._yaml import LineDict, LineList, Problems, line_of, read_yaml

MAX_INCLUDE_DEPTH = 8
MAX_INCLUDES = 64
_ARG_RE = re.compile(r"\$\(arg ([A-Za-z_][A-Za-z0-9_]*)\)")


def _substitute(value, args: dict[str, Any], used: set, problems: Problems, line: int, key: str):
    """Replace $(arg NAME) in every string inside ``value``."""
    if isinstance(value, str):
        whole = _ARG_RE.fullmatch(value.strip())
        if whole:
            name = whole.group(1)
            if name not in args:
                problems.add(line, f"{key}: unknown launch argument {name!r} in {value!r} (declare it under 'args:')")
                return value
            used.add(name)
            return args[name]

        def repl(m):
            if m.group(1) not in args:
                problems.add(line, f"{key}: unknown launch argument {m.group(1)!r} in {value!r} (declare it under 'args:')")
                return m.group(0)
            used.add(m.group(1))
            return str(args[m.group(1)])

        return _ARG_RE.sub(repl, value)
    if isinstance(value, dict):
        out = LineDict()
        out.line, out.key_lines = getattr(value, "line", line), getattr(value, "key_lines", {})
        for k, v in value.items():
            out[k] = _substitute(v, args, used, problems, line_of(value, k), f"{key}.{k}")
        return out
    if isinstance(value, list):
        out = LineList(_substitute(v, args, used, problems, getattr(value, "line", line), key) for v in value)
        out.line = getattr(value, "line", line)
        return out
    return value


def _load(path: Path, cli_args: dict[str, Any], ns: str, graph: Graph, problems: Problems, depth: int, top: bool) -> None:
    doc = read_yaml(path, problems, TOP_KEYS)
    if doc is None:
        return
    unknown_keys(doc, TOP_KEYS, "the launch file", problems)
    doc = _substitute(doc, _launch_args(doc, cli_args, top, problems), set(), problems, 1, "")
    if top:
        _graph_name(doc, graph, problems)
    _load_topics(doc, ns, graph, problems)
    _load_nodes(doc, path, ns, graph, problems)
    _load_includes(doc, path, ns, graph, problems, depth)
    if "record" in doc:
        _load_record(doc, path, ns, graph, problems)
    if "bridge" in doc:
        _load_bridge(doc, path, graph, problems, top)


def _load_bridge(doc: dict, path: Path, graph: Graph, problems: Problems, top: bool) -> None:
    """``bridge:``: the top file's only (one zenoh session per host), once every topic is known."""
    if not top:
        problems.add(line_of(doc, "bridge"), "'bridge' belongs in the top launch file (one bridge per graph), not in an included one")
        return
    spec = parse_bridge(doc["bridge"], graph.name, graph.topics, problems, line_of(doc, "bridge"), path.resolve().parent)
    _add_section_node(doc, "bridge", spec, path, graph, problems, "one bridge per graph")


def _load_record(doc: dict, path: Path, ns: str, graph: Graph, problems: Problems) -> None:
    """``record:``, once the file's topics (its includes' too) are known. One per graph."""
    spec = parse_record(doc["record"], ns, graph.topics, problems, line_of(doc, "record"))
    _add_section_node(doc, "record", spec, path, graph, problems, "one recording per graph")


def _add_section_node(doc: dict, key: str, spec: NodeSpec | None, path: Path, graph: Graph, problems: Problems, rule: str) -> None:
    """The node a section (``record:``, ``bridge:``) runs, added under its fixed name, once."""
    if spec is None:
        return
    if spec.name in graph.nodes:
        problems.add(line_of(doc, key), f"'{key}' runs a node named {spec.name!r}, and the graph has one already "
                     f"({graph.nodes[spec.name].where}): {rule}")
        return
    spec.base_dir = str(path.resolve().parent)
    graph.nodes[spec.name] = spec


def _launch_args(doc: dict, cli_args: dict[str, Any], top: bool, problems: Problems) -> dict[str, Any]:
    """The file's declared arguments with what the command line (or the include) sets."""
    declared = doc.get("args") or {}
    if not isinstance(declared, dict):
        problems.add(line_of(doc, "args"), f"'args' must map argument names to defaults, got {declared!r}")
        declared = {}
    for key in cli_args:
        if key not in declared:
            where = "the command line" if top else "the include"
            problems.add(line_of(doc, "args"), f"launch argument {key!r} from {where} is not declared under 'args:' "
                         f"(declared: {', '.join(sorted(declared)) or 'none'})")
    args = {**declared, **cli_args}
    # a default may use other arguments ($(arg width) in a default): resolved in as many passes as
    # there are arguments; what still refers to an argument after that is a cycle
    for _ in range(len(args)):
        pending = [k for k, v in args.items() if isinstance(v, str) and _ARG_RE.search(v)]
        if not pending:
            break
        for key in pending:
            args[key] = _substitute(args[key], args, set(), problems,
                                    line_of(declared, key) if key in declared else line_of(doc, "args"), f"args.{key}")
    for key, value in args.items():
        if isinstance(value, str) and _ARG_RE.search(value):
            problems.add(line_of(declared, key) if key in declared else line_of(doc, "args"),
                         f"args.{key}: its value {value!r} refers back to itself through $(arg ...)")
            break
    return args


def _graph_name(doc: dict, graph: Graph, problems: Problems) -> None:
    name = doc.get("name")
    try:
        graph.name = validate_graph_name(name)
    except ValueError:
        shown = name[:40] + "..." if isinstance(name, str) and len(name) > 40 else name
        problems.add(line_of(doc, "name"), f"'name' must be the graph's name (1 to 100 letters, digits, '_', '-'), got {shown!r}")


def _section(doc: dict, key: str, kind: type, what: str, problems: Problems):
    value = doc.get(key) or kind()
    if not isinstance(value, kind):
        problems.add(line_of(doc, key), f"'{key}' must be {what}, got {value!r}")
        return kind()
    return value


def _load_topics(doc: dict, ns: str, graph: Graph, problems: Problems) -> None:
    topics = _section(doc, "topics", dict, "a mapping of topic names", problems)
    for tname, body in topics.items():
        line = line_of(topics, tname)
        spec = parse_topic(ns_join(ns, str(tname)), body, problems, line)
        if spec is None:
            graph.unparsed.add(ns_join(ns, str(tname)))
            continue
        if spec.name in graph.topics:
            problems.add(line, f"topic {spec.name!r} is declared twice (first at {graph.topics[spec.name].where})")
        graph.topics[spec.name] = spec


def _load_nodes(doc: dict, path: Path, ns: str, graph: Graph, problems: Problems) -> None:
    nodes = _section(doc, "nodes", dict, "a mapping of node names", problems)
    for nname, body in nodes.items():
        line = line_of(nodes, nname)
        spec = parse_node(str(nname), body, ns, problems, line)
        if spec is None:
            continue
        spec.base_dir = str(path.resolve().parent)
        if spec.name in graph.nodes:
            problems.add(line, f"node {spec.name!r} is declared twice (first at {graph.nodes[spec.name].where})")
        graph.nodes[spec.name] = spec


def _load_includes(doc: dict, path: Path, ns: str, graph: Graph, problems: Problems, depth: int) -> None:
    for inc in _section(doc, "include", list, "a list of {file, namespace, args}", problems):
        if problems.includes.exhausted:
            return
        line = getattr(inc, "line", line_of(doc, "include"))
        if not isinstance(inc, dict) or "file" not in inc:
            problems.add(line, f"include: each entry needs 'file' (and optionally 'namespace', 'args'), got {inc!r}")
            continue
        unknown_keys(inc, INCLUDE_KEYS, "an include", problems)
        if not _within_include_bounds(inc, depth, problems, line):
            return
        inc_ns = inc.get("namespace") or ""
        if inc_ns and not NODE_NAME_RE.fullmatch(str(inc_ns)):
            problems.add(line, f"include: invalid namespace {inc_ns!r}")
            continue
        target = _include_path(path, str(inc["file"]))
        sub = Problems(str(target), problems.includes)
        _load(target, dict(inc.get("args") or {}), ns_join(ns, str(inc_ns)), graph, sub, depth + 1, top=False)
        problems.items.extend(sub.items)


def _include_path(including: Path, name: str) -> Path:
    """An included file: relative to the including file's folder; a bare name found nowhere there
    is one of shmlaunch's bundled launch files (``include: [{file: hands.yaml}]`` works anywhere)."""
    path = including.parent / name
    bundled = BUNDLED / name
    if not path.exists() and "/" not in name and bundled.is_file():
        return bundled
    return path


def _within_include_bounds(inc: dict, depth: int, problems: Problems, line: int) -> bool:
    """Count one more include; past a bound say so once, and stop every file reading further."""
    budget = problems.includes
    budget.count += 1
    if depth < MAX_INCLUDE_DEPTH and budget.count <= MAX_INCLUDES:
        return True
    budget.exhausted = True
    why = (f"nested more than {MAX_INCLUDE_DEPTH} deep" if depth >= MAX_INCLUDE_DEPTH
           else f"would be include number {budget.count}; a graph may include at most {MAX_INCLUDES} files in all")
    problems.add(line, f"include: {inc['file']!r} {why} (an include loop?)")
    return False


def load_launch_file(path: str | Path, args: dict[str, Any] | None = None) -> Graph:
    """Parse and validate a launch file (and its includes); LaunchFileError lists every problem."""
    path = Path(path)
    problems = Problems(str(path))
    graph = Graph(name="", file=str(path), topics={}, nodes={})
    _load(path, dict(args or {}), "", graph, problems, 0, top=True)
    if not problems.items and not graph.nodes:
        problems.add(1, "the launch file declares no nodes")
    if problems.items:
        raise LaunchFileError(problems.items + _consistency_of_what_parsed(graph))
    expand_replicas(graph)
    return graph


def _consistency_of_what_parsed(graph: Graph) -> list[str]:
    """check_graph's errors for the nodes and topics that did parse, so that a file with problems
    of both kinds hears of them all at once (never "undeclared" for a topic whose declaration
    was only wrong)."""
    if not graph.nodes:
        return []
    from ._check import check_graph

    expand_replicas(graph)
    errors, _ = check_graph(graph)
    return [e for e in errors if not any(f"topic {name!r}" in e for name in graph.unparsed)]


@dataclass(frozen=True)
class LaunchArgument:
    """One argument a launch file declares under ``args:``: its default and the comment on its line."""

    name: str
    default: Any
    comment: str


def launch_arguments(path: str | Path) -> list[LaunchArgument]:
    """The launch arguments ``path`` declares, in file order (what ``shmlaunch FILE --help`` lists).
    LaunchFileError when the file cannot be read as a launch file."""
    path = Path(path)
    problems = Problems(str(path))
    doc = read_yaml(path, problems, TOP_KEYS)
    if problems.items:
        raise LaunchFileError(problems.items)
    declared = (doc or {}).get("args") or {}
    if not isinstance(declared, dict):
        return []
    lines = path.read_text(encoding="utf-8").splitlines()  # read_yaml has bounded and decoded it already
    out = []
    for name, default in declared.items():
        line = line_of(declared, name)
        text = lines[line - 1] if 0 < line <= len(lines) else ""
        _, hash_mark, comment = text.partition(" #")
        out.append(LaunchArgument(str(name), default, comment.strip() if hash_mark else ""))
    return out


def parse_launch_args(items: list[str], cwd: Path | None = None) -> dict[str, Any]:
    """``key:=value`` command-line launch arguments (values typed as YAML scalars).

    With ``cwd`` (the directory the command runs in), a value that is a relative path is made
    absolute against it, since that is where the user who typed it is: a path that exists
    there, or one ending in a file extension (an output to create, ``record:=out.jsonl``).
    Paths written inside a launch file stay relative to that file (its nodes run there).
    """
    out = {}
    for item in items:
        key, sep, value = item.partition(":=")
        if not sep or not key:
            raise LaunchFileError([f"launch argument {item!r}: expected key:=value"])
        try:
            out[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            out[key] = value
        if cwd is not None and isinstance(out[key], str):
            out[key] = _from_cwd(out[key], cwd)
    return out


#: shmlaunch's own launch files, found by bare name (``shmlaunch hands.yaml``, includes)
BUNDLED = Path(__file__).parent
_FILE_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,9}$")


def _from_cwd(value: str, cwd: Path) -> str:
    if not value or "://" in value or os.path.isabs(value) or value.startswith("~"):
        return value
    path = cwd / value
    if path.exists() or (_FILE_EXTENSION.search(value) and path.parent.is_dir()):
        return str(path.resolve())
    return value
