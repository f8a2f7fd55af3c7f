"""Reading YAML with bounds and line numbers, and collecting every problem of a launch file.

A launch file is read at most MAX_FILE_BYTES of UTF-8 from a regular file, its aliases may
expand to at most MAX_EXPANDED_NODES values (a few hundred bytes of "alias bomb" otherwise
expand to gigabytes), and every mapping and list remembers the line it came from, so each
problem names file:line.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

from shmlaunch import _platform as backend

MAX_FILE_BYTES = 1 << 20
#: Never block on a FIFO or a device put where a launch file was expected; bytes as they are.
_OPEN_FLAGS = backend.OPEN_READ_FLAGS
MAX_EXPANDED_NODES = 100_000


# ----- YAML with line numbers
class LineDict(dict):
    """A mapping that remembers the line of each key (1-based) and its own."""

    line = 0
    key_lines: dict


class LineList(list):
    line = 0


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node):
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader, node):
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


@dataclass
class IncludeBudget:
    """Includes read so far in one launch; once over a bound, no file reads any more (one error)."""

    count: int = 0
    exhausted: bool = False


class Problems:
    """Collects every problem of a file, so one run reports them all."""

    def __init__(self, file: str, includes: IncludeBudget | None = None) -> None:
        self.file = file
        self.items: list[str] = []
        self.includes = includes or IncludeBudget()  # shared by a file and all its includes

    def at(self, line: int) -> str:
        return f"{self.file}:{line}"

    def add(self, line: int, text: str) -> None:
        self.items.append(f"{self.file}:{line}: {text}")


def line_of(mapping, key) -> int:
    return getattr(mapping, "key_lines", {}).get(key, getattr(mapping, "line", 0))


def _expanded_size(node, memo: dict) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (computed in linear
    time over the composed graph: a shared node is sized once)."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a recursive alias counts as nothing more while it is being sized
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(_expanded_size(v, memo) for v in node.value)
        else:
            size = 1
        memo[key] = min(size, MAX_EXPANDED_NODES + 1)
    return memo[key]


def _read_text(path: Path, problems: Problems) -> str | None:
    """The file's text, read with bounds: a regular file of at most MAX_FILE_BYTES of UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except FileNotFoundError:
        problems.items.append(f"{path}: no such launch file")
        return None
    except OSError as exc:
        problems.items.append(f"{path}: cannot read launch file: {exc.strerror}")
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            problems.items.append(f"{path}: not a regular file (a launch file is a YAML file)")
            return None
        data = os.read(fd, MAX_FILE_BYTES + 1)
    except OSError as exc:
        problems.items.append(f"{path}: cannot read launch file: {exc.strerror}")
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        problems.items.append(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB; a launch file is a small YAML file")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.add(line, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})")
        return None


def read_yaml(path: Path, problems: Problems, top_keys: set[str]):
    text = _read_text(path, problems)
    if text is None:
        return None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            problems.add(node.start_mark.line + 1, f"the YAML expands to more than {MAX_EXPANDED_NODES} values through its "
                         f"aliases (&anchor / *alias); refusing to read it")
            return None
        doc = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problems.add(mark.line + 1 if mark else 0, f"invalid YAML: {exc.problem or exc}")
        return None
    except yaml.YAMLError as exc:
        problems.items.append(f"{path}: invalid YAML: {exc}")
        return None
    except RecursionError:
        problems.items.append(f"{path}: invalid YAML: nested too deeply")
        return None
    finally:
        loader.dispose()
    if not isinstance(doc, dict):
        kind = "a list" if isinstance(doc, list) else "nothing" if doc is None else type(doc).__name__
        problems.add(1, f"a launch file is a mapping with {', '.join(sorted(top_keys))}; got {kind}")
        return None
    return doc


