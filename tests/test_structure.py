"""The shape of the code: layers talk through public APIs only, and the platform seam really is one.

Modelled on trio's test_exports: the package is walked and parsed, so a new private import
anywhere fails here, not in a review.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("transport", "nodes", "launch")


def _sources() -> list[Path]:
    files = [ROOT / "testing.py", *sorted((ROOT / "bench").glob("*.py"))]
    for pkg in PACKAGES:
        files += sorted((ROOT / pkg).rglob("*.py"))
    return files


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``; relative imports resolved."""
    rel = path.relative_to(ROOT).with_suffix("")
    here = ["shmlaunch", *rel.parts[:-1]] if rel.parts[0] in PACKAGES else ["shmlaunch"]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return out


def _owner(path: Path) -> str:
    first = path.relative_to(ROOT).parts[0]
    return first if first in PACKAGES else "(outside)"


def test_no_module_imports_another_packages_private_module():
    offenders = []
    for path in _sources():
        for line, module in _imported_modules(path):
            parts = module.split(".")
            if parts[0] != "shmlaunch" or len(parts) < 3:
                continue
            private = next((i for i, p in enumerate(parts[2:], start=2) if p.startswith("_")), None)
            if private is not None and parts[1] != _owner(path):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert offenders == [], "imports of another package's private module:\n" + "\n".join(offenders)


def test_layers_import_downward_only():
    below = {"transport": set(), "nodes": {"transport"}, "launch": {"transport", "nodes"}}
    offenders = []
    for path in _sources():
        owner = _owner(path)
        if owner not in below:
            continue
        for line, module in _imported_modules(path):
            parts = module.split(".")
            if parts[0] == "shmlaunch" and len(parts) > 1 and parts[1] in PACKAGES and parts[1] != owner and parts[1] not in below[owner]:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert offenders == []


OS_MODULES = {"fcntl", "ctypes", "mmap", "resource", "msvcrt", "_winapi", "winreg"}
OS_CALLS = {"posix_fallocate", "sched_getaffinity", "sched_setaffinity", "getpriority", "setpriority", "statvfs", "fstatvfs", "killpg",
            "waitid", "geteuid", "getuid", "pwrite", "pread", "O_NOFOLLOW", "O_DIRECTORY", "set_blocking"}
#: Signals one system has and the other lacks.
OS_SIGNALS = {"SIGKILL", "SIGCHLD", "SIGBREAK", "CTRL_BREAK_EVENT", "CTRL_C_EVENT", "SIGUSR1", "SIGUSR2", "SIGHUP"}


def _os_specific(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if a.name in OS_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module in OS_MODULES:
            found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" and node.attr in OS_CALLS:
            found.append((node.lineno, f"os.{node.attr}"))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "signal" and node.attr in OS_SIGNALS:
            found.append((node.lineno, f"signal.{node.attr}"))
        elif isinstance(node, ast.keyword) and node.arg in ("dir_fd", "preexec_fn", "start_new_session"):
            found.append((node.value.lineno, f"{node.arg}="))
        elif _is_proc_path(node):
            found.append((node.lineno, "a /proc path"))
    return found


def _is_proc_path(node: ast.AST) -> bool:
    if isinstance(node, ast.JoinedStr) and node.values:
        node = node.values[0]
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("/proc")


def test_os_specific_calls_live_only_in_the_platform_backend():
    offenders = []
    for path in _sources():
        rel = path.relative_to(ROOT)
        if rel.parts[:2] == ("transport", "backend") or rel.parts[0] == "bench":
            continue
        offenders += [f"{rel}:{line}: {what}" for line, what in _os_specific(ast.parse(path.read_text()))]
    assert offenders == []


BLOCK_BACKEND = """
import importlib.abc, sys
class NoBackend(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "shmlaunch.transport._fastpath":
            raise ImportError("simulated: no backend for this system")
sys.meta_path.insert(0, NoBackend())
"""


def test_launch_files_are_checked_where_the_platform_backend_cannot_load(tmp_path):
    code = BLOCK_BACKEND + f"""
from shmlaunch.transport import backend, Writer, PlatformUnavailableError
assert not backend.AVAILABLE, backend.UNAVAILABLE_REASON
import shmlaunch.launch
from shmlaunch.launch.cli import main
code = main(["check", {str(ROOT / "tests" / "three_nodes.yaml")!r}])
try:
    Writer("t", capacity=8, runtime_dir={str(tmp_path / "rt")!r})
except PlatformUnavailableError as exc:
    print("writer:", exc)
sys.exit(code)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "tests", timeout=60)
    assert res.returncode == 0, res.stderr
    assert "graph 'three-nodes' is consistent: 3 nodes, 2 topics" in res.stdout
    assert "writer: pool topics have no backend on this system (simulated: no backend for this system)" in res.stdout
