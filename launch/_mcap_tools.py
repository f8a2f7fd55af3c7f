"""``shmlaunch info FILE`` and ``shmlaunch record --recover IN OUT``.

``info`` reads a finished file's summary (no need to read the data); a file without one (its
recorder was killed) is streamed and counted, and said to be so. ``--recover`` streams such a
file up to its last complete record and writes every schema, channel, message and metadata
record into a new, complete, indexed file (what ``mcap recover`` does for rosbag2 users).
"""

from __future__ import annotations

import argparse
import datetime
import struct
from collections import Counter
from pathlib import Path

from shmlaunch.nodes.recording import PROFILE, RecordedChannel, RecordingError, channel_of, describe_problem, stream_records

from ._exits import EXIT_FAILED, error
from ._introspect import table


def _summary(f):
    from mcap.exceptions import McapError
    from mcap.reader import make_reader

    try:
        reader = make_reader(f)
        return reader, reader.get_summary()
    except (McapError, ValueError, struct.error, EOFError):
        return None, None


def info(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="shmlaunch info", description="What a recording holds: topics, schemas, counts, rates, "
                                 "duration, size and where it was recorded.")
    ap.add_argument("file", help="an .mcap file")
    ns = ap.parse_args(argv)
    path = Path(ns.file)
    try:
        with open(path, "rb") as f:
            reader, summary = _summary(f)
            if summary is not None and summary.statistics is not None:
                counts = dict(summary.statistics.channel_message_counts)
                span = (summary.statistics.message_start_time, summary.statistics.message_end_time)
                channels = [channel_of(summary.schemas.get(c.schema_id), c, str(path)) for c in summary.channels.values()]
                metadata = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
                complete = True
            else:
                f.seek(0)
                counts, span, channels, metadata = _count(f, path)
                complete = False
    except OSError as exc:
        return error(f"{path}: {exc.strerror}", EXIT_FAILED)
    except RecordingError as exc:
        return error(str(exc), EXIT_FAILED)
    print(_describe(path, complete, counts, span, channels, metadata))
    return 0


def _count(f, path: Path):
    from mcap.records import Channel, Message, Metadata, Schema

    problems: list[Exception] = []
    schemas, channels, counts, metadata = {}, {}, Counter(), {}
    span = [None, None]
    for record in stream_records(f, problems):
        if isinstance(record, Schema):
            schemas[record.id] = record
        elif isinstance(record, Channel):
            channels[record.id] = channel_of(schemas.get(record.schema_id), record, str(path))
        elif isinstance(record, Message):
            counts[record.channel_id] += 1
            span[0] = record.log_time if span[0] is None else min(span[0], record.log_time)
            span[1] = record.log_time if span[1] is None else max(span[1], record.log_time)
        elif isinstance(record, Metadata):
            metadata[record.name] = dict(record.metadata)
    if not channels and problems:
        raise RecordingError(f"{path}: not an MCAP file ({describe_problem(problems[0])})")
    return dict(counts), (span[0] or 0, span[1] or 0), list(channels.values()), metadata


def _describe(path: Path, complete: bool, counts: dict, span: tuple[int, int], channels: list[RecordedChannel], metadata: dict) -> str:
    seconds = max(0, span[1] - span[0]) / 1e9
    start = datetime.datetime.fromtimestamp(span[0] / 1e9).isoformat(sep=" ", timespec="milliseconds") if span[0] else "-"
    meta = metadata.get(PROFILE, {})
    state = "complete (indexed)" if complete else "no footer: streamed (recorder killed?); shmlaunch record --recover IN OUT fixes it"
    lines = [f"file:      {path}", f"size:      {path.stat().st_size / 1e6:.1f} MB", f"state:     {state}",
             f"start:     {start}", f"duration:  {seconds:.3f} s", f"messages:  {sum(counts.values())}"]
    if meta:
        lines.append(f"graph:     {meta.get('graph', '?')} on {meta.get('host', '?')} (launch file {meta.get('launch_file', '-')}; "
                     f"shmlaunch {meta.get('shmlaunch', '?')}, mediapipe {meta.get('mediapipe', '?')})")
    rows = [["CHANNEL", "SCHEMA", "MESSAGES", "HZ", "TOPIC LAYOUT"]]
    for ch in sorted(channels, key=lambda c: c.channel):
        n = counts.get(ch.id, 0)
        hz = f"{(n - 1) / seconds:.1f}" if n > 1 and seconds > 0 else "-"
        layout = ch.config.describe() if ch.config else f"derived from {ch.metadata.get('shmlaunch.derived_from', '-')}"
        rows.append([ch.channel, ch.schema_name or "-", str(n), hz, layout])
    return "\n".join(lines + [""] + table(rows))


def recover(src: str, dst: str) -> int:
    """Rewrite ``src`` (possibly cut short) as a complete, indexed ``dst``."""
    from mcap.records import Channel, Message, Metadata, Schema
    from mcap.writer import Writer

    src_path, dst_path = Path(src), Path(dst)
    if dst_path.exists():
        return error(f"{dst}: exists; give a new file name")
    problems: list[Exception] = []
    try:
        fin = open(src_path, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        return error(f"{src}: {exc.strerror}", EXIT_FAILED)
    schema_ids, channel_ids, messages = {}, {}, 0
    with fin, open(dst_path, "xb") as out:
        w = Writer(out)
        w.start(profile=PROFILE, library="shmlaunch record --recover")
        for record in stream_records(fin, problems):
            if isinstance(record, Schema) and record.id not in schema_ids:
                schema_ids[record.id] = w.register_schema(record.name, record.encoding, record.data)
            elif isinstance(record, Channel) and record.id not in channel_ids:
                channel_ids[record.id] = w.register_channel(record.topic, record.message_encoding,
                                                            schema_ids.get(record.schema_id, 0), dict(record.metadata))
            elif isinstance(record, Message) and record.channel_id in channel_ids:
                w.add_message(channel_ids[record.channel_id], record.log_time, record.data, record.publish_time, record.sequence)
                messages += 1
            elif isinstance(record, Metadata):
                w.add_metadata(record.name, dict(record.metadata))
        w.finish()
    if not channel_ids and problems:
        dst_path.unlink()
        return error(f"{src}: not an MCAP recording ({describe_problem(problems[0])})", EXIT_FAILED)
    cut = f"; the input ended mid-record ({describe_problem(problems[0])}), everything before it was kept" if problems else ""
    print(f"shmlaunch: recovered {messages} messages on {len(channel_ids)} channels into {dst}{cut}")
    return 0
