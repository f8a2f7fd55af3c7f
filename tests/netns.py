"""Two "hosts" on one machine for the bridge tests: network namespaces joined by a veth pair,
each process started in its own mount namespace with a private tmpfs on /dev/shm (network
namespaces share /dev/shm otherwise, and both graphs would open the same runtime directory).

Only addresses inside the namespaces made here are used (10.<k>.<n>.1 and .2, /24).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path


def why_not() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the suite as root)"
    for tool in ("ip", "unshare", "nsenter", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, util-linux)"
    probe = f"shmlprobe{os.getpid()}"
    res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if res.returncode != 0:
        return f"cannot make a network namespace: {res.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Host:
    ns: str
    dev: str
    addr: str

    def command(self, *argv: str, shm_mb: int = 512) -> list[str]:
        """``argv`` run in this host: its network namespace, a private /dev/shm."""
        script = f'mount -t tmpfs -o size={shm_mb}m,mode=1777 tmpfs /dev/shm && exec "$@"'
        return ["ip", "netns", "exec", self.ns, "unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv]

    def enter(self, pid: int, *argv: str) -> list[str]:
        """``argv`` run beside process ``pid`` of this host (its network and mount namespaces)."""
        return ["nsenter", "-t", str(pid), "-m", "-n", *argv]

    def shape(self, rate: str) -> None:
        """Limit what leaves this host to ``rate`` (tbf, e.g. '100mbit')."""
        subprocess.run(["ip", "netns", "exec", self.ns, "tc", "qdisc", "replace", "dev", self.dev, "root", "tbf", "rate", rate,
                        "burst", "1mb", "latency", "50ms"], check=True)

    def pids(self) -> list[int]:
        """Every process in this host's network namespace."""
        mine = os.stat(f"/run/netns/{self.ns}").st_ino
        out = []
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    if os.stat(f"/proc/{p}/ns/net").st_ino == mine:
                        out.append(int(p))
                except OSError:
                    pass
        return out


def _network() -> tuple[str, str]:
    """A tag for this network's names and a /24 of its own (10.200-249.x)."""
    tag = uuid.uuid4().hex[:6]
    n = int(tag, 16)
    return tag, f"10.{200 + n % 50}.{(n >> 8) % 250}"


def _join(h: Host) -> list[list[str]]:
    """A host's end of its veth pair moved into its namespace, addressed and up."""
    return [["ip", "link", "set", h.dev, "netns", h.ns], ["ip", "-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", h.dev],
            ["ip", "-n", h.ns, "link", "set", "lo", "up"], ["ip", "-n", h.ns, "link", "set", h.dev, "up"]]


def _build(steps: list[list[str]], undo) -> None:
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
    except BaseException:
        undo()
        raise


def _remove(hosts: list[Host], *namespaces: str) -> None:
    """Kill what runs in each host, delete the namespaces (their devices go with them)."""
    for h in hosts:
        if os.path.exists(f"/run/netns/{h.ns}"):
            for pid in h.pids():
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
        subprocess.run(["ip", "netns", "del", h.ns], capture_output=True)
    for ns in namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class TwoHosts:
    """hostA (10.k.n.1) and hostB (10.k.n.2) joined by a veth pair; removed by close()."""

    def __init__(self) -> None:
        tag, self.subnet = _network()
        self.a = Host(f"shmlA{tag}", f"vA{tag}", f"{self.subnet}.1")
        self.b = Host(f"shmlB{tag}", f"vB{tag}", f"{self.subnet}.2")
        _build([["ip", "netns", "add", self.a.ns], ["ip", "netns", "add", self.b.ns],
                ["ip", "link", "add", self.a.dev, "type", "veth", "peer", "name", self.b.dev], *_join(self.a), *_join(self.b)],
               self.close)

    def close(self) -> None:
        _remove([self.a, self.b])


class SwitchedHosts:
    """``count`` hosts (10.k.n.1, .2, ...) on one switch: a Linux bridge in a namespace of its
    own, each host joined to it by a veth pair; removed by close()."""

    def __init__(self, count: int) -> None:
        tag, self.subnet = _network()
        self.switch = f"shmlS{tag}"
        self.hosts = [Host(f"shml{i}{tag}", f"v{i}{tag}", f"{self.subnet}.{i + 1}") for i in range(count)]
        steps = [["ip", "netns", "add", self.switch], ["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"],
                 ["ip", "-n", self.switch, "link", "set", "br0", "up"]]
        for i, h in enumerate(self.hosts):
            port = f"p{i}{tag}"
            steps += [["ip", "netns", "add", h.ns], ["ip", "link", "add", h.dev, "type", "veth", "peer", "name", port],
                      ["ip", "link", "set", port, "netns", self.switch], ["ip", "-n", self.switch, "link", "set", port, "master", "br0"],
                      ["ip", "-n", self.switch, "link", "set", port, "up"], *_join(h)]
        _build(steps, self.close)

    def close(self) -> None:
        _remove(self.hosts, self.switch)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
