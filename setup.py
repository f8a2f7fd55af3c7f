"""Builds the one C module of shmlaunch: the pool topics' hot-path system calls (Linux).

Everything else is declared in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("shmlaunch.transport._fastpath", ["transport/_fastpath.c"], extra_compile_args=["-O2", "-Wall"])])
