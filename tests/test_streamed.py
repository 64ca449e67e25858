"""A comparison of everything, a path range at a time, decides what one plan of
the whole tree decides -- for random trees, cut into ranges of a few paths."""
import random

import pytest

from deltasync.core.entry import DIR, FILE, SYMLINK, Entry
from deltasync.core.plan import make_plan
from deltasync.core.streamed import Streamed, ranges

NAMES = ["a", "a-b", "a.c", "b", "z"]  # '-' and '.' sort before '/': "a.c" falls between "a" and "a/x"
CONTENTS = [c * 64 for c in "123456"]


def _tree(rng: random.Random) -> dict[str, Entry]:
    paths: set[str] = set()
    for _ in range(rng.randint(0, 40)):
        depth = rng.randint(1, 4)
        parts = [rng.choice(NAMES) for _ in range(depth)]
        paths.update("/".join(parts[: i + 1]) for i in range(depth))
    parents = {p.rpartition("/")[0] for p in paths}
    out = {}
    for p in sorted(paths):
        kind = DIR if p in parents else rng.choice([FILE, FILE, FILE, SYMLINK, DIR])
        out[p] = _entry(rng, p, kind)
    return out


def _entry(rng: random.Random, path: str, kind: str) -> Entry:
    if kind == DIR:
        return Entry(path, DIR, 0, rng.choice([1, 2]), 0o755, version=(("x", rng.randint(1, 2)),))
    if kind == SYMLINK:
        return Entry(path, SYMLINK, target=rng.choice(["t1", "t2"]), version=(("x", 1),))
    return Entry(path, FILE, rng.choice([5, 1 << 20]), rng.choice([1, 2]), 0o644, rng.choice(CONTENTS),
                 version=(("x", rng.randint(1, 3)),))


def _edited(rng: random.Random, target: dict[str, Entry]) -> dict[str, Entry]:
    """The source: the target with some paths changed, removed (a tombstone, or not there) or added."""
    source = dict(target)
    for p, e in target.items():
        roll = rng.random()
        if roll < 0.15 and e.kind != DIR:
            source[p] = _entry(rng, p, e.kind)
        elif roll < 0.22:
            source[p] = Entry(p, e.kind, 0, e.mtime_ns, 0, version=(("x", 9),), deleted=True)
            for q in [q for q in source if q.startswith(p + "/")]:
                source[q] = Entry(q, source[q].kind, version=(("x", 9),), deleted=True)
        elif roll < 0.27 and e.kind != DIR:
            source[p] = _entry(rng, p, DIR)  # a file becomes a directory
        elif roll < 0.30 and e.kind == DIR:  # a directory becomes a file: what was inside goes
            for q in [q for q in source if q.startswith(p + "/")]:
                del source[q]
            source[p] = _entry(rng, p, FILE)
    for p, e in _tree(rng).items():  # new paths, where their parents are directories (or new)
        parent = p.rpartition("/")[0]
        if p not in source and (not parent or (parent in source and source[parent].kind == DIR
                                               and not source[parent].deleted)):
            source[p] = e
    live = sorted(p for p, e in source.items() if e.kind == FILE and not e.deleted)
    for p in live[1::5]:  # some second names of files, linked to a first one
        first = live[0]
        if first != p:
            source[p] = Entry(p, FILE, source[first].size, 1, 0o644, source[first].blake3, version=(("x", 1),),
                              link=first)
    return source


def _ops(plans, links_as_made=False) -> dict[str, set]:
    """What the plans do, as sets. `links_as_made`: a second name of a file counts as made, linked or
    not (ranges know first names outside what a sync compares; one plan of it all does not)."""
    out: dict[str, set] = {k: set() for k in ("made", "mkdir", "symlink", "meta", "dir_meta", "delete", "hardlink",
                                              "blocked", "left", "overwrite", "skipped")}
    for p in plans:
        out["made"] |= {(e.path, e.blake3) for e, _ in p.small} | {(t.entry.path, t.entry.blake3) for t in p.large} \
            | {(e.path, e.blake3) for e, _, _ in p.copies}
        out["mkdir"] |= {e.path for e in p.mkdirs}
        out["symlink"] |= {e.path for e in p.symlinks}
        out["meta"] |= {e.path for e in p.meta}
        out["dir_meta"] |= {e.path for e in p.dir_meta}
        out["delete"] |= {(e.path, e.version) for e in p.deletes}
        if links_as_made:
            out["made"] |= {(e.path, e.blake3) for e, _ in p.hardlinks}
        else:
            out["hardlink"] |= {(e.path, r) for e, r in p.hardlinks}
        out["blocked"] |= set(p.blocked)
        out["left"] |= set(p.left)
        out["overwrite"] |= set(p.overwrites)
        out["skipped"] |= set(p.skipped)
    return out


def _streamed(source, target, delete, update, page):
    def fetch(index):
        entries = sorted(index.values(), key=lambda e: e.path)
        return lambda after, n: [e for e in entries if e.path > after][:n]

    planner = Streamed({}, delete, "me", update)
    plans, deletes, creations, hardlinks, dir_meta, unchanged = [], [], [], [], [], 0
    for ours, theirs in ranges(fetch(source), fetch(target), page):
        local, remote = {e.path: e for e in ours}, {e.path: e for e in theirs}
        elsewhere = {}  # what the whole target holds, where it stays: the same on both sides, or not ours
        for p, t in sorted(target.items(), reverse=True):
            s = source.get(p)
            if t.kind == FILE and t.size > 0 and (s is None or s.deleted or s.blake3 == t.blake3):
                elsewhere[t.blake3] = p
        planner.around.leaders = {e.link: source[e.link] for e in local.values() if e.link and e.link in source}
        plan = planner.plan(local, remote, elsewhere)
        later = planner.take()
        assert not plan.dir_meta and not plan.hardlinks and all(d.kind != DIR for d in plan.deletes)
        plans.append(plan)
        unchanged += plan.unchanged
        deletes += later.deletes
        creations += later.creations
        hardlinks += later.hardlinks
        dir_meta += later.dir_meta
    dir_meta += planner.finish()
    assert len(dir_meta) == len({e.path for e in dir_meta})  # each directory's once
    made = planner.made(creations, {e.link: source[e.link] for e in creations if e.link})
    from deltasync.core.plan import Plan
    plans += [Plan(deletes=deletes), made, Plan(hardlinks=hardlinks), Plan(dir_meta=dir_meta)]
    return plans, unchanged + made.unchanged


@pytest.mark.parametrize("seed", range(300))
def test_ranges_decide_what_the_whole_plan_decides(seed):
    rng = random.Random(seed)
    target = _tree(rng)
    source = _edited(rng, target)
    delete, update, page = rng.random() < 0.6, rng.random() < 0.2, rng.choice([1, 2, 3, 7, 100])
    whole = make_plan(source, target, delete=delete, me="me", update=update)
    parts, unchanged = _streamed(source, target, delete, update, page)
    assert _ops(parts) == _ops([whole]), (seed, page)
    assert unchanged == whole.unchanged


def test_ranges_cut_both_indexes_at_the_same_paths():
    local = [Entry(p, FILE) for p in ("a", "a.c", "a/x", "b", "c", "d")]
    remote = [Entry(p, FILE) for p in ("a-b", "a/x", "a/y", "z")]

    def fetch(entries):
        return lambda after, n: [e for e in entries if e.path > after][:n]

    seen = []
    for ours, theirs in ranges(fetch(local), fetch(remote), 2):
        paths = [e.path for e in ours + theirs]
        assert not seen or min(paths) > max(seen[-1])  # ranges follow one another
        seen.append(paths)
    assert sorted(p for s in seen for p in s) == sorted(e.path for e in local + remote)


def _versions(rng, index):
    """Each entry a random vector over two peers: some paths equal, some newer either side, some concurrent."""
    from dataclasses import replace

    return {p: replace(e, version=tuple(sorted({("A", rng.randint(1, 2)), ("B", rng.randint(1, 2))})))
            for p, e in index.items()}


@pytest.mark.parametrize("seed", range(150))
def test_a_sync_in_ranges_decides_what_the_whole_sync_decides(seed):
    from deltasync.core.plan import Plan, plan_sync

    rng = random.Random(seed)
    local = _versions(rng, _tree(rng))
    remote = _versions(rng, _edited(rng, local))
    page = rng.choice([1, 2, 5, 100])
    whole = plan_sync(local, remote, "A", "B")

    def fetch(index):
        entries = sorted(index.values(), key=lambda e: e.path)
        return lambda after, n: [e for e in entries if e.path > after][:n]

    pulls, pushes = Streamed({}, True, "B"), Streamed({}, True, "A")
    parts, conflicts, merged = [], set(), {}
    for ours, theirs in ranges(fetch(local), fetch(remote), page):
        for s, index in ((pulls, remote), (pushes, local)):
            s.around.leaders = {e.link: index[e.link] for e in index.values() if e.link}
        sp = plan_sync({e.path: e for e in ours}, {e.path: e for e in theirs}, "A", "B",
                       planners=(pulls.plan, pushes.plan))
        parts.append(sp)
        conflicts |= set(sp.conflicts)
        merged.update(sp.merged)
    assert conflicts == set(whole.conflicts) and merged == whole.merged
    for direction, s in (("pull", pulls), ("push", pushes)):
        later = s.take()
        made = s.made(later.creations, s.around.leaders)
        plans = [getattr(sp, direction) for sp in parts] + \
            [Plan(deletes=later.deletes), made, Plan(hardlinks=later.hardlinks), Plan(dir_meta=later.dir_meta + s.finish())]
        assert _ops(plans, True) == _ops([getattr(whole, direction)], True), (seed, page, direction)
