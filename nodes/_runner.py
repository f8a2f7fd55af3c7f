"""Running one node in this process: import its class, build it, run it, exit with its code.

The launcher starts every Python node as ``python -m shmlaunch.nodes '<json spec>'``;
``shmlaunch run module:Class`` calls ``run_node`` directly. Either way a bad class path or a
bad parameter is one line on stderr and exit code 2, before anything is opened.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from ._node import EXIT_BAD_CONFIG, Node, NodeSetupError, configure_logging
from ._params import ParamError, resolve_params


class NodeClassError(ValueError):
    """A ``module:Class`` path that does not name an importable Node subclass."""


def load_node_class(path: str) -> type[Node]:
    """The Node subclass named by ``module:Class`` (or NodeClassError saying what is wrong)."""
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise NodeClassError(f"invalid node class {path!r}: expected 'module:Class', e.g. 'shmlaunch.nodes.camera:Camera'")
    module_name, class_name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise NodeClassError(f"cannot import node class {path!r}: no module named {exc.name!r} "
                             f"(looked in {', '.join(_user_paths())}, then the installed packages)") from exc
    except Exception as exc:
        raise NodeClassError(f"cannot import node class {path!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise NodeClassError(f"cannot import node class {path!r}: module {module_name!r} has no attribute {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Node)):
        raise NodeClassError(f"invalid node class {path!r}: {class_name} is not a subclass of shmlaunch.nodes.Node")
    return cls


def _user_paths() -> list[str]:
    """The folders on sys.path that are not Python's own or its installed packages."""
    own = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out = []
    for entry in sys.path:
        real = os.path.realpath(entry or os.getcwd())
        if os.path.isdir(real) and not any(real == p or real.startswith(p + os.sep) for p in own) and real not in out:
            out.append(real)
    return out or ["no folder of its own"]


@dataclass(frozen=True)
class NodeLaunch:
    """What a launcher tells a Python node process: the contract between the two layers,
    serialised in one place (``to_json`` / ``from_json``, the process's one argument).

    ``groups`` maps a subscribe port to its competing-consumer group (replicas); ``merge`` maps
    a subscribe port to the replica topics read in input order."""

    name: str
    node_class: str  # module:Class
    params: dict[str, Any] = field(default_factory=dict)
    publish: dict[str, str] = field(default_factory=dict)
    subscribe: dict[str, str] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)
    merge: dict[str, list[str]] = field(default_factory=dict)
    runtime_dir: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> NodeLaunch:
        return cls(**json.loads(text))


def run_node(spec: NodeLaunch, duration: float | None = None) -> int:
    """Build and run the node ``spec`` describes; returns its exit code."""
    log = logging.getLogger("shmlaunch.node." + spec.name)
    try:
        cls = load_node_class(spec.node_class)
        node = cls(spec.name, spec.params, publish=spec.publish, subscribe=spec.subscribe, runtime_dir=spec.runtime_dir,
                   groups=spec.groups, merge=spec.merge)
    except (NodeClassError, ParamError) as exc:
        log.error("%s", exc)
        return EXIT_BAD_CONFIG
    return node.run(duration)


#: what starts the line a deep check prints (native libraries may print more, even after it, at exit)
DEEP_CHECK_MARK = "deep check: "


def deep_check_node(spec: NodeLaunch) -> int:
    """``Node.deep_check`` of the node ``spec`` describes, in this process; prints its line."""
    log = logging.getLogger("shmlaunch.node." + spec.name)
    try:
        cls = load_node_class(spec.node_class)
        said = cls.deep_check(resolve_params(cls, spec.name, spec.params))
    except (NodeClassError, ParamError, NodeSetupError) as exc:
        log.error("%s", exc)
        return EXIT_BAD_CONFIG
    print(f"{DEEP_CHECK_MARK}{said or 'nothing to load'}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry of a node process started by the launcher: one JSON argument, the node's NodeLaunch
    (after ``--deep-check``: only load what the node needs, ``shmlaunch check --deep``)."""
    args = sys.argv[1:] if argv is None else argv
    configure_logging(None)
    if args[0] == "--deep-check":
        return deep_check_node(NodeLaunch.from_json(args[1]))
    return run_node(NodeLaunch.from_json(args[0]))
