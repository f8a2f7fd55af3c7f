"""The pre-flight check: every port against the topics section, before any process starts.

``shmlaunch check FILE`` prints every problem; the launcher runs the same check and refuses
to start on any. Python node classes are imported here (with the node's ``cwd`` and
``PYTHONPATH``), so an unknown class or parameter is reported before anything runs.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from shmlaunch import _platform as backend
from shmlaunch.nodes import NodeClassError, ParamError, load_node_class, resolve_params

from ._schema import Graph, NodeSpec, TopicSpec


def node_cwd(graph: Graph, node: NodeSpec) -> Path:
    """A node's working directory: its ``cwd`` relative to the folder of the launch file that
    declares the node (an included file's nodes start from the included file's folder), else
    that folder."""
    base = Path(node.base_dir) if node.base_dir != "." else Path(graph.file).resolve().parent
    return (base / node.cwd).resolve() if node.cwd else base


@contextlib.contextmanager
def import_context(graph: Graph, node: NodeSpec) -> Iterator[None]:
    """sys.path as the node process will have it: its cwd, where shmlaunch was started, PYTHONPATH."""
    extra = [str(node_cwd(graph, node)), os.getcwd()] + [p for p in node.env.get("PYTHONPATH", "").split(os.pathsep) if p]
    saved = list(sys.path)
    sys.path[:0] = extra
    try:
        yield
    finally:
        sys.path[:] = saved


def _compare(node: NodeSpec, direction: str, port: str, declared: dict, topic: TopicSpec, where: str, errors: list[str]) -> None:
    verb = "publishes" if direction == "publish" else "subscribes to"
    for key in ("capacity", "pool", "dtype", "shape", "ndim", "min_capacity"):
        if key not in declared or declared[key] is None:
            continue
        want = declared[key]
        if key == "dtype":
            want = np.dtype(want)
            have, ok = topic.dtype, topic.dtype == want
        elif key == "shape":
            have, ok = topic.shape, topic.shape is not None and tuple(want) == topic.shape
        elif key == "ndim":
            have = None if topic.shape is None else len(topic.shape)
            ok = have == want
        elif key == "min_capacity":
            have, ok = topic.capacity, topic.capacity >= want
        else:
            have, ok = getattr(topic, key), getattr(topic, key) == want
        if not ok:
            fmt = (lambda v: str(list(v)) if isinstance(v, tuple) else str(v))  # noqa: E731
            rel = "at least " if key == "min_capacity" else ""
            name = "capacity" if key == "min_capacity" else key
            errors.append(f"{where}: node {node.name!r} {verb} port {port!r} with {name} {rel}{fmt(want)}, "
                          f"but topic {topic.name!r} ({topic.where}) has {name} {fmt(have) if have is not None else 'unset'}")


def check_graph(graph: Graph) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the whole graph; errors stop the launch."""
    errors: list[str] = []
    warnings: list[str] = []
    writers: dict[str, str] = {}
    readers: set[str] = set()
    for node in graph.nodes.values():
        for direction, mapping in (("publish", node.publish), ("subscribe", node.subscribe)):
            for port, topic_name in _ports(node, direction, mapping):
                topic = graph.topics.get(topic_name)
                decl = node.port_decls.get((direction, port), {})
                where = decl.get("where", node.where)
                if topic is None:
                    errors.append(f"{where}: node {node.name!r} port {port!r} uses topic {topic_name!r}, "
                                  f"which the topics section does not declare")
                    continue
                _compare(node, direction, port, decl, topic, where, errors)
                if direction == "publish":
                    if topic_name in writers:
                        errors.append(f"{where}: topic {topic_name!r} has two publishers, nodes {writers[topic_name]!r} and "
                                      f"{node.name!r}; a topic has exactly one writer")
                    writers[topic_name] = node.name
                else:
                    readers.add(topic_name)
        cwd = node_cwd(graph, node)
        if not cwd.is_dir():
            errors.append(f"{node.where}: node {node.name!r}: its cwd {cwd} is not a directory")
        elif node.node_class:
            _check_python_node(graph, node, errors)
        _check_placement(node, errors)
    for name in sorted(readers - set(writers)):
        warnings.append(f"{graph.file}: topic {name!r} is subscribed to but no node publishes it (an external writer?)")
    for name, topic in graph.topics.items():
        if name not in writers and name not in readers:
            warnings.append(f"{topic.where}: topic {name!r} is declared but no node uses it")
    return errors, warnings


def _cpu_text(cpus) -> str:
    return ", ".join(str(c) for c in sorted(cpus))


def _check_placement(node: NodeSpec, errors: list[str]) -> None:
    """CPUs this launcher may not use, or a priority it may not give, fail here, not in the child."""
    if node.cpus:
        allowed = backend.allowed_cpus()
        missing = [c for c in node.cpus if c not in allowed]
        if missing:
            errors.append(f"{node.where}: node {node.name!r}: cpus {_cpu_text(missing)} are not available here "
                          f"(this launcher may use CPUs {_cpu_text(allowed)})")
    own = backend.own_priority()
    if node.nice is not None and node.nice < own and not backend.may_raise_priority(node.nice):
        errors.append(f"{node.where}: node {node.name!r}: nice {node.nice} is a higher priority than this launcher's "
                      f"({own}) and raising it needs root, CAP_SYS_NICE or RLIMIT_NICE")


def _ports(node: NodeSpec, direction: str, mapping: dict[str, str]):
    """(port, topic) pairs; a subscription to a replicated topic counts as one per replica copy."""
    for port, topic in mapping.items():
        if direction == "subscribe" and port in node.merge:
            for copy in node.merge[port]:
                yield port, copy
        else:
            yield port, topic


_LAYOUT_KEYS = ("capacity", "pool", "dtype", "shape")


def code_declared_ports(cls) -> dict[tuple[str, str], dict]:
    """What the class's own code declares where it opens its ports: literal keyword arguments of
    ``self.publisher("port", dtype=..., shape=...)`` and ``self.subscribe("port", cb, ...)``
    (read from the source, nothing is run), so ``check`` compares them with the topics too."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    found: dict[tuple[str, str], dict] = {}
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in ("publisher", "subscribe")
                and isinstance(call.func.value, ast.Name) and call.func.value.id == "self" and call.args
                and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)):
            continue
        decl = {}
        for kw in call.keywords:
            if kw.arg in _LAYOUT_KEYS:
                with contextlib.suppress(ValueError, SyntaxError):
                    decl[kw.arg] = ast.literal_eval(kw.value)
        if decl:
            found[("publish" if call.func.attr == "publisher" else "subscribe", call.args[0].value)] = decl
    return found


def _check_python_node(graph: Graph, node: NodeSpec, errors: list[str]) -> None:
    with import_context(graph, node):
        try:
            cls = load_node_class(node.node_class)
        except NodeClassError as exc:
            errors.append(f"{node.where}: node {node.name!r}: {exc}")
            return
    try:
        resolve_params(cls, node.name, node.params)
    except ParamError as exc:
        errors.append(f"{node.where}: {exc}")
    in_code = code_declared_ports(cls)
    for direction, declared, mapping in (("publish", cls.publishes, node.publish), ("subscribe", cls.subscribes, node.subscribe)):
        expectations = {**{port: decl for (d, port), decl in in_code.items() if d == direction}, **declared}
        for port, expected in expectations.items():
            topic = graph.topics.get(node.merge[port][0] if direction == "subscribe" and port in node.merge else mapping.get(port, port))
            if topic is None:  # an optional port left unmapped; a required one fails at setup, naming the topic
                continue
            _compare(node, direction, port, expected, topic, node.where, errors)
