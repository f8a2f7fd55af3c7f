"""The one thing pyproject.toml cannot say: the C module is built on Linux only.

``_platform/_fastpath.c`` is the Linux hot path (futexes, open-file-description locks). On
Windows the package is pure Python (its backend calls kernel32 through ctypes), so a Windows
``pip install`` needs no compiler. ``SHMLAUNCH_PURE_PYTHON=1`` builds that pure package on
Linux too: how CI stages the Windows install it runs under Wine.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

LINUX_C = sys.platform.startswith("linux") and os.environ.get("SHMLAUNCH_PURE_PYTHON") != "1"


class BuildPy(build_py):
    """The repository's root is the package (package-dir), so this script would be a module of it: leave it out."""

    def find_package_modules(self, package, package_dir):
        return [m for m in super().find_package_modules(package, package_dir) if m[:2] != ("shmlaunch", "setup")]


setup(
    ext_modules=[Extension("shmlaunch._platform._fastpath", ["_platform/_fastpath.c"], extra_compile_args=["-O2", "-Wall"])]
    if LINUX_C else [],
    cmdclass={"build_py": BuildPy},
)
