"""A push that compares everything does it a path range at a time; cut into
ranges of two paths, every case where ranges meet still lands as one plan of
the whole tree would: renames across ranges, kinds replaced both ways, deletes
deepest first, hard links whose first name sorts later, directory times."""
import os

import pytest

from conftest import folder_pair
from deltasync.core import streamed
from deltasync.run import client, driver
from inmemory.test_conversations import converse, same

pytestmark = pytest.mark.inmemory
MiB = 1 << 20


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(streamed, "PAGE", 2)


def _modes_and_times(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".deltasync"]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_mtime_ns if not os.path.islink(p) else 0)
    return out


def _tree(root):
    (root / "a" / "x").mkdir(parents=True)
    (root / "a.c").write_text("a.c sorts between a and a/x\n")
    (root / "a" / "x" / "f1").write_text("one\n")
    (root / "a" / "x" / "f2").write_text("two\n")
    (root / "h" / "a").mkdir(parents=True)
    (root / "h" / "z.txt").write_text("linked\n")
    os.link(root / "h" / "z.txt", root / "h" / "a" / "link")  # its first name (z.txt) sorts after it
    (root / "new").mkdir()
    (root / "new" / "big.bin").write_bytes(os.urandom(2 * MiB))  # B holds it as old/big.bin: a rename
    (root / "was-dir").write_text("a directory on B\n")
    (root / "was-file").mkdir()
    (root / "was-file" / "inside").write_text("B had a file here\n")
    os.utime(root / "a" / "x", ns=(10**18, 10**18))


def test_a_first_push_in_ranges_of_two_lands_whole(tmp_path, tiny):
    a, b = folder_pair(tmp_path)
    _tree(a.root)
    (b.root / "old").mkdir()
    (b.root / "old" / "big.bin").write_bytes((a.root / "new" / "big.bin").read_bytes())
    (b.root / "was-dir" / "deep" / "deeper").mkdir(parents=True)
    (b.root / "was-dir" / "deep" / "deeper" / "g").write_text("goes\n")
    (b.root / "was-file").write_text("a file on B\n")
    (b.root / "only-b" / "d1" / "d2").mkdir(parents=True)
    (b.root / "only-b" / "d1" / "d2" / "g").write_text("goes too\n")
    converse(b, a, "push", dry_run=True)  # (B's index is scanned: B's server lists what it holds)
    r = converse(a, b, delete=True)
    assert r.files_failed == 0, r.failures
    assert same(a, b) and _modes_and_times(a.root) == _modes_and_times(b.root)
    assert r.paths_compared is None and r.files_copied == 1 and r.literal_bytes < MiB  # the rename: a copy
    assert r.files_linked == 1 and os.stat(b.root / "h" / "a" / "link").st_ino == os.stat(b.root / "h" / "z.txt").st_ino
    assert not (b.root / "old").exists() and not (b.root / "only-b").exists()
    again = converse(a, b, delete=True)
    assert again.files_unchanged == again.files_total and again.literal_bytes == 0


def test_without_delete_a_blocked_directory_stays_blocked_in_later_ranges(tmp_path, tiny):
    a, b = folder_pair(tmp_path)
    (a.root / "d" / "e").mkdir(parents=True)
    for name in ("p", "q", "r"):
        (a.root / "d" / "e" / name).write_text(name)
    (b.root / "d").write_text("a file on B")
    r = converse(a, b)
    assert [f["path"] for f in r.failures] == ["d"] and (b.root / "d").read_text() == "a file on B"


def test_max_delete_holds_the_rest_in_ranges(tmp_path, tiny):
    a, b = folder_pair(tmp_path)
    (a.root / "keep").write_text("k")
    for i in range(6):
        (b.root / f"gone{i}").write_text("g")
    r = converse(a, b, delete=True, max_delete=2)
    assert r.files_deleted == 2 and r.deletes_held == 4
    assert len([p for p in os.listdir(b.root) if p.startswith("gone")]) == 4


def test_many_changed_paths_are_compared_in_ranges_too(tmp_path, tiny, monkeypatch):
    a, b = folder_pair(tmp_path)
    _tree(a.root)
    converse(a, b)
    converse(a, b)
    monkeypatch.setattr(client, "MAX_CHANGED_PATHS", 3)
    monkeypatch.setattr(driver, "MAX_CHANGED_PATHS", 3)
    for name in ("f1", "f2"):
        (a.root / "a" / "x" / name).write_text("edited " + name)
    (a.root / "a.c").unlink()
    (a.root / "h" / "more").write_text("new")
    (a.root / "copy.bin").write_bytes((a.root / "new" / "big.bin").read_bytes())  # of a file both hold alike
    r = converse(a, b, delete=True)
    assert r.paths_compared is None and r.files_failed == 0, r.failures
    assert same(a, b) and r.files_sent_whole == 3 and r.files_deleted == 1
    assert r.files_copied == 1 and r.literal_bytes < MiB
    from deltasync.wire import messages  # (a client without no-echo: B's records come back)

    monkeypatch.setattr(messages, "FEATURES", tuple(f for f in messages.FEATURES if f != messages.NO_ECHO))
    r = converse(a, b, delete=True)  # B's records come back: more than 3, compared in ranges, nothing moves
    assert r.paths_compared is None and r.index_entries > 3 and r.literal_bytes == 0
    files = sum(1 for p in a.root.rglob("*") if p.is_file() and ".deltasync" not in p.parts)
    assert r.files_total == r.files_unchanged == files  # those passed over in SQL are counted too


def _many(monkeypatch):
    monkeypatch.setattr(client, "MAX_CHANGED_PATHS", 3)
    monkeypatch.setattr(driver, "MAX_CHANGED_PATHS", 3)


@pytest.mark.parametrize("mode", ["sync", "pull"])
def test_a_first_sync_or_pull_in_ranges_of_two(tmp_path, tiny, mode):
    a, b = folder_pair(tmp_path)
    _tree(b.root)
    (a.root / "mine").mkdir()
    (a.root / "mine" / "only-a").write_text("A's own")
    (a.root / "a.c").write_text("A's a.c, made apart from B's: a conflict")
    r = converse(a, b, mode)
    assert r.paths_compared is None and r.files_failed == 0, r.failures
    assert len(r.conflicts) == 1 and r.conflicts[0]["path"] == "a.c"
    assert (a.root / "new" / "big.bin").read_bytes() == (b.root / "new" / "big.bin").read_bytes()
    assert os.stat(a.root / "h" / "a" / "link").st_ino == os.stat(a.root / "h" / "z.txt").st_ino
    if mode == "sync":
        assert same(a, b) and (b.root / "mine" / "only-a").exists()
        again = converse(a, b, "sync")
        assert again.files_unchanged == again.files_total and again.literal_bytes == 0 and not again.conflicts
    else:
        assert not (b.root / "mine").exists()
        again = converse(a, b, "pull")  # the conflict's merge was recorded once its copy landed
        assert not again.conflicts and again.files_failed == 0


def test_many_changes_on_both_sides_sync_in_ranges(tmp_path, tiny, monkeypatch):
    import shutil

    a, b = folder_pair(tmp_path)
    _tree(a.root)
    converse(a, b, "sync")
    converse(a, b, "sync")
    _many(monkeypatch)
    shutil.rmtree(a.root / "a")  # a directory deleted on A
    (a.root / "h" / "edited-on-a").write_text("new on A")
    shutil.rmtree(b.root / "was-file")  # a directory replaced by a file on B
    (b.root / "was-file").write_text("now a file, on B")
    os.rename(b.root / "new" / "big.bin", b.root / "renamed.bin")  # a rename on B
    (b.root / "a.c").write_text("edited on B")
    r = converse(a, b, "sync")
    assert r.paths_compared is None and r.files_failed == 0, r.failures
    assert same(a, b) and not (b.root / "a").exists() and (a.root / "was-file").read_text() == "now a file, on B"
    assert (a.root / "renamed.bin").exists() and not (a.root / "new" / "big.bin").exists()
    r = converse(a, b, "sync")
    assert r.files_failed == 0 and r.literal_bytes == 0 and same(a, b)


@pytest.mark.parametrize("ranges", [False, True])
def test_a_sync_walks_our_tree_again_only_when_its_pull_half_changed_something(tmp_path, monkeypatch, ranges):
    from deltasync.fs import scan as scan_mod

    a, b = folder_pair(tmp_path)
    _tree(a.root)
    converse(a, b, "sync")
    converse(a, b, "sync")
    if ranges:
        _many(monkeypatch)
    walks = []
    real = scan_mod._scan
    monkeypatch.setattr(scan_mod, "_scan", lambda root, *args: walks.append(root) or real(root, *args))
    for i in range(5):
        (a.root / "h" / f"only-a{i}").write_text("to push")
    r = converse(a, b, "sync")
    assert (r.paths_compared is None) == ranges
    assert r.files_sent_whole == 5 and walks.count(a.root) == 1, walks  # nothing pulled: no second walk
    walks.clear()
    for i in range(5):
        (b.root / "h" / f"from-b{i}").write_text("to pull")
    (a.root / "h" / "only-a0").write_text("to push, edited")
    r = converse(a, b, "sync")
    assert (r.paths_compared is None) == ranges
    assert r.files_received == 5 and r.files_sent_whole == 1 and walks.count(a.root) == 2, walks
    assert same(a, b)
