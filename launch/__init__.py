"""Launch files, the launcher/supervisor and the ``shmlaunch`` command.

Schema: ``_schema.py`` (read by ``_yaml.py``, loaded with includes by ``_loading.py``,
replicas expanded by ``_replicas.py``); pre-flight check: ``_check.py``; supervision rules:
``_supervisor.py``; processes and shutdown: ``_launcher.py``; output: ``_printer.py``.
"""

from ._check import check_graph
from ._graphdir import GraphRunningError, NoRoomError
from ._launcher import Launcher
from ._loading import load_launch_file, parse_launch_args
from ._printer import Printer
from ._schema import Graph, LaunchFileError, NodeSpec, TopicSpec
from ._stopping import STOP_TIMEOUT
from ._supervisor import Supervisor

__all__ = [
    "STOP_TIMEOUT",
    "Graph",
    "GraphRunningError",
    "LaunchFileError",
    "Launcher",
    "NoRoomError",
    "NodeSpec",
    "Printer",
    "Supervisor",
    "TopicSpec",
    "check_graph",
    "load_launch_file",
    "parse_launch_args",
]
