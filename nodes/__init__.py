"""Nodes: the ``Node`` base class and its runtime, and the built-in nodes.

Write a node by subclassing ``Node`` (see ``shmlaunch.nodes._node`` for the lifecycle);
start it alone with ``shmlaunch run module:Class`` or from a launch file.
"""

from ._heartbeat import ENV_NODE, ENV_START_DIR, HEARTBEAT, heartbeat_age, ready_name, start_dir
from ._node import (
    EXIT_BAD_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SETUP_FAILED,
    Node,
    NodeError,
    NodeSetupError,
    Subscription,
    Timer,
    configure_logging,
    describe_params,
)
from ._params import Param, ParamError, declared_params, parse_cli_value, resolve_params
from ._runner import DEEP_CHECK_MARK, NodeClassError, NodeLaunch, load_node_class, run_node

__all__ = [
    "DEEP_CHECK_MARK",
    "ENV_NODE",
    "ENV_START_DIR",
    "EXIT_BAD_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_SETUP_FAILED",
    "HEARTBEAT",
    "Node",
    "NodeClassError",
    "NodeError",
    "NodeLaunch",
    "NodeSetupError",
    "Param",
    "ParamError",
    "Subscription",
    "Timer",
    "configure_logging",
    "declared_params",
    "heartbeat_age",
    "describe_params",
    "load_node_class",
    "parse_cli_value",
    "ready_name",
    "resolve_params",
    "start_dir",
    "run_node",
]
