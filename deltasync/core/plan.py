"""Pure planning: the source's index and the target's index -> what to do.

No I/O here. Push plans "what does the peer lack", pull would plan the same
with the roles swapped, and `--dry-run` prints a plan without running it.
"""
from __future__ import annotations

from dataclasses import field, replace
from typing import Any, Callable

from . import limits
from . import version as vv
from .entry import DIR, FILE, SYMLINK, Entry, parents
from .limits import DELTA_MIN, SEGMENT_SIZE, SMALL_DELTA_MIN
from .record import Mutable, Record, record


@record
class PartialInfo(Record):
    """What the target says about a transfer it holds in part."""

    path: str
    target_blake3: str
    replaces: str | None
    segment_size: int
    done: frozenset[int]

    @classmethod
    def from_wire(cls, d: Any) -> "PartialInfo | None":
        """A peer's partial, or None when anything in it is out of range (it is then not resumed)."""
        if not isinstance(d, dict):
            return None
        path, target, replaces, seg, done = (d.get(k) for k in ("path", "target_blake3", "replaces",
                                                                  "segment_size", "done"))
        most = limits.MAX_FILE_SIZE // limits.MIN_SEGMENT
        if not (isinstance(path, str) and 0 < len(path) <= limits.MAX_PATH_CHARS
                and _is_digest(target) and (replaces is None or _is_digest(replaces))
                and type(seg) is int and limits.MIN_SEGMENT <= seg <= limits.MAX_SEGMENT
                and isinstance(done, list) and len(done) <= most
                and all(type(i) is int and 0 <= i < most for i in done)):
            return None
        return cls(path, str(target), replaces, seg, frozenset(done))

    def to_wire(self) -> dict[str, Any]:
        return {"path": self.path, "target_blake3": self.target_blake3, "replaces": self.replaces,
                "segment_size": self.segment_size, "done": sorted(self.done)}


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64


@record
class Transfer(Record):
    """One file sent in segments: literal when basis is None, else by delta."""

    entry: Entry
    basis: str | None  # blake3 of the target's current version, used as the delta basis
    replaces: str | None  # blake3 the target must still hold at that path (None: nothing there)
    segment_size: int = SEGMENT_SIZE
    done: frozenset[int] = frozenset()  # segments the target already holds verified
    basis_size: int = 0  # size of the basis version (segments past it cannot match it)

    @property
    def segments(self) -> int:
        return max(1, -(-self.entry.size // self.segment_size))


@record
class Plan(Mutable):
    mkdirs: list[Entry] = field(default_factory=list)
    small: list[tuple[Entry, str | None]] = field(default_factory=list)  # (entry, replaces)
    large: list[Transfer] = field(default_factory=list)
    symlinks: list[Entry] = field(default_factory=list)
    meta: list[Entry] = field(default_factory=list)
    dir_meta: list[Entry] = field(default_factory=list)
    deletes: list[Entry] = field(default_factory=list)
    copies: list[tuple[Entry, str, str | None]] = field(default_factory=list)  # (entry, from path, replaces)
    hardlinks: list[tuple[Entry, str | None]] = field(default_factory=list)  # (entry with .link, replaces)
    blocked: list[tuple[str, str]] = field(default_factory=list)
    # files whose version on the target ours does not descend from (edited there): a push
    # replaces them (the receiver keeps them as versions) and says so
    overwrites: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # newer on the target, left alone (`--update`)
    held: list[Entry] = field(default_factory=list)  # deletes past `--max-delete`, not done
    left: list[str] = field(default_factory=list)  # paths left different on purpose (no --delete; a pull's pushes)
    unchanged: int = 0  # regular files already the same on the target (content, metadata, version)
    unchanged_bytes: int = 0  # and their size

    @property
    def empty(self) -> bool:
        return not (self.mkdirs or self.small or self.large or self.symlinks or self.meta
                    or self.dir_meta or self.deletes or self.copies or self.hardlinks)

    def items(self) -> list[dict[str, Any]]:
        """An itemized list (like `rsync -i`) for --dry-run and --json."""
        out: list[dict[str, Any]] = []
        out += [{"op": "delete", "path": e.path, "kind": e.kind} for e in self.deletes]
        out += [{"op": "mkdir", "path": e.path} for e in self.mkdirs]
        out += [{"op": "copy", "path": e.path, "from": src} for e, src, _ in self.copies]
        out += [{"op": "send_whole", "path": e.path, "size": e.size, "new": r is None} for e, r in self.small]
        for t in self.large:
            out.append({"op": "send_delta" if t.basis else "send_whole", "path": t.entry.path,
                        "size": t.entry.size, "segments": t.segments, "segments_done": len(t.done),
                        "new": t.replaces is None})
        out += [{"op": "symlink", "path": e.path, "target": e.target} for e in self.symlinks]
        out += [{"op": "hardlink", "path": e.path, "from": e.link} for e, _ in self.hardlinks]
        out += [{"op": "meta", "path": e.path, "kind": e.kind} for e in self.meta + self.dir_meta]
        out += [{"op": "blocked", "path": p, "reason": r} for p, r in self.blocked]
        out += [{"op": "skip_newer", "path": p} for p in self.skipped]
        out += [{"op": "skip_delete", "path": e.path, "kind": e.kind} for e in self.held]
        return out

    def cap_deletes(self, most: int | None) -> None:
        """rsync's `--max-delete`: at most `most` deletes (the deepest first); the rest are held."""
        if most is not None and len(self.deletes) > most:
            self.deletes, spare = self.deletes[:most], self.deletes[most:]
            self.held.extend(spare)


@record
class Step(Record):
    """One kind of work in a plan, in the order `steps` gives."""

    kind: str  # copy, delete, mkdir, small, symlink, meta, large, hardlink, dir_meta
    items: list[Any]


def steps(plan: Plan) -> list[Step]:
    """The order a plan is carried out in, whichever way it goes (pushed to the
    peer or pulled from it): copies first (a rename's origin must still be
    there), deletes (deepest first), new directories, small files, symlinks,
    metadata, big files, hard links (once the files they name have landed), and
    directory metadata last (writing into a directory moves its mtime)."""
    order = [("copy", plan.copies), ("delete", plan.deletes), ("mkdir", plan.mkdirs), ("small", plan.small),
             ("symlink", plan.symlinks), ("meta", plan.meta), ("large", plan.large), ("hardlink", plan.hardlinks),
             ("dir_meta", plan.dir_meta)]
    return [Step(kind, items) for kind, items in order if items]


@record
class Around(Mutable):
    """What the plan of one path range needs from outside it, when a tree too big to hold is
    planned a range at a time (`core.streamed`, which also settles directory metadata)."""

    blocked: set[str] = field(default_factory=set)  # blocked in earlier ranges: what is inside them is too
    leaders: dict[str, Entry] = field(default_factory=dict)  # first names of hard links, wherever they are


def copyable(source: dict[str, Entry], target: dict[str, Entry]) -> list[str]:
    """The contents (blake3) of source files a plan may copy from elsewhere on the target: new
    there, or empty there (what `make_plan` looks up in `elsewhere`)."""
    return [e.blake3 for e in source.values() if e.kind == FILE and not e.deleted and e.size > 0 and e.blake3
            and (e.path not in target or target[e.path].size == 0)]


def make_plan(source: dict[str, Entry], target: dict[str, Entry],
              partials: dict[str, PartialInfo] | None = None, delete: bool = False,
              me: str = "local", update: bool = False,
              elsewhere: dict[str, str] | None = None, around: Around | None = None) -> Plan:
    """Make the target hold what the source holds.

    Files whose content matches but whose mode or mtime differ get a metadata
    change, not a transfer. A target entry of another kind is replaced only
    with `delete` (like rsync's --delete); otherwise the path is reported as
    blocked and nothing there is touched. With `update` (rsync's -u), a file
    whose mtime is newer on the target is skipped. A file whose version on the
    target is not one ours descends from is listed in `overwrites`. `elsewhere`
    names paths (by content) where the target holds files not in `target` (a
    plan of some paths only): new files with that content are copied from there.
    With `around`, the plan is of one range of a tree's paths and leaves
    directory metadata to its caller.
    """
    partials = partials or {}
    tombs = {p: e for p, e in source.items() if e.deleted}
    source = {p: e for p, e in source.items() if not e.deleted}
    target = {p: e for p, e in target.items() if not e.deleted}
    plan = Plan()
    touched: set[str] = set()
    blocked_paths: set[str] = set(around.blocked) if around is not None else set()

    if delete:
        # a delete carries the tombstone's version: ours if we have one, else the peer's, bumped by us
        doomed = [replace(t, version=tombs[p].version if p in tombs else vv.bump(t.version, me))
                  for p, t in target.items() if p not in source or source[p].kind != t.kind]
        # deepest first, so a directory is empty by the time it is removed
        plan.deletes = sorted(doomed, key=lambda e: (-e.path.count("/"), e.path))
        touched.update(e.path for e in plan.deletes)
    else:
        plan.left = sorted(p for p in target if p not in source)
    gone = {e.path for e in plan.deletes}
    # content the target already holds elsewhere (a rename or a copy) is copied there, not sent
    by_hash = {**(elsewhere or {}), **{t.blake3: p for p, t in target.items() if t.kind == FILE and t.size > 0}}

    for path in sorted(source, key=lambda p: (p.count("/"), p)):
        src = source[path]
        if any(p in blocked_paths for p in parents(path)):
            blocked_paths.add(path)
            continue
        have = target.get(path)
        if have is not None and path in gone:
            have = None
        if have is not None and have.kind != src.kind:
            plan.blocked.append((path, f"is a {have.kind} on the peer (use --delete to replace it)"))
            blocked_paths.add(path)
            continue
        leader = (source.get(src.link) or target.get(src.link) or (around.leaders.get(src.link) if around else None)) \
            if src.link is not None else None
        if leader is not None and leader.kind == FILE and leader.blake3 == src.blake3:
            # a second name of a file: linked on the target once the first has landed (rsync -H)
            if have is not None and have.same_content(src) and have.link == src.link and have.version == src.version:
                plan.unchanged += 1
                plan.unchanged_bytes += src.size
            else:
                plan.hardlinks.append((src, have.blake3 if have is not None and have.kind == FILE else None))
                touched.add(path)
            continue
        if have is not None and have.same_content(src):
            if src.kind == DIR:
                continue  # directory metadata is settled after its contents, below
            if have.same_meta(src) and have.version == src.version:
                plan.unchanged += src.kind == FILE
                plan.unchanged_bytes += src.size if src.kind == FILE else 0
            else:
                plan.meta.append(src)
                touched.add(path)
            continue
        touched.add(path)
        if src.kind == DIR:
            plan.mkdirs.append(src)
        elif src.kind == SYMLINK:
            plan.symlinks.append(src)
        else:
            if have is not None and update and have.mtime_ns > src.mtime_ns:
                plan.skipped.append(path)
                touched.discard(path)
                continue
            if have is not None and have.version and vv.compare(src.version, have.version) != vv.NEWER:
                plan.overwrites.append(path)
            replaces = have.blake3 if have is not None else None
            part = partials.get(path)
            resumable = part is not None and part.target_blake3 == src.blake3 and part.replaces == replaces
            origin = by_hash.get(src.blake3) if (have is None or have.size == 0) and path not in gone else None
            basis = replaces if (replaces is not None and have is not None and have.size > 0) else None
            if origin is not None and not resumable:
                plan.copies.append((src, origin, replaces))
            elif src.size < (SMALL_DELTA_MIN if basis is not None else DELTA_MIN) and not resumable:
                plan.small.append((src, replaces))
            else:
                basis_size = have.size if basis is not None and have is not None else 0
                if resumable:
                    assert part is not None
                    plan.large.append(Transfer(src, basis, replaces, part.segment_size, part.done, basis_size))
                else:
                    plan.large.append(Transfer(src, basis, replaces, basis_size=basis_size))

    if around is not None:
        return plan
    dirty_dirs = {d for p in touched for d in parents(p)}
    for path in sorted(source, key=lambda p: (-p.count("/"), p)):
        src = source[path]
        if src.kind != DIR or path in blocked_paths:
            continue
        have = target.get(path)
        if path in dirty_dirs or have is None or path in gone or not have.same_meta(src) \
                or have.version != src.version:
            plan.dir_meta.append(src)
    return plan


@record
class Conflict(Record):
    path: str
    copy: str  # where the losing version is kept
    loser: str  # "local" or "remote"
    content: str = ""  # the losing version's blake3


Kept = Callable[[str, str], bool]  # (path, blake3): do we hold a live file with this content at this path?


@record
class SyncPlan(Mutable):
    pull: Plan
    push: Plan
    conflicts: list[Conflict]
    # versions to record locally before pushing (a local winner must dominate both sides)
    merged: dict[str, Entry]
    fetch_as: dict[str, str] = field(default_factory=dict)  # local dest -> the peer's path (conflict copies)


def conflict_name(path: str, when: float, content: str) -> str:
    """`name.sync-conflict-YYYYMMDD-HHMMSS-<content>.ext`, beside the original."""
    import time as _time

    head, _, name = path.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not stem:  # no extension (or a dotfile)
        stem, dot, ext = name, "", ""
    stamp = _time.strftime("%Y%m%d-%H%M%S", _time.gmtime(when))
    new = f"{stem}.sync-conflict-{stamp}-{content[:8]}{dot}{ext}"
    return f"{head}/{new}" if head else new


def _loser_copy(path: str, loser: Entry) -> str:
    """The same name on every peer that detects this conflict, so crossed
    detections make one copy, not two, and never one name for two contents:
    the losing version's own mtime and the start of its content hash. Nothing
    that depends on the winner or on the vector: a version that won an earlier
    conflict carries another writer's counter, so the same content reaches
    peers under different vectors and loses to different winners."""
    return conflict_name(path, loser.mtime_ns / 1e9, loser.blake3 or "")


Planner = Callable[[dict[str, Entry], dict[str, Entry]], Plan]  # (source, target) -> a plan with --delete


def plan_sync(local: dict[str, Entry], remote: dict[str, Entry], me: str, peer: str,
              local_partials: dict[str, PartialInfo] | None = None,
              remote_partials: dict[str, PartialInfo] | None = None, pull: bool = True,
              push: bool = True, planners: tuple[Planner | None, Planner | None] = (None, None),
              kept: Kept | None = None) -> SyncPlan:
    """Two-way sync by version vectors. The newer version of each path wins;
    deletes travel as tombstones; concurrent edits are a conflict: the newer
    mtime wins (an edit always beats a delete, ties go to the larger peer key)
    and the losing version is kept beside it under a conflict name. A push
    without a pull (a sync's second half, planned after a rescan that may find
    new local edits) replaces the peer's losing file only where its copy is
    kept here already (`kept`; else as `local` shows it): otherwise the path is
    left for the next session, which fetches the copy first. `planners`
    (pull, push) plan each half instead of `make_plan` (a tree planned in ranges)."""
    if kept is None:
        def kept(path: str, blake3: str) -> bool:
            e = local.get(path)
            return e is not None and not e.deleted and e.kind == FILE and e.blake3 == blake3
    make_pull = planners[0] or (lambda s, t: make_plan(s, t, local_partials, delete=True, me=peer))
    make_push = planners[1] or (lambda s, t: make_plan(s, t, remote_partials, delete=True, me=me))
    to_pull: set[str] = set()
    to_push: set[str] = set()
    conflicts: list[Conflict] = []
    merged: dict[str, Entry] = {}
    waiting: list[str] = []  # local winners whose loser is not kept here yet (a push without a pull)
    unchanged = unchanged_bytes = 0
    for path in sorted(local.keys() | remote.keys()):
        l, r = local.get(path), remote.get(path)
        if r is None:
            if l is not None and not l.deleted:
                to_push.add(path)
            continue
        if l is None:
            if not r.deleted:
                to_pull.add(path)
            continue
        order = vv.compare(l.version, r.version)
        if order == vv.EQUAL and l.same_content(r):
            unchanged += l.kind == FILE and not l.deleted
            unchanged_bytes += l.size if l.kind == FILE and not l.deleted else 0
            continue
        if order == vv.NEWER:
            to_push.add(path)
        elif order == vv.OLDER:
            to_pull.add(path)
        elif l.same_content(r) and l.kind == r.kind:
            merged[path] = replace(l, version=vv.merge(l.version, r.version))
            to_push.add(path)  # a version-only update for the peer
        else:
            local_wins = r.deleted or (not l.deleted and (l.mtime_ns, me) > (r.mtime_ns, peer))
            if local_wins:
                if r.kind == FILE and not r.deleted:
                    c = Conflict(path, _loser_copy(path, r), "remote", r.blake3 or "")
                    if not pull and not kept(c.copy, c.content):
                        waiting.append(path)
                        continue
                    conflicts.append(c)
                merged[path] = replace(l, version=vv.merge(l.version, r.version))
                to_push.add(path)
            else:
                if l.kind == FILE and not l.deleted:
                    conflicts.append(Conflict(path, _loser_copy(path, l), "local", l.blake3 or ""))
                to_pull.add(path)
    local_now = {**local, **merged}
    # a remote-wins conflict moves our copy aside first, so the pull finds nothing there
    moved = {c.path for c in conflicts if c.loser == "local"}
    pull_target = {p: e for p, e in local_now.items() if p in to_pull and p not in moved}
    pull_plan = make_pull({p: remote[p] for p in to_pull}, pull_target) if pull else Plan()
    pull_plan.unchanged += unchanged  # the same on both sides: counted once, with the pull
    pull_plan.unchanged_bytes += unchanged_bytes
    fetch_as: dict[str, str] = {}
    for c in conflicts:
        if c.loser == "remote" and pull:  # fetch the peer's losing version under its conflict name
            copy = replace(remote[c.path], path=c.copy)
            fetch_as[c.copy] = c.path
            if copy.size < DELTA_MIN:
                pull_plan.small.append((copy, None))
            else:
                pull_plan.large.append(Transfer(copy, None, None))
    push_plan = make_push({p: local_now[p] for p in to_push}, {p: remote[p] for p in to_push if p in remote}) \
        if push else Plan()
    if not push:  # a pull leaves what is newer here as it is
        pull_plan.left = sorted(to_push)
    if not pull:
        push_plan.left = sorted([*to_pull, *waiting])
    return SyncPlan(pull_plan, push_plan, conflicts, merged, fetch_as)
