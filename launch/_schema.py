"""The launch-file schema: parsing, substitution, includes and validation, in one module.

A launch file is YAML::

    name: hands                          # the graph's name: scopes its runtime directory
    args: {source: auto}                 # launch arguments and their defaults
    topics:
      camera/image:    {dtype: uint8, shape: [720, 1280, 3], pool: 4}
      hands/landmarks: {capacity: 8192, pool: 8}
    nodes:
      camera:
        node: shmlaunch.nodes.camera:Camera      # a Node subclass, or
        # cmd: [./build/bridge, --topic, hands/landmarks]   an executable
        params: {source: $(arg source), width: 1280}
        publish: {image: camera/image}           # port -> topic (or {topic: ..., dtype: ..., ...})
        subscribe: {}
        respawn: {max: 5, delay: 1.0}            # or true / false
        required: false                          # its death stops the graph
        env: {OMP_NUM_THREADS: "1"}
        cwd: .
        cpus: [2, 3]                             # CPUs it may run on ("0-3,6", or "all"); with
                                                 #   replicas, replica i is pinned to the i-th one
        nice: 10                                 # scheduling priority, -20 (first) to 19 (last)
    include:
      - {file: arm.yaml, namespace: left, args: {side: left}}

``$(arg NAME)`` is replaced by the argument's value (``key:=value`` on the command line, else
its default); a string that is only ``$(arg NAME)`` takes the value's YAML type. Included
files' nodes and topics are prefixed with ``namespace/``. Every error names file, line and key.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shmlaunch.transport import TopicConfig, backend, validate_graph_name, validate_topic_name

TOP_KEYS = {"name", "args", "topics", "nodes", "include"}
TOPIC_KEYS = {"capacity", "pool", "dtype", "shape"}
NODE_KEYS = {"node", "cmd", "params", "publish", "subscribe", "respawn", "required", "env", "cwd", "replicas", "cpus", "nice"}
REPLICA_KEYS = {"count", "ports"}
MAX_REPLICAS = 16
PORT_KEYS = {"topic"} | TOPIC_KEYS
RESPAWN_KEYS = {"max", "delay"}
INCLUDE_KEYS = {"file", "namespace", "args"}
DEFAULT_POOL = 4
DEFAULT_RESPAWN_MAX = 5
DEFAULT_RESPAWN_DELAY = 1.0
# Bounds on what a launch file may cost to read: its size, what its YAML aliases expand to
# (an "alias bomb" of a few hundred bytes can otherwise expand to gigabytes), and its includes.
MAX_FILE_BYTES = 1 << 20
MAX_EXPANDED_NODES = 100_000
MAX_INCLUDE_DEPTH = 8
MAX_INCLUDES = 64
_ARG_RE = re.compile(r"\$\(arg ([A-Za-z_][A-Za-z0-9_]*)\)")
_CPU_LIST_RE = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
_NODE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*(/[A-Za-z0-9_][A-Za-z0-9_\-]*)*")


class LaunchFileError(ValueError):
    """One or more problems in a launch file; each line of the message is one, as file:line: text."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class TopicSpec:
    name: str
    capacity: int
    pool: int
    dtype: Any = None  # numpy dtype or None
    shape: tuple[int, ...] | None = None
    where: str = ""

    @property
    def config(self) -> TopicConfig:
        return TopicConfig(self.capacity, self.pool, self.dtype, self.shape)


@dataclass
class NodeSpec:
    name: str
    node_class: str | None = None  # module:Class, or
    cmd: list[str] | None = None  # an executable and its arguments
    params: dict[str, Any] = field(default_factory=dict)
    publish: dict[str, str] = field(default_factory=dict)
    subscribe: dict[str, str] = field(default_factory=dict)
    port_decls: dict[tuple[str, str], dict] = field(default_factory=dict)  # (direction, port) -> declared fields
    respawn_max: int = 0
    respawn_delay: float = DEFAULT_RESPAWN_DELAY
    required: bool = False
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    where: str = ""
    replicas: int = 1
    replica_ports: list[str] | None = None  # subscribe ports whose messages the replicas share (None: all)
    groups: dict[str, str] = field(default_factory=dict)  # port -> competing-consumer group (set by expansion)
    merge: dict[str, list[str]] = field(default_factory=dict)  # port -> replica topics read in input order
    cpus: tuple[int, ...] | None = None  # CPU affinity of the process (None: wherever the launcher may run)
    nice: int | None = None  # scheduling priority (None: the launcher's)
    base_dir: str = "."  # the folder of the launch file that declares the node: its cwd and relative paths start here


@dataclass
class Graph:
    name: str
    file: str
    topics: dict[str, TopicSpec]
    nodes: dict[str, NodeSpec]


# ----- YAML with line numbers
class _LineDict(dict):
    """A mapping that remembers the line of each key (1-based) and its own."""

    line = 0
    key_lines: dict


class _LineList(list):
    line = 0


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node):
    out = _LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader, node):
    out = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


@dataclass
class _IncludeBudget:
    """Includes read so far in one launch; once over a bound, no file reads any more (one error)."""

    count: int = 0
    exhausted: bool = False


class _Problems:
    """Collects every problem of a file, so one run reports them all."""

    def __init__(self, file: str, includes: _IncludeBudget | None = None) -> None:
        self.file = file
        self.items: list[str] = []
        self.includes = includes or _IncludeBudget()  # shared by a file and all its includes

    def at(self, line: int) -> str:
        return f"{self.file}:{line}"

    def add(self, line: int, text: str) -> None:
        self.items.append(f"{self.file}:{line}: {text}")


def _line_of(mapping, key) -> int:
    return getattr(mapping, "key_lines", {}).get(key, getattr(mapping, "line", 0))


def _substitute(value, args: dict[str, Any], used: set, problems: _Problems, line: int, key: str):
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
        out = _LineDict()
        out.line, out.key_lines = getattr(value, "line", line), getattr(value, "key_lines", {})
        for k, v in value.items():
            out[k] = _substitute(v, args, used, problems, _line_of(value, k), f"{key}.{k}")
        return out
    if isinstance(value, list):
        out = _LineList(_substitute(v, args, used, problems, getattr(value, "line", line), key) for v in value)
        out.line = getattr(value, "line", line)
        return out
    return value


def _unknown_keys(mapping: dict, allowed: set, what: str, problems: _Problems) -> None:
    for key in mapping:
        if key not in allowed:
            problems.add(_line_of(mapping, key), f"unknown key {key!r} in {what} (allowed: {', '.join(sorted(allowed))})")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_topic(name: str, body, problems: _Problems, line: int) -> TopicSpec | None:
    try:
        validate_topic_name(name)
    except ValueError as exc:
        problems.add(line, f"topics: {exc}")
        return None
    if not isinstance(body, dict):
        problems.add(line, f"topic {name!r}: expected a mapping of {', '.join(sorted(TOPIC_KEYS))}, got {body!r}")
        return None
    _unknown_keys(body, TOPIC_KEYS, f"topic {name!r}", problems)
    try:
        cfg = TopicConfig.build(body.get("capacity"), body.get("pool", DEFAULT_POOL), body.get("dtype"), body.get("shape"))
    except (ValueError, TypeError) as exc:
        problems.add(line, f"topic {name!r}: {exc}")
        return None
    return TopicSpec(name, cfg.capacity, cfg.pool, cfg.dtype, cfg.shape, problems.at(line))


def _parse_ports(node: str, direction: str, body, spec: NodeSpec, ns: str, problems: _Problems, line: int) -> None:
    if body is None:
        return
    if not isinstance(body, dict):
        problems.add(line, f"node {node!r}: '{direction}' must map port names to topic names, got {body!r}")
        return
    mapping = spec.publish if direction == "publish" else spec.subscribe
    for port, target in body.items():
        pline = _line_of(body, port)
        decl = {}
        if isinstance(target, dict):
            _unknown_keys(target, PORT_KEYS, f"port {port!r} of node {node!r}", problems)
            decl = {k: v for k, v in target.items() if k in TOPIC_KEYS}
            target = target.get("topic", port)
        if not isinstance(target, str):
            problems.add(pline, f"node {node!r}: port {port!r} must name a topic, got {target!r}")
            continue
        try:
            mapping[str(port)] = validate_topic_name(_ns(ns, target))
        except ValueError as exc:
            problems.add(pline, f"node {node!r} port {port!r}: {exc}")
            continue
        if decl:
            spec.port_decls[(direction, str(port))] = {**decl, "where": problems.at(pline)}


def _ns(ns: str, name: str) -> str:
    return f"{ns}/{name}" if ns else name


def _parse_node(name: str, body, ns: str, problems: _Problems, line: int) -> NodeSpec | None:
    full = _ns(ns, str(name))
    if not _NODE_NAME_RE.fullmatch(full):
        problems.add(line, f"invalid node name {name!r}: use letters, digits, '_' and '-'")
        return None
    if not isinstance(body, dict):
        problems.add(line, f"node {full!r}: expected a mapping with 'node' or 'cmd', got {body!r}")
        return None
    _unknown_keys(body, NODE_KEYS, f"node {full!r}", problems)
    spec = NodeSpec(full, where=problems.at(line))
    if ("node" in body) == ("cmd" in body):
        problems.add(line, f"node {full!r}: give exactly one of 'node' (module:Class) or 'cmd' (a command)")
    elif "node" in body:
        if not isinstance(body["node"], str) or body["node"].count(":") != 1:
            problems.add(_line_of(body, "node"), f"node {full!r}: 'node' must be 'module:Class', got {body['node']!r}")
        else:
            spec.node_class = body["node"]
    else:
        cmd = body["cmd"]
        if isinstance(cmd, str):
            cmd = cmd.split()
        if not cmd or not isinstance(cmd, list) or not all(isinstance(c, (str, int, float)) for c in cmd):
            problems.add(_line_of(body, "cmd"), f"node {full!r}: 'cmd' must be a non-empty list of strings, got {body['cmd']!r}")
        else:
            spec.cmd = [str(c) for c in cmd]
    params = body.get("params") or {}
    if not isinstance(params, dict):
        problems.add(_line_of(body, "params"), f"node {full!r}: 'params' must be a mapping, got {params!r}")
    else:
        spec.params = {str(k): v for k, v in params.items()}
        if spec.cmd is not None and params:
            problems.add(_line_of(body, "params"), f"node {full!r}: 'params' are for Python nodes; pass arguments in 'cmd'")
    for direction in ("publish", "subscribe"):
        _parse_ports(full, direction, body.get(direction), spec, ns, problems, _line_of(body, direction))
    respawn = body.get("respawn", False)
    rline = _line_of(body, "respawn")
    if respawn is True:
        spec.respawn_max = DEFAULT_RESPAWN_MAX
    elif isinstance(respawn, dict):
        _unknown_keys(respawn, RESPAWN_KEYS, f"'respawn' of node {full!r}", problems)
        spec.respawn_max = respawn.get("max", DEFAULT_RESPAWN_MAX)
        spec.respawn_delay = respawn.get("delay", DEFAULT_RESPAWN_DELAY)
        if not _is_int(spec.respawn_max) or spec.respawn_max < 0:
            problems.add(rline, f"node {full!r}: respawn max must be a whole number >= 0, got {spec.respawn_max!r}")
        if isinstance(spec.respawn_delay, bool) or not isinstance(spec.respawn_delay, (int, float)) or spec.respawn_delay < 0:
            problems.add(rline, f"node {full!r}: respawn delay must be seconds >= 0, got {spec.respawn_delay!r}")
    elif respawn is not False:
        problems.add(rline, f"node {full!r}: 'respawn' must be true, false or {{max: N, delay: S}}, got {respawn!r}")
    _parse_replicas(full, body, spec, problems)
    _parse_placement(full, body, spec, problems)
    required = body.get("required", False)
    if not isinstance(required, bool):
        problems.add(_line_of(body, "required"), f"node {full!r}: 'required' must be true or false, got {required!r}")
    spec.required = required is True
    env = body.get("env") or {}
    if not isinstance(env, dict):
        problems.add(_line_of(body, "env"), f"node {full!r}: 'env' must be a mapping, got {env!r}")
    else:
        spec.env = {str(k): str(v) for k, v in env.items()}
    if "cwd" in body:
        if not isinstance(body["cwd"], str):
            problems.add(_line_of(body, "cwd"), f"node {full!r}: 'cwd' must be a path, got {body['cwd']!r}")
        else:
            spec.cwd = body["cwd"]
    return spec


def _parse_replicas(name: str, body: dict, spec: NodeSpec, problems: _Problems) -> None:
    value = body.get("replicas", 1)
    line = _line_of(body, "replicas")
    ports = None
    if isinstance(value, dict):
        _unknown_keys(value, REPLICA_KEYS, f"'replicas' of node {name!r}", problems)
        ports = value.get("ports")
        value = value.get("count", 1)
        if ports is not None and (not isinstance(ports, list) or not all(isinstance(p, str) for p in ports)):
            problems.add(line, f"node {name!r}: replicas ports must be a list of subscribe port names, got {ports!r}")
            ports = None
    if not _is_int(value) or not 1 <= value <= MAX_REPLICAS:
        problems.add(line, f"node {name!r}: replicas must be a whole number from 1 to {MAX_REPLICAS}, got {value!r}")
        return
    if value > 1 and spec.cmd is not None:
        problems.add(line, f"node {name!r}: replicas are for Python nodes (their subscriptions join a group)")
        return
    for port in ports or []:
        if port not in spec.subscribe:
            problems.add(line, f"node {name!r}: replicas port {port!r} is not one of its subscribe ports")
    spec.replicas, spec.replica_ports = value, ports


def parse_cpu_list(value) -> tuple[int, ...]:
    """CPU numbers from a YAML list of ints or a cpuset string ("0-3,6", as taskset and systemd
    take them); "all" is every CPU this process may use. ValueError names what is wrong."""
    if value == "all":
        return tuple(sorted(backend.allowed_cpus()))
    if isinstance(value, list) and value and all(_is_int(c) and c >= 0 for c in value):
        return tuple(dict.fromkeys(value))
    if _is_int(value) and value >= 0:
        return (value,)
    if isinstance(value, str) and _CPU_LIST_RE.fullmatch(value.replace(" ", "")):
        cpus: list[int] = []
        for part in value.replace(" ", "").split(","):
            first, _, last = part.partition("-")
            lo, hi = int(first), int(last or first)
            if hi < lo:
                raise ValueError(f"cpus: range {part!r} runs backwards")
            cpus.extend(range(lo, hi + 1))
        return tuple(dict.fromkeys(cpus))
    raise ValueError(f"cpus must be a list of CPU numbers, a cpuset string such as '0-3,6', or 'all'; got {value!r}")


def _parse_placement(name: str, body: dict, spec: NodeSpec, problems: _Problems) -> None:
    if body.get("cpus") is not None:
        try:
            spec.cpus = parse_cpu_list(body["cpus"])
        except ValueError as exc:
            problems.add(_line_of(body, "cpus"), f"node {name!r}: {exc}")
    nice = body.get("nice")
    if nice is not None:
        if not _is_int(nice) or not -20 <= nice <= 19:
            problems.add(_line_of(body, "nice"), f"node {name!r}: nice must be a whole number from -20 to 19, got {nice!r}")
        else:
            spec.nice = nice


def expand_replicas(graph: Graph) -> None:
    """Turn each node with ``replicas: N`` into N nodes ``name.0`` .. ``name.N-1``.

    Their shared subscriptions join one group named after the node, so each input message
    goes to one replica; each replica publishes to its own copy of every output topic
    (``topic/0`` ...), and every subscriber of such a topic reads all copies merged in input
    order (the ``source_seq`` each output carries). With ``cpus``, replica i is pinned to the
    i-th CPU of the list (round robin), so replicas do not queue behind each other on one core."""
    replicated: dict[str, list[str]] = {}
    for name, spec in list(graph.nodes.items()):
        if spec.replicas <= 1:
            continue
        del graph.nodes[name]
        ports = spec.replica_ports if spec.replica_ports is not None else list(spec.subscribe)
        for topic in spec.publish.values():
            base = graph.topics.pop(topic, None)
            replicated[topic] = [f"{topic}/{i}" for i in range(spec.replicas)]
            if base is not None:
                for t in replicated[topic]:
                    graph.topics[t] = TopicSpec(t, base.capacity, base.pool, base.dtype, base.shape, base.where)
        for i in range(spec.replicas):
            copy = NodeSpec(**{**vars(spec), "name": f"{name}.{i}", "replicas": 1})
            if spec.cpus:
                copy.cpus = (spec.cpus[i % len(spec.cpus)],)
            copy.publish = {port: f"{topic}/{i}" for port, topic in spec.publish.items()}
            copy.groups = {port: name for port in ports}
            graph.nodes[copy.name] = copy
    for spec in graph.nodes.values():
        for port, topic in spec.subscribe.items():
            if topic in replicated:
                spec.merge[port] = replicated[topic]


def _expanded_size(node, memo: dict) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (computed in linear
    time over the composed graph: a shared node is sized once)."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a recursive alias counts as nothing more while it is being sized
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(_expanded_size(v, memo) for v in node.value)
        else:
            size = 1
        memo[key] = min(size, MAX_EXPANDED_NODES + 1)
    return memo[key]


def _read_text(path: Path, problems: _Problems) -> str | None:
    """The file's text, read with bounds: a regular file of at most MAX_FILE_BYTES of UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        problems.items.append(f"{path}: no such launch file")
        return None
    except OSError as exc:
        problems.items.append(f"{path}: cannot read launch file: {exc.strerror}")
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            problems.items.append(f"{path}: not a regular file (a launch file is a YAML file)")
            return None
        data = os.read(fd, MAX_FILE_BYTES + 1)
    except OSError as exc:
        problems.items.append(f"{path}: cannot read launch file: {exc.strerror}")
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        problems.items.append(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB; a launch file is a small YAML file")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.add(line, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})")
        return None


def _read_yaml(path: Path, problems: _Problems):
    text = _read_text(path, problems)
    if text is None:
        return None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            problems.add(node.start_mark.line + 1, f"the YAML expands to more than {MAX_EXPANDED_NODES} values through its "
                         f"aliases (&anchor / *alias); refusing to read it")
            return None
        doc = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problems.add(mark.line + 1 if mark else 0, f"invalid YAML: {exc.problem or exc}")
        return None
    except yaml.YAMLError as exc:
        problems.items.append(f"{path}: invalid YAML: {exc}")
        return None
    except RecursionError:
        problems.items.append(f"{path}: invalid YAML: nested too deeply")
        return None
    finally:
        loader.dispose()
    if not isinstance(doc, dict):
        problems.add(1, f"a launch file is a mapping with {', '.join(sorted(TOP_KEYS))}; got {type(doc).__name__}")
        return None
    return doc


def _load(path: Path, cli_args: dict[str, Any], ns: str, graph: Graph, problems: _Problems, depth: int, top: bool) -> None:
    doc = _read_yaml(path, problems)
    if doc is None:
        return
    _unknown_keys(doc, TOP_KEYS, "the launch file", problems)
    declared = doc.get("args") or {}
    if not isinstance(declared, dict):
        problems.add(_line_of(doc, "args"), f"'args' must map argument names to defaults, got {declared!r}")
        declared = {}
    for key in cli_args:
        if key not in declared:
            where = "the command line" if top else "the include"
            problems.add(_line_of(doc, "args"), f"launch argument {key!r} from {where} is not declared under 'args:' "
                         f"(declared: {', '.join(sorted(declared)) or 'none'})")
    args = {**declared, **cli_args}
    used: set = set()
    doc = _substitute(doc, args, used, problems, 1, "")
    if top:
        name = doc.get("name")
        try:
            graph.name = validate_graph_name(name)
        except ValueError:
            shown = name[:40] + "..." if isinstance(name, str) and len(name) > 40 else name
            problems.add(_line_of(doc, "name"), f"'name' must be the graph's name (1 to 100 letters, digits, '_', '-'), got {shown!r}")
    topics = doc.get("topics") or {}
    if not isinstance(topics, dict):
        problems.add(_line_of(doc, "topics"), f"'topics' must be a mapping of topic names, got {topics!r}")
        topics = {}
    for tname, body in topics.items():
        line = _line_of(topics, tname)
        spec = _parse_topic(_ns(ns, str(tname)), body, problems, line)
        if spec is None:
            continue
        if spec.name in graph.topics:
            problems.add(line, f"topic {spec.name!r} is declared twice (first at {graph.topics[spec.name].where})")
        graph.topics[spec.name] = spec
    nodes = doc.get("nodes") or {}
    if not isinstance(nodes, dict):
        problems.add(_line_of(doc, "nodes"), f"'nodes' must be a mapping of node names, got {nodes!r}")
        nodes = {}
    for nname, body in nodes.items():
        line = _line_of(nodes, nname)
        spec = _parse_node(str(nname), body, ns, problems, line)
        if spec is None:
            continue
        spec.base_dir = str(path.resolve().parent)
        if spec.name in graph.nodes:
            problems.add(line, f"node {spec.name!r} is declared twice (first at {graph.nodes[spec.name].where})")
        graph.nodes[spec.name] = spec
    includes = doc.get("include") or []
    if not isinstance(includes, list):
        problems.add(_line_of(doc, "include"), f"'include' must be a list of {{file, namespace, args}}, got {includes!r}")
        includes = []
    for inc in includes:
        if problems.includes.exhausted:
            return
        line = getattr(inc, "line", _line_of(doc, "include"))
        if not isinstance(inc, dict) or "file" not in inc:
            problems.add(line, f"include: each entry needs 'file' (and optionally 'namespace', 'args'), got {inc!r}")
            continue
        _unknown_keys(inc, INCLUDE_KEYS, "an include", problems)
        budget = problems.includes
        budget.count += 1
        if depth >= MAX_INCLUDE_DEPTH or budget.count > MAX_INCLUDES:
            budget.exhausted = True
            why = (f"nested more than {MAX_INCLUDE_DEPTH} deep" if depth >= MAX_INCLUDE_DEPTH
                   else f"would be include number {budget.count}; a graph may include at most {MAX_INCLUDES} files in all")
            problems.add(line, f"include: {inc['file']!r} {why} (an include loop?)")
            return
        inc_ns = inc.get("namespace") or ""
        if inc_ns and not _NODE_NAME_RE.fullmatch(str(inc_ns)):
            problems.add(line, f"include: invalid namespace {inc_ns!r}")
            continue
        inc_args = inc.get("args") or {}
        sub = _Problems(str(path.parent / str(inc["file"])), problems.includes)
        _load(path.parent / str(inc["file"]), dict(inc_args), _ns(ns, str(inc_ns)), graph, sub, depth + 1, top=False)
        problems.items.extend(sub.items)


def load_launch_file(path: str | Path, args: dict[str, Any] | None = None) -> Graph:
    """Parse and validate a launch file (and its includes); LaunchFileError lists every problem."""
    path = Path(path)
    problems = _Problems(str(path))
    graph = Graph(name="", file=str(path), topics={}, nodes={})
    _load(path, dict(args or {}), "", graph, problems, 0, top=True)
    if not problems.items and not graph.nodes:
        problems.add(1, "the launch file declares no nodes")
    if problems.items:
        raise LaunchFileError(problems.items)
    expand_replicas(graph)
    return graph


def parse_launch_args(items: list[str]) -> dict[str, Any]:
    """``key:=value`` command-line launch arguments (values typed as YAML scalars)."""
    out = {}
    for item in items:
        key, sep, value = item.partition(":=")
        if not sep or not key:
            raise LaunchFileError([f"launch argument {item!r}: expected key:=value"])
        try:
            out[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            out[key] = value
    return out
