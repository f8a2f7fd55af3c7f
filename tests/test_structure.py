"""The shape of the code: layers talk through public APIs only, and the platform layer really is the only OS code.

Modelled on trio's test_exports: the package is walked and parsed, so a new private import
anywhere fails here, not in a review.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("_platform", "transport", "nodes", "launch")


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
    below = {"_platform": set(), "transport": {"_platform"}, "nodes": {"_platform", "transport"}, "launch": {"_platform", "transport", "nodes"}}
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


#: Modules only the platform layer imports: they exist on one system, or reach the OS below Python's portable API.
OS_MODULES = {"fcntl", "ctypes", "mmap", "resource", "msvcrt", "_winapi", "winreg", "termios", "pwd", "grp", "posix", "nt", "_posixsubprocess"}
#: ``os`` names that are one system's, or that bypass the platform layer's checks (links, descriptors).
OS_CALLS = {"posix_fallocate", "sched_getaffinity", "sched_setaffinity", "getpriority", "setpriority", "statvfs", "fstatvfs", "killpg",
            "waitid", "geteuid", "getuid", "pwrite", "pread", "O_NOFOLLOW", "O_DIRECTORY", "O_NONBLOCK", "O_BINARY", "O_CLOEXEC",
            "set_blocking", "name", "sysconf", "getpgid", "setsid", "fork", "pipe2", "memfd_create", "uname"}
#: The signal names every layer may use (the two stop signals, and installing a handler); the rest is the platform's.
SIGNALS_ALLOWED = {"SIGINT", "SIGTERM", "signal", "Signals", "SIG_IGN", "SIG_DFL", "getsignal", "default_int_handler"}
#: Other modules' names that are the platform's: the system's name and socket families.
OTHER_CALLS = {("sys", "platform"), ("sys", "getwindowsversion"), ("platform", "system")}


def _attribute_use(node: ast.AST) -> tuple[str, str] | None:
    """(module, name) for ``module.name`` and ``getattr(module, "name", ...)``."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.value.id, node.attr
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name) and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
        return node.args[0].id, node.args[1].value
    return None


def _platform_only(module: str, name: str) -> bool:
    return ((module == "os" and name in OS_CALLS) or (module == "signal" and name not in SIGNALS_ALLOWED)
            or (module == "socket" and name.startswith("AF_")) or (module, name) in OTHER_CALLS)


def _os_specific(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        use = _attribute_use(node)
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if a.name.split(".")[0] in OS_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OS_MODULES | {"signal", "socket"}:
            found.append((node.lineno, f"from {node.module} import ..."))
        elif use is not None and _platform_only(*use):
            found.append((node.lineno, ".".join(use)))
        elif isinstance(node, ast.keyword) and node.arg in ("dir_fd", "preexec_fn", "start_new_session", "creationflags"):
            found.append((node.value.lineno, f"{node.arg}="))
        elif _is_proc_path(node):
            found.append((node.lineno, "a /proc path"))
    return found


def _is_proc_path(node: ast.AST) -> bool:
    if isinstance(node, ast.JoinedStr) and node.values:
        node = node.values[0]
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("/proc")


def test_only_the_platform_layer_touches_the_operating_system():
    """An allow-list: outside _platform/, no system name, no OS-only module, no signal beyond SIGINT and
    SIGTERM, no socket family, no descriptor-level open flag (benchmarks excepted: they measure the OS)."""
    offenders = []
    for path in _sources():
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("_platform", "bench"):
            continue
        offenders += [f"{rel}:{line}: {what}" for line, what in _os_specific(ast.parse(path.read_text()))]
    assert offenders == []


def test_the_allow_list_catches_what_it_names():
    code = """
import fcntl
from signal import SIGKILL
os.name; sys.platform; signal.pause(); signal.SIGUSR1; socket.AF_UNIX; getattr(os, "O_NONBLOCK", 0)
subprocess.Popen(x, start_new_session=True); open("/proc/self/stat")
signal.signal(signal.SIGINT, h); signal.SIGTERM; os.path.join(a, b); os.O_RDONLY
"""
    found = sorted(what for _, what in _os_specific(ast.parse(code)))
    assert found == sorted(["import fcntl", "from signal import ...", "os.name", "sys.platform", "signal.pause", "signal.SIGUSR1", "socket.AF_UNIX",
                            "os.O_NONBLOCK", "start_new_session=", "a /proc path"])


def test_the_platform_layer_imports_nothing_above_it():
    offenders = []
    for path in sorted((ROOT / "_platform").rglob("*.py")):
        for line, module in _imported_modules(path):
            parts = module.split(".")
            if parts[0] == "shmlaunch" and len(parts) > 1 and parts[1] != "_platform":
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert offenders == []


BLOCK_BACKEND = """
import importlib.abc, sys
class NoBackend(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "shmlaunch._platform._fastpath":
            raise ImportError("simulated: no backend for this system")
sys.meta_path.insert(0, NoBackend())
"""


def test_launch_files_are_checked_where_the_platform_backend_cannot_load(tmp_path):
    code = BLOCK_BACKEND + f"""
from shmlaunch import _platform as backend
from shmlaunch.transport import Writer, PlatformUnavailableError
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


def _c_keywords(name: str) -> list[str]:
    text = (ROOT / "_platform" / "_fastpath.c").read_text()
    body = re.search(r"static char \*" + name + r"\[\] = \{(.*?)\};", text, re.S)
    assert body, f"_fastpath.c has no {name}"
    return re.findall(r'"(\w+)"', body.group(1))


def _windows_keywords(cls: str) -> list[str]:
    tree = ast.parse((ROOT / "_platform" / "_windows_hotpath.py").read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
    init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assert not init.args.args[1:], f"{cls}.__init__ takes positional arguments"
    return [a.arg for a in init.args.kwonlyargs]


def _call_keywords(path: str, cls: str) -> list[str]:
    tree = ast.parse((ROOT / path).read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == cls)
    assert not call.args, f"{path} passes {cls} positional arguments"
    return [k.arg for k in call.keywords]


@pytest.mark.parametrize(("cls", "c_list", "caller"), [("ReadCursor", "read_cursor_keywords", "transport/_reader.py"),
                                                       ("WriteCursor", "write_cursor_keywords", "transport/_writer.py")])
def test_the_hot_path_cursors_take_the_same_keywords_on_every_platform(cls, c_list, caller):
    """One contract, checked on both sides: the C and the Windows cursors take keywords only, the same ones,
    and the transport passes exactly those."""
    c, windows, passed = _c_keywords(c_list), _windows_keywords(cls), _call_keywords(caller, cls)
    assert c == windows, f"{cls}: C takes {c}, Windows takes {windows}"
    assert sorted(passed) == sorted(c), f"{caller} passes {sorted(passed)}, {cls} takes {sorted(c)}"


def test_a_cursor_refuses_positional_or_unknown_arguments():
    from shmlaunch import _platform as backend

    if not backend.AVAILABLE:
        pytest.skip(backend.UNAVAILABLE_REASON)
    with pytest.raises(TypeError, match="keyword arguments only"):
        backend.WriteCursor(1, 2)
    with pytest.raises(TypeError, match="fd"):
        backend.ReadCursor(address=1)
