import os
import time

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


def test_fixture_copy_is_identical_to_shared():
    from pathlib import Path

    import pytest

    from conftest import FIXTURE

    shared = Path(__file__).resolve().parents[2] / "shared" / "scenario" / "fixture.py"
    if not shared.exists():
        pytest.skip("../shared/scenario/fixture.py not beside this checkout")
    assert FIXTURE.read_bytes() == shared.read_bytes()
