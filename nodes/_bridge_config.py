"""The bridge's zenoh session config, from the launch file's ``bridge:`` section: who it listens
for, whom it dials, which lanes frames and small topics take, and (with ``tls:``) who may
publish what.

- **An explicit mesh.** ``listen:`` listens exactly there; ``connect:`` alone listens nowhere
  (zenoh's default would listen on every interface at a random port, where any stranger on
  the network could connect). With neither, zenoh's defaults: peers on the LAN find each
  other by multicast scouting, and anyone on the LAN can connect.
- **Two lanes per peer.** In peer mode every ``connect`` endpoint is dialled twice, one link for priorities
  0-5 (small topics, metadata, liveliness) and one for 6-7 (frames): on a slow link small
  topics then never wait behind a frame's bytes in a TCP buffer (measured on a 20 Mbit tbf
  link: a 100 Hz topic beside raw frames went from 7 Hz at 850 ms old on one link to 100 Hz at
  5 ms). A small TCP send buffer keeps what is queued under a frame short.
- **Bounded input.** zenoh drops a message larger than ``max_topic_mb`` before reassembling it.
- **mTLS with access control** (``tls: {ca, certificate, key, peers}``): zenoh's own
  ``access_control``, default deny; a peer whose certificate's common name is ``P`` may
  publish, answer and announce only under ``shmlaunch/*/P/**``, so a host cannot speak under
  another host's name, and hosts not listed cannot do anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._bridge_wire import PREFIX

#: Priorities 0-5 (control, DATA_HIGH small topics, DATA metadata) on one link, 6-7 (frames) on another.
LANES = ("0-5", "6-7")
#: Per TCP/TLS link (the kernel doubles it): on a 20 Mbit link, 128 KiB is 50 ms of frame bytes.
SEND_BUFFER = 65536
#: Reconnect backoff (zenoh's default grows to 4 s; a peer that comes back is found within 1 s).
RETRY = "{period_init_ms: 200, period_max_ms: 500, period_increase_factor: 2}"
DEFAULT_MAX_TOPIC_MB = 256
#: What a peer listed under ``tls: peers`` may send, under its own name only.
_FROM_PEER = ["put", "delete", "reply", "declare_queryable", "liveliness_token"]
#: What any listed peer may ask for and declare interest in, and everything sent to it.
_ASK = ["declare_subscriber", "query", "declare_liveliness_subscriber", "liveliness_query"]
_ALL = _FROM_PEER + _ASK


def zenoh_config(section: dict, base_dir: Path):
    """The session's config: a zenoh config file verbatim (``config:``), with the launch file's
    ``mode``, ``listen``, ``connect`` and ``tls`` on top, shared memory off (another "host" may
    share this machine's /dev/shm, and the bridge copies anyway)."""
    import zenoh

    config = zenoh.Config.from_file(str(base_dir / section["config"])) if section.get("config") else zenoh.Config()
    if section.get("mode"):
        config.insert_json5("mode", json.dumps(section["mode"]))
    for key in ("listen", "connect"):
        if section.get(key):
            config.insert_json5(f"{key}/endpoints", json.dumps(section[key]))
    connect = endpoints(config, "connect")
    if connect and not section.get("listen") and _is_default(config, "listen"):
        config.insert_json5("listen/endpoints", "[]")  # connect alone: listen nowhere
    if not section.get("config") and (section.get("listen") or section.get("connect")):
        # explicit endpoints: an explicit mesh, not whatever else on the LAN answers multicast scouting
        config.insert_json5("scouting/multicast/enabled", "false")
    if connect and _mode(config) == "peer":  # a router or a client's router is configured elsewhere: its links as given
        config.insert_json5("connect/endpoints", json.dumps(lanes(connect)))
    config.insert_json5("transport/unicast/max_links", str(len(LANES)))
    for proto in ("tcp", "tls"):
        config.insert_json5(f"transport/link/{proto}/so_sndbuf", str(SEND_BUFFER))
    max_mb = section.get("max_topic_mb", DEFAULT_MAX_TOPIC_MB)
    config.insert_json5("transport/link/rx/max_message_size", str(int(max_mb * (1 << 20))))
    config.insert_json5("connect/retry", RETRY)
    config.insert_json5("transport/shared_memory/enabled", "false")
    if section.get("tls"):
        tls = section["tls"]
        config.insert_json5("transport/link/tls", json.dumps(tls_link(tls, base_dir)))
        config.insert_json5("access_control", json.dumps(access_control(tls["peers"])))
    return config


def lanes(connect: list[str]) -> list[str]:
    """Each endpoint once per lane (``?prio=``), unless it already names its own metadata."""
    return [e if "?" in e else f"{e}?prio={lane}" for e in connect for lane in ((None,) if "?" in e else LANES)]


def tls_link(tls: dict, base_dir: Path) -> dict:
    """zenoh's ``transport/link/tls``: this host's certificate both ways, the CA, mTLS required.
    Names are not checked on connect: the identity that counts is the common name, which
    access control binds to what a peer may publish."""
    path = {k: str(base_dir / tls[k]) for k in ("ca", "certificate", "key")}
    return {"root_ca_certificate": path["ca"], "enable_mtls": True, "verify_name_on_connect": False,
            "listen_certificate": path["certificate"], "listen_private_key": path["key"],
            "connect_certificate": path["certificate"], "connect_private_key": path["key"], "so_sndbuf": SEND_BUFFER}


def access_control(peers: list[str]) -> dict:
    """Default deny; each peer (by its certificate's common name) may ask for anything under
    ``shmlaunch/**``, be sent anything there, and publish only under its own host name."""
    rules = [{"id": "ask", "permission": "allow", "flows": ["ingress"], "messages": _ASK, "key_exprs": [f"{PREFIX}/**"]},
             {"id": "send", "permission": "allow", "flows": ["egress"], "messages": _ALL, "key_exprs": [f"{PREFIX}/**"]}]
    subjects, policies = [], []
    for peer in peers:
        rules.append({"id": f"from {peer}", "permission": "allow", "flows": ["ingress"], "messages": _FROM_PEER,
                      "key_exprs": [f"{PREFIX}/*/{peer}/**"]})
        subjects.append({"id": peer, "cert_common_names": [peer]})
        policies.append({"id": f"peer {peer}", "rules": ["ask", "send", f"from {peer}"], "subjects": [peer]})
    return {"enabled": True, "default_permission": "deny", "rules": rules, "subjects": subjects, "policies": policies}


def endpoints(config, key: str) -> list[str]:
    """The session's ``connect`` or ``listen`` endpoints, however they were given."""
    value = _setting(config, f"{key}/endpoints")
    if isinstance(value, dict):  # {router: [...], peer: [...]}: every mode's
        value = [e for v in value.values() for e in (v or [])]
    return [str(e) for e in value or []]


def _mode(config) -> str:
    return str(_setting(config, "mode") or "peer")


def _is_default(config, key: str) -> bool:
    """zenoh's per-mode default (a mapping), or nothing, rather than endpoints someone wrote down."""
    value = _setting(config, f"{key}/endpoints")
    return value is None or isinstance(value, dict)


def _setting(config, key: str):
    """One setting of a zenoh config as JSON data; None when it is absent."""
    try:
        return json.loads(config.get_json(key))
    except Exception:  # noqa: BLE001 (zenoh raises its own error for an absent key)
        return None
