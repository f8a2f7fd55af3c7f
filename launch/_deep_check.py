"""``shmlaunch check --deep``: each Python node loads what it needs, in a process of its own.

The plain check imports node classes and compares ports with topics; it never loads a model or
a native library, so a board where the hand node cannot start (MediaPipe 1.x aborting with
SIGILL on an ARMv8.0 core) passed it. Here every Python node whose class defines
``Node.deep_check`` runs it in a child process, started as the node would be (its cwd, its
environment, its parameters): a Python error, or the process dying of a signal, is reported in
one line with what the child printed last.
"""

from __future__ import annotations

import subprocess

from shmlaunch.nodes import DEEP_CHECK_MARK, Node, NodeClassError, load_node_class

from ._check import import_context, node_cwd
from ._children import node_argv_env
from ._schema import Graph, NodeSpec
from ._supervisor import describe_exit

#: How long one node may take to load (a model under an emulated CPU takes minutes)
DEEP_CHECK_TIMEOUT = 600.0


def _has_deep_check(graph: Graph, node: NodeSpec) -> bool:
    with import_context(graph, node):
        try:
            cls = load_node_class(node.node_class)
        except NodeClassError:
            return False  # the plain check has said so already
    return cls.deep_check.__func__ is not Node.deep_check.__func__


def deep_check_graph(graph: Graph, timeout: float = DEEP_CHECK_TIMEOUT) -> tuple[list[str], list[str]]:
    """(errors, reports): one line per Python node with a deep check (replicas of one node and
    nodes of the same class and parameters are checked once)."""
    errors: list[str] = []
    reports: list[str] = []
    seen: set[str] = set()
    for node in graph.nodes.values():
        key = f"{node.node_class}|{sorted(node.params.items())!r}"
        if not node.node_class or key in seen or not _has_deep_check(graph, node):
            continue
        seen.add(key)
        argv, env = node_argv_env(node, None, deep_check=True)
        try:
            done = subprocess.run(argv, env=env, cwd=node_cwd(graph, node), stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            errors.append(f"{node.where}: node {node.name!r}: loading what it needs took over {timeout:.0f} s")
            continue
        lines = [ln for ln in (done.stdout + done.stderr).decode("utf-8", "replace").splitlines() if ln.strip()]
        if done.returncode == 0:
            said = [ln[len(DEEP_CHECK_MARK):] for ln in lines if ln.startswith(DEEP_CHECK_MARK)]
            reports.append(f"node {node.name!r}: {said[-1] if said else 'loaded'}")
            continue
        said = "; its last output: " + " | ".join(lines[-3:]) if lines else ""
        errors.append(f"{node.where}: node {node.name!r} cannot load what it needs ({describe_exit(done.returncode)}){said}")
    return errors, reports
