"""Mutants of real recordings, and a driver that feeds each to info, play, --recover and the
camera source in one process (tests/test_recording_fuzz.py runs it).

``python tests/recording_fuzz.py OUT_DIR SEED COUNT FILE...`` writes COUNT byte-level and
structural mutants of the FILEs plus the schema-lie mutants into OUT_DIR, then prints one JSON
line per (mutant, tool): its exit code, the last error line, whether anything escaped as an
exception, and what was played or recovered; the last line holds the peak RSS.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import struct
import sys
from pathlib import Path

from mcap.reader import make_reader
from mcap.writer import CompressionType, Writer

from shmlaunch.launch import cli
from shmlaunch.nodes.recording import RecordingError, image_frames
from shmlaunch.transport import cleanup, ensure_runtime_dir, graph_runtime_dir

CHUNK = 0x06


def records(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, opcode, length) of every top-level record of an intact file."""
    out, pos = [], 8
    while pos + 9 <= len(data):
        opcode, length = struct.unpack_from("<BQ", data, pos)
        out.append((pos, opcode, length))
        pos += 9 + length
    return out


def byte_mutants(data: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    out = []
    chunks = [r for r in records(data) if r[1] == CHUNK]
    for i in range(n):
        kind = i % 9
        b = bytearray(data)
        at = rng.randrange(len(b))
        if kind == 0:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            name = "flip"
        elif kind == 1:
            b[at:at + 4096] = bytes(len(b[at:at + 4096]))
            name = "zero-page"
        elif kind == 2:
            b = b[:at]
            name = "truncate"
        elif kind == 3:
            b[at:at] = rng.randbytes(rng.randint(1, 64))
            name = "insert"
        elif kind == 4:
            end = min(len(b), at + rng.randint(1, 8192))
            b[at:at] = b[at:end]
            name = "duplicate"
        else:
            off, _, length = rng.choice(chunks)
            field = kind - 5
            if field == 0:  # the record length
                struct.pack_into("<Q", b, off + 1, rng.choice([0, 1, length - 1, length + 1, 1 << 40, (1 << 64) - 1]))
                name = "chunk-length"
            elif field == 1:  # uncompressed size
                struct.pack_into("<Q", b, off + 25, rng.choice([0, 1, 1 << 36, (1 << 64) - 1, rng.randrange(1 << 30)]))
                name = "chunk-uncompressed-size"
            elif field == 2:  # the compression's name (same length, other bytes)
                clen = struct.unpack_from("<I", b, off + 37)[0]
                b[off + 41:off + 41 + clen] = rng.randbytes(clen)
                struct.pack_into("<I", b, off + 37, rng.choice([clen, 1 << 31]))
                name = "chunk-compression"
            else:  # the compressed data's length
                clen = struct.unpack_from("<I", b, off + 37)[0]
                struct.pack_into("<Q", b, off + 41 + clen, rng.choice([0, 1 << 33, rng.randrange(length)]))
                name = "chunk-data-length"
        out.append((f"{name}-{i}", bytes(b)))
    return out


LIES = {  # channel metadata a hostile file may carry
    "capacity-negative": {"shmlaunch.capacity": "-1"},
    "capacity-huge": {"shmlaunch.capacity": str(1 << 40)},
    "dtype-object": {"shmlaunch.dtype": "|O"},
    "dtype-garbage": {"shmlaunch.dtype": "not a dtype"},
    "shape-zero": {"shmlaunch.shape": "[0]"},
    "shape-huge": {"shmlaunch.shape": "[1000000000, 1000000000]"},
    "shape-text": {"shmlaunch.shape": "\"x\""},
    "shape-floats": {"shmlaunch.shape": "[1.5, 2]"},
    "pool-zero": {"shmlaunch.pool": "0"},
    "topic-escape": {"shmlaunch.topic": "../../etc/x"},
    "topic-terminal": {"shmlaunch.topic": "a\x1b]0;owned\x07"},
}


def lie_mutants(source: Path, out_dir: Path) -> list[Path]:
    """Valid MCAP files (good CRCs) whose channels lie about their topics or messages."""
    with open(source, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        messages = [(c, m) for _, c, m in reader.iter_messages(log_time_order=False)]
    cases = {name: (meta, None) for name, meta in LIES.items()}
    cases.update({"encoding-swap": ({}, "swap"), "schema-missing": ({}, "no-schema"), "unknown-channel": ({}, "unknown-channel"),
                  "short-message": ({}, "short"), "long-message": ({}, "long"), "image-garbage": ({}, "image-garbage"),
                  "escape-metadata": ({}, "escape-metadata")})
    paths = []
    for name, (meta_lie, how) in cases.items():
        path = out_dir / f"lie-{name}.mcap"
        with open(path, "wb") as out:
            w = Writer(out, compression=CompressionType.ZSTD)
            w.start(profile="shmlaunch", library="fuzz")
            w.add_metadata("shmlaunch", {"graph": "g\x1b[2J\x1b[31mred", "host": "h\x07"} if how == "escape-metadata" else {"graph": "g"})
            sids, cids = {}, {}
            for sid, s in summary.schemas.items():
                sids[sid] = w.register_schema(s.name, s.encoding, s.data)
            for cid, c in summary.channels.items():
                meta = dict(c.metadata)
                if "shmlaunch.capacity" in meta:
                    meta.update(meta_lie)
                encoding = c.message_encoding
                if how == "swap" and "shmlaunch.capacity" in meta:
                    encoding = "protobuf" if encoding != "protobuf" else "shmlaunch.ndarray"
                schema = 0 if how == "no-schema" else sids.get(c.schema_id, 0)
                cids[cid] = w.register_channel(c.topic, encoding, schema, meta)
            for c, m in messages:
                data = m.data
                if how == "short":
                    data = data[:7]
                elif how == "long":
                    data = data + b"\0" * 100
                elif how == "image-garbage" and c.message_encoding == "protobuf":
                    data = bytes(reversed(data[:200]))
                channel = cids[c.id] + 1000 if how == "unknown-channel" else cids[c.id]
                w.add_message(channel, m.log_time, data, m.publish_time, m.sequence)
            w.finish()
        paths.append(path)
    return paths


def _run(fn, *args) -> dict:
    err = io.StringIO()
    escaped = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = fn(*args)
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:  # noqa: BLE001 (what the test looks for)
            code, escaped = None, f"{type(exc).__name__}: {exc}"
    lines = err.getvalue().strip().splitlines()
    return {"rc": code, "escaped": escaped, "stderr": lines}


def camera_frames(path: Path) -> dict:
    lost: list[str] = []
    try:
        n = sum(1 for _ in image_frames(path, on_loss=lost.extend))
        return {"rc": 0 if not lost else 1, "frames": n, "lost": len(lost), "escaped": None, "stderr": lost[:1]}
    except (RecordingError, OSError) as exc:
        return {"rc": 1, "frames": None, "escaped": None, "stderr": [str(exc)]}
    except BaseException as exc:  # noqa: BLE001
        return {"rc": None, "escaped": f"{type(exc).__name__}: {exc}", "stderr": []}


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent at fork)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def main(argv: list[str]) -> int:
    out_dir, seed, count, files = Path(argv[0]), int(argv[1]), int(argv[2]), [Path(p) for p in argv[3:]]
    rng = random.Random(seed)
    mutants: list[Path] = []
    for src in files:
        for name, data in byte_mutants(src.read_bytes(), rng, count // len(files)):
            path = out_dir / f"{src.stem}-{name}.mcap"
            path.write_bytes(data)
            mutants.append(path)
    mutants += lie_mutants(files[0], out_dir)
    for i, path in enumerate(mutants):
        graph = f"fuzz-{seed}-{i}"
        # a graph directory made here (as a script makes one): play plays into it and leaves it,
        # with no watchdog process to start for each of hundreds of mutants; removed below
        ensure_runtime_dir(graph_runtime_dir(graph))
        results = {
            "info": _run(cli.main, ["info", str(path)]),
            "recover": _run(cli.main, ["record", "--recover", str(path), str(out_dir / f"rec-{i}.mcap")]),
            "play": _run(cli.main, ["play", str(path), "--rate", "1000", "--graph", graph, "--duration", "20"]),
            "camera": camera_frames(path),
        }
        for tool, r in results.items():
            print(json.dumps({"mutant": path.name, "tool": tool, **r}), flush=True)
        cleanup(graph_runtime_dir(graph))
        (out_dir / f"rec-{i}.mcap").unlink(missing_ok=True)
        path.unlink()
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
