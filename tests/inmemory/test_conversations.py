"""Whole push, pull and sync conversations between two folders in one
process: the real client, server, machine and store, over the in-memory
transport -- no socket, no subprocess, no thread pool (the `inmemory` marker
refuses all three)."""
import asyncio
import logging
import os
import random
import sys

import pytest

from conftest import ROOT, folder_pair, tree_digest
from deltasync.errors import PartialSuccess, PeerBusy, PeerUnreachable, ProtocolError, RemoteError
from deltasync.run.client import session
from deltasync.run.loopback import Loopback
from deltasync.run.report import OUTCOMES, check
from deltasync.run.server import Server
from deltasync.run.workers import INLINE

sys.path.insert(0, str(ROOT / "bench"))
import fixture  # noqa: E402  (the seeded workloads: mutate FILE regions|scattered|shift|append|truncate)

pytestmark = pytest.mark.inmemory
MiB = 1024 * 1024
BIG = 12 * MiB  # three 4 MiB segments


def converse(a, b, mode="push", loopback=None, **kw):
    """One session from A to B's server, in memory; the report."""

    async def go():
        server = loopback.server if loopback else Server(b, workers=INLINE)
        lb = loopback or Loopback(server)
        try:
            return await session(a, "127.0.0.1:9", mode, connect=lb.connect, workers=INLINE, **kw)
        finally:
            await lb.settle()
            if loopback is None:
                server.close()

    report = asyncio.run(go())
    adds_up(report)
    return report


def adds_up(r):
    """Every file the session compared has exactly one outcome."""
    assert r.files_total == sum(getattr(r, f"files_{o}") for o in OUTCOMES), r
    assert r.files_failed == len(r.failures) and all(getattr(r, f"files_{o}") >= 0 for o in OUTCOMES), r


def make_tree(root, seed=1):
    rng = random.Random(seed)
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "docs" / "a.txt").write_text("hello\n")
    (root / "docs" / "deep" / "b.bin").write_bytes(rng.randbytes(50_000))
    (root / "empty").write_bytes(b"")
    (root / "big.bin").write_bytes(rng.randbytes(BIG))
    os.symlink("docs/a.txt", root / "link")


@pytest.fixture
def folders(tmp_path):
    a, b = folder_pair(tmp_path)
    make_tree(a.root)
    return a, b


def same(a, b):
    return tree_digest(a.root) == tree_digest(b.root)


def test_push_a_new_tree_then_nothing_to_do(folders):
    a, b = folders
    r = converse(a, b)
    assert same(a, b) and r.files_failed == 0
    assert r.files_sent_whole == 4 and r.files_total == 4  # a.txt, b.bin, empty, big.bin
    again = converse(a, b)
    assert again.files_unchanged == again.files_total == 4  # regular files only: not the link, not the dirs
    assert again.literal_bytes == 0 and again.files_sent_whole == 0


@pytest.mark.parametrize("mode", ["push", "pull", "sync"])
@pytest.mark.parametrize("kind", ["regions", "scattered", "shift", "append", "truncate"])
def test_every_mutation_kind_travels_as_a_delta(folders, mode, kind):
    a, b = folders
    converse(a, b, "sync")
    source = b if mode == "pull" else a
    fixture.mutate(str(source.root / "big.bin"), kind, seed=7, fraction=0.1)
    r = converse(a, b, mode)
    assert same(a, b) and r.files_failed == 0, r.failures
    if mode == "pull":
        assert r.files_received == 1 and r.bytes_received < BIG / 2
    else:
        assert r.files_sent_delta == 1 and r.literal_bytes < BIG / 2 and r.bytes_sent < BIG / 2


def test_deletes_push_and_sync(folders):
    a, b = folders
    converse(a, b, "sync")
    (b.root / "only-on-b").write_text("extra")
    r = converse(a, b, "push", delete=True)
    assert not (b.root / "only-on-b").exists() and r.files_deleted == 1 and same(a, b)
    (a.root / "docs" / "a.txt").unlink()
    r = converse(a, b, "sync")
    assert not (b.root / "docs" / "a.txt").exists() and r.files_deleted == 1
    kept = os.listdir(b.root / ".deltasync" / "versions")
    assert kept, "a peer's delete keeps the file as a version"


@pytest.mark.parametrize("mode", ["push", "sync"])
def test_a_rename_travels_as_a_copy(folders, mode):
    a, b = folders
    converse(a, b, "sync")
    (a.root / "moved").mkdir()
    os.rename(a.root / "big.bin", a.root / "moved" / "big2.bin")
    r = converse(a, b, mode, delete=True)
    assert same(a, b) and r.files_failed == 0
    assert r.literal_bytes == 0 and r.bytes_sent < MiB


def test_an_edit_made_during_a_sync_never_replaces_the_peers_concurrent_edit(folders, monkeypatch):
    """The user edits a file on A just after A planned a sync in which B's concurrent edit of it
    looked newer: the pull of B's version finds A's edit and refuses, and the push half, planned
    on a rescan that sees A's edit, must not then push it over B's edit with no copy of B's kept
    anywhere (the mesh test caught it so). It waits; the next sync keeps both. (A session that
    records nothing here plans its push half on its first scan, which never saw the edit.)"""
    import deltasync.run.client as client

    a, b = folders
    converse(a, b, "sync")
    path = a.root / "docs" / "a.txt"
    (b.root / "docs" / "a.txt").write_text("edited on B\n")
    (b.root / "docs" / "new.txt").write_text("new on B\n")  # a pull that lands: the push half rescans
    real = client.plan_sync

    def plan_then_edit(*args, **kw):
        sp = real(*args, **kw)
        if kw.get("pull", True) and not path.read_text().startswith("edited on A"):
            path.write_text("edited on A, later\n")
            os.utime(path, ns=(3 * 10**18, 3 * 10**18))  # A's edit wins the conflict
        return sp

    monkeypatch.setattr(client, "plan_sync", plan_then_edit)
    r = converse(a, b, "sync")
    assert (b.root / "docs" / "a.txt").read_text() == "edited on B\n", "B's edit was replaced, no copy kept"
    assert r.conflicts == [] and "docs/a.txt" in r.unsettled
    monkeypatch.undo()
    r = converse(a, b, "sync")
    assert [c["loser"] for c in r.conflicts] == ["remote"] and same(a, b)
    texts = sorted(p.read_text() for p in (b.root / "docs").glob("a*.txt"))
    assert texts == ["edited on A, later\n", "edited on B\n"]


def test_concurrent_edits_are_a_conflict_with_both_versions_kept(folders):
    a, b = folders
    converse(a, b, "sync")
    (a.root / "docs" / "a.txt").write_text("edited on A\n")
    (b.root / "docs" / "a.txt").write_text("edited on B, later and longer\n")
    os.utime(b.root / "docs" / "a.txt", ns=(2 * 10**18, 2 * 10**18))
    r = converse(a, b, "sync")
    assert len(r.conflicts) == 1 and r.conflicts[0]["loser"] == "local"
    assert same(a, b)
    texts = sorted(p.read_text() for p in (a.root / "docs").glob("a*.txt"))
    assert texts == ["edited on A\n", "edited on B, later and longer\n"]


def test_a_conflict_copy_that_cannot_be_kept_leaves_the_peers_version_in_place(folders):
    """A wins a conflict but cannot write B's losing version under its conflict name (a directory
    is there): B's version must stay where it is, not be replaced with no copy of it anywhere."""
    from deltasync.core.plan import conflict_name
    from deltasync.hashing import of_bytes

    a, b = folders
    converse(a, b, "sync")
    (b.root / "docs" / "a.txt").write_text("edited on B\n")
    os.utime(b.root / "docs" / "a.txt", ns=(10**18, 10**18))
    (a.root / "docs" / "a.txt").write_text("edited on A, later\n")
    os.utime(a.root / "docs" / "a.txt", ns=(3 * 10**18, 3 * 10**18))
    copy = conflict_name("docs/a.txt", 10**9, of_bytes(b"edited on B\n"))
    (a.root / copy).mkdir()
    (a.root / copy / "keep").write_text("x")
    r = converse(a, b, "sync")
    assert [c["loser"] for c in r.conflicts] == ["remote"] and r.files_failed >= 1
    assert (b.root / "docs" / "a.txt").read_text() == "edited on B\n", "B's version replaced, no copy kept"
    assert "docs/a.txt" in r.unsettled


class Cut:
    """A transport that breaks after `budget` bytes have been sent through it."""

    def __init__(self, inner, budget):
        self.inner, self.budget, self.sent = inner, budget, 0
        self.peer = inner.peer

    @property
    def bytes_sent(self):
        return self.inner.bytes_sent

    @property
    def bytes_received(self):
        return self.inner.bytes_received

    async def send(self, *parts):
        n = sum(len(p) for p in parts)
        if self.sent + n > self.budget:
            await self.inner.close()
            raise PeerUnreachable("cut")
        self.sent += n
        await self.inner.send(*parts)

    async def receive_into(self, buf, least=1):
        return await self.inner.receive_into(buf, least)

    async def close(self):
        await self.inner.close()


def test_a_cut_push_resumes_where_it_stopped(folders):
    a, b = folders
    server = Server(b, workers=INLINE)
    lb = Loopback(server)

    async def cut_push():
        async def connect(folder, _address, _expect, _idle):
            return Cut(lb.open(folder), 6 * MiB)  # the connection breaks inside big.bin's second segment

        try:
            await session(a, "127.0.0.1:9", "push", connect=connect, workers=INLINE)
        finally:
            await lb.settle()

    with pytest.raises((PeerUnreachable, ProtocolError)):
        asyncio.run(cut_push())
    server.close()
    assert not (b.root / "big.bin").exists()
    parts = os.listdir(b.root / ".deltasync" / "partial")
    assert len(parts) == 1, "the cut file stays as a resumable partial"
    r = converse(a, b, "push")
    assert same(a, b) and r.files_failed == 0
    assert r.literal_bytes <= BIG - 4 * MiB, "at least one verified segment was not sent again"
    assert os.listdir(b.root / ".deltasync" / "partial") == []


def test_a_cut_pull_resumes_where_it_stopped(tmp_path):
    a, b = folder_pair(tmp_path)
    make_tree(b.root)
    server = Server(b, workers=INLINE)
    lb = Loopback(server, server_side=lambda t: Cut(t, 6 * MiB))
    with pytest.raises((PeerUnreachable, ProtocolError)):
        converse(a, b, "pull", loopback=lb)
    server.close()
    assert len(os.listdir(a.root / ".deltasync" / "partial")) == 1
    r = converse(a, b, "pull")
    assert same(a, b) and r.files_failed == 0
    assert r.bytes_received <= BIG - 4 * MiB + MiB


def test_a_peer_error_mid_session_ends_it_cleanly(folders, monkeypatch):
    a, b = folders
    server = Server(b, workers=INLINE)

    def refuse(*_a, **_k):
        raise ProtocolError("the disk says no")

    monkeypatch.setattr(server.receiver, "begin", refuse)
    with pytest.raises(RemoteError, match="the disk says no"):
        converse(a, b, loopback=Loopback(server))
    assert not (b.root / "big.bin").exists()
    assert not server.receiver.registry.busy_with(a.peer_id), "the session's ticket and claims are gone"
    server.close()
    r = converse(a, b)  # and the next session goes through
    assert same(a, b) and r.files_failed == 0


def test_a_busy_peer_says_so(folders, caplog):
    """...and its log has one line for the attempt it turned away, not a session that did nothing."""
    a, b = folders
    server = Server(b, workers=INLINE)
    ticket = server.receiver.registry.open(a.peer_id, "client")  # B is syncing with A as its client
    with caplog.at_level(logging.INFO, logger="deltasync"), pytest.raises(PeerBusy, match="busy"):
        converse(a, b, loopback=Loopback(server))
    said = [r.getMessage() for r in caplog.records]
    assert any("asked to retry" in m for m in said) and not any("session with" in m for m in said), said
    server.receiver.registry.close(ticket)
    server.close()


def test_dry_run_changes_nothing_on_either_side(folders):
    a, b = folders
    before_a, before_b = tree_digest(a.root), tree_digest(b.root)
    r = converse(a, b, "sync", dry_run=True)
    assert {i["op"] for i in r.plan} >= {"send_whole", "mkdir", "symlink"}
    assert tree_digest(a.root) == before_a and tree_digest(b.root) == before_b
    assert r.files_sent_whole == 4 and r.files_total == 4, "a dry run counts what would happen"


@pytest.mark.parametrize("mode", ["push", "pull", "sync"])
def test_a_dry_run_counts_what_the_real_run_then_does(folders, mode):
    a, b = folders
    converse(a, b, "sync")
    source, target = (b, a) if mode == "pull" else (a, b)
    fixture.mutate(str(source.root / "big.bin"), "regions", seed=3, fraction=0.1)
    (source.root / "new.txt").write_text("new\n")
    os.utime(source.root / "docs" / "a.txt", ns=(10**18, 10**18))  # metadata only
    (source.root / "docs" / "deep" / "b.bin").unlink()
    counts = ("files_total", "files_sent_whole", "files_sent_delta", "files_received", "files_meta",
              "files_unchanged", "files_deleted")
    dry = converse(a, b, mode, dry_run=True, delete=True)
    real = converse(a, b, mode, delete=True)
    assert [getattr(dry, c) for c in counts] == [getattr(real, c) for c in counts], (dry, real)
    moved = (real.files_received,) if mode == "pull" else (real.files_sent_delta, real.files_sent_whole)
    assert moved == ((2,) if mode == "pull" else (1, 1)) and real.files_meta == 1 and real.files_deleted == 1
    assert same(a, b)


@pytest.mark.parametrize("mode", ["push", "sync"])
def test_max_delete_holds_the_deletes_past_n(folders, mode):
    a, b = folders
    converse(a, b, "sync")
    for name in ("x1", "x2", "x3"):
        (b.root / name).write_text(name) if mode == "push" else None
    if mode == "sync":  # deletes that travel as tombstones
        for name in ("x1", "x2", "x3"):
            (a.root / name).write_text(name)
        converse(a, b, "sync")
        for name in ("x1", "x2", "x3"):
            (a.root / name).unlink()
    r = converse(a, b, mode, delete=True, max_delete=1)
    left = sorted(n for n in ("x1", "x2", "x3") if (b.root / n).exists())
    assert len(left) == 2 and r.files_deleted == 1 and r.deletes_held == 2 and r.files_skipped == 2
    with pytest.raises(PartialSuccess, match="max-delete"):
        check(r)
    r = converse(a, b, mode, delete=True)  # without the cap, the rest go
    assert r.files_deleted == 2 and not any((b.root / n).exists() for n in left)


def test_bwlimit_paces_both_directions():
    """The limit holds what we send and what we read to the rate (on average since the start)."""
    from deltasync.run.channel import Channel, parse_rate
    from deltasync.transports.base import Peer
    from deltasync.transports.memory import pair
    from deltasync.wire.framing import encode

    assert parse_rate("0") is None and parse_rate("500K") == 500 * 1024 and parse_rate("2") == 2048
    frames = [encode("file_done", path=f"f{i}") for i in range(40)]

    async def go(rate, slow_side):
        mine, theirs = pair(Peer("a", "a"), Peer("b", "b"))
        sender = Channel(mine, rate if slow_side == "send" else None)
        reader = Channel(theirs, rate if slow_side == "recv" else None)
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def send_all():
            for f in frames:
                await sender.send(f)
            await sender.close()

        got = 0
        task = asyncio.ensure_future(send_all())
        while await reader.recv() is not None:
            got += 1
        await task
        return got, loop.time() - started

    size = sum(len(f) for f in frames)
    for side in ("send", "recv"):
        got, took = asyncio.run(go(size / 0.5, side))  # half a second's worth at that rate
        assert got == 40 and took >= 0.4, (side, took)
    got, took = asyncio.run(go(None, "send"))
    assert got == 40 and took < 0.3


def test_itemized_lines_and_stats_say_what_was_done(folders):
    from deltasync.run.report import stats

    a, b = folders
    lines = []
    converse(a, b, itemized=lines.append)
    assert sorted(lines) == sorted(["cd+++++++++ docs/", "cd+++++++++ docs/deep/", "cd+++++++++ empty-dir/",
                                    "<f+++++++++ docs/a.txt", "<f+++++++++ docs/deep/b.bin", "<f+++++++++ empty",
                                    "<f+++++++++ big.bin", "cL+++++++++ link -> docs/a.txt",
                                    ".d..t...... docs/deep/", ".d..t...... docs/", ".d..t...... empty-dir/"])
    fixture.mutate(str(a.root / "big.bin"), "regions", seed=5, fraction=0.1)
    (b.root / "only-on-b").write_text("x")
    lines.clear()
    r = converse(a, b, delete=True, itemized=lines.append)
    assert "<f.st...... big.bin" in lines and "*deleting   only-on-b" in lines
    block = dict(line.split(": ", 1) for line in stats(r, str)[:-1])
    assert int(block["Total transferred file size"]) == BIG and int(block["Number of files transferred"]) == 1
    assert int(block["Matched data"]) > BIG * 0.8, "most of the changed file was rebuilt from the old one"
    lines.clear()
    (b.root / "docs" / "from-b.txt").write_text("b\n")
    r = converse(a, b, "pull", itemized=lines.append)
    assert lines == [">f+++++++++ docs/from-b.txt"] and r.literal_bytes_received == 2


def test_pull_shows_progress_of_what_it_receives(tmp_path):
    from deltasync.progress import Progress

    class Seen(Progress):
        def __init__(self):
            self.started, self.advanced, self.done = None, 0, []

        def start(self, files, size, wire=None):
            self.started = (files, size, wire)

        def advance(self, path, nbytes):
            self.advanced += nbytes

        def file_done(self, path, ok=True):
            self.done.append((path, ok))

    a, b = folder_pair(tmp_path)
    make_tree(b.root)
    seen = Seen()
    r = converse(a, b, "pull", progress=seen)
    files, size, wire = seen.started
    assert files == 4 and size == BIG + 50_000 + 6 and seen.advanced == size
    assert wire() == r.bytes_sent + r.bytes_received > 0
    assert {p for p, ok in seen.done if ok} >= {"big.bin", "docs/a.txt", "empty", "docs/deep/b.bin"}


def _sparse_file(path, size, data_at):
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in data_at:
            f.seek(offset)
            f.write(data)


def test_holes_cost_nothing_on_the_wire_and_stay_holes(tmp_path):
    a, b = folder_pair(tmp_path)
    rng = random.Random(4)
    size = 64 * MiB
    blobs = [(0, rng.randbytes(5000)), (9 * MiB + 4096 * 3, rng.randbytes(4096)), (size - 100, rng.randbytes(100))]
    _sparse_file(a.root / "sparse.img", size, blobs)
    (a.root / "zeros.bin").write_bytes(bytes(8 * MiB))  # written zeros travel as holes too (like rsync -S)
    r = converse(a, b)
    assert same(a, b) and r.files_failed == 0
    assert r.bytes_sent < 200_000, "holes travel as their place, not their bytes"
    for name in ("sparse.img", "zeros.bin"):
        assert (b.root / name).stat().st_blocks * 512 <= 64 * 1024, f"{name} is written sparse"
    # a change inside a sparse file: only the change travels, and the holes stay holes
    with open(a.root / "sparse.img", "r+b") as f:
        f.seek(30 * MiB)
        f.write(rng.randbytes(4096))
    r = converse(a, b)
    assert same(a, b) and r.files_sent_delta == 1 and r.bytes_sent < 200_000
    assert (b.root / "sparse.img").stat().st_blocks * 512 <= 128 * 1024


@pytest.mark.parametrize("mode", ["push", "sync", "pull"])
def test_hard_links_arrive_as_links(tmp_path, mode):
    a, b = folder_pair(tmp_path)
    source = b if mode == "pull" else a
    target = a if mode == "pull" else b
    (source.root / "d").mkdir()
    (source.root / "d" / "one").write_bytes(random.Random(1).randbytes(300_000))
    os.link(source.root / "d" / "one", source.root / "two")
    os.link(source.root / "d" / "one", source.root / "zz-three")
    (source.root / "small").write_text("x")
    os.link(source.root / "small", source.root / "small-too")
    r = converse(a, b, mode)
    assert same(a, b) and r.files_failed == 0 and r.files_linked == 3, r
    inode = os.stat(target.root / "d" / "one").st_ino
    assert os.stat(target.root / "two").st_ino == inode == os.stat(target.root / "zz-three").st_ino
    assert os.stat(target.root / "small").st_ino == os.stat(target.root / "small-too").st_ino
    assert r.literal_bytes + r.literal_bytes_received < 320_000, "one transfer for the three names"
    again = converse(a, b, mode)
    assert again.files_total == again.files_unchanged == 5, again
    # an edit through one name changes all three; the links survive it on the target
    with open(source.root / "two", "r+b") as f:
        f.write(b"edited")
    r = converse(a, b, mode)
    assert same(a, b) and r.files_failed == 0
    assert os.stat(target.root / "two").st_ino == os.stat(target.root / "d" / "one").st_ino


@pytest.mark.parametrize("mode", ["push", "pull", "sync"])
def test_extended_attributes_travel_and_stay_in_step(tmp_path, mode):
    a, b = folder_pair(tmp_path)
    source, target = (b, a) if mode == "pull" else (a, b)
    (source.root / "d").mkdir()
    (source.root / "d" / "small").write_text("s")
    (source.root / "big").write_bytes(random.Random(3).randbytes(400_000))
    os.setxattr(source.root / "d" / "small", "user.colour", b"blue")
    os.setxattr(source.root / "big", "user.tag", b"\x00\xffbinary")
    os.setxattr(source.root / "d", "user.dir", b"yes")
    os.setxattr(source.root / "d" / "small", "trusted.not-ours", b"x")  # another namespace: not synced
    r = converse(a, b, mode)
    assert same(a, b) and r.files_failed == 0, r.failures
    assert os.getxattr(target.root / "d" / "small", "user.colour") == b"blue"
    assert os.getxattr(target.root / "big", "user.tag") == b"\x00\xffbinary"
    assert os.getxattr(target.root / "d", "user.dir") == b"yes"
    assert "trusted.not-ours" not in os.listxattr(target.root / "d" / "small")
    assert converse(a, b, mode).files_unchanged == 2
    # an attribute changed, one removed: metadata only, and both sides agree again
    os.setxattr(source.root / "big", "user.tag", b"v2")
    os.removexattr(source.root / "d" / "small", "user.colour")
    r = converse(a, b, mode)
    assert r.files_meta == 2 and r.literal_bytes + r.literal_bytes_received == 0, r
    assert os.getxattr(target.root / "big", "user.tag") == b"v2"
    assert "user.colour" not in os.listxattr(target.root / "d" / "small")


def test_xattrs_off_leaves_them_and_does_not_loop(tmp_path):
    a, b = folder_pair(tmp_path)
    cfg = (b.root / ".deltasync" / "config.toml")
    assert "xattrs = true" in cfg.read_text()
    cfg.write_text(cfg.read_text().replace("xattrs = true", "xattrs = false"))
    (a.root / "f").write_text("x")
    os.setxattr(a.root / "f", "user.k", b"v")
    r = converse(a, b)
    assert r.files_failed == 0 and "user.k" not in os.listxattr(b.root / "f")
    again = converse(a, b)
    assert again.files_unchanged == 1 and again.files_meta == 0, again


@pytest.mark.parametrize("mode", ["push", "pull", "sync"])
def test_what_the_server_excludes_is_left_alone_both_ways(tmp_path, mode):
    """watch --exclude on the serving side: its clients neither send, fetch nor delete those paths."""
    a, b = folder_pair(tmp_path)
    (a.root / "keep.txt").write_text("a")
    (a.root / "a.tmp").write_text("A's scratch")
    (b.root / "b.tmp").write_text("B's scratch")
    (b.root / "cache").mkdir()
    (b.root / "cache" / "x").write_text("B's cache")
    server = Server(b, workers=INLINE, excludes=["*.tmp", "cache/"])
    try:
        r = converse(a, b, mode, loopback=Loopback(server), delete=True)
    finally:
        server.close()
    assert r.files_failed == 0
    assert (b.root / "b.tmp").read_text() == "B's scratch" and (b.root / "cache" / "x").exists()
    assert not (b.root / "a.tmp").exists() and not (a.root / "b.tmp").exists() and not (a.root / "cache").exists()
    assert (a.root / "a.tmp").read_text() == "A's scratch"
    assert ((a.root if mode == "pull" else b.root) / "keep.txt").exists() or mode == "pull"


def test_edited_source_files_of_a_few_kib_travel_as_deltas(folders):
    """Fifty text files of ~21 KiB, one line of each edited: about the lines cross (a block of
    ~700 bytes each, and the signatures), not the files."""
    a, b = folders
    rng = random.Random(5)
    lines = [f"line {i}: {rng.random()}\n" for i in range(1000)]
    for i in range(50):
        (a.root / "src").mkdir(exist_ok=True)
        (a.root / "src" / f"m{i:02d}.py").write_text("".join(lines[: 700 + i]))
    converse(a, b)
    converse(a, b)
    for i in range(50):
        p = a.root / "src" / f"m{i:02d}.py"
        text = p.read_text().splitlines(keepends=True)
        text[300] = f"edited line {i}\n"
        p.write_text("".join(text))
    r = converse(a, b)
    assert same(a, b) and r.files_failed == 0, r.failures
    size = sum(p.stat().st_size for p in (a.root / "src").iterdir())  # ~21 KiB each
    assert r.files_sent_delta == 50 and r.literal_bytes < 50 * 1500, r.literal_bytes  # about a block each
    assert r.bytes_sent + r.bytes_received < size / 5  # signatures both ways included


def test_small_and_big_files_by_delta_in_one_push_each_get_their_own_signature(folders):
    """Small files' signatures are asked for ahead; a big file's on its turn, after them."""
    a, b = folders
    for i in range(40):  # more than are asked for ahead, around a big file by path
        (a.root / f"s{i:02d}.txt").write_text(f"{i}\n" * 9000)
    converse(a, b)
    converse(a, b)
    for i in range(40):
        (a.root / f"s{i:02d}.txt").write_text(f"{i}\n" * 9000 + "appended\n")
    fixture.mutate(str(a.root / "big.bin"), "regions", seed=3, fraction=0.1)
    r = converse(a, b)
    assert same(a, b) and r.files_failed == 0, r.failures
    assert r.files_sent_delta == 41


def test_a_signature_we_hold_already_is_not_asked_for(folders):
    """A push finds the peer's version's signature in our own cache when we hold that content too
    (here: we answered for it once): none of forty crosses the link, and all go by delta."""
    a, b = folders
    for i in range(40):
        for name in (f"s{i:02d}.txt", f"t{i:02d}.txt"):  # twins: the same content under two names
            (a.root / name).write_text(f"{i}\n" * 9000)
    converse(a, b)
    converse(a, b)
    for i in range(40):  # B edits one twin and pushes: A answers for, and keeps, the old content's signature
        with open(b.root / f"s{i:02d}.txt", "a") as f:
            f.write("on B\n")
    assert converse(b, a).files_sent_delta == 40
    for i in range(40):  # A edits the other twin: B holds the old content there
        with open(a.root / f"t{i:02d}.txt", "a") as f:
            f.write("on A\n")
    r = converse(a, b)
    assert same(a, b) and r.files_failed == 0 and r.files_sent_delta == 40, r.failures
    assert r.bytes_received < 40 * 300, r.bytes_received  # acks only: no signature came back


def test_merging_two_histories_of_the_same_tree_touches_no_file(tmp_path):
    """Two peers that hold the same files, scanned apart: the sync gives every path a merged
    version and writes nothing to disk (no ctime moves, so no watcher sees a change); a real
    mtime change still lands."""
    import shutil

    a, b = folder_pair(tmp_path)
    make_tree(a.root)
    shutil.copytree(a.root, b.root, dirs_exist_ok=True, symlinks=True,
                    ignore=shutil.ignore_patterns(".deltasync"), copy_function=shutil.copy2)
    before = {p: os.lstat(p).st_ctime_ns for p in b.root.rglob("*") if ".deltasync" not in p.parts}
    r = converse(a, b, "sync")
    assert r.files_failed == 0 and same(a, b), r.failures
    after = {p: os.lstat(p).st_ctime_ns for p in b.root.rglob("*") if ".deltasync" not in p.parts}
    assert after == before
    os.utime(a.root / "docs" / "a.txt", ns=(10**18, 10**18))
    converse(a, b, "sync")
    assert os.stat(b.root / "docs" / "a.txt").st_mtime_ns == 10**18
