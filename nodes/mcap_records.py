"""MCAP records read as untrusted input: bounded, checked, never stopped by one bad record.

Every reading of a recording (``play``, ``info``, ``record --recover``, the camera's ``.mcap``
source) goes through here, not through the ``mcap`` library's readers: those trust what they
read (a length field becomes an allocation, a chunk's declared size a decompression target),
check no CRC unless asked, and end a stream at the first bad byte. This module frames the
records itself and uses ``mcap`` only to parse a record's fields out of bytes already in
memory and already bounded.

- A record is at most MAX_RECORD bytes and a chunk inflates to at most MAX_CHUNK; a length the
  file cannot back allocates nothing (records are read in pieces).
- A chunk is decompressed into a bounded output and checked against its CRC, the summary
  against its own when the writer stored one. (The data section's CRC is not computed: it would
  read every byte a second time, and what lies outside chunks is checked by its framing.)
- A chunk that fails a check is skipped and said (``damage``), and the stream goes on. A record
  whose framing is broken (an opcode or a length that cannot be) is searched past: the stream
  resumes at the next chunk whose header and length agree.
- A file that just ends (a killed recorder) is ``truncated``: everything before the cut is
  read and nothing the file holds was lost.
- Only regular files are read (a FIFO or a device would block or never end).

Peak memory: one record as read (<= MAX_RECORD) plus its decompressed chunk (<= MAX_CHUNK) and
the inner record being parsed: about 512 MiB for a hostile file, a chunk's size for ours.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mcap.data_stream import ReadDataStream
from mcap.exceptions import McapError
from mcap.opcode import Opcode
from mcap.records import Channel, Message, Metadata, MetadataIndex, Schema, Statistics

from shmlaunch import _platform as backend

from .recording import RecordingError

__all__ = ["MAX_CHUNK", "MAX_RECORD", "MAGIC", "RecordStream", "Summary", "open_recording", "read_summary"]

MAGIC = b"\x89MCAP0\r\n"
#: The largest record read (a chunk as stored, a message outside chunks): above an 8K frame.
MAX_RECORD = 256 << 20
#: The most a chunk may inflate to.
MAX_CHUNK = 256 << 20
_HEAD = struct.Struct("<BQ")  # opcode, record length
_CHUNK_HEAD = struct.Struct("<QQQII")  # start time, end time, uncompressed size, uncompressed crc, compression length
_MESSAGE_HEAD = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time
_FOOTER = struct.Struct("<QQI")  # summary start, summary offset start, summary crc
_FOOTER_RECORD = _HEAD.size + _FOOTER.size
_PIECE = 16 << 20
_SCAN_WINDOW = 1 << 20
_COMPRESSIONS = ("", "lz4", "zstd")
#: Opcodes this reader parses; any other opcode of the spec's range is skipped by its length,
#: and one outside it (0, or 0x10-0x7f) means the framing is broken.
_PARSERS = {Opcode.SCHEMA: Schema.read, Opcode.CHANNEL: Channel.read, Opcode.METADATA: Metadata.read,
            Opcode.STATISTICS: Statistics.read, Opcode.METADATA_INDEX: MetadataIndex.read}
_KNOWN = {int(op) for op in Opcode}
#: What mcap's field parsers raise on bytes that lie (they read from memory here, so nothing else).
_PARSE_ERRORS = (McapError, struct.error, ValueError, EOFError, IndexError)


class _Bad(Exception):
    """The bytes at hand are not the record they claim to be."""

    def __init__(self, what: str, cut: bool = False) -> None:
        super().__init__(what)
        self.cut = cut  # it reaches past the end of the file: a cut, if nothing intact follows


def open_recording(path: str | Path) -> BinaryIO:
    """``path`` opened for reading, refused (OSError with a reason) unless a regular file:
    opening does not block on a FIFO, and the stream's size is known and fixed."""
    fd = os.open(path, os.O_RDONLY | backend.OPEN_READ_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file (a recording is read from a file, not a FIFO or device)", str(path))
        return os.fdopen(fd, "rb")  # (O_NONBLOCK changes nothing for a regular file's reads)
    except BaseException:
        os.close(fd)
        raise


def _parse(opcode: int, view: memoryview):
    try:
        return _PARSERS[opcode](ReadDataStream(io.BytesIO(view)))
    except _PARSE_ERRORS as exc:
        raise _Bad(f"a malformed {Opcode(opcode).name.lower()} record ({str(exc) or type(exc).__name__})") from None


def _message(view: memoryview) -> Message:
    if len(view) < _MESSAGE_HEAD.size:
        raise _Bad(f"a message record of {len(view)} bytes (the header alone is {_MESSAGE_HEAD.size})")
    channel_id, sequence, log_time, publish_time = _MESSAGE_HEAD.unpack_from(view)
    return Message(channel_id=channel_id, sequence=sequence, log_time=log_time, publish_time=publish_time,
                   data=bytes(view[_MESSAGE_HEAD.size:]))


def _chunk_header(view: memoryview | bytes, offset: int, length: int) -> tuple[int, int, str, int]:
    """(uncompressed size, crc, compression, where the compressed bytes start) of the chunk record
    body at ``offset``; _Bad unless every field agrees with the record's ``length``."""
    if length < _CHUNK_HEAD.size + 8:
        raise _Bad(f"a chunk record of {length} bytes")
    _, _, size, crc, name_len = _CHUNK_HEAD.unpack_from(view, offset)
    if name_len > 4:
        raise _Bad(f"a chunk names a compression of {name_len} bytes")
    start = offset + _CHUNK_HEAD.size
    name = bytes(view[start:start + name_len])
    (data_len,) = struct.unpack_from("<Q", view, start + name_len)
    if name.decode("ascii", "replace") not in _COMPRESSIONS:
        raise _Bad(f"a chunk compressed with unknown {name!r} (known: none, lz4, zstd)")
    if data_len != length - _CHUNK_HEAD.size - name_len - 8:
        raise _Bad(f"a chunk's data length ({data_len}) disagrees with its record length ({length})")
    if size > MAX_CHUNK:
        raise _Bad(f"a chunk claims to inflate to {size} bytes (the limit is {MAX_CHUNK})")
    return size, crc, name.decode(), start + name_len + 8


def _inflate(compression: str, data: memoryview, size: int) -> bytes | memoryview:
    """``data`` decompressed into at most ``size`` bytes; _Bad if it makes more or fewer."""
    if compression == "":
        out: bytes | memoryview = data
    elif compression == "zstd":
        import zstandard

        try:
            with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as reader:
                out = _read_up_to(reader, size + 1)
        except zstandard.ZstdError as exc:
            raise _Bad(f"a zstd chunk does not decompress ({exc})") from None
    else:
        import lz4.frame

        try:
            out = lz4.frame.LZ4FrameDecompressor().decompress(bytes(data), max_length=size + 1)
        except RuntimeError as exc:
            raise _Bad(f"an lz4 chunk does not decompress ({exc})") from None
    if len(out) != size:
        raise _Bad(f"a chunk inflates to {'more than ' if len(out) > size else ''}{min(len(out), size + 1) - (len(out) > size)} "
                   f"bytes, not the {size} it claims")
    return out


def _read_up_to(reader, limit: int) -> bytes:
    parts, got = [], 0
    while got < limit and (piece := reader.read(min(_PIECE, limit - got))):
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


@dataclass
class RecordStream:
    """The records of one MCAP file, front to back: Schema, Channel, Message and Metadata
    records (those inside chunks too), up to the end of the data section.

    ``damage`` lists what was skipped because it did not check out (data lost: a caller must
    not report success); ``truncated`` says where a file with no end was cut (a killed
    recorder: nothing the file holds was lost); ``complete`` that the data section ended.
    """

    f: BinaryIO
    where: str
    damage: list[str] = field(default_factory=list)
    truncated: str | None = None
    complete: bool = False

    def __post_init__(self) -> None:
        self.size = os.fstat(self.f.fileno()).st_size
        self.pos = 0

    def __iter__(self) -> Iterator[Schema | Channel | Message | Metadata]:
        self.f.seek(0)
        if self.size < len(MAGIC) or self._read(len(MAGIC)) != MAGIC:
            raise RecordingError(f"{self.where}: not an MCAP file (it does not start with MCAP's magic bytes)")
        while self.pos < self.size:
            start = self.pos
            try:
                opcode, body = self._record()
                if opcode == Opcode.CHUNK:
                    yield from self._chunk(start, body)
                elif opcode == Opcode.MESSAGE:
                    yield _message(body)
                elif opcode == Opcode.DATA_END:
                    self.complete = True
                    return
                elif opcode in (Opcode.SCHEMA, Opcode.CHANNEL, Opcode.METADATA):
                    yield _parse(opcode, body)
            except _Bad as bad:
                if not self._resync(start, bad):
                    return
        self.truncated = f"{self.where}: ends without a footer at byte {self.size} (its recorder was stopped hard?)"

    def _read(self, n: int) -> bytes:
        """The next ``n`` bytes, read in pieces (a length the file cannot back allocates nothing)."""
        if n > self.size - self.pos:
            raise _Bad(f"a record of {n} bytes reaches past the end of the file", cut=True)
        data = self.f.read(n) if n <= _PIECE else self._pieces(n)
        if len(data) != n:
            raise _Bad("the file changed size while it was read", cut=True)
        self.pos += n
        return data

    def _pieces(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n and (piece := self.f.read(min(_PIECE, n - len(buf)))):
            buf += piece
        return bytes(buf)

    def _record(self) -> tuple[int, memoryview]:
        opcode, length = _HEAD.unpack(self._read(_HEAD.size))
        if opcode not in _KNOWN and opcode < 0x80:
            raise _Bad(f"opcode 0x{opcode:02x} is no MCAP record")
        if length > self.size - self.pos:
            raise _Bad(f"a record (opcode 0x{opcode:02x}) of {length} bytes reaches past the end of the file", cut=True)
        if length > MAX_RECORD:
            raise _Bad(f"a record (opcode 0x{opcode:02x}) of {length} bytes (the limit is {MAX_RECORD})")
        return opcode, memoryview(self._read(length))

    def _chunk(self, start: int, body: memoryview) -> Iterator[Schema | Channel | Message]:
        try:
            size, crc, compression, data_at = _chunk_header(body, 0, len(body))
            data = memoryview(_inflate(compression, body[data_at:], size))
            if crc and zlib.crc32(data) != crc:
                raise _Bad("its CRC does not match its bytes")
        except _Bad as bad:
            self.damage.append(f"{self.where}: the chunk at byte {start} is damaged ({bad}); its messages were skipped")
            return
        del body
        pos = 0
        while pos < len(data):
            if len(data) - pos < _HEAD.size:
                self.damage.append(f"{self.where}: the chunk at byte {start} ends inside a record header")
                return
            opcode, length = _HEAD.unpack_from(data, pos)
            pos += _HEAD.size
            if length > len(data) - pos:
                self.damage.append(f"{self.where}: a record in the chunk at byte {start} overruns it; the rest was skipped")
                return
            view = data[pos:pos + length]
            pos += length
            try:
                if opcode == Opcode.MESSAGE:
                    yield _message(view)
                elif opcode in (Opcode.SCHEMA, Opcode.CHANNEL):
                    yield _parse(opcode, view)
            except _Bad as bad:
                self.damage.append(f"{self.where}: the chunk at byte {start} holds {bad}; skipped")

    def _resync(self, start: int, bad: _Bad) -> bool:
        """Move to the next intact chunk after the broken record at ``start`` (True), or say how
        the file ends (False)."""
        found = _next_chunk(self.f, start + 1, self.size)
        if found is None:
            if bad.cut and _footer(self.f, self.size) is None:  # a file that ends with its footer was not cut short
                self.truncated = f"{self.where}: ends without a footer, inside a record at byte {start} (its recorder was stopped hard?)"
            else:
                self.damage.append(f"{self.where}: bytes {start}-{self.size} are damaged ({bad}); nothing intact follows")
            return False
        self.damage.append(f"{self.where}: bytes {start}-{found} are damaged ({bad}); skipped to the next intact chunk")
        self.f.seek(found)
        self.pos = found
        return True


def _next_chunk(f: BinaryIO, pos: int, size: int) -> int | None:
    """The offset of the next chunk record at or after ``pos`` whose header agrees with its length."""
    need = _HEAD.size + _CHUNK_HEAD.size + 4 + 8
    while pos < size:
        f.seek(pos)
        window = f.read(_SCAN_WINDOW + need)
        i = window.find(b"\x06")
        while i != -1 and i + need <= len(window):
            _, length = _HEAD.unpack_from(window, i)
            if length <= min(MAX_RECORD, size - pos - i - _HEAD.size):
                try:
                    _chunk_header(window, i + _HEAD.size, length)
                    return pos + i
                except (_Bad, struct.error):
                    pass
            i = window.find(b"\x06", i + 1)
        if len(window) < _SCAN_WINDOW + need:
            return None
        pos += _SCAN_WINDOW
    return None


@dataclass
class Summary:
    """What a finished file's summary section says (checked against its CRC when stored)."""

    schemas: dict[int, Schema]
    channels: dict[int, Channel]
    statistics: Statistics | None
    metadata: dict[str, dict[str, str]]


def _footer(f: BinaryIO, size: int) -> bytes | None:
    """The footer record and closing magic that end a finished file (None: it has none)."""
    if size < 2 * len(MAGIC) + _FOOTER_RECORD:
        return None
    here = f.tell()
    f.seek(size - len(MAGIC) - _FOOTER_RECORD)
    tail = f.read(len(MAGIC) + _FOOTER_RECORD)
    f.seek(here)
    opcode, length = _HEAD.unpack_from(tail)
    if tail[-len(MAGIC):] != MAGIC or opcode != Opcode.FOOTER or length != _FOOTER.size:
        return None
    return tail


def read_summary(f: BinaryIO) -> Summary | None:
    """The summary of a finished file; None when it has none or it does not check out (a
    caller then streams the data section, which is checked record by record)."""
    size = os.fstat(f.fileno()).st_size
    tail = _footer(f, size)
    if tail is None:
        return None
    start, _, crc = _FOOTER.unpack_from(tail, _HEAD.size)
    end = size - len(MAGIC) - _FOOTER_RECORD
    if not len(MAGIC) < start <= end or end - start > MAX_RECORD:
        return None
    f.seek(start)
    section = memoryview(f.read(end - start))
    if crc and zlib.crc32(tail[:_HEAD.size + 16], zlib.crc32(section)) != crc:
        return None
    try:
        return _summary_of(section, f, size)
    except (_Bad, struct.error):
        return None


def _summary_of(section: memoryview, f: BinaryIO, size: int) -> Summary:
    summary = Summary({}, {}, None, {})
    indexes = []
    pos = 0
    while pos < len(section):
        opcode, length = _HEAD.unpack_from(section, pos)
        body = section[pos + _HEAD.size:pos + _HEAD.size + length]
        if len(body) != length:
            raise _Bad("a summary record overruns the summary")
        pos += _HEAD.size + length
        if opcode in (Opcode.SCHEMA, Opcode.CHANNEL, Opcode.STATISTICS, Opcode.METADATA_INDEX):
            record = _parse(opcode, body)
            if isinstance(record, Schema):
                summary.schemas[record.id] = record
            elif isinstance(record, Channel):
                summary.channels[record.id] = record
            elif isinstance(record, Statistics):
                summary.statistics = record
            else:
                indexes.append(record)
    for index in indexes:
        summary.metadata.update(_metadata_at(f, index, size))
    return summary


def _metadata_at(f: BinaryIO, index: MetadataIndex, size: int) -> dict[str, dict[str, str]]:
    if not 0 < index.offset < size or not _HEAD.size <= index.length <= min(MAX_RECORD, size - index.offset):
        raise _Bad(f"a metadata index points at bytes {index.offset}+{index.length}")
    f.seek(index.offset)
    raw = memoryview(f.read(index.length))
    opcode, length = _HEAD.unpack_from(raw)
    if opcode != Opcode.METADATA or _HEAD.size + length != len(raw):
        raise _Bad(f"a metadata index points at no metadata record (byte {index.offset})")
    record = _parse(opcode, raw[_HEAD.size:])
    return {record.name: dict(record.metadata)}
