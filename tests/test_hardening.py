"""Hostile users, careless operators, unlucky machines (issue 13): nothing deleted that shmlaunch
did not create, no other user crossed, no graph crashed, no tool hung.

Real processes, real /dev/shm. Another user's files are made as root and handed to a throwaway
user made with useradd (chown); where a shmlaunch command must run *as* that user, it runs
under setpriv with that uid (keeping only CAP_DAC_READ_SEARCH, so it can reach this Python
installation under /root); both skip with the reason when this is not root.

Grouped by the component that must hold (the ``# =====`` sections): runtime directories, the
transport, launch files, the launcher and its watchdog, nodes, the tools, the repository.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_launcher import THREE, assert_nothing_left, node_pids, shmlaunch, start, wait_for, write_graph

from shmlaunch.launch._state import GraphState
from shmlaunch.testing import unique_name
from shmlaunch.transport import (
    SHM_ROOT,
    Reader,
    RegistryCorruptError,
    RuntimeDir,
    RuntimeDirError,
    SegmentCorruptError,
    Topic,
    TopicConfig,
    Writer,
    ensure_runtime_dir,
    graph_runtime_dir,
)

TESTS = Path(__file__).parent
ROOT = TESTS.parent
IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def other_user():
    """(uid, gid) of a throwaway system user, removed after the module's tests."""
    if not IS_ROOT or not shutil.which("useradd"):
        pytest.skip("needs root and useradd to make a throwaway user")
    name = f"shml{os.getpid() % 100000}"
    res = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"useradd failed: {res.stderr.strip()}")
    try:
        out = subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True).stdout
        uid = int(out)
        gid = int(subprocess.run(["id", "-g", name], capture_output=True, text=True, check=True).stdout)
        yield uid, gid
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def as_user(user: tuple[int, int], args: list[str], **kw) -> subprocess.CompletedProcess:
    """Run ``args`` as ``user`` (a real uid change). CAP_DAC_READ_SEARCH is kept so the process can
    read this Python installation under /root (0700); it grants no write and no ownership."""
    uid, gid = user
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=+dac_read_search",
           "--ambient-caps=+dac_read_search", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
    if "setpriv:" in res.stderr and res.returncode != 0:
        pytest.skip(f"setpriv cannot change user here: {res.stderr.strip()}")
    return res


def planted_dir(owner: tuple[int, int], path: Path, mode: int) -> Path:
    """A directory made by ``owner`` at ``path`` with a file of theirs in it."""
    path.mkdir(mode=mode)
    os.chmod(path, mode)
    (path / "their-data.txt").write_text("precious")
    for p in (path, path / "their-data.txt"):
        os.chown(p, *owner)
    return path


def one_line_error(res: subprocess.CompletedProcess) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


SIMPLE = """
topics:
  t: {capacity: 64}
nodes:
  idle:
    cmd: [sleep, "30"]
"""


def victim_process() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"])


def byte_lock_holder(path: Path, byte: int, exclusive: bool) -> subprocess.Popen:
    """A process holding an open-file-description lock on one byte of ``path`` (F_OFD_SETLK)."""
    kind = "fcntl.F_WRLCK" if exclusive else "fcntl.F_RDLCK"
    code = ("import fcntl, os, struct, time\n"
            f"fd = os.open({str(path)!r}, os.O_RDWR)\n"
            f"fcntl.fcntl(fd, 37, struct.pack('hhqqi4x', {kind}, 0, {byte}, 1, 0))\n"
            "print('held', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def lock_holder(path: Path) -> subprocess.Popen:
    """A process holding the graph's launcher lock (byte 0 of launcher.lock), as a live launcher does."""
    return byte_lock_holder(path, 0, exclusive=True)


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def processes_running(needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle.encode() in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                    found.append(int(entry.name))
    return found


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def corrupt(rt: Path, segment: str, offset: int, fmt: str, value: int) -> None:
    with open(rt / segment, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


BOMB = """name: bomb
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
nodes: {n: {cmd: [true], params: *g}}
"""


UNREADABLE = {  # made in the test: a 2 MiB parameter would become a 2 MiB test id (E2BIG when pytest 9 starts a process)
    "device": None,
    "latin-1": b"name: g\nnodes: {n: {cmd: [true]}}\n# caf\xe9\n",
    "2-MiB": b"name: g\n" + b"#" * (2 << 20),
}


def node_row(graph: str, node: str) -> str:
    res = shmlaunch("node", "list", graph)
    return next((line for line in res.stdout.splitlines() if line.startswith(node + " ")), "")


# ===== runtime directories: only this user's, never through a link, nothing deleted that shmlaunch did not create
def test_launcher_refuses_a_runtime_directory_holding_files_it_did_not_create(tmp_path):
    path, _ = write_graph(tmp_path, SIMPLE)
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    (rt / "thesis.tex").write_text("two years of work")
    res = shmlaunch(path, "--runtime-dir", rt, "--duration", 1)
    assert res.returncode == 2
    assert one_line_error(res) == (f"shmlaunch: error: runtime directory {rt} was not made by shmlaunch (no .shmlaunch-runtime marker) "
                                   f"and is not empty (first entry: 'thesis.tex'); refusing to use or clear it")
    assert (rt / "thesis.tex").read_text() == "two years of work"


def test_a_marked_directory_with_a_foreign_file_is_refused_and_nothing_in_it_is_deleted(tmp_path):
    path, _ = write_graph(tmp_path, SIMPLE)
    rt = ensure_runtime_dir(tmp_path / "rt")
    (rt / "t.pool").write_bytes(b"left by a crash")
    (rt / "notes.txt").write_text("mine")
    res = shmlaunch(path, "--runtime-dir", rt, "--duration", 1)
    assert res.returncode == 2
    assert one_line_error(res) == (f"shmlaunch: error: runtime directory {rt} holds 'notes.txt', which shmlaunch did not create; "
                                   f"refusing to use or clear it")
    assert sorted(p.name for p in rt.iterdir()) == [".shmlaunch-runtime", "notes.txt", "t.pool"]


def test_an_existing_empty_directory_given_on_the_command_line_is_used_and_kept(tmp_path):
    path, _ = write_graph(tmp_path, SIMPLE)
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    res = shmlaunch(path, "--runtime-dir", rt, "--duration", 1)
    assert res.returncode == 0, res.stdout + res.stderr
    assert rt.is_dir() and list(rt.iterdir()) == []  # its files are gone, the user's directory stays


def test_root_refuses_another_users_directory_at_the_graphs_name_and_deletes_nothing(tmp_path, other_user):
    path, graph = write_graph(tmp_path, SIMPLE)
    rt = planted_dir(other_user, graph_runtime_dir(graph), 0o777)
    try:
        res = shmlaunch(path, "--duration", 1)
        assert res.returncode == 2
        assert one_line_error(res) == (f"shmlaunch: error: runtime directory {rt} belongs to uid {other_user[0]}, not to this user "
                                       f"(0); refusing it")
        assert (rt / "their-data.txt").read_text() == "precious"
    finally:
        shutil.rmtree(rt)


def test_a_user_refuses_root_owned_world_writable_directory_and_deletes_nothing(tmp_path, other_user):
    path, graph = write_graph(tmp_path, SIMPLE)
    os.chmod(tmp_path, 0o755)
    rt = planted_dir((0, 0), Path(SHM_ROOT) / f"shmlaunch-{other_user[0]}-{graph}", 0o777)
    try:
        res = as_user(other_user, [sys.executable, "-m", "shmlaunch.launch.cli", str(path), "--duration", "1"], cwd="/")
        assert res.returncode == 2, res.stdout + res.stderr
        assert one_line_error(res) == f"shmlaunch: error: runtime directory {rt} belongs to uid 0, not to this user ({other_user[0]}); refusing it"
        assert (rt / "their-data.txt").read_text() == "precious"
    finally:
        shutil.rmtree(rt)


def test_a_user_is_told_in_one_line_that_another_users_private_directory_is_not_theirs(other_user, tmp_path):
    rt = tmp_path / "private"
    rt.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o755)
    code = f"from shmlaunch.transport import Writer\nWriter('t', capacity=8, runtime_dir={str(rt)!r})"
    res = as_user(other_user, [sys.executable, "-c", code], cwd="/")
    assert res.returncode != 0
    assert f"RuntimeDirError: runtime directory {rt} belongs to uid 0, not to this user ({other_user[0]}); refusing it" in res.stderr


def test_a_symlink_at_the_runtime_directory_name_is_never_followed(tmp_path):
    path, graph = write_graph(tmp_path, SIMPLE)
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    link = graph_runtime_dir(graph)
    link.symlink_to(victim)
    try:
        res = shmlaunch(path, "--duration", 1)
        assert res.returncode == 2
        assert one_line_error(res) == f"shmlaunch: error: runtime directory {link} is a symlink; shmlaunch never follows one (remove it)"
        assert stat.S_IMODE(victim.stat().st_mode) == 0o755 and list(victim.iterdir()) == []
        with pytest.raises(RuntimeDirError, match=r"is a symlink; shmlaunch never follows one"):
            Writer("t", capacity=8, runtime_dir=link)
        assert list(victim.iterdir()) == []
    finally:
        link.unlink()


def test_symlinks_planted_at_temporary_and_registry_names_are_never_written_through(rt, tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("untouched")
    try:
        for pid in range(os.getpid() - 50, os.getpid() + 50):  # every name the old code would have used
            (rt / f".registry.yaml.{pid}.tmp").symlink_to(target)
            (rt / f".t.pool.{pid}.tmp").symlink_to(target)
        w = Writer("t", capacity=8, runtime_dir=rt)
        w.publish(b"x")
        assert target.read_text() == "untouched"
        w.close()
        (rt / "registry.yaml").unlink()
        (rt / "registry.yaml").symlink_to(target)
        with pytest.raises(RegistryCorruptError, match=r"^cannot read registry .*registry\.yaml: Too many levels of symbolic links$"):
            Reader("t", runtime_dir=rt)
        assert target.read_text() == "untouched"
    finally:  # shmlaunch never deletes a symlink it did not make: the test removes its own
        for p in rt.iterdir():
            if p.is_symlink():
                p.unlink()


def test_reader_and_writer_refuse_another_users_directory_with_the_same_line(rt, other_user):
    Writer("t", capacity=8, runtime_dir=rt).close()
    os.chown(rt, *other_user)
    expected = rf"^runtime directory {rt} belongs to uid {other_user[0]}, not to this user \(0\); refusing it$"
    try:
        with pytest.raises(RuntimeDirError, match=expected):
            Reader("t", runtime_dir=rt)
        with pytest.raises(RuntimeDirError, match=expected):
            Writer("t", runtime_dir=rt)
    finally:
        os.chown(rt, 0, 0)


def test_reader_refuses_a_directory_open_to_others(rt):
    Writer("t", capacity=8, runtime_dir=rt).close()
    os.chmod(rt, 0o777)
    with pytest.raises(RuntimeDirError, match=rf"^runtime directory {rt} has mode 0777; it must be 0700"):
        Reader("t", runtime_dir=rt)
    os.chmod(rt, 0o700)


def test_a_graph_name_too_long_for_a_runtime_directory_fails_check(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(f"name: {'g' * 101}\nnodes: {{n: {{cmd: [true]}}}}\n")
    res = shmlaunch("check", path)
    assert res.returncode == 2
    assert one_line_error(res) == (f"shmlaunch: error: {path}:1: 'name' must be the graph's name (1 to 100 letters, digits, '_', '-'), "
                                   f"got '{'g' * 40}...'")


def test_graph_state_and_heartbeat_files_are_private_and_a_stopped_node_shows_stopped(tmp_path):
    out = tmp_path / "o.jsonl"
    path, graph = write_graph(tmp_path, THREE.replace("OUT", str(out)))
    proc = start(path, "--duration", 30)
    rt = graph_runtime_dir(graph)
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 100 and (rt / "ready.scale").exists(), what="the graph to run")
        for p in rt.iterdir():
            assert stat.S_IMODE(p.lstat().st_mode) == 0o600, p
        with RuntimeDir.open(rt) as rd:
            pid = GraphState.read(rd).nodes["scale"].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: " stopped " in node_row(graph, "scale"), 10, "node list to show the stopped node")
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert_nothing_left(graph)


# ===== the transport: registries, segments, locks and slots someone else wrote or holds
@pytest.mark.parametrize("segment", ["../../../../../../TARGET", "/TARGET", "..", "a/b.pool", ".hidden.pool"])
def test_a_registry_segment_that_is_a_path_is_refused_without_opening_it(rt, tmp_path, segment):
    secret = tmp_path / "secret"
    secret.write_bytes(b"SHADOW-CONTENTS" * 100)
    Writer("t", capacity=64, runtime_dir=rt).close()
    reg = rt / "registry.yaml"
    value = segment.replace("TARGET", str(secret).lstrip("/"))
    reg.write_text(reg.read_text().replace('"t.pool"', json.dumps(value)))
    before = secret.stat().st_atime_ns, secret.read_bytes()
    with pytest.raises(RegistryCorruptError) as err:
        Reader("t", runtime_dir=rt)
    message = str(err.value)
    assert message.startswith(f"cannot read registry {rt}/registry.yaml:3: topic 't': segment ") and "SHADOW" not in message
    assert message.endswith("is not a plain segment file name (NAME.pool, no '/' or '..')")
    assert secret.read_bytes() == before[1]


def test_another_graphs_segment_cannot_be_reached_through_a_registry(tmp_path):
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(RuntimeDir.create(graph_runtime_dir(unique_name("a"))))
        b = stack.enter_context(RuntimeDir.create(graph_runtime_dir(unique_name("b"))))
        stack.callback(lambda: [shutil.rmtree(x.path, ignore_errors=True) for x in (a, b)])
        wa = Writer("t", capacity=64, runtime_dir=a.path)
        Writer("u", capacity=64, runtime_dir=b.path).close()
        reg = b.path / "registry.yaml"
        reg.write_text(reg.read_text().replace('"u.pool"', json.dumps(f"../{a.path.name}/t.pool")))
        with pytest.raises(RegistryCorruptError, match=r"is not a plain segment file name"):
            Reader("u", runtime_dir=b.path)
        wa.close()


@pytest.mark.parametrize(("offset", "value", "why"), [
    (32, 0, "slots_offset 0 is not a multiple of 64 from 21504"),
    (32, 64, "slots_offset 64 is not a multiple of 64 from 21504"),
    (24, 1 << 62, "slot_stride 4611686018427387904 does not fit"),
    (16, 1 << 63, "capacity 9223372036854775808 is outside"),
])
def test_a_corrupt_header_is_one_line_for_readers_and_writers(rt, offset, value, why):
    Writer("t", capacity=64, pool=2, runtime_dir=rt).close()
    corrupt(rt, "t.pool", offset, "<Q", value)
    with pytest.raises(SegmentCorruptError, match=rf"^cannot open topic 't' for reading: segment {rt}/t.pool is corrupt: its header's {why}"):
        Reader("t", runtime_dir=rt)
    # Nobody uses it, and still a writer refuses it: replacing a topic is explicit, never a side effect.
    with pytest.raises(SegmentCorruptError, match=rf"^cannot open topic 't' for writing: segment {rt}/t.pool is corrupt"):
        Writer("t", runtime_dir=rt)
    Topic.create("t", TopicConfig(64, 2), runtime_dir=rt, recreate=True).close()
    Writer("t", capacity=64, pool=2, runtime_dir=rt).close()


def test_a_slot_state_near_two_to_the_64_is_a_corrupt_segment_not_a_struct_error(rt):
    Writer("t", capacity=64, pool=2, runtime_dir=rt).close()
    corrupt(rt, "t.pool", 21504, "<Q", (1 << 64) - 2)
    with pytest.raises(SegmentCorruptError, match=r"^cannot open topic 't' for writing: segment .* is corrupt: a slot's state word is "
                       r"18446744073709551614, beyond any sequence number$"):
        Writer("t", runtime_dir=rt)


def test_a_registry_with_yaml_aliases_is_refused_at_once(rt):
    Writer("t", capacity=8, runtime_dir=rt).close()
    (rt / "registry.yaml").write_text("layout_version: 1\ntopics:\n" + BOMB)
    with pytest.raises(RegistryCorruptError, match=r"^cannot read registry .*registry\.yaml:3: expected '\"topic\": \{\.\.\.\}', got "):
        Reader("t", runtime_dir=rt)


@pytest.mark.parametrize(("entry", "why"), [
    ('["capacity", 8]', "the entry is a list, not a mapping"),
    ('{"capacity": "abc", "pool": 4, "segment": "t.pool"}', "capacity 'abc' is not a whole number of bytes"),
    ('{"capacity": 8, "pool": 0, "segment": "t.pool"}', "pool 0 is not a whole number from 1 to 256"),
    ('{"capacity": 8, "pool": 4, "segment": "t.pool", "dtype": "not-a-type"}', "dtype 'not-a-type' is not a numpy dtype"),
])
def test_a_malformed_registry_entry_is_one_line_naming_file_line_and_topic(rt, entry, why):
    Writer("t", capacity=8, runtime_dir=rt).close()
    (rt / "registry.yaml").write_text(f'layout_version: 1\ntopics:\n  "t": {entry}\n')
    with pytest.raises(RegistryCorruptError, match=rf"^cannot read registry {rt}/registry.yaml:3: topic 't': ") as err:
        Reader("t", runtime_dir=rt)
    assert why in str(err.value) and "\n" not in str(err.value)


def test_a_huge_capacity_is_a_value_error_not_an_overflow(rt):
    with pytest.raises(ValueError, match=r"^invalid capacity 4611686018427387904: at most 1099511627776 bytes \(1 TiB\) per message$"):
        Writer("t", capacity=1 << 62, runtime_dir=rt)


def test_a_registry_lock_held_by_a_stopped_process_is_a_bounded_wait_naming_it(rt):
    from shmlaunch.transport import LockBusyError

    Writer("a", capacity=8, runtime_dir=rt).close()
    code = ("import os, signal\nfrom shmlaunch.transport import RuntimeDir\nfrom shmlaunch.transport._registry import locked_registry\n"
            f"with RuntimeDir.open({str(rt)!r}) as rd, locked_registry(rd):\n"
            "    print('locked', flush=True)\n    os.kill(os.getpid(), signal.SIGSTOP)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(LockBusyError, match=rf"^the registry lock {rt}/registry.lock has been held for more than 5 s by pid "
                           rf"{holder.pid} \(stopped or hung\? end it, and the lock goes with it\)$"):
            Writer("b", capacity=8, runtime_dir=rt)
        assert time.monotonic() - started < 30
    finally:
        holder.kill()
        holder.wait()


def test_a_group_table_lock_held_by_a_stopped_process_is_a_bounded_wait(rt):
    from shmlaunch.transport import LockBusyError

    Writer("t", capacity=8, runtime_dir=rt).close()
    holder = byte_lock_holder(rt / "t.pool", 2048, exclusive=True)  # the group table's lock byte (LAYOUT.md)
    try:
        with pytest.raises(LockBusyError, match=r"^the group table lock of topic 't' has been held for more than 5 s by another reader"):
            Reader("t", runtime_dir=rt, group="workers")
    finally:
        holder.kill()
        holder.wait()


def test_a_loan_with_every_slot_held_is_dropped_not_raised(rt):
    w = Writer("t", capacity=16, pool=2, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    held = []
    for i in range(6):
        with w.loan(nbytes=4) as buf:
            buf[:] = i
        msg = r.receive_nowait()
        if msg is not None:
            held.append(msg)
    assert len(held) == 2 and w.statistics().dropped == 4 and w.statistics().published == 2
    loan = w.loan()
    assert loan.dropped and loan.publish() is None and loan.seq is None
    w.close()


def test_an_infinite_or_huge_timeout_waits_without_spinning_and_nan_is_refused(rt):
    import threading

    w = Writer("t", capacity=8, runtime_dir=rt)
    r = Reader("t", runtime_dir=rt)
    for timeout in (float("inf"), 1e30):
        timer = threading.Timer(0.5, w.publish, args=(b"x",))
        cpu = time.process_time()
        timer.start()
        msg = r.receive(timeout=timeout)
        assert msg is not None and time.process_time() - cpu < 0.25  # a spin would burn the whole 0.5 s
        msg.release()
    with pytest.raises(ValueError, match=r"^invalid timeout nan: give seconds >= 0, or None \(or inf\) to wait forever$"):
        r.receive(timeout=float("nan"))
    w.close()


# ===== launch files: bounded parsing, one line per mistake
def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    res = shmlaunch("check", path, timeout=20)
    assert res.returncode == 2
    assert one_line_error(res) == (f"shmlaunch: error: {path}:1: the YAML expands to more than 100000 values through its aliases "
                                   f"(&anchor / *alias); refusing to read it")


def test_anchors_and_aliases_of_ordinary_size_still_work(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("name: g\nnodes:\n  a: {cmd: [sleep, '1'], env: &env {A: '1'}}\n  b: {cmd: [sleep, '1'], env: *env}\n")
    res = shmlaunch("check", path)
    assert res.returncode == 0, res.stderr


def test_a_file_that_includes_itself_many_times_is_refused_at_once(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("name: loop\nnodes: {n: {cmd: [true]}}\ninclude:\n" + "  - {file: loop.yaml, namespace: x}\n" * 6)
    res = shmlaunch("check", path, timeout=20)
    assert res.returncode == 2
    assert one_line_error(res) == (f"shmlaunch: error: {path}:4: include: 'loop.yaml' nested more than 8 deep (an include loop?)")


@pytest.mark.parametrize(("case", "expected"), [
    ("device", "not a regular file (a launch file is a YAML file)"),
    ("latin-1", ":3: not UTF-8 text (byte 0xe9 at offset"),
    ("2-MiB", "larger than 1024 KiB; a launch file is a small YAML file"),
])
def test_unreadable_launch_files_are_one_line(tmp_path, case, expected):
    path = tmp_path / "g.yaml"
    content = UNREADABLE[case]
    if content is None:
        path.write_text("name: g\nnodes: {n: {cmd: [true]}}\ninclude: [{file: /dev/zero}]\n")
    else:
        path.write_bytes(content)
    res = shmlaunch("check", path, timeout=20)
    assert res.returncode == 2 and expected in one_line_error(res)


def test_a_missing_cwd_is_reported_by_check_and_by_the_launcher(tmp_path):
    path, _ = write_graph(tmp_path, "nodes:\n  n:\n    cmd: [sleep, '1']\n    cwd: nowhere\n")
    res = shmlaunch("check", path)
    assert res.returncode == 2
    assert one_line_error(res) == f"shmlaunch: error: {path}:3: node 'n': its cwd {tmp_path / 'nowhere'} is not a directory"


def test_an_included_files_relative_cmd_and_cwd_start_from_its_own_folder(tmp_path):
    sub = tmp_path / "arm"
    (sub / "work").mkdir(parents=True)
    script = sub / "work" / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from $(pwd)\n")
    script.chmod(0o755)
    (sub / "arm.yaml").write_text("nodes:\n  hello:\n    cmd: [./hello.sh]\n    cwd: work\n")
    path, _ = write_graph(tmp_path, "include:\n  - {file: arm/arm.yaml, namespace: left}\n")
    res = shmlaunch(path, "--duration", 2)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"hello from {sub / 'work'}" in res.stdout


def test_systemd_unit_quotes_paths_with_spaces_and_escapes_percent(tmp_path):
    folder = tmp_path / "my robot 100%"
    folder.mkdir()
    path = folder / "g.yaml"
    path.write_text("name: g\nargs: {note: x}\nnodes: {n: {cmd: [true], env: {NOTE: $(arg note)}}}\n")
    res = shmlaunch("systemd", path, "note:=a b", "--workdir", folder)
    assert res.returncode == 0, res.stderr
    exec_line = next(line for line in res.stdout.splitlines() if line.startswith("ExecStart="))
    assert f'"{str(path).replace("%", "%%")}"' in exec_line and exec_line.endswith('"note:=a b"')
    assert f"WorkingDirectory={str(folder).replace('%', '%%')}" in res.stdout
    if shutil.which("systemd-analyze"):
        unit = tmp_path / "shmlaunch-g.service"
        unit.write_text(res.stdout)
        check = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert "ExecStart" not in check.stderr and "WorkingDirectory" not in check.stderr, check.stderr


# ===== the launcher and its watchdog: killed, starved or flooded, it leaves nothing behind
def test_a_killed_launchers_watchdog_leaves_the_next_run_of_the_graph_alone(tmp_path):
    out = tmp_path / "o.jsonl"
    path, graph = write_graph(tmp_path, THREE.replace("OUT", str(out)))
    first = start(path)
    rt = graph_runtime_dir(graph)
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 100, what="the first run to work")
        old = [pid for pid in node_pids(graph) if pid != first.pid]  # its nodes and its watchdog
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = start(path, "--duration", 9)
        wait_for(lambda: not any(map(running, old)), what="the old watchdog to stop the old nodes and finish its cleaning")
        wait_for(lambda: (rt / "graph.json").exists(), what="the second run's state")
        assert second.poll() is None and (rt / "registry.yaml").exists() and (rt / "graph.json").exists()
        text, _ = second.communicate(timeout=30)
        assert second.returncode == 0, text
        assert "Traceback" not in text
    finally:
        for p in (first,):
            with contextlib.suppress(ProcessLookupError):
                p.kill()
    assert_nothing_left(graph)


def test_a_launcher_killed_while_creating_topics_leaves_nothing_in_shm(tmp_path):
    st = os.statvfs(SHM_ROOT)
    if st.f_bavail * st.f_frsize < 4 << 30:
        pytest.skip(f"{SHM_ROOT} has less than 4 GiB free for 12 topics of 200 MB")
    topics = "".join(f"  big{i}: {{capacity: 200000000, pool: 1}}\n" for i in range(12))
    path, graph = write_graph(tmp_path, "topics:\n" + topics + "nodes:\n  idle: {cmd: [sleep, '30']}\n")
    rt = graph_runtime_dir(graph)
    proc = start(path)
    try:
        wait_for(lambda: rt.exists() and any(p.name.endswith(".tmp") or p.name.endswith(".pool") for p in rt.iterdir()),
                 30, "the first segment")
        proc.send_signal(signal.SIGKILL)
        created = [p.name for p in rt.iterdir() if p.name.endswith(".pool")]
        assert len(created) < 12, "the launcher finished creating before it was killed; the test proves nothing"
    finally:
        proc.kill()
        proc.wait(10)
    wait_for(lambda: not rt.exists(), 20, f"{rt} to be removed by the watchdog")
    assert not [p for p in Path(SHM_ROOT).iterdir() if graph in p.name]


def test_a_nodes_background_child_does_not_outlive_the_graph(tmp_path):
    marker = f"{3000 + os.getpid() % 1000}.{os.getpid() % 97}"  # a sleep duration no other process uses
    body = f"""
nodes:
  forker:
    cmd: [sh, -c, "sleep {marker} & exit 0"]
  escaper:
    cmd: [sh, -c, "setsid sleep {marker}1 & sleep 30"]
  idle:
    cmd: [sleep, "30"]
"""
    path, graph = write_graph(tmp_path, body)
    proc = start(path, "--duration", 3)
    text, _ = proc.communicate(timeout=60)
    try:
        assert proc.returncode == 0, text
        assert "background process(es) the nodes left: pids " in text
        assert processes_running(f"sleep {marker}") == []
    finally:
        for pid in processes_running(f"sleep {marker}"):
            os.kill(pid, signal.SIGKILL)
    assert_nothing_left(graph)


def test_the_printer_keeps_at_most_one_line_of_a_node_that_never_ends_its_line():
    import io

    from shmlaunch.launch import Printer
    from shmlaunch.launch._printer import CUT_MARK, MAX_LINE

    out = io.StringIO()
    printer = Printer(["talker"], stream=out, colour=False)
    chunk = b"x" * 65536
    for _ in range(320):  # 20 MiB, as a pipe delivers it
        printer.feed("talker", chunk)
        assert len(printer._partial["talker"]) < MAX_LINE
    printer.feed("talker", b"end\n")
    lines = out.getvalue().splitlines()
    assert len(lines) == 320 * 65536 // MAX_LINE + 1
    assert all(line.endswith(CUT_MARK) and len(line) == len("talker   | ") + MAX_LINE + len(CUT_MARK) for line in lines[:-1])
    assert lines[-1] == "talker   | end"


def test_a_full_shm_while_running_costs_a_warning_not_the_graph(tmp_path, small_tmpfs):
    fill = small_tmpfs / "fill"
    body = f"""
topics:
  t: {{capacity: 64}}
nodes:
  filler:
    cmd: [sh, -c, "head -c 8000000 /dev/zero > {fill} 2>/dev/null; sleep 0.3; exit 1"]
    respawn: {{max: 2, delay: 0.2}}
  idle:
    cmd: [sleep, "30"]
"""
    path, _ = write_graph(tmp_path, body)
    res = shmlaunch(path, "--runtime-dir", small_tmpfs / "rt", "--duration", 4)
    assert "Traceback" not in res.stdout + res.stderr
    assert f"warning: cannot update {small_tmpfs / 'rt'}/graph.json (No space left on device); the graph goes on" in res.stdout
    assert "node 'filler' exited (exit code 1): respawn 2 of 2" in res.stdout, res.stdout
    assert "node 'filler' exited (exit code 1): gave up after 2 respawns" in res.stdout
    assert "stopping: ran for 4 s" in res.stdout and res.returncode == 1  # a node given up on, and nothing worse
    assert not (small_tmpfs / "rt").exists()


def test_a_status_view_that_fails_is_switched_off_and_the_graph_goes_on(tmp_path):
    out = tmp_path / "o.jsonl"
    path, graph = write_graph(tmp_path, THREE.replace("OUT", str(out)))
    code = ("import sys\nfrom shmlaunch.launch import Launcher, Printer, load_launch_file\n"
            f"g = load_launch_file({str(path)!r})\n"
            "sys.exit(Launcher(g, Printer(list(g.nodes), colour=False), duration=5, status=True).run())\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rt = graph_runtime_dir(graph)
    wait_for(lambda: out.exists() and out.stat().st_size > 100, what="the graph to run")
    reg = rt / "registry.yaml"
    good = reg.read_text()
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    reg.write_text("layout_version: 1\ntopics:\n  garbage\n")
    wait_for(lambda: any("the live status view stopped" in line for line in lines), what="the status view to meet the broken registry")
    reg.write_text(good)
    proc.wait(60)
    reader.join(10)
    text = "".join(lines)
    assert proc.returncode == 0, text
    assert "warning: the live status view stopped (RegistryCorruptError: cannot read registry" in text
    assert "Traceback" not in text
    assert_nothing_left(graph)


def test_the_status_views_kept_mappings_follow_a_re_created_topic(rt):
    from shmlaunch.launch._introspect import Sampler, topic_rows

    w = Writer("t", capacity=64, runtime_dir=rt)
    cache: dict = {}
    rows = topic_rows(rt, Sampler.start(), time.monotonic(), cache)
    assert rows[1][:4] == ["t", "bytes", "64", "4"] and set(cache) == {"t"}
    w.unlink()
    w = Writer("t", capacity=128, pool=2, runtime_dir=rt)
    rows = topic_rows(rt, Sampler.start(), time.monotonic(), cache)
    assert rows[1][:4] == ["t", "bytes", "128", "2"]
    w.unlink()
    assert topic_rows(rt, Sampler.start(), time.monotonic(), cache) == rows[:1] and cache == {}


def test_a_graph_of_a_thousand_topics_starts_and_stops_cleanly(tmp_path):
    topics = "".join(f"  t{i}: {{capacity: 64, pool: 2}}\n" for i in range(1000))
    path, graph = write_graph(tmp_path, "topics:\n" + topics + "nodes:\n  idle: {cmd: [sleep, '30']}\n")
    res = shmlaunch(path, "--duration", 1, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert f"graph {graph!r}: 1000 topics in " in res.stdout
    assert_nothing_left(graph)


def test_a_closed_output_pipe_stops_the_graph_cleanly_without_a_traceback(tmp_path):
    out = tmp_path / "o.jsonl"
    path, graph = write_graph(tmp_path, THREE.replace("OUT", str(out)))
    res = subprocess.run(f"{sys.executable} -m shmlaunch.launch.cli {path} --duration 30 | head -2; echo \"status ${{PIPESTATUS[0]}}\"",
                         shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=60)
    assert "Traceback" not in res.stderr and "BrokenPipeError" not in res.stderr, res.stderr
    assert res.stdout.splitlines()[-1] == "status 0"
    assert_nothing_left(graph)


def test_a_log_directory_that_cannot_be_written_costs_one_warning(tmp_path):
    import io

    from shmlaunch.launch import Printer

    out = io.StringIO()
    printer = Printer(["a"], stream=out, colour=False, log_dir=tmp_path / "logs")
    (tmp_path / "logs" / "a.log").mkdir()  # the log file's name is taken: every append fails
    printer.line("a", "hello")
    printer.line("a", "again")
    assert out.getvalue().splitlines() == [
        f"shmlaunch| warning: cannot write to {tmp_path / 'logs'} (Is a directory); the lines are still printed here",
        "a        | hello", "a        | again"]


# ===== nodes: a consumer that never releases, a node that hangs
def test_built_in_nodes_survive_a_consumer_that_never_releases(tmp_path):
    pytest.importorskip("mediapipe", reason="the hands node needs MediaPipe (the hands extra: README, Quick start)")
    body = f"""
topics:
  camera/image: {{dtype: uint8, shape: [240, 320, 3], pool: 4}}
  camera2/image: {{dtype: uint8, shape: [240, 320, 3], pool: 2}}
  hands/landmarks: {{capacity: 2096, pool: 2}}
nodes:
  camera:
    node: shmlaunch.nodes.camera:Camera
    params: {{source: {ROOT / 'nodes' / 'sample'}, width: 320, height: 240, fps: 20.0, image_seconds: 0.1}}
    publish: {{image: camera/image}}
  camera2:
    node: shmlaunch.nodes.camera:Camera
    params: {{source: {ROOT / 'nodes' / 'sample'}, width: 320, height: 240, fps: 20.0, image_seconds: 0.1}}
    publish: {{image: camera2/image}}
  hands:
    node: shmlaunch.nodes.hands:HandLandmarks
    params: {{max_num_hands: 1, model_complexity: 0}}
    subscribe: {{image: camera/image}}
    publish: {{landmarks: hands/landmarks}}
  frame_hoarder:
    node: graph_nodes:Hoarder
    subscribe: {{in: camera2/image}}
    env: {{PYTHONPATH: PYTHONPATH_HERE}}
  landmark_hoarder:
    node: graph_nodes:Hoarder
    subscribe: {{in: hands/landmarks}}
    env: {{PYTHONPATH: PYTHONPATH_HERE}}
"""
    path, graph = write_graph(tmp_path, body)
    res = shmlaunch(path, "--duration", 12, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    before_stop = res.stdout.split("stopping: ran for 12 s")[0]
    assert " exited" not in before_stop and "Traceback" not in res.stdout, res.stdout
    assert "frame_hoarder   | INFO holding 2 messages" in res.stdout and "landmark_hoarder| INFO holding 2 messages" in res.stdout
    assert "because every slot was held by readers" in res.stdout  # camera2 said how many frames the hoarder cost it
    assert "landmark_hoarder| INFO holding 3 messages" not in res.stdout
    assert_nothing_left(graph)


def test_a_hung_python_node_shows_unresponsive_in_node_list(tmp_path):
    body = """
nodes:
  stuck:
    node: graph_nodes:Stuck
    params: {after: 1.0}
    env: {PYTHONPATH: PYTHONPATH_HERE}
"""
    path, graph = write_graph(tmp_path, body)
    proc = start(path, "--duration", 40)
    try:
        wait_for(lambda: " running " in node_row(graph, "stuck"), 20, "the node to run")
        wait_for(lambda: " unresponsive " in node_row(graph, "stuck"), 20, "node list to call the hung node unresponsive")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert_nothing_left(graph)


# ===== the tools: trust only this user's checked files and verified pids
def test_tools_ignore_another_users_planted_graph_and_never_signal_its_pid(other_user):
    victim = victim_process()
    name = unique_name("evil")
    planted = Path(SHM_ROOT) / f"shmlaunch-{os.geteuid()}-{name}"
    planted.mkdir(mode=0o700)
    (planted / "graph.json").write_text(json.dumps({"name": name, "file": "x", "runtime_dir": str(planted), "launcher_pid": victim.pid,
                                                    "started_ns": 0, "nodes": {}, "launcher_start": 0, "run": "x"}))
    (planted / "launcher.lock").write_text("")
    for p in (planted, planted / "graph.json", planted / "launcher.lock"):
        os.chown(p, *other_user)
    holder = lock_holder(planted / "launcher.lock")
    try:
        for args in (["list"], ["stop", name], ["node", "list", name], ["topic", "list", name]):
            res = subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", *args], capture_output=True, text=True, timeout=30)
            assert "Traceback" not in res.stderr and name not in res.stdout, (args, res.stdout, res.stderr)
        assert victim.poll() is None
    finally:
        holder.kill()
        victim.kill()
        shutil.rmtree(planted)


def test_stop_refuses_to_signal_a_pid_that_is_not_the_graphs_launcher():
    victim = victim_process()
    name = unique_name("forged")
    rt = ensure_runtime_dir(graph_runtime_dir(name))
    state = GraphState(name, "x", str(rt), victim.pid, time.time_ns(), {}, launcher_start=1, run="x")
    with RuntimeDir.open(rt) as rd:
        state.write(rd)
        os.close(rd.open_file("launcher.lock", os.O_RDWR | os.O_CREAT))
    holder = lock_holder(rt / "launcher.lock")
    try:
        res = subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", "stop", name], capture_output=True, text=True, timeout=30)
        assert res.returncode == 1
        assert one_line_error(res) == (f"shmlaunch: error: graph {name!r}: pid {victim.pid} is not its launcher (not holding the graph's lock, "
                                       f"or started at another time than graph.json says); not signalling it")
        with pytest.raises(subprocess.TimeoutExpired):  # not signalled: still running after the refusing stop returned
            victim.wait(0.2)
    finally:
        holder.kill()
        victim.kill()
        shutil.rmtree(rt)


def test_a_malformed_graph_json_never_crashes_a_tool():
    name = unique_name("junk")
    rt = ensure_runtime_dir(graph_runtime_dir(name))
    (rt / "graph.json").write_text(json.dumps({"name": name, "nodes": 5}))
    os.chmod(rt / "graph.json", 0o600)
    (rt / "launcher.lock").write_text("")
    holder = lock_holder(rt / "launcher.lock")
    try:
        for args in (["list"], ["stop", name], ["node", "list", name]):
            res = subprocess.run([sys.executable, "-m", "shmlaunch.launch.cli", *args], capture_output=True, text=True, timeout=30)
            assert "Traceback" not in res.stderr, (args, res.stderr)
    finally:
        holder.kill()
        shutil.rmtree(rt)


def test_a_closed_pipe_ends_a_tool_quietly():
    res = subprocess.run(f"{sys.executable} -m shmlaunch.launch.cli --help | head -1", shell=True, capture_output=True, text=True)
    assert res.stderr == ""


# ===== the repository: lint results independent of the clone's folder name
def test_ruff_gives_the_same_result_whatever_the_clones_folder_is_called(tmp_path):
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if files.returncode != 0:
        pytest.skip("not a git checkout")
    results = []
    for name in ("shmlaunch", "some-other-name"):
        dest = tmp_path / name
        for rel in files.stdout.splitlines():
            if rel.endswith((".py", ".toml")):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, dest / rel)
        res = subprocess.run([ruff, "check", "--no-cache", "."], cwd=dest, capture_output=True, text=True)
        results.append((res.returncode, res.stdout))
    assert results[0] == results[1] and results[0][0] == 0, results
