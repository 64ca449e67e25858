"""Version-vector rules and the two-way planner, without I/O."""
from deltasync.core import version as vv
from deltasync.core.entry import FILE, Entry
from deltasync.core.plan import DELTA_MIN, conflict_name, plan_sync

H1, H2, H3 = "1" * 64, "2" * 64, "3" * 64


def f(path, h=H1, version=(), mtime=1, size=10, deleted=False):
    if deleted:
        return Entry(path, FILE, 0, mtime, 0, version=tuple(sorted(version)), deleted=True)
    return Entry(path, FILE, size, mtime, 0o644, h, version=tuple(sorted(version)))


def test_compare_bump_merge():
    a = (("A", 2), ("B", 1))
    assert vv.compare(a, a) == vv.EQUAL
    assert vv.compare(a, (("A", 1), ("B", 1))) == vv.NEWER
    assert vv.compare((("A", 1),), a) == vv.OLDER
    assert vv.compare((("A", 3),), a) == vv.CONCURRENT
    assert vv.compare((), ()) == vv.EQUAL
    assert vv.bump(a, "B") == (("A", 2), ("B", 2))
    assert vv.bump((), "C") == (("C", 1),)
    assert vv.merge((("A", 3),), a) == (("A", 3), ("B", 1))


def test_dominating_versions_flow_the_right_way():
    local = {"x": f("x", H2, [("A", 2)]), "y": f("y", H1, [("A", 1)])}
    remote = {"x": f("x", H1, [("A", 1)]), "y": f("y", H3, [("A", 1), ("B", 1)])}
    sp = plan_sync(local, remote, "A", "B")
    assert [e.path for e, _ in sp.push.small] == ["x"]
    assert [e.path for e, _ in sp.pull.small] == ["y"]
    assert not sp.conflicts


def test_tombstone_wins_over_older_edit_and_never_resurrects():
    local = {"x": f("x", version=[("A", 1)])}
    remote = {"x": f("x", version=[("A", 1), ("B", 1)], deleted=True)}
    sp = plan_sync(local, remote, "A", "B")
    assert [e.path for e in sp.pull.deletes] == ["x"]
    assert sp.pull.deletes[0].version == (("A", 1), ("B", 1))
    # the other way round: our tombstone is newer, the peer's copy gets deleted, nothing comes back
    sp = plan_sync({"x": f("x", version=[("A", 2)], deleted=True)}, {"x": f("x", version=[("A", 1)])}, "A", "B")
    assert [e.path for e in sp.push.deletes] == ["x"] and not sp.pull.small


def test_concurrent_edits_are_a_conflict_newer_mtime_wins():
    local = {"doc.txt": f("doc.txt", H2, [("A", 2), ("B", 1)], mtime=200)}
    remote = {"doc.txt": f("doc.txt", H3, [("A", 1), ("B", 2)], mtime=100)}
    sp = plan_sync(local, remote, "AAAAAAAA", "BBBBBBBB")
    (c,) = sp.conflicts
    assert c.loser == "remote" and c.copy == "doc.sync-conflict-19700101-000000-33333333.txt"
    assert [e.path for e, _ in sp.pull.small] == [c.copy] and sp.fetch_as == {c.copy: "doc.txt"}
    assert sp.merged["doc.txt"].version == (("A", 2), ("B", 2))
    assert [e.path for e, _ in sp.push.small] == ["doc.txt"]
    assert sp.push.small[0][0].version == (("A", 2), ("B", 2))
    # seen from the other side: the remote wins, our copy is moved aside, theirs pulled
    sp = plan_sync(remote, local, "BBBBBBBB", "AAAAAAAA")
    (c,) = sp.conflicts
    assert c.loser == "local" and c.copy == "doc.sync-conflict-19700101-000000-33333333.txt"  # the same name either side
    assert [e.path for e, _ in sp.pull.small] == ["doc.txt"] and sp.pull.small[0][1] is None


def test_edit_beats_concurrent_delete():
    local = {"x": f("x", H2, [("A", 2)])}
    remote = {"x": f("x", version=[("A", 1), ("B", 1)], deleted=True)}
    sp = plan_sync(local, remote, "A", "B")
    assert not sp.conflicts and [e.path for e, _ in sp.push.small] == ["x"]
    assert sp.merged["x"].version == (("A", 2), ("B", 1))


def test_identical_concurrent_change_merges_without_transfer():
    local = {"x": f("x", H2, [("A", 1)])}
    remote = {"x": f("x", H2, [("B", 1)])}
    sp = plan_sync(local, remote, "A", "B")
    assert not sp.conflicts and not sp.push.small and not sp.pull.small
    assert [e.path for e in sp.push.meta] == ["x"]


def test_pull_only_plans_no_push_and_large_files_resume():
    remote = {"big": f("big", H2, [("B", 1)], size=DELTA_MIN * 10)}
    sp = plan_sync({}, remote, "A", "B", push=False)
    assert [t.entry.path for t in sp.pull.large] == ["big"] and sp.push.empty


def test_a_push_without_a_pull_replaces_a_losing_peer_file_only_once_its_copy_is_kept():
    """A sync's second half (planned after a rescan, pull=False) meets a conflict the first half
    never saw: pushing the winner would replace the peer's version with no copy of it anywhere."""
    local = {"doc.txt": f("doc.txt", H2, [("A", 2)], mtime=200)}
    remote = {"doc.txt": f("doc.txt", H3, [("A", 1), ("B", 1)], mtime=100)}
    sp = plan_sync(local, remote, "A", "B", pull=False)
    assert not sp.push.small and not sp.conflicts and not sp.merged and sp.push.left == ["doc.txt"]
    copy = "doc.sync-conflict-19700101-000000-33333333.txt"
    held = {**local, copy: f(copy, H3, [("B", 1)], mtime=100)}  # fetched by the first half
    sp = plan_sync(held, remote, "A", "B", pull=False)
    assert [e.path for e, _ in sp.push.small] == ["doc.txt"] and sp.merged["doc.txt"].version == (("A", 2), ("B", 1))
    # `kept` is asked where the copy is (a tree planned in ranges holds it in another range)
    sp = plan_sync(local, remote, "A", "B", pull=False, kept=lambda p, h: (p, h) == (copy, H3))
    assert [e.path for e, _ in sp.push.small] == ["doc.txt"]
    # a peer's delete needs no copy: the local edit wins and is pushed
    sp = plan_sync(local, {"doc.txt": f("doc.txt", version=[("A", 1), ("B", 1)], deleted=True)}, "A", "B",
                   pull=False)
    assert [e.path for e, _ in sp.push.small] == ["doc.txt"]


def test_conflict_names():
    assert conflict_name("a/b/report.pdf", 0, "cd" * 32) == "a/b/report.sync-conflict-19700101-000000-cdcdcdcd.pdf"
    assert conflict_name("Makefile", 0, "ef" * 32) == "Makefile.sync-conflict-19700101-000000-efefefef"
    assert conflict_name("a.txt", 86400, "ab" * 32) == "a.sync-conflict-19700102-000000-abababab.txt"


def test_a_version_that_won_a_conflict_loses_under_its_own_name():
    """Three writers at once, within one second: B's edit beat C's on B, so B's
    version carries C's counter too; when it loses to A's, its copy must not take
    the name of C's copy, or one of the two edits would be lost."""
    base = [("A", 1), ("B", 1), ("C", 1)]
    c_edit = f("s", H3, base[:2] + [("C", 2)], mtime=100)
    b_won = f("s", H2, [("A", 1), ("B", 2), ("C", 2)], mtime=100)  # merged: B's content, C's counter
    a_edit = f("s", H1, [("A", 2), ("B", 1), ("C", 1)], mtime=101)
    copies = set()
    for loser in (c_edit, b_won):
        (c,) = plan_sync({"s": a_edit}, {"s": loser}, "A", "X").conflicts
        copies.add(c.copy)
    assert len(copies) == 2


def test_one_losing_version_gets_one_name_whatever_beat_it_and_however_it_came():
    """C's edit reached one peer as it was, and another merged with B's counter
    (it won over B's edit there). Then it loses on each, to A's edit on one and
    to A's later edit (made after seeing C's) on the other: both detections must
    name the same copy, or the mesh keeps two copies of one edit (seen in the
    five-peer mesh test, under load)."""
    c_edit = f("s", H3, [("A", 1), ("B", 1), ("C", 2)], mtime=100)
    c_merged = f("s", H3, [("A", 1), ("B", 2), ("C", 2)], mtime=100)
    a_edit = f("s", H1, [("A", 2), ("B", 1), ("C", 1)], mtime=101)
    a_after_c = f("s", H2, [("A", 2), ("B", 1), ("C", 2)], mtime=102)
    copies = set()
    for winner, loser in ((a_edit, c_edit), (a_after_c, c_merged)):
        copies.add(plan_sync({"s": winner}, {"s": loser}, "A", "X").conflicts[0].copy)
        copies.add(plan_sync({"s": loser}, {"s": winner}, "Z", "A").conflicts[0].copy)
    assert len(copies) == 1
