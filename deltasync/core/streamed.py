"""A comparison of everything, for a tree too big to hold: `make_plan` one path
range at a time, in path order, with what crosses ranges carried here.

Pure, like `plan`: the pages come from whoever holds the two indexes (the
manifest and our copy of the peer's, in SQLite), and each range's plan is
carried out before the next is read, so memory holds one range, not the tree.

A range's plan runs at once but for what must wait for every range to have
run (`Later`): deletes (a rename's copy may come from a path deleted in an
earlier range; deepest first, so a directory is empty when it goes), what is
made where the target holds a directory (after that directory's delete),
hard links (their first name may land in a later range) and directory
metadata (each directory's once everything inside it has been written).
What a later range needs of earlier ones travels in `Around`: the paths
blocked so far, and the first names of hard links.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import field
from typing import Callable, Iterator

from .entry import DIR, Entry
from .plan import Around, PartialInfo, Plan, make_plan
from .record import Mutable, record

PAGE = 4096  # entries read from each index at a time
Fetch = Callable[[str, int], list[Entry]]  # (after this path, at most this many) -> entries in path order


def ranges(source: Fetch, target: Fetch, page: int = 0) -> Iterator[tuple[list[Entry], list[Entry]]]:
    """Both indexes' entries, one path range at a time, every path of a range on both sides in
    the same one: a merge of two sorted streams, each read a page (`PAGE`) at a time."""
    page = page or PAGE
    fetch = (source, target)
    held: tuple[list[Entry], list[Entry]] = ([], [])
    last, ended = ["", ""], [False, False]
    while True:
        for i in (0, 1):
            if not ended[i] and len(held[i]) < page:
                got = fetch[i](last[i], page)
                ended[i] = len(got) < page
                if got:
                    last[i] = got[-1].path
                    held[i].extend(got)
        if not held[0] and not held[1]:
            return
        # the range ends where the side read less far ends: past it, that side is not read yet
        ends = [held[i][-1].path for i in (0, 1) if not ended[i]]
        top = min(ends) if ends else None
        cut = [len(h) if top is None else bisect_right(h, top, key=lambda e: e.path) for h in held]
        yield held[0][: cut[0]], held[1][: cut[1]]
        del held[0][: cut[0]], held[1][: cut[1]]


@record
class Later(Mutable):
    """What ranges' plans leave for after every range has run."""

    deletes: list[Entry] = field(default_factory=list)  # run deepest first, over all ranges
    creations: list[Entry] = field(default_factory=list)  # made where the target held a directory
    hardlinks: list[tuple[Entry, str | None]] = field(default_factory=list)
    dir_meta: list[Entry] = field(default_factory=list)  # directories whose every range has been planned


def _inside(path: str, directory: str) -> bool:
    return path.startswith(directory + "/")


class Streamed:
    """One direction's comparison of everything, a range at a time (see the module's docstring)."""

    def __init__(self, partials: dict[str, PartialInfo], delete: bool, me: str, update: bool = False) -> None:
        self.partials, self.delete, self.me, self.update = partials, delete, me, update
        self.around = Around()  # (set `around.leaders` before each range)
        self.later = Later()  # what the ranges planned so far leave for the end (see `take`)
        # source directories whose paths are not all planned yet: [path, entry, due]. Path order
        # puts "a-b" between "a" and "a/c", so a directory stays until a path sorts past all of
        # its own ("a0"); the ends of those on the stack only fall, so it pops in order
        self.open: list[list] = []

    def plan(self, source: dict[str, Entry], target: dict[str, Entry],
             elsewhere: dict[str, str] | None = None) -> Plan:
        """`make_plan` of one range (what `plan_sync` takes as its planner), less what waits for
        the end: that goes to `later`."""
        plan = make_plan(source, target, self.partials, delete=self.delete, me=self.me, update=self.update,
                         elsewhere=elsewhere, around=self.around)
        self.around.blocked.update(p for p, _ in plan.blocked)
        later = self.later
        live = {p for p, e in source.items() if not e.deleted}
        now: list[Entry] = []
        waiting: set[str] = set()
        for d in plan.deletes:  # a file replaced by another kind goes now: its path is made in this range
            if d.path in live and d.kind != DIR:
                now.append(d)
            else:
                later.deletes.append(d)
                if d.path in live:  # a directory replaced by a file or a link: made once it is gone
                    waiting.add(d.path)
        gone = {d.path for d in plan.deletes}
        plan.deletes = now
        made = [source[p] for p in sorted(waiting)]
        if waiting:
            later.creations += made
            plan.small = [x for x in plan.small if x[0].path not in waiting]
            plan.large = [t for t in plan.large if t.entry.path not in waiting]
            plan.symlinks = [e for e in plan.symlinks if e.path not in waiting]
            plan.copies = [x for x in plan.copies if x[0].path not in waiting]
            plan.hardlinks = [x for x in plan.hardlinks if x[0].path not in waiting]
        later.hardlinks += plan.hardlinks
        touched = gone | {x.path for x in (*plan.mkdirs, *plan.symlinks, *plan.meta, *made)} | \
            {e.path for e, _ in (*plan.small, *plan.hardlinks)} | {t.entry.path for t in plan.large} | \
            {e.path for e, _, _ in plan.copies}
        plan.hardlinks = []
        dirs = {p: e for p, e in source.items() if e.kind == DIR and not e.deleted and not self._blocked(p)}
        for path in sorted(dirs.keys() | touched):
            later.dir_meta += self._passed(path)
            if path in touched:
                for o in self.open:
                    if _inside(path, o[0]):
                        o[2] = True
            src = dirs.get(path)
            if src is not None:
                have = target.get(path)
                due = have is None or path in gone or not have.same_meta(src) or have.version != src.version
                self.open.append([path, src, due])
        return plan

    def take(self) -> Later:
        """What waits for the end, planned since the last take (the caller sets it aside)."""
        later, self.later = self.later, Later()
        return later

    def made(self, entries: list[Entry], leaders: dict[str, Entry]) -> Plan:
        """The plan of what waited for a directory's delete (`Later.creations`): nothing is there now."""
        return make_plan({e.path: e for e in entries}, {}, self.partials, me=self.me, update=self.update,
                         around=Around(leaders=leaders))

    def finish(self) -> list[Entry]:
        """The directories still open once every range is planned: their metadata (the deepest first)."""
        return self._passed(None)

    def _passed(self, path: str | None) -> list[Entry]:
        out = []
        while self.open and (path is None or path >= self.open[-1][0] + "0"):
            _, src, due = self.open.pop()
            if due:
                out.append(src)
        return out

    def _blocked(self, path: str) -> bool:
        blocked = self.around.blocked
        if not blocked:
            return False
        parts = path.split("/")
        return any("/".join(parts[:i]) in blocked for i in range(1, len(parts) + 1))
