"""The launch-file schema: what every key of a launch file may hold, checked, in one module.

Reading the YAML (bounded, with line numbers) is ``_yaml.py``; substitution and includes are
``_loading.py``; replica expansion is ``_replicas.py``; the pre-flight check against the
machine and the node classes is ``_check.py``.

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
    record:                              # top file only: record topics to MCAP while it runs
      file: $(arg bag)                   # .mcap; empty: no recording (shorthand: record: run.mcap)
      topics: [camera/image, hands/landmarks]    # default: every topic (in an include: its own names)
      compression: lz4                   # none (default), lz4, zstd
      split_size: 2000                   # MB per file; split_duration: seconds per file
      serve: 8765                        # also serve it live to Foxglove on ws://127.0.0.1:8765
    bridge:                              # top file only: topics across machines over Zenoh
      host: robot-a                      # this host's name in the keys (default: the hostname)
      listen: [tcp/0.0.0.0:7447]         # mode (peer, client, router), listen, connect, or
      connect: [tcp/10.0.0.2:7447]       #   config: zenoh.json5 (a zenoh config file, verbatim); connect alone listens nowhere
      tls: {ca: ca.pem, certificate: robot-a.pem, key: robot-a.key, peers: [robot-b]}   # mTLS; each peer
                                         #   (certificate common name) may publish only under its own host name
      max_topic_mb: 256                  # an imported topic's segment may not be larger (default 256)
      export:                            # only what is named leaves this graph
        hands/landmarks: {}
        camera/image: {encode: jpeg, quality: 80, rate: 10, priority: low}
      import:                            # <graph>/<topic> of another host -> a local topic
        hands/hands/landmarks: {topic: remote/landmarks, host: robot-b, max_age: 0.5}   # drop samples held up
                                         #   longer than max_age s (default 0.5; 0: keep all)

``$(arg NAME)`` is replaced by the argument's value (``key:=value`` on the command line, else
its default); a string that is only ``$(arg NAME)`` takes the value's YAML type. ``record:``
becomes one more node, ``mcap-recorder``, running ``shmlaunch record`` on the graph. Included
files' nodes and topics are prefixed with ``namespace/``. Every error names file, line and key.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shmlaunch import _platform as backend
from shmlaunch.nodes.recording import COMPRESSIONS
from shmlaunch.transport import TopicConfig, validate_topic_name

from ._yaml import Problems, line_of

TOP_KEYS = {"name", "args", "topics", "nodes", "include", "record", "bridge"}
RECORD_KEYS = {"file", "topics", "compression", "split_size", "split_duration", "serve"}
RECORD_NODE = "mcap-recorder"
BRIDGE_KEYS = {"host", "mode", "listen", "connect", "config", "tls", "max_topic_mb", "export", "import"}
TLS_KEYS = {"ca", "certificate", "key", "peers"}
EXPORT_KEYS = {"rate", "encode", "quality", "priority"}
IMPORT_KEYS = {"topic", "host", "max_age"}
BRIDGE_NODE = "bridge"
BRIDGE_MODES = ("peer", "client", "router")
_ENDPOINT_RE = re.compile(r"(tcp|udp|tls|quic|ws|unixsock-stream)/\S+")
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,62}")
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
_CPU_LIST_RE = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
NODE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*(/[A-Za-z0-9_][A-Za-z0-9_\-]*)*")


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
    unparsed: set[str] = field(default_factory=set)  # topics whose declarations had problems (not "undeclared" too)


def unknown_keys(mapping: dict, allowed: set, what: str, problems: Problems) -> None:
    for key in mapping:
        if key not in allowed:
            problems.add(line_of(mapping, key), f"unknown key {key!r} in {what} (allowed: {', '.join(sorted(allowed))})")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_topic(name: str, body, problems: Problems, line: int) -> TopicSpec | None:
    try:
        validate_topic_name(name)
    except ValueError as exc:
        problems.add(line, f"topics: {exc}")
        return None
    if not isinstance(body, dict):
        problems.add(line, f"topic {name!r}: expected a mapping of {', '.join(sorted(TOPIC_KEYS))}, got {body!r}")
        return None
    unknown_keys(body, TOPIC_KEYS, f"topic {name!r}", problems)
    try:
        cfg = TopicConfig.build(body.get("capacity"), body.get("pool", DEFAULT_POOL), body.get("dtype"), body.get("shape"))
    except (ValueError, TypeError) as exc:
        problems.add(line, f"topic {name!r}: {exc}")
        return None
    return TopicSpec(name, cfg.capacity, cfg.pool, cfg.dtype, cfg.shape, problems.at(line))


def _parse_ports(node: str, direction: str, body, spec: NodeSpec, ns: str, problems: Problems, line: int) -> None:
    if body is None:
        return
    if not isinstance(body, dict):
        problems.add(line, f"node {node!r}: '{direction}' must map port names to topic names, got {body!r}")
        return
    mapping = spec.publish if direction == "publish" else spec.subscribe
    for port, target in body.items():
        pline = line_of(body, port)
        decl = {}
        if isinstance(target, dict):
            unknown_keys(target, PORT_KEYS, f"port {port!r} of node {node!r}", problems)
            decl = {k: v for k, v in target.items() if k in TOPIC_KEYS}
            target = target.get("topic", port)
        if not isinstance(target, str):
            problems.add(pline, f"node {node!r}: port {port!r} must name a topic, got {target!r}")
            continue
        try:
            mapping[str(port)] = validate_topic_name(ns_join(ns, target))
        except ValueError as exc:
            problems.add(pline, f"node {node!r} port {port!r}: {exc}")
            continue
        if decl:
            spec.port_decls[(direction, str(port))] = {**decl, "where": problems.at(pline)}


def ns_join(ns: str, name: str) -> str:
    return f"{ns}/{name}" if ns else name


def parse_node(name: str, body, ns: str, problems: Problems, line: int) -> NodeSpec | None:
    full = ns_join(ns, str(name))
    if not NODE_NAME_RE.fullmatch(full):
        problems.add(line, f"invalid node name {name!r}: use letters, digits, '_' and '-'")
        return None
    if not isinstance(body, dict):
        problems.add(line, f"node {full!r}: expected a mapping with 'node' or 'cmd', got {body!r}")
        return None
    unknown_keys(body, NODE_KEYS, f"node {full!r}", problems)
    spec = NodeSpec(full, where=problems.at(line))
    _parse_program(full, body, spec, problems, line)
    for direction in ("publish", "subscribe"):
        _parse_ports(full, direction, body.get(direction), spec, ns, problems, line_of(body, direction))
    _parse_respawn(full, body, spec, problems)
    _parse_replicas(full, body, spec, problems)
    _parse_placement(full, body, spec, problems)
    _parse_process(full, body, spec, problems)
    return spec


def _parse_program(full: str, body: dict, spec: NodeSpec, problems: Problems, line: int) -> None:
    """``node: module:Class`` with its ``params``, or ``cmd: [...]``: exactly one."""
    if ("node" in body) == ("cmd" in body):
        problems.add(line, f"node {full!r}: give exactly one of 'node' (module:Class) or 'cmd' (a command)")
    elif "node" in body:
        if not isinstance(body["node"], str) or body["node"].count(":") != 1:
            problems.add(line_of(body, "node"), f"node {full!r}: 'node' must be 'module:Class', got {body['node']!r}")
        else:
            spec.node_class = body["node"]
    else:
        cmd = body["cmd"]
        if isinstance(cmd, str):
            cmd = cmd.split()
        if not cmd or not isinstance(cmd, list) or not all(isinstance(c, (str, int, float)) for c in cmd):
            problems.add(line_of(body, "cmd"), f"node {full!r}: 'cmd' must be a non-empty list of strings, got {body['cmd']!r}")
        else:
            spec.cmd = [str(c) for c in cmd]
    params = body.get("params") or {}
    if not isinstance(params, dict):
        problems.add(line_of(body, "params"), f"node {full!r}: 'params' must be a mapping, got {params!r}")
    else:
        spec.params = {str(k): v for k, v in params.items()}
        if spec.cmd is not None and params:
            problems.add(line_of(body, "params"), f"node {full!r}: 'params' are for Python nodes; pass arguments in 'cmd'")


def _parse_respawn(full: str, body: dict, spec: NodeSpec, problems: Problems) -> None:
    respawn = body.get("respawn", False)
    rline = line_of(body, "respawn")
    if respawn is True:
        spec.respawn_max = DEFAULT_RESPAWN_MAX
    elif isinstance(respawn, dict):
        unknown_keys(respawn, RESPAWN_KEYS, f"'respawn' of node {full!r}", problems)
        spec.respawn_max = respawn.get("max", DEFAULT_RESPAWN_MAX)
        spec.respawn_delay = respawn.get("delay", DEFAULT_RESPAWN_DELAY)
        if not _is_int(spec.respawn_max) or spec.respawn_max < 0:
            problems.add(rline, f"node {full!r}: respawn max must be a whole number >= 0, got {spec.respawn_max!r}")
        if isinstance(spec.respawn_delay, bool) or not isinstance(spec.respawn_delay, (int, float)) or spec.respawn_delay < 0:
            problems.add(rline, f"node {full!r}: respawn delay must be seconds >= 0, got {spec.respawn_delay!r}")
    elif respawn is not False:
        problems.add(rline, f"node {full!r}: 'respawn' must be true, false or {{max: N, delay: S}}, got {respawn!r}")


def _parse_process(full: str, body: dict, spec: NodeSpec, problems: Problems) -> None:
    """``required``, ``env`` and ``cwd``: how the node's process is run."""
    required = body.get("required", False)
    if not isinstance(required, bool):
        problems.add(line_of(body, "required"), f"node {full!r}: 'required' must be true or false, got {required!r}")
    spec.required = required is True
    env = body.get("env") or {}
    if not isinstance(env, dict):
        problems.add(line_of(body, "env"), f"node {full!r}: 'env' must be a mapping, got {env!r}")
    else:
        spec.env = {str(k): str(v) for k, v in env.items()}
    if "cwd" in body:
        if not isinstance(body["cwd"], str):
            problems.add(line_of(body, "cwd"), f"node {full!r}: 'cwd' must be a path, got {body['cwd']!r}")
        else:
            spec.cwd = body["cwd"]


def _parse_replicas(name: str, body: dict, spec: NodeSpec, problems: Problems) -> None:
    value = body.get("replicas", 1)
    line = line_of(body, "replicas")
    ports = None
    if isinstance(value, dict):
        unknown_keys(value, REPLICA_KEYS, f"'replicas' of node {name!r}", problems)
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


def _parse_placement(name: str, body: dict, spec: NodeSpec, problems: Problems) -> None:
    if body.get("cpus") is not None:
        try:
            spec.cpus = parse_cpu_list(body["cpus"])
        except ValueError as exc:
            problems.add(line_of(body, "cpus"), f"node {name!r}: {exc}")
    nice = body.get("nice")
    if nice is not None:
        if not _is_int(nice) or not -20 <= nice <= 19:
            problems.add(line_of(body, "nice"), f"node {name!r}: nice must be a whole number from -20 to 19, got {nice!r}")
        else:
            spec.nice = nice


def parse_record(body, ns: str, declared: dict, problems: Problems, line: int) -> NodeSpec | None:
    """The ``record:`` section as the node that records (None: no recording asked for). Its
    topics are named as in its file (``ns``: an include's namespace) and must be ``declared``."""
    if isinstance(body, str):
        body = {"file": body}
    if not body:
        return None
    if not isinstance(body, dict):
        problems.add(line, f"'record' must be an .mcap file name or a mapping of {', '.join(sorted(RECORD_KEYS))}, got {body!r}")
        return None
    unknown_keys(body, RECORD_KEYS, "'record'", problems)
    file = body.get("file")
    if file in (None, ""):
        return None  # off, e.g. an empty launch argument
    if not isinstance(file, str) or not file.endswith(".mcap"):
        problems.add((line_of(body, "file") or line), f"record: 'file' must be a file name ending in .mcap, got {file!r}")
        return None
    cmd = [sys.executable, "-m", "shmlaunch.launch.cli", "record", file]
    cmd += _record_topics(body, ns, declared, problems, line)
    compression = body.get("compression", "none")
    if compression not in COMPRESSIONS:
        problems.add((line_of(body, "compression") or line), f"record: 'compression' must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    cmd += ["--compression", str(compression)]
    for key in ("split_size", "split_duration"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            problems.add((line_of(body, key) or line), f"record: '{key}' must be a positive number, got {value!r}")
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    serve = body.get("serve")
    if serve is not None:
        if not _is_int(serve) or not 0 < serve < 65536:
            problems.add((line_of(body, "serve") or line), f"record: 'serve' must be a TCP port (1-65535), got {serve!r}")
        cmd += [f"--serve={serve}"]
    return NodeSpec(RECORD_NODE, cmd=cmd, where=problems.at(line))


def _record_topics(body: dict, ns: str, declared: dict, problems: Problems, line: int) -> list[str]:
    topics = body.get("topics")
    if topics is None:
        return []
    if not isinstance(topics, list) or not topics:
        problems.add((line_of(body, "topics") or line), f"record: 'topics' must be a non-empty list of topic names, got {topics!r}")
        return []
    topics = [ns_join(ns, str(t)) for t in topics]
    for t in topics:
        if t not in declared:
            problems.add((line_of(body, "topics") or line), f"record: topic {t!r} is not declared under 'topics:' "
                         f"(declared: {', '.join(sorted(declared)) or 'none'})")
    return topics



def parse_bridge(body, graph_name: str, declared: dict, problems: Problems, line: int, base_dir: Path) -> NodeSpec | None:
    """The ``bridge:`` section as the bridge node (one zenoh session for this host's graph)."""
    if not body:
        return None
    if not isinstance(body, dict):
        problems.add(line, f"'bridge' must be a mapping of {', '.join(sorted(BRIDGE_KEYS))}, got {body!r}")
        return None
    unknown_keys(body, BRIDGE_KEYS, "'bridge'", problems)
    at = lambda key: line_of(body, key) or line  # noqa: E731
    section = {"graph": graph_name}
    _bridge_session(body, section, problems, at, base_dir)
    exports = _bridge_exports(body.get("export") or {}, declared, problems, at("export"))
    imports = _bridge_imports(body.get("import") or {}, problems, at("import"))
    if not body.get("export") and not body.get("import"):
        problems.add(line, "bridge: nothing to export or import (name topics under 'export:' or 'import:')")
    locals_ = {spec.get("topic") or remote.partition("/")[2]: remote for remote, spec in imports.items()}
    clash = sorted(set(locals_) & set(exports))
    if clash:
        problems.add(at("import"), f"bridge: topic {clash[0]!r} is both exported and imported: a loop")
    section.update({"export": exports, "import": imports, "declared": {
        name: {"capacity": t.capacity, "pool": t.pool, "dtype": None if t.dtype is None else t.dtype.str,
               "shape": None if t.shape is None else list(t.shape)} for name, t in declared.items() if name in locals_}})
    spec = NodeSpec(BRIDGE_NODE, node_class="shmlaunch.nodes.bridge:Bridge", params={"section": json.dumps(section)},
                    where=problems.at(line), respawn_max=1000, respawn_delay=0.5)
    spec.subscribe = {f"export:{t}": t for t in exports}
    spec.publish = {f"import:{name}": name for name in locals_ if name in declared}
    return spec


def _bridge_session(body: dict, section: dict, problems: Problems, at, base_dir: Path) -> None:
    host = body.get("host")
    if host is not None:
        if not isinstance(host, str) or not _HOST_RE.fullmatch(host):
            problems.add(at("host"), f"bridge: 'host' must be a name of letters, digits, '_' and '-', got {host!r}")
        section["host"] = host
    mode = body.get("mode")
    if mode is not None:
        if mode not in BRIDGE_MODES:
            problems.add(at("mode"), f"bridge: 'mode' must be one of {', '.join(BRIDGE_MODES)}, got {mode!r}")
        section["mode"] = mode
    for key in ("listen", "connect"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and _ENDPOINT_RE.fullmatch(v) for v in value):
            problems.add(at(key), f"bridge: '{key}' must be a list of zenoh endpoints such as tcp/10.0.0.2:7447, got {body[key]!r}")
        section[key] = value
    config = body.get("config")
    if config is not None:
        if not isinstance(config, str) or not (base_dir / config).is_file():
            problems.add(at("config"), f"bridge: 'config' must name a zenoh config file, {str(base_dir / str(config))!r} is not one")
        section["config"] = str(base_dir / str(config))
    _bridge_security(body, section, problems, at, base_dir)


def _bridge_security(body: dict, section: dict, problems: Problems, at, base_dir: Path) -> None:
    """What a peer may make this host do: ``max_topic_mb`` and ``tls``."""
    max_mb = body.get("max_topic_mb")
    if max_mb is not None:
        if isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or not max_mb > 0:
            problems.add(at("max_topic_mb"), f"bridge: 'max_topic_mb' must be megabytes > 0, got {max_mb!r}")
        section["max_topic_mb"] = max_mb
    if body.get("tls") is not None:
        section["tls"] = _bridge_tls(body["tls"], section, problems, at("tls"), base_dir)


def _bridge_tls(tls, section: dict, problems: Problems, line: int, base_dir: Path) -> dict:
    """``tls: {ca, certificate, key, peers}``: files that exist, peers that are host names, and
    endpoints that are TLS ones (a tcp/ endpoint would carry no certificate to check)."""
    if not isinstance(tls, dict):
        problems.add(line, f"bridge: 'tls' must be a mapping of {', '.join(sorted(TLS_KEYS))}, got {tls!r}")
        return {}
    unknown_keys(tls, TLS_KEYS, "bridge 'tls'", problems)
    out = {}
    for key in ("ca", "certificate", "key"):
        value = tls.get(key)
        if not isinstance(value, str) or not (base_dir / value).is_file():
            problems.add(line_of(tls, key) or line, f"bridge: tls '{key}' must name a PEM file, {str(base_dir / str(value))!r} is not one")
        out[key] = str(base_dir / str(value))
    peers = tls.get("peers")
    if not isinstance(peers, list) or not peers or not all(isinstance(p, str) and _HOST_RE.fullmatch(p) for p in peers):
        problems.add(line_of(tls, "peers") or line, f"bridge: tls 'peers' must list the host names (certificate common names) "
                     f"allowed to connect, got {peers!r}")
    out["peers"] = peers
    plain = [e for key in ("listen", "connect") for e in section.get(key) or [] if not e.startswith(("tls/", "quic/"))]
    if plain:
        problems.add(line, f"bridge: with 'tls', every listen/connect endpoint must be tls/ or quic/, got {plain[0]!r}")
    return out


def _bridge_exports(exports, declared: dict, problems: Problems, line: int) -> dict:
    if not isinstance(exports, dict):
        problems.add(line, f"bridge: 'export' must map topic names to options ({', '.join(sorted(EXPORT_KEYS))}), got {exports!r}")
        return {}
    out = {}
    for topic, spec in exports.items():
        where = line_of(exports, topic) or line
        spec = spec or {}
        if topic not in declared:
            problems.add(where, f"bridge: export {topic!r}: not a topic of this graph (declared: {', '.join(sorted(declared)) or 'none'})")
            continue
        if not isinstance(spec, dict):
            problems.add(where, f"bridge: export {topic!r}: expected options ({', '.join(sorted(EXPORT_KEYS))}), got {spec!r}")
            continue
        unknown_keys(spec, EXPORT_KEYS, f"bridge export {topic!r}", problems)
        rate = spec.get("rate")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0):
            problems.add(where, f"bridge: export {topic!r}: 'rate' must be messages per second > 0, got {rate!r}")
        if spec.get("encode", "raw") not in ("raw", "jpeg"):
            problems.add(where, f"bridge: export {topic!r}: 'encode' must be raw or jpeg, got {spec['encode']!r}")
        t = declared[topic]
        if spec.get("encode") == "jpeg" and not (t.dtype == "uint8" and t.shape and len(t.shape) == 3 and t.shape[2] == 3):
            problems.add(where, f"bridge: export {topic!r}: 'encode: jpeg' needs a uint8 [height, width, 3] topic")
        quality = spec.get("quality", 85)
        if not _is_int(quality) or not 1 <= quality <= 100:
            problems.add(where, f"bridge: export {topic!r}: 'quality' must be 1 to 100, got {quality!r}")
        if spec.get("priority", "high") not in ("high", "normal", "low"):
            problems.add(where, f"bridge: export {topic!r}: 'priority' must be high, normal or low, got {spec['priority']!r}")
        out[topic] = dict(spec)
    return out


def _bridge_imports(imports, problems: Problems, line: int) -> dict:
    if not isinstance(imports, dict):
        problems.add(line, f"bridge: 'import' must map <graph>/<topic> to options ({', '.join(sorted(IMPORT_KEYS))}), got {imports!r}")
        return {}
    out = {}
    for remote, spec in imports.items():
        where = line_of(imports, remote) or line
        spec = spec or {}
        graph, _, topic = str(remote).partition("/")
        try:
            validate_topic_name(topic)
            if not _HOST_RE.fullmatch(graph):
                raise ValueError(f"invalid graph name {graph!r}")
        except ValueError as exc:
            problems.add(where, f"bridge: import {remote!r}: name it <graph>/<topic> ({exc})")
            continue
        if not isinstance(spec, dict):
            problems.add(where, f"bridge: import {remote!r}: expected options ({', '.join(sorted(IMPORT_KEYS))}), got {spec!r}")
            continue
        unknown_keys(spec, IMPORT_KEYS, f"bridge import {remote!r}", problems)
        age = spec.get("max_age", 0.5)
        if isinstance(age, bool) or not isinstance(age, (int, float)) or not age >= 0:
            problems.add(where, f"bridge: import {remote!r}: 'max_age' must be seconds >= 0, got {age!r}")
        try:
            if spec.get("topic") is not None:
                validate_topic_name(spec["topic"])
            if spec.get("host") is not None and not _HOST_RE.fullmatch(str(spec["host"])):
                raise ValueError(f"invalid host name {spec['host']!r}")
        except ValueError as exc:
            problems.add(where, f"bridge: import {remote!r}: {exc}")
            continue
        out[str(remote)] = dict(spec)
    return out
