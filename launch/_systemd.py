"""systemd integration: the unit file for a graph, and sd_notify without libsystemd.

The unit keeps shared memory alive (``RemoveIPC=no``: systemd's default for system users
deletes a service user's /dev/shm files under a running service), restarts on failure, and
uses ``Type=notify``: the launcher sends READY=1 once every node has finished setup(), and
WATCHDOG=1 while every node's heartbeat is fresh.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from shmlaunch import _platform as backend

from ._schema import Graph

WATCHDOG_SEC = 10


def notify(message: str) -> bool:
    """Send ``message`` (e.g. "READY=1") to $NOTIFY_SOCKET; False when not run by systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    return backend.notify_service_manager(path, message.encode())


def watchdog_interval() -> float | None:
    """Half of $WATCHDOG_USEC in seconds, when systemd asks this process for keep-alives."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


def exec_word(word: str) -> str:
    """One word of an ExecStart= line as systemd parses it: ``%`` (specifiers) and ``$``
    (variables) doubled, and quoted with C escapes when it holds a space, quote or backslash."""
    word = word.replace("%", "%%").replace("$", "$$")
    if word and not re.search(r"[\s\"'\\;]", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: The unit's open-file limit (soft and hard): a graph of thousands of topics needs thousands
#: of descriptors, and systemd's default soft limit is 1024.
LIMIT_NOFILE = 524288


def unit_text(graph: Graph, launch_file: Path, args: list[str], user: bool, workdir: Path) -> str:
    """The unit; it runs in ``workdir`` (where ``shmlaunch systemd`` was run, by default): where
    relative paths of the graph (a recorder's file) land, never inside an installed package."""
    exe = shutil.which("shmlaunch")
    argv = [exe] if exe else [sys.executable, "-m", "shmlaunch.launch.cli"]
    cmd = " ".join(exec_word(w) for w in [*argv, str(launch_file.resolve()), *args])
    workdir = str(workdir.resolve()).replace("%", "%%")
    return f"""# shmlaunch graph {graph.name!r}, from {launch_file.resolve()}
# Install: copy to {'~/.config/systemd/user/' if user else '/etc/systemd/system/'}shmlaunch-{graph.name}.service, then
#   systemctl {'--user ' if user else ''}daemon-reload && systemctl {'--user ' if user else ''}enable --now shmlaunch-{graph.name}
[Unit]
Description=shmlaunch graph {graph.name}
After=network.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={cmd}
WorkingDirectory={workdir}
Restart=on-failure
RestartSec=2
# The launcher stops every node on SIGTERM (then SIGKILL after 5 s) and removes its files.
KillMode=mixed
TimeoutStopSec=20
WatchdogSec={WATCHDOG_SEC}
LimitNOFILE={LIMIT_NOFILE}
# Keep the graph's shared memory while it runs (systemd's default removes a user's IPC objects).
RemoveIPC=no
Environment=PYTHONUNBUFFERED=1
StandardOutput=journal
StandardError=journal

[Install]
WantedBy={'default.target' if user else 'multi-user.target'}
"""
