import os
import sys
import time

import pytest

from deltasync import hashing
from deltasync.config import Folder
from deltasync.core.entry import FILE, SYMLINK
from deltasync.fs.ignore import Ignore
from deltasync.fs.scan import scan
from deltasync.store.manifest import Manifest, Partial


def test_scan_rehashes_only_what_changed(tmp_path):
    folder, _, _ = Folder.init(tmp_path / "A")
    root = folder.root
    for i in range(20):
        (root / f"f{i}").write_bytes(os.urandom(1000))
    (root / "d").mkdir()
    os.symlink("f1", root / "lnk")
    m = Manifest(folder.db)
    first = scan(root, m)
    assert first.hashed_files == 20
    assert first.entries["lnk"].kind == SYMLINK and first.entries["lnk"].target == "f1"
    assert ".deltasync" not in first.entries and not any(p.startswith(".deltasync/") for p in first.entries)
    again = scan(root, m)
    assert again.hashed_files == 0 and again.entries == first.entries
    time.sleep(0.01)
    (root / "f3").write_bytes(b"changed")
    (root / "f4").unlink()
    third = scan(root, m, me="me")
    assert third.hashed_files == 1 and third.entries["f4"].deleted  # a tombstone, with a bumped version
    assert third.entries["f4"].version == (("local", 1), ("me", 1))
    assert third.entries["f3"].kind == FILE and third.entries["f3"].size == 7
    assert third.entries["f3"].version == (("local", 1), ("me", 1))
    assert third.entries["f5"].version == (("local", 1),)  # unchanged: same version
    assert m.get("f4").entry.deleted
    m.close()


def test_ignore_rules(tmp_path):
    folder, _, _ = Folder.init(tmp_path / "A")
    (folder.root / ".deltasyncignore").write_text("*.tmp\nbuild/\n")
    (folder.root / "build").mkdir()
    (folder.root / "build" / "x").write_text("x")
    (folder.root / "a.tmp").write_text("x")
    (folder.root / "keep").write_text("x")
    m = Manifest(folder.db)
    entries = scan(folder.root, m, Ignore.for_folder(folder.root, ["keep"])).entries
    assert set(entries) == {".deltasyncignore"}
    m.close()


def test_partials_journal_survives_reopen(tmp_path):
    db = tmp_path / "m.db"
    m = Manifest(db)
    p = Partial("big", "a" * 64, None, 10 * 2**20, 1, 0o644, 4 * 2**20, "x.part", 1.0, 1.0, "{}", frozenset())
    m.begin_partial(p)
    m.segments_done("big", [0])
    m.segments_done("big", [2])
    m.store_signature("big", "b" * 64, 8192, b"sig", "72730147/16", "librsync")
    m.close()
    m = Manifest(db)
    (q,) = m.partials()
    assert q.done == {0, 2} and q.segments_total == 3 and q.bytes_done == 4 * 2**20 + 2 * 2**20
    assert m.signature("big", "b" * 64, "72730147/16") == (8192, b"sig") and m.signature("big", "c" * 64,
                                                                                          "72730147/16") is None
    assert m.signature("big", "b" * 64, "72730146/8") is None  # another format is not this one
    m.drop_partial("big")
    assert m.partials() == []
    m.close()


def test_a_version_signed_in_the_background_keeps_its_blocks_digests(tmp_path):
    """The background signature of a version we hold comes with its blocks' blake3 digests (what our
    next delta against it checks blocks with); one signed on demand has none, so it is signed again,
    whole, the next time that content is scanned fresh."""
    import io

    from deltasync import engine
    from deltasync.core.limits import DELTA_MIN
    from deltasync.store.receiver import Receiver

    folder, _, _ = Folder.init(tmp_path / "A")
    data = os.urandom(3 * DELTA_MIN + 5)
    (folder.root / "big").write_bytes(data)
    m = Manifest(folder.db)
    e = scan(folder.root, m, Ignore.for_folder(folder.root)).entries["big"]
    block = engine.block_len_for(e.size)
    assert m.missing_signatures([e], DELTA_MIN) == [e] and m.digests_of(e.blake3, block) is None
    rx = Receiver(folder, m)
    rx.signatures.precompute(e)
    rx.close(float("inf"))
    assert m.digests_of(e.blake3, block) == engine.block_digests(io.BytesIO(data).read, block)
    assert m.digests_of(e.blake3, block * 2) is None and m.missing_signatures([e], DELTA_MIN) == []
    m.store_signature("big", e.blake3, block, b"sig", engine.SIG_FORMAT, "librsync")  # as on demand: no digests
    assert m.digests_of(e.blake3, block) is None and m.missing_signatures([e], DELTA_MIN) == [e]

    # the digests are made of the signature's own read: every byte, in order; a read that moved is not used
    import threading

    from deltasync.store.signatures import _Interruptible

    made = engine.BlockDigests(block)
    read = _Interruptible(io.BytesIO(data), threading.Event(), made.update)
    assert engine.signature(read, block) == engine.signature(io.BytesIO(data), block) and read.tapped
    assert made.digests() == engine.block_digests(io.BytesIO(data).read, block)
    read.seek(0)
    assert not read.tapped
    m.close()


def test_stored_version_vectors_read_back_as_written(tmp_path):
    """Vectors are stored through a cache of their JSON (`version_text`): each row still
    reads back with its own vector, however many rows share one."""
    import json

    from deltasync.core.entry import Entry
    from deltasync.store.manifest import Seen, version_text

    m = Manifest(tmp_path / "m.db")
    vectors = {f"f{i}": ((("aaaa", 1),) if i % 2 else (("aaaa", 2), ("bbbb", i))) for i in range(6)}
    m.record([Seen(Entry(p, FILE, 1, 1, 0o644, "0" * 64, version=v), 1, 1) for p, v in vectors.items()])
    assert {p: s.entry.version for p, s in m.seen_of(list(vectors)).items()} == vectors
    assert version_text((("aaaa", 2), ("bbbb", 5))) == json.dumps({"aaaa": 2, "bbbb": 5})
    m.close()


def test_only_small_version_vectors_are_cached():
    """A peer's vectors of many keys are made each time, not kept: what the caches hold stays small."""
    from deltasync.core import version as vv
    from deltasync.core.limits import INT64_MAX, MAX_VECTOR_KEY_LEN
    from deltasync.store import manifest

    big = tuple((f"{i:02d}" + "k" * 62, 2**62 + i) for i in range(vv.CACHED_KEYS + 1))
    small = (("aaaa", 7),)
    before = (manifest.version_text.cache_info().currsize, manifest._version.cache_info().currsize,
              vv.bump.cache_info().currsize)
    text = manifest.version_text(big)
    assert manifest._version(text) == big and vv.bump(big, "me") == tuple(sorted(big + (("me", 1),)))
    assert (manifest.version_text.cache_info().currsize, manifest._version.cache_info().currsize,
            vv.bump.cache_info().currsize) == before
    assert manifest._version(manifest.version_text(small)) == small and vv.bump(small, "aaaa") == (("aaaa", 8),)
    hits = manifest.version_text.cache_info().hits, vv.bump.cache_info().hits
    manifest.version_text(small), vv.bump(small, "aaaa")
    assert (manifest.version_text.cache_info().hits, vv.bump.cache_info().hits) == (hits[0] + 1, hits[1] + 1)
    largest_small = tuple((f"{i}" + "k" * (MAX_VECTOR_KEY_LEN - 1), INT64_MAX) for i in range(vv.CACHED_KEYS))
    assert len(manifest.version_text(largest_small)) <= manifest.CACHED_TEXT  # its JSON is parsed from the cache


def test_fixture_copy_is_identical_to_shared():
    from pathlib import Path

    import pytest

    from conftest import FIXTURE

    shared = Path(__file__).resolve().parents[2] / "shared" / "scenario" / "fixture.py"
    if not shared.exists():
        pytest.skip("../shared/scenario/fixture.py not beside this checkout")
    assert FIXTURE.read_bytes() == shared.read_bytes()


def _touch_randomly(root, rng):
    """Random edits; returns the paths a watcher would report (what changed, by its name)."""
    import shutil

    seen = set()
    for _ in range(rng.randint(1, 6)):
        files = sorted(p for p in root.rglob("*") if ".deltasync" not in p.parts and p.is_file())
        dirs = sorted(p for p in root.rglob("*") if ".deltasync" not in p.parts and p.is_dir()
                      and not p.is_symlink())
        op = rng.choice(["new", "edit", "delete", "rename", "mkdir", "rmdir", "chmod", "symlink", "newdir",
                         "movedir", "chmoddir"])
        where = rng.choice([root, *dirs])
        if op == "new" or not files:
            p = where / f"n{rng.randrange(10**6)}"
            p.write_text("x" * rng.randint(0, 99))
        elif op == "edit":
            p = rng.choice(files)
            p.write_text(f"edit {rng.random()}")
        elif op == "delete":
            p = rng.choice(files)
            p.unlink()
        elif op == "rename":
            src = rng.choice(files)
            p = where / f"m{rng.randrange(10**6)}"
            src.rename(p)
            seen.add(src.relative_to(root).as_posix())
        elif op == "mkdir":
            p = where / f"d{rng.randrange(1000)}"
            p.mkdir(exist_ok=True)
        elif op == "newdir":  # a directory moved in whole: the watcher names the directory only
            p = where / f"tree{rng.randrange(1000)}"
            (p / "inner").mkdir(parents=True, exist_ok=True)
            (p / "inner" / "f").write_text("deep")
        elif op == "movedir" and dirs:  # a directory renamed within the folder, with what is inside
            src = rng.choice(dirs)
            p = where / f"moved{rng.randrange(1000)}"
            if p.exists() or p == src or src in p.parents:
                continue
            src.rename(p)
            seen.add(src.relative_to(root).as_posix())
        elif op == "chmoddir" and dirs:
            p = rng.choice(dirs)
            os.chmod(p, rng.choice([0o700, 0o750, 0o755]))
        elif op == "rmdir" and dirs:
            p = rng.choice(dirs)
            shutil.rmtree(p)
        elif op == "symlink":
            p = where / f"l{rng.randrange(1000)}"
            if not p.exists() and not p.is_symlink():
                os.symlink("target", p)
        else:
            p = rng.choice(files)
            os.chmod(p, rng.choice([0o600, 0o640, 0o755]))
        seen.add(p.relative_to(root).as_posix())
    return seen


def _oracle_tree(tmp_path):
    """A small tree in three levels, and two manifests: one for whole walks, one for looks."""
    root = tmp_path / "f"
    (root / "a" / "b").mkdir(parents=True)
    for i in range(20):
        (root / ("a/b" if i % 3 == 0 else "a" if i % 3 == 1 else "")).joinpath(f"f{i}").write_text(str(i))
    return root, Manifest(tmp_path / "whole.db"), Manifest(tmp_path / "part.db")


@pytest.mark.parametrize("seed", range(6))
def test_a_look_at_what_changed_finds_what_a_whole_walk_finds(tmp_path, seed):
    """The oracle for `within`: after random edits, looking only at the paths a watcher
    reported gives the same index (and the same changes) as walking everything."""
    import random

    rng = random.Random(seed)
    root, whole, part = _oracle_tree(tmp_path)
    try:
        scan(root, whole, me="me")
        scan(root, part, me="me")
        for _ in range(8):
            touched = _touch_randomly(root, rng)
            w = scan(root, whole, me="me")
            p = scan(root, part, me="me", within=touched)
            assert p.partial
            assert p.entries == w.entries and p.changed == w.changed, touched
            on_disk = {q.relative_to(root).as_posix(): q for q in root.rglob("*") if ".deltasync" not in q.parts}
            live = {q: e for q, e in w.entries.items() if not e.deleted}
            assert set(live) == set(on_disk), touched  # and every other path it knew is a tombstone
            assert all(e.blake3 == hashing.of_bytes(on_disk[q].read_bytes()) for q, e in live.items()
                       if e.kind == FILE)
    finally:
        whole.close()
        part.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
@pytest.mark.parametrize("seed", range(6))
def test_a_look_at_what_inotify_reported_finds_what_a_whole_walk_finds(tmp_path, seed):
    """The same oracle, with the paths `serve`'s inotify watches report (fs/notify.py):
    directories renamed, made and moved in whole, chmod'ed (their own entry only), removed."""
    import random

    from deltasync.fs import notify

    rng = random.Random(seed)
    root, whole, part = _oracle_tree(tmp_path)
    watched = notify.start(root, full_every=3600)
    assert watched is not None
    try:
        assert watched.take() is None  # the first scan walks everything
        scan(root, whole, me="me")
        scan(root, part, me="me")
        looked = 0
        for _ in range(8):
            _touch_randomly(root, rng)
            within = watched.take()
            looked += within is not None
            w = scan(root, whole, me="me")
            p = scan(root, part, me="me", within=within)
            assert p.entries == w.entries and p.changed == w.changed, within
        assert looked == 8  # nothing here needed a whole walk
        assert watched.take() == set()
    finally:
        watched.close()
        whole.close()
        part.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_inotify_still_walks_everything_every_full_every_seconds_and_after_it_closes(tmp_path):
    """The safety net for what inotify does not report (another host writing to a network
    filesystem): a whole walk when `full_every` has passed; none inside it; all after close."""
    from deltasync.fs import notify

    (tmp_path / "d").mkdir()
    due = notify.start(tmp_path, full_every=0)
    fresh = notify.start(tmp_path, full_every=3600)
    try:
        assert due.take() is None and due.take() is None
        assert fresh.take() is None and fresh.take() == set()
        (tmp_path / "d" / "x").write_text("x")
        assert fresh.take() == {"d/x"}
        fresh.close()
        (tmp_path / "d" / "y").write_text("y")
        assert fresh.take() is None and fresh.take() is None
    finally:
        due.close()
        fresh.close()


def test_a_look_at_most_of_the_tree_is_a_walk(tmp_path):
    """Past CHEAP_LOOKS, a look at more paths than a walk's worth (LOOK_COST a path) walks:
    after a session wrote most of a folder, its next scan costs a walk, not ten times one."""
    from deltasync.fs.scan import CHEAP_LOOKS, LOOK_COST

    root = tmp_path / "f"
    n = 2 * CHEAP_LOOKS * LOOK_COST  # a walk's worth of looks is then past CHEAP_LOOKS
    for d in range(n // 100):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(100):
            (root / f"d{d}" / f"f{i}").write_text(str(i))
    m = Manifest(tmp_path / "m.db")
    try:
        scan(root, m, me="me")
        paths = [f"d{d}/f{i}" for d in range(n // 100) for i in range(100)]
        assert scan(root, m, me="me", within=paths[:CHEAP_LOOKS]).partial
        assert scan(root, m, me="me", within=paths[: m.rows() // LOOK_COST - 1]).partial
        assert not scan(root, m, me="me", within=paths[: m.rows() // LOOK_COST + 1]).partial
    finally:
        m.close()


def test_a_directorys_own_entry_is_looked_at_without_what_is_inside(tmp_path):
    """`OWN + path`: a directory's mode changed (our receiver sets directories' mtimes after
    their files): its entry is looked at again, its files are not."""
    from deltasync.fs.scan import OWN

    root = tmp_path / "f"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x").write_text("1")
    m = Manifest(tmp_path / "m.db")
    try:
        scan(root, m, me="me")
        os.chmod(root / "a", 0o700)
        (root / "a" / "x").write_text("changed, unreported")
        r = scan(root, m, me="me", within={OWN + "a"})
        assert r.partial and r.changed == ["a"] and r.entries["a"].mode & 0o777 == 0o700
        assert scan(root, m, me="me").changed == ["a/x"]  # a whole walk finds the rest
    finally:
        m.close()


def test_a_big_scan_records_in_batches_and_keeps_only_the_big_files(tmp_path, monkeypatch):
    """With batches of two rows, a scan ends with the index a scan in one piece makes, fresh holds
    only what it must (big files, and the last batch), and tombstones come out the same."""
    from deltasync.core.limits import DELTA_MIN
    from deltasync.fs import scan as scan_mod

    def make(root):
        for d in ("a", "a/b", "a.c", "z/y/x"):
            (root / d).mkdir(parents=True, exist_ok=True)
        for i, d in enumerate(("", "a", "a/b", "a.c", "z/y/x") * 3):
            (root / d / f"f{i}").write_bytes(bytes([i]) * 100)
        (root / "a" / "big").write_bytes(b"B" * DELTA_MIN)
        os.utime(root, ns=(10**18, 10**18))

    results = {}
    for batch in (2, 10**9):
        monkeypatch.setattr(scan_mod, "FLUSH_ROWS", batch)
        folder, _, _ = Folder.init(tmp_path / str(batch))
        make(folder.root)
        m = Manifest(folder.db)
        first = scan(folder.root, m)
        for d in ("a/b", "z"):  # a directory gone: what was inside goes with it
            import shutil
            shutil.rmtree(folder.root / d)
        second = scan(folder.root, m)
        results[batch] = (first, second, m.all_entries())
    (small1, small2, small_all), (one1, one2, one_all) = results[2], results[10**9]
    assert {p: (e.kind, e.size, e.blake3) for p, e in small_all.items()} == \
        {p: (e.kind, e.size, e.blake3) for p, e in one_all.items()}
    assert {p for p, e in small_all.items() if e.deleted} == {p for p, e in one_all.items() if e.deleted} != set()
    assert "a/big" in small1.fresh and len(small1.fresh) < len(one1.fresh)
    assert small1.entries.keys() == one1.entries.keys() and small2.entries.keys() == one2.entries.keys()
    assert sorted(small2.changed) == sorted(one2.changed)


def test_the_spool_gives_deletes_deepest_first_and_the_rest_as_added(tmp_path):
    from deltasync.core.entry import DIR, Entry
    from deltasync.store.spool import Spool

    folder, _, _ = Folder.init(tmp_path / "A")
    spool = Spool(Manifest(folder.db))
    paths = ["a", "a/b/c", "z", "a/b", "m/n/o/p", "b"]
    spool.add("delete", ((Entry(p, DIR, version=(("x", 1),)), None) for p in paths))
    spool.add("hardlink", ((Entry(p, FILE, 1, 0, 0o644, "1" * 64, link="first"), "2" * 64) for p in ("y", "x")))
    got = [e.path for batch in spool.take("delete", page=2) for e, _ in batch]
    assert got == ["m/n/o/p", "a/b/c", "a/b", "a", "z", "b"]  # deepest first; a level in the order added
    links = [(e.path, e.link, r) for batch in spool.take("hardlink") for e, r in batch]
    assert links == [("y", "first", "2" * 64), ("x", "first", "2" * 64)]
    assert not list(spool.take("dir_meta"))
    spool.close()
    assert not list(spool.take("delete"))


def test_a_watchers_changed_paths_are_bounded():
    """Past MAX_WITHIN changed paths a watcher keeps none: the next scan walks everything (as it would)."""
    from deltasync.fs.scan import MAX_WITHIN, Unscanned

    u = Unscanned()
    assert u.take() is None  # at start: everything
    u.add(f"p{i}" for i in range(MAX_WITHIN))
    assert len(u.take()) == MAX_WITHIN
    u.add(f"p{i}" for i in range(MAX_WITHIN + 1))
    u.add(["one more"])
    assert u.take() is None and u.take() == set()


def test_while_no_watcher_runs_every_scan_walks_everything():
    from deltasync.fs.scan import Unscanned

    u = Unscanned()
    u.take()
    u.add(["a"])
    u.blind()
    u.add(["b"])
    assert u.take() is None and u.take() is None  # not only the next one: each, until it runs again
    u.blind(False)
    assert u.take() is None  # what changed while none ran
    u.add(["c"])
    assert u.take() == {"c"}


def test_a_comparison_in_ranges_passes_over_only_what_both_hold_exactly_alike(tmp_path):
    """Rows alike in every field are left out of both sides' pages (and counted); a row that differs
    in any one field, a directory, or a path only one side holds is read on both sides as before."""
    from dataclasses import replace

    from deltasync.core.entry import DIR, Entry
    from deltasync.store.manifest import Seen
    from deltasync.store.peer_index import PeerIndex

    folder, _, _ = Folder.init(tmp_path / "A")
    m = Manifest(folder.db)
    base = Entry("f", FILE, 10, 5, 0o644, "1" * 64, version=(("P", 1),))
    changes = {"size": 11, "mtime_ns": 6, "mode": 0o600, "blake3": "2" * 64, "version": (("P", 2),),
               "deleted": True, "link": "g", "xattrs": (("user.a", b"1"),)}
    ours = [replace(base, path=f"f-{k}") for k in changes] + [
        replace(base, path="same"), replace(base, path="tomb", deleted=True), Entry("d", DIR, 0, 5, 0o755),
        Entry("l", SYMLINK, target="x"), replace(base, path="only-ours")]
    theirs = [replace(e, **{k: v}) for e, (k, v) in zip(ours, changes.items())] + [
        replace(base, path="same"), replace(base, path="tomb", deleted=True), Entry("d", DIR, 0, 5, 0o755),
        Entry("l", SYMLINK, target="x"), replace(base, path="only-theirs")]
    m.record(Seen(e, 1, 1) for e in ours)
    cache = PeerIndex(m, "PEER")
    cache.start(True)
    cache.add(theirs)
    differ = sorted([*(f"f-{k}" for k in changes), "d"])
    assert [e.path for e in cache.ours_after("", 100)] == sorted([*differ, "only-ours"])
    assert [e.path for e in cache.after("", 100)] == sorted([*differ, "only-theirs"])
    assert [e.path for e in cache.ours_after("f-size", 2)] == ["f-version", "f-xattrs"]
    assert cache.alike() == (1, 10)  # "same" (the tombstone and the link are not live files)
    m.close()
