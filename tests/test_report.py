"""A session's counts add up, whatever the plan and whatever fails: every
regular file the session compared has exactly one outcome."""
from hypothesis import given, settings
from hypothesis import strategies as st

from deltasync.core.entry import DIR, FILE, SYMLINK, Entry
from deltasync.core.plan import DELTA_MIN, make_plan, plan_sync
from deltasync.core.result import FileResult
from deltasync.run.report import OUTCOMES, Report

NAMES = ["a", "b", "c", "d/e", "d/f", "g"]
HASHES = ["1" * 64, "2" * 64, "3" * 64]


@st.composite
def entry(draw, path):
    kind = draw(st.sampled_from([FILE, FILE, FILE, SYMLINK]))
    if kind == SYMLINK:
        return Entry(path, SYMLINK, target=draw(st.sampled_from(["x", "y"])))
    size = draw(st.sampled_from([0, 10, DELTA_MIN * 3]))
    return Entry(path, FILE, size, draw(st.integers(1, 3)), 0o644, draw(st.sampled_from(HASHES)),
                 version=((draw(st.sampled_from(["me", "peer"])), draw(st.integers(1, 3))),),
                 deleted=draw(st.booleans()) and draw(st.booleans()))


@st.composite
def index(draw):
    out = {"d": Entry("d", DIR, 0, 1, 0o755)}
    for p in draw(st.lists(st.sampled_from(NAMES), unique=True)):
        out[p] = draw(entry(p))
    return out


def adds_up(r: Report) -> None:
    assert r.files_total == sum(getattr(r, f"files_{o}") for o in OUTCOMES), r
    assert all(getattr(r, f"files_{o}") >= 0 for o in OUTCOMES), r
    assert r.files_failed == len(r.failures), r


def live_files(idx):
    return {p for p, e in idx.items() if e.kind == FILE and not e.deleted}


@settings(max_examples=300, deadline=None)
@given(index(), index(), st.booleans(), st.booleans(), st.data())
def test_a_push_counts_every_file_once_and_verdicts_move_them(source, target, delete, update, data):
    plan = make_plan(source, target, delete=delete, update=update)
    r = Report()
    r.count(plan)
    adds_up(r)  # the dry run's counts: what would happen
    planned = sorted(r._outcome)
    # every live source file is counted once, and with --delete every target file that goes
    assert r.files_total >= len(live_files(source)) - len(plan.blocked)
    for path in data.draw(st.lists(st.sampled_from(planned), unique=True)) if planned else []:
        r.result(FileResult(path, data.draw(st.booleans()), "nope", whole=data.draw(st.booleans())), remote=True)
        adds_up(r)
    before = r.files_total
    r.fail("unreadable/file", "Permission denied")  # a scan error: a file we compared, failed
    r.fail("unreadable/file", "Permission denied")  # said twice, counted once
    adds_up(r)
    assert r.files_total == before + 1


@settings(max_examples=300, deadline=None)
@given(index(), index(), st.booleans(), st.data())
def test_a_sync_counts_each_file_in_one_half_only(local, remote, dry, data):
    sp = plan_sync(local, remote, "me", "peer")
    r = Report()
    r.count(sp.pull, pulled=True)
    r.count(sp.push)
    adds_up(r)
    both = live_files(local) | live_files(remote)
    # a file live on either side is in play (conflict copies add their own paths)
    assert r.files_total >= len(both - {p for p, _ in sp.pull.blocked + sp.push.blocked})
    for path in sorted(r._outcome):
        if data.draw(st.booleans()):
            r.result(FileResult(path, False, "disk full"), remote=data.draw(st.booleans()))
    adds_up(r)


def test_named_outcomes_for_a_known_plan():
    big, h1, h2 = DELTA_MIN * 3, HASHES[0], HASHES[1]
    source = {"new": Entry("new", FILE, 5, 1, 0o644, HASHES[2]), "edit": Entry("edit", FILE, big, 1, 0o644, h2),
              "same": Entry("same", FILE, 5, 1, 0o644, h1), "touched": Entry("touched", FILE, 5, 9, 0o644, h1),
              "link": Entry("link", SYMLINK, target="x")}
    target = {"edit": Entry("edit", FILE, big, 1, 0o644, h1), "same": Entry("same", FILE, 5, 1, 0o644, h1),
              "touched": Entry("touched", FILE, 5, 1, 0o644, h1), "gone": Entry("gone", FILE, 5, 1, 0o644, h1),
              "gone-dir": Entry("gone-dir", DIR, 0, 1, 0o755)}
    r = Report()
    r.count(make_plan(source, target, delete=True))
    assert (r.files_total, r.files_sent_whole, r.files_sent_delta, r.files_meta, r.files_unchanged,
            r.files_deleted) == (5, 1, 1, 1, 1, 1)
    r.result(FileResult("edit", True, whole=True), remote=True)  # no basis there after all
    r.result(FileResult("new", False, "disk full"), remote=True)
    assert (r.files_total, r.files_sent_whole, r.files_sent_delta, r.files_failed) == (5, 1, 0, 1)


def test_a_failure_names_its_path_once():
    from deltasync.errors import PartialSuccess
    from deltasync.run.report import check

    r = Report()
    r.fail("lockeddir", "lockeddir: Permission denied")
    try:
        check(r)
    except PartialSuccess as e:
        assert str(e) == "1 file(s) failed; first: lockeddir: Permission denied"
    else:
        raise AssertionError("a failure is a partial success")


def test_watch_says_conflicts_and_failures_as_text():
    from deltasync.run.watch import _text

    text = _text([{"path": "a", "error": "a: changed since it was scanned; run again"},
                  {"path": "b", "copy": "b.sync-conflict-20260101-000000-0a1b2c3d", "loser": "local"}])
    assert text == ("a: changed since it was scanned; it goes with the next sync; "
                    "b (the local version is kept as b.sync-conflict-20260101-000000-0a1b2c3d)")
    assert "{" not in text and "run again" not in text


def test_holes_are_the_aligned_zero_blocks():
    """holes_of against a plain block-by-block reference, on random layouts of zero and data runs."""
    import random

    from deltasync.core import sparse

    rng = random.Random(5)
    for _ in range(300):
        data = bytearray()
        while len(data) < 64 * 1024:
            n = rng.choice([1, 100, 4095, 4096, 4097, 8192, 12000])
            data += bytes(n) if rng.random() < 0.5 else bytes(rng.randrange(1, 256) for _ in range(min(n, 64)))
        data = bytes(data)
        expect, start = [], None
        whole = len(data) - len(data) % sparse.BLOCK
        for i in range(0, whole, sparse.BLOCK):
            zero = data[i : i + sparse.BLOCK] == bytes(sparse.BLOCK)
            if zero and start is None:
                start = i
            elif not zero and start is not None:
                expect.append((start, i - start))
                start = None
        if start is not None:
            expect.append((start, whole - start))
        runs = sparse.holes_of(data)
        assert list(runs) == expect
        assert sparse.expand(sparse.squeeze(data, runs), runs, len(data)) == data
