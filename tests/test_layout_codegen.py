"""One definition of the layout: every other language's constants are generated from _layout.py.

The generator (tools/gen_layout.py) writes the C, C++, C# and Windows-Python constants and the
LAYOUT.md tables; here a stale or hand-edited generated file fails, and the hand-written code of
each language is checked to name every offset it touches (no bare numbers beside a base pointer).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_layout", ROOT / "tools" / "gen_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
GENERATED = {path.relative_to(ROOT).as_posix(): text for path, text in GEN.outputs().items()}


def test_generated_files_are_up_to_date():
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_layout.py"), "--check"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


#: What a constant's definition looks like in each generated file: (pattern, group of the value).
DEFINITION = {
    "_platform/layout.h": r"^#define (\w+) (\d+)",
    "_platform/_layout_constants.py": r"^(\w+) = (\d+)$",
    "transport/cpp/include/shmlaunch/layout.hpp": r"^constexpr \w+ (\w+) = (\d+)",
    "transport/csharp/Layout.g.cs": r"^\s+public const \w+ (\w+) = (\d+)",
}


@pytest.mark.parametrize("name", sorted(DEFINITION))
def test_a_mutation_of_any_generated_constant_fails_the_check(name):
    """Every constant of every generated file, changed by one, is caught (as a hand edit would be)."""
    text = GENERATED[name]
    definitions = list(re.finditer(DEFINITION[name], text, re.M))
    assert len(definitions) > 150, f"{name}: {len(definitions)} constants found; the pattern no longer matches the file"
    expected = {n: int(v) for n, v, _ in GEN.constants()}
    for m in definitions:
        assert int(m.group(2)) == expected[m.group(1)], f"{name}: {m.group(1)}"
        mutated = text[: m.start(2)] + str(int(m.group(2)) + 1) + text[m.end(2) :]
        assert GEN.stale({ROOT / name: mutated}) == [ROOT / name], f"{name}: changing {m.group(1)} went unnoticed"


def test_every_field_of_every_block_is_named_and_the_blocks_are_tiled():
    from shmlaunch.transport import _layout as L

    for block, fields in L.BLOCKS.items():
        offset = 0
        for f in fields:
            assert f.offset == offset, f"{block}.{f.name} starts at {f.offset}, the previous field ends at {offset}"
            offset += f.size
    assert L.block_size(L.HEADER_FIELDS) == L.HEADER_SIZE and L.block_size(L.SLOT_FIELDS) == L.SLOT_HEADER_SIZE
    names = {n for n, _, _ in GEN.constants()}
    assert {"SLOT_LENGTH_OFFSET", "HEADER_WAKE_ID_OFFSET", "TRACE_RECORD_LOST_SIZE", "READER_GROUP_OFFSET"} <= names


#: Hand-written sources of each language and what an unnamed offset looks like in them: a number
#: added to a pointer into the segment or ring, or a header read at a numeric offset.
HAND_WRITTEN = {
    "_platform/_fastpath.c": r"\b(?:h|r|b|base|header|trace_base|w->base|c->base)\s*\+\s*\d+\b",
    "transport/cpp/include/shmlaunch/pool.hpp": r"\b(?:h|r|b|base|header|base_|seg_\.base\(\))\s*\+\s*\d+\b|\bu(?:32|64)\(\d+",
    "transport/csharp/ShmLaunch.cs": r"\b(?:h|Base|seg\.Base)\s*\+\s*\d+\b",
    "_platform/_windows_hotpath.py": r"\b(?:address|base|self\.base)\s*\+\s*\d+\b|c_uint64 \* \d",
}


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_hand_written_code_names_every_offset(name):
    text = (ROOT / name).read_text()
    bare = [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in re.finditer(HAND_WRITTEN[name], text)]
    assert bare == [], "offsets written as numbers (use the generated names):\n" + "\n".join(bare)


def test_no_client_defines_a_layout_constant_of_its_own():
    """The generated names are the only ones: no #define, constexpr or const of a layout value by hand."""
    from shmlaunch.transport import _layout as L

    values = {name: getattr(L, name) for name in L.CONSTANTS}
    own = []
    for name, pattern in [("_platform/_fastpath.c", r"#define (\w+) "), ("transport/cpp/include/shmlaunch/pool.hpp", r"constexpr \w+ (k\w+) ="),
                          ("transport/csharp/ShmLaunch.cs", r"const \w+ (\w+) =")]:
        for m in re.finditer(pattern, (ROOT / name).read_text()):
            plain = re.sub(r"(?<!^)(?=[A-Z])", "_", m.group(1).removeprefix("k")).upper()
            if plain in values or plain.endswith("_OFFSET"):
                own.append(f"{name}: {m.group(1)}")
    assert own == []
