"""The index travels once; after that, only what changed (index IDs and
sequence numbers), and a session compares only the paths that changed since
the last complete one -- yet decides them as a full comparison would."""
import os
import random
import shutil

import pytest

from conftest import folder_pair, tree_digest
from deltasync.store.manifest import Manifest
from inmemory.test_conversations import converse, make_tree, same

pytestmark = pytest.mark.inmemory


@pytest.fixture
def primed(tmp_path):
    """A and B hold the same tree, and A's copy of B's index is up to date."""
    a, b = folder_pair(tmp_path)
    make_tree(a.root)
    first = converse(a, b)
    assert first.index_entries == 0 and first.paths_compared is None  # B held nothing: all of nothing
    second = converse(a, b)  # brings back what B recorded otherwise than A sent it: a file in segments
    assert second.index_entries == 1 and second.files_unchanged == 4 and len(tree_digest(b.root)) == 8
    return a, b


def test_nothing_changed_sends_no_entries_and_compares_nothing(primed):
    a, b = primed
    r = converse(a, b)
    assert r.index_entries == 0 and r.paths_compared == 0
    assert r.files_unchanged == r.files_total == 4 and r.literal_bytes == 0


def test_one_change_is_one_entry_each_way(primed):
    a, b = primed
    (a.root / "docs" / "a.txt").write_text("edited\n")
    r = converse(a, b)
    assert r.files_sent_whole == 1 and r.files_unchanged == 3 and r.index_entries == 0
    assert r.paths_compared == 2  # the file and its directory
    r = converse(a, b)  # B recorded them as A sent them: nothing comes back (no-echo), nothing moves
    assert r.index_entries == 0 and r.files_unchanged == 4 and r.files_sent_whole == 0
    assert same(a, b)


def test_a_change_on_the_peer_arrives_as_one_entry(primed):
    a, b = primed
    (b.root / "docs" / "new.txt").write_text("made on B\n")
    r = converse(a, b, "sync")
    assert r.index_entries == 2 and r.files_received == 1  # the file, and its directory's new mtime
    assert same(a, b)


def test_a_deleted_directory_goes_with_what_only_the_peer_had_in_it(primed):
    a, b = primed
    (b.root / "docs" / "deep" / "only-on-b").write_text("B's own")
    converse(a, b)  # no --delete: B keeps it, and A learns of it
    assert (b.root / "docs" / "deep" / "only-on-b").exists()
    shutil.rmtree(a.root / "docs")
    r = converse(a, b, delete=True)
    assert not (b.root / "docs").exists() and r.files_failed == 0, r.failures
    assert same(a, b)


def test_what_was_left_unsettled_is_looked_at_again(primed):
    a, b = primed
    (a.root / "clash").write_text("a file on A")
    (b.root / "clash").mkdir()
    for _ in range(3):  # blocked each time, not forgotten once its own change is settled
        r = converse(a, b)
        assert r.files_failed == 1 and "clash" in r.failures[0]["path"]
    shutil.rmtree(b.root / "clash")
    r = converse(a, b)
    assert r.files_failed == 0 and (b.root / "clash").read_text() == "a file on A"


def test_other_rules_compare_everything(primed):
    a, b = primed
    r = converse(a, b, excludes=["*.txt"])
    assert r.paths_compared is None and r.index_entries == 0
    r = converse(a, b, excludes=["*.txt"])  # the same rules as last time: the changes only
    assert r.paths_compared == 0


def test_a_reset_index_is_sent_whole(primed):
    a, b = primed
    for f in (b.root / ".deltasync").glob("manifest.db*"):
        f.unlink()
    r = converse(a, b)
    assert r.index_entries == len(tree_digest(b.root)) and r.paths_compared is None and same(a, b)


def test_a_row_removed_outright_gives_the_index_a_new_id(tmp_path):
    a, _ = folder_pair(tmp_path)
    (a.root / "f").write_text("x")
    m = Manifest(a.db)
    try:
        from deltasync.fs.scan import scan_folder

        scan_folder(a, m)
        first, seq = m.index_state()
        assert seq >= 1
        m.record([], ["f"])
        again, seq2 = m.index_state()
        assert again != first and seq2 == seq
    finally:
        m.close()


def test_a_copy_of_an_unchanged_file_is_made_from_it_on_the_peer(primed):
    a, b = primed
    shutil.copy2(a.root / "big.bin", a.root / "copy.bin")
    r = converse(a, b)
    assert r.files_copied == 1 and r.literal_bytes == 0 and same(a, b)


def test_a_second_name_of_an_unchanged_file_is_linked(primed):
    a, b = primed
    os.link(a.root / "big.bin", a.root / "docs" / "hard.bin")
    r = converse(a, b)
    assert r.files_linked == 1 and r.literal_bytes == 0 and same(a, b)
    assert os.stat(b.root / "docs" / "hard.bin").st_ino == os.stat(b.root / "big.bin").st_ino


def _edit_randomly(root, rng, tag):
    files = sorted(p for p in root.rglob("*") if ".deltasync" not in p.parts and p.is_file())
    dirs = sorted(p for p in root.rglob("*") if ".deltasync" not in p.parts and p.is_dir())
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(["new", "edit", "delete", "rename", "mkdir", "rmdir", "chmod"])
        if op == "new" or not files:
            d = rng.choice([root, *dirs])
            (d / f"{tag}{rng.randrange(10**6)}.txt").write_text(tag * rng.randint(1, 50))
        elif op == "edit":
            rng.choice(files).write_text(f"{tag} edit {rng.random()}")
        elif op == "delete":
            rng.choice(files).unlink(missing_ok=True)
        elif op == "rename":
            src = rng.choice(files)
            if src.exists():
                src.rename(rng.choice([root, *dirs]) / f"{tag}-moved-{rng.randrange(10**6)}")
        elif op == "mkdir":
            (rng.choice([root, *dirs]) / f"{tag}dir{rng.randrange(1000)}").mkdir(exist_ok=True)
        elif op == "rmdir" and dirs:
            shutil.rmtree(rng.choice(dirs), ignore_errors=True)
        elif op == "chmod":
            os.chmod(rng.choice(files), rng.choice([0o600, 0o644, 0o755]))
        files = sorted(p for p in root.rglob("*") if ".deltasync" not in p.parts and p.is_file())
        dirs = sorted(p for p in root.rglob("*") if ".deltasync" not in p.parts and p.is_dir())


def _modes(root):
    return {p.relative_to(root).as_posix(): p.lstat().st_mode for p in root.rglob("*") if ".deltasync" not in p.parts}


@pytest.mark.parametrize("seed", range(4))
def test_changes_on_both_sides_converge_round_after_round(primed, seed):
    """The oracle: whatever each round changes, one sync (or push --delete) leaves both trees the same."""
    a, b = primed
    rng = random.Random(seed)
    for rnd in range(12):
        _edit_randomly(a.root, rng, "a")
        if rng.random() < 0.6:
            _edit_randomly(b.root, rng, "b")
        mode = rng.choice(["sync", "sync", "push"])
        r = converse(a, b, mode, delete=mode == "push")
        assert r.files_failed == 0, (rnd, r.failures)
        if r.conflicts:
            converse(a, b, "sync")  # a conflict copy made on this side travels in the next one
        assert same(a, b) and _modes(a.root) == _modes(b.root), (seed, rnd, mode)
        assert r.paths_compared is not None  # the changes only, never the whole tree again


def test_our_copy_of_a_peers_index_is_bounded_across_sessions(primed):
    """A peer may send new entries session after session; our copy holds at most
    `max_index_entries`: past that it is dropped and the session fails, nothing else."""
    from deltasync.errors import ProtocolError
    from deltasync.store.peer_index import PeerIndex

    a, b = primed
    cfg = a.config()
    cfg.folder["max_index_entries"] = len(tree_digest(b.root)) + 3
    a.save_config(cfg)
    for i in range(5):  # each one alone is a small delta
        (b.root / f"more{i}").write_text(str(i))
    with pytest.raises(ProtocolError, match="more than"):
        converse(a, b)
    m = Manifest(a.db)
    try:
        assert PeerIndex(m, b.peer_id).held() is None  # dropped: the next session asks for all of it
    finally:
        m.close()
    cfg.folder["max_index_entries"] = 1000
    a.save_config(cfg)
    r = converse(a, b, "sync")
    assert r.paths_compared is None and same(a, b)


@pytest.mark.parametrize("was", ["dir", "symlink"])
def test_a_directory_or_link_replaced_by_a_file_lands_in_one_session(primed, was):
    """The push deletes the old kind first, in the same session: that delete is no change made
    here since the index was sent, which the file must not overwrite."""
    a, b = primed
    old = a.root / "docs" / "deep" if was == "dir" else a.root / "ln"
    if was == "symlink":
        old.symlink_to("docs")
        converse(a, b)
        converse(a, b)
        old.unlink()
    else:
        shutil.rmtree(old)
    old.write_text("a file now")
    r = converse(a, b, delete=True)
    assert r.files_failed == 0, r.failures
    assert same(a, b)
