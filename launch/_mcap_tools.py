"""``shmlaunch info FILE`` and ``shmlaunch record --recover IN OUT``.

``info`` reads a finished file's summary (no need to read the data); a file without one (its
recorder was killed) is streamed and counted, and said to be so. ``--recover`` streams such a
file up to its last complete record and writes every schema, channel, message and metadata
record into a new, complete, indexed file (what ``mcap recover`` does for rosbag2 users).
"""

from __future__ import annotations

import argparse
import datetime
from collections import Counter
from pathlib import Path

from shmlaunch.nodes.recording import (
    PROFILE,
    RecordedChannel,
    RecordingError,
    channel_of,
    check_record_extra,
    create_recording,
    printable,
)

from ._exits import EXIT_FAILED, error
from ._introspect import table


def info(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="shmlaunch info", description="What a recording holds: topics, schemas, counts, rates, "
                                 "duration, size and where it was recorded. A file without a summary (or one that does not "
                                 "check out) is read through and checked; damage is said and the exit code is 1.")
    ap.add_argument("file", help="an .mcap file")
    ns = ap.parse_args(argv)
    path = Path(ns.file)
    try:
        check_record_extra()
        from shmlaunch.nodes.mcap_records import open_recording, read_summary

        with open_recording(path) as f:
            summary = read_summary(f)
            if summary is not None and summary.statistics is not None:
                counts = dict(summary.statistics.channel_message_counts)
                span = (summary.statistics.message_start_time, summary.statistics.message_end_time)
                channels, bad = _channels(summary.schemas, summary.channels.values(), path)
                state, lost = "complete (indexed)", bad
                metadata = summary.metadata
            else:
                counts, span, channels, metadata, state, lost = _count(f, path)
    except OSError as exc:
        return error(f"{path}: {exc.strerror or exc}", EXIT_FAILED)
    except RecordingError as exc:
        return error(str(exc), EXIT_FAILED)
    print(_describe(path, state, counts, span, channels, metadata))
    if lost:
        return error("\n".join(lost), EXIT_FAILED)
    return 0


def _channels(schemas: dict, records, path: Path) -> tuple[list[RecordedChannel], list[str]]:
    """The channels that describe what they claim; one line for each that does not."""
    out, bad = [], []
    for c in records:
        try:
            out.append(channel_of(schemas.get(c.schema_id), c, str(path)))
        except RecordingError as exc:
            bad.append(str(exc))
    return out, bad


def _count(f, path: Path):
    """Read a file through (no summary, or one that does not check out): counts and what was lost."""
    from mcap.records import Channel, Message, Metadata, Schema

    from shmlaunch.nodes.mcap_records import RecordStream

    stream = RecordStream(f, str(path))
    schemas, channels, counts, metadata = {}, {}, Counter(), {}
    span = [None, None]
    for record in stream:
        if isinstance(record, Schema):
            schemas[record.id] = record
        elif isinstance(record, Channel):
            channels[record.id] = record
        elif isinstance(record, Message):
            counts[record.channel_id] += 1
            span[0] = record.log_time if span[0] is None else min(span[0], record.log_time)
            span[1] = record.log_time if span[1] is None else max(span[1], record.log_time)
        elif isinstance(record, Metadata):
            metadata[record.name] = dict(record.metadata)
    found, bad = _channels(schemas, channels.values(), path)
    if stream.complete:
        state = "complete, but its summary is missing or does not check out (read through)"
    else:
        state = "no footer: read through (recorder killed?); shmlaunch record --recover IN OUT makes it complete"
    return dict(counts), (span[0] or 0, span[1] or 0), found, metadata, state, stream.damage + bad


def _describe(path: Path, state: str, counts: dict, span: tuple[int, int], channels: list[RecordedChannel], metadata: dict) -> str:
    """The report; every text that came from the file is shown through ``printable`` (no
    terminal escape sequence from a recording reaches the terminal)."""
    seconds = max(0, span[1] - span[0]) / 1e9
    try:
        start = datetime.datetime.fromtimestamp(span[0] / 1e9).isoformat(sep=" ", timespec="milliseconds") if span[0] else "-"
    except (OverflowError, OSError, ValueError):
        start = f"{span[0]} ns (not a date)"
    meta = {k: printable(str(v)) for k, v in metadata.get(PROFILE, {}).items()}
    lines = [f"file:      {printable(str(path))}", f"size:      {path.stat().st_size / 1e6:.1f} MB", f"state:     {state}",
             f"start:     {start}", f"duration:  {seconds:.3f} s", f"messages:  {sum(counts.values())}"]
    if meta:
        lines.append(f"graph:     {meta.get('graph', '?')} on {meta.get('host', '?')} (launch file {meta.get('launch_file', '-')}; "
                     f"shmlaunch {meta.get('shmlaunch', '?')}, mediapipe {meta.get('mediapipe', '?')})")
    rows = [["CHANNEL", "SCHEMA", "MESSAGES", "HZ", "TOPIC LAYOUT"]]
    for ch in sorted(channels, key=lambda c: c.channel):
        n = counts.get(ch.id, 0)
        hz = f"{(n - 1) / seconds:.1f}" if n > 1 and seconds > 0 else "-"
        layout = ch.config.describe() if ch.config else f"derived from {printable(ch.metadata.get('shmlaunch.derived_from', '-'))}"
        rows.append([printable(ch.channel), printable(ch.schema_name) or "-", str(n), hz, layout])
    return "\n".join(lines + [""] + table(rows))


def recover(src: str, dst: str) -> int:
    """Rewrite ``src`` (cut short, or damaged) as a complete, indexed ``dst``: every record that
    checks out is kept; what did not is said, and then the exit code is 1 (data was lost)."""
    from mcap.records import Channel, Message, Metadata, Schema
    from mcap.writer import Writer

    from shmlaunch.nodes.mcap_records import RecordStream, open_recording

    src_path, dst_path = Path(src), Path(dst)
    if dst_path.exists():
        return error(f"{dst}: exists; give a new file name")
    try:
        check_record_extra()
        fin = open_recording(src_path)
    except OSError as exc:
        return error(f"{src}: {exc.strerror or exc}", EXIT_FAILED)
    except RecordingError as exc:
        return error(str(exc), EXIT_FAILED)
    schema_ids, channel_ids, messages = {}, {}, 0
    stream = RecordStream(fin, str(src_path))
    try:
        with fin, create_recording(dst_path) as out:
            w = Writer(out)
            w.start(profile=PROFILE, library="shmlaunch record --recover")
            for record in stream:
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
    except RecordingError as exc:  # not an MCAP file at all
        dst_path.unlink()
        return error(str(exc), EXIT_FAILED)
    except OSError as exc:
        return error(f"{dst}: cannot write: {exc.strerror or exc}", EXIT_FAILED)
    cut = f"; {stream.truncated}: everything before the cut was kept" if stream.truncated else ""
    print(f"shmlaunch: recovered {messages} messages on {len(channel_ids)} channels into {dst}{cut}")
    if stream.damage:
        return error("\n".join(stream.damage + [f"{src}: damaged: what is listed above is not in {dst}"]), EXIT_FAILED)
    return 0
