"""What the bridge puts on the network: key expressions, the per-sample attachment and the
metadata a topic answers with. One definition, for exporters, importers and the tools.

Keys (every chunk a valid zenoh key chunk: host and graph names are ``[A-Za-z0-9_-]``, topic
names those joined by ``/``):

- ``shmlaunch/data/<host>/<graph>/<topic>``: the samples of an exported topic;
- ``shmlaunch/meta/<host>/<graph>/<topic>``: a queryable answering with its metadata (JSON);
- ``shmlaunch/live/<host>/<graph>/<topic>``: a liveliness token while it is exported.

An importer names ``<graph>/<topic>`` and optionally the host (else ``*``: any one host).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass

import numpy as np

from shmlaunch.transport import LAYOUT_VERSION, TopicConfig, validate_topic_name

PREFIX = "shmlaunch"
HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,62}")
#: The attachment of every sample: the layout hash, the exporter's seq, capture stamp, publish
#: time (the exporter's CLOCK_REALTIME just before ``put``), source_seq, the encoding (0 raw,
#: 1 jpeg), the payload's length, and how many samples the exporter has put
#: (an importer counts the ones that never arrived from its gaps).
ATTACHMENT = struct.Struct("<8sQqqQIIQ")
ENCODINGS = ("raw", "jpeg")
#: A metadata reply longer than this is not one an exporter sends (its JSON is a few hundred bytes).
MAX_METADATA = 4096


def data_key(host: str, graph: str, topic: str) -> str:
    return f"{PREFIX}/data/{host}/{graph}/{topic}"


def meta_key(host: str, graph: str, topic: str) -> str:
    return f"{PREFIX}/meta/{host}/{graph}/{topic}"


def live_key(host: str, graph: str, topic: str) -> str:
    return f"{PREFIX}/live/{host}/{graph}/{topic}"


def parse_key(key: str) -> tuple[str, str, str] | None:
    """(host, graph, topic) of a data, meta or liveliness key; None for any other key."""
    parts = str(key).split("/")
    if len(parts) < 5 or parts[0] != PREFIX or parts[1] not in ("data", "meta", "live"):
        return None
    return parts[2], parts[3], "/".join(parts[4:])


def layout_hash(config: TopicConfig) -> bytes:
    """8 bytes that change whenever the layout a reader relies on changes (capacity, dtype,
    shape, segment layout version; not the pool, which each side sizes, nor the message type,
    which a topic's writer may name after it was created)."""
    text = json.dumps([config.capacity, config.dtype.str if config.dtype is not None else None,
                       list(config.shape) if config.shape is not None else None, LAYOUT_VERSION])
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


@dataclass(frozen=True)
class Metadata:
    """An exported topic's static description, as its queryable answers."""

    host: str
    graph: str
    topic: str
    config: TopicConfig
    encode: str  # "raw" or "jpeg"
    sent: int = 0  # samples put so far (lets an importer see that a link delivers nothing)

    @functools.cached_property
    def nbytes(self) -> int | None:
        """A typed topic's message size (dtype x shape), None for an untyped one."""
        c = self.config
        return c.dtype.itemsize * math.prod(c.shape) if c.dtype is not None and c.shape is not None else None

    def to_json(self) -> str:
        c = self.config
        return json.dumps({"host": self.host, "graph": self.graph, "topic": self.topic, "capacity": c.capacity, "pool": c.pool,
                           "dtype": c.dtype.str if c.dtype is not None else None, "shape": list(c.shape) if c.shape is not None else None,
                           "message": c.message, "layout_version": LAYOUT_VERSION, "encode": self.encode, "sent": self.sent,
                           "hash": layout_hash(c).hex()})

    @classmethod
    def from_json(cls, text: str) -> Metadata:
        """ValueError (one line) for anything an exporter does not send: a peer's bytes, so every
        field's type is checked (whole numbers as JSON integers, no NaN or Infinity)."""
        if len(text) > MAX_METADATA:
            raise ValueError(f"a topic description of {len(text)} bytes (an exporter sends at most {MAX_METADATA})")
        try:
            d = json.loads(text, parse_constant=_no_constant)
            if d["layout_version"] != LAYOUT_VERSION:
                raise ValueError(f"segment layout version {str(d['layout_version'])[:20]}, this host has {LAYOUT_VERSION}")
            if not all(_whole(d.get(k, 0)) for k in ("capacity", "pool", "sent")) or d.get("sent", 0) < 0:
                raise ValueError("capacity, pool and sent must be whole numbers")
            if d["shape"] is not None and not (isinstance(d["shape"], list) and all(_whole(x) for x in d["shape"])):
                raise ValueError(f"shape {str(d['shape'])[:40]} is not a list of whole numbers")
            if d.get("message") is not None and not isinstance(d["message"], str):
                raise ValueError(f"message type {str(d['message'])[:40]!r} is not a name")
            built = TopicConfig.build(d["capacity"], d["pool"], d["dtype"], d["shape"])
            config = TopicConfig(built.capacity, built.pool, built.dtype, built.shape, message=d.get("message"))
            if d["encode"] not in ENCODINGS:
                raise ValueError(f"unknown encoding {str(d['encode'])[:20]!r}")
            if not all(isinstance(d[k], str) and HOST_RE.fullmatch(d[k]) for k in ("host", "graph")):
                raise ValueError(f"host {str(d['host'])[:40]!r} or graph {str(d['graph'])[:40]!r} is not a name")
            return cls(d["host"], d["graph"], validate_topic_name(d["topic"]), config, d["encode"], d.get("sent", 0))
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a shmlaunch topic description ({str(exc)[:80]})") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number an exporter sends")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def describe(config: TopicConfig) -> str:
    """capacity, pool, dtype, shape and message type, for a mismatch message."""
    return config.describe() + (f" message={config.message}" if config.message else "")


def same_layout(a: TopicConfig, b: TopicConfig) -> bool:
    """The fields a reader relies on agree (the pool may differ: each side sizes its own; a
    message type counts where both name one)."""
    if (a.capacity, a.dtype, a.shape) != (b.capacity, b.dtype, b.shape):
        return False
    return a.message is None or b.message is None or a.message == b.message


def as_array(config: TopicConfig, payload: bytes) -> np.ndarray:
    """A received raw payload as the topic's array (a view)."""
    if config.dtype is not None and config.shape is not None:
        return np.frombuffer(payload, config.dtype).reshape(config.shape)
    return np.frombuffer(payload, np.uint8)
