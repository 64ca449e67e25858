from deltasync.core.entry import DIR, FILE, SYMLINK, Entry
from deltasync.core.plan import DELTA_MIN, PartialInfo, make_plan

H1, H2 = "1" * 64, "2" * 64


def f(path, size=10, h=H1, mtime=1, mode=0o644):
    return Entry(path, FILE, size, mtime, mode, h)


def d(path, mtime=1, mode=0o755):
    return Entry(path, DIR, 0, mtime, mode)


def idx(*entries):
    return {e.path: e for e in entries}


def test_missing_small_and_large_files():
    big = f("big", DELTA_MIN * 4)
    plan = make_plan(idx(d("a"), f("a/x"), big), {})
    assert [e.path for e in plan.mkdirs] == ["a"]
    assert [e.path for e, _ in plan.small] == ["a/x"]
    assert [t.entry.path for t in plan.large] == ["big"] and plan.large[0].basis is None
    assert plan.unchanged == 0


def test_unchanged_and_meta_only():
    plan = make_plan(idx(f("a"), f("b", mtime=5)), idx(f("a"), f("b", mtime=1)))
    assert plan.unchanged == 1
    assert [e.path for e in plan.meta] == ["b"]
    assert not plan.small and not plan.large


def test_changed_large_file_goes_by_delta_against_the_peer_version():
    plan = make_plan(idx(f("big", DELTA_MIN * 2, H2)), idx(f("big", DELTA_MIN * 2, H1)))
    (t,) = plan.large
    assert t.basis == H1 and t.replaces == H1


def test_changed_small_file_carries_what_it_replaces():
    plan = make_plan(idx(f("s", 10, H2)), idx(f("s", 10, H1)))
    assert plan.small == [(f("s", 10, H2), H1)]


def test_delete_only_with_flag_and_deepest_first():
    target = idx(d("x"), f("x/y"), f("z"))
    assert make_plan({}, target).deletes == []
    plan = make_plan({}, target, delete=True)
    assert [e.path for e in plan.deletes] == ["x/y", "x", "z"]


def test_kind_change_blocked_without_delete():
    plan = make_plan(idx(f("p")), idx(d("p"), f("p/q")))
    assert plan.blocked and plan.blocked[0][0] == "p"
    assert not plan.small
    plan = make_plan(idx(f("p")), idx(d("p"), f("p/q")), delete=True)
    assert [e.path for e in plan.deletes] == ["p/q", "p"]
    assert [e.path for e, _ in plan.small] == ["p"]


def test_symlinks_compare_targets():
    s1 = Entry("l", SYMLINK, target="a")
    s2 = Entry("l", SYMLINK, target="b")
    assert make_plan(idx(s1), idx(s1)).empty and make_plan(idx(s1), idx(s1)).unchanged == 0  # files only
    assert make_plan(idx(s2), idx(s1)).symlinks == [s2]


def test_resume_keeps_done_segments_when_target_and_basis_match():
    src = f("big", DELTA_MIN * 100, H2)
    part = PartialInfo("big", H2, H1, 4 << 20, frozenset({0, 1}))
    (t,) = make_plan(idx(src), idx(f("big", 5, H1)), {"big": part}).large
    assert t.done == {0, 1}
    other = PartialInfo("big", "3" * 64, H1, 4 << 20, frozenset({0}))
    (t,) = make_plan(idx(src), idx(f("big", 5, H1)), {"big": other}).large
    assert t.done == frozenset()


def test_dir_meta_after_contents_for_touched_dirs():
    plan = make_plan(idx(d("a"), d("a/b"), f("a/b/c", h=H2)), idx(d("a"), d("a/b"), f("a/b/c")))
    assert [e.path for e in plan.dir_meta] == ["a/b", "a"]
    plan = make_plan(idx(d("a"), f("a/c")), idx(d("a"), f("a/c")))
    assert plan.dir_meta == [] and plan.empty


def test_rename_is_a_local_copy_plus_delete():
    big = f("old/name.bin", DELTA_MIN * 8, H2)
    plan = make_plan(idx(f("new/name.bin", DELTA_MIN * 8, H2)), idx(big), delete=True)
    assert plan.copies == [(f("new/name.bin", DELTA_MIN * 8, H2), "old/name.bin", None)]
    assert not plan.large and [e.path for e in plan.deletes] == ["old/name.bin"]


def test_versions_travel_even_when_content_matches():
    a = Entry("x", FILE, 1, 1, 0o644, H1, version=(("p", 2),))
    b = Entry("x", FILE, 1, 1, 0o644, H1, version=(("p", 1),))
    assert make_plan(idx(a), idx(b)).meta == [a]


def test_a_changed_file_of_a_few_kib_goes_by_delta_when_the_peer_holds_a_version():
    from deltasync.core.limits import SMALL_DELTA_MIN

    mid = SMALL_DELTA_MIN * 2
    plan = make_plan(idx(f("edited", mid, H2), f("new", mid, H2), f("tiny", SMALL_DELTA_MIN - 1, H2)),
                     idx(f("edited", mid, H1), f("tiny", SMALL_DELTA_MIN - 1, H1)))
    (t,) = plan.large
    assert t.entry.path == "edited" and t.basis == H1 and t.basis_size == mid
    assert sorted(e.path for e, _ in plan.small) == ["new", "tiny"]  # no basis, or too small to gain
