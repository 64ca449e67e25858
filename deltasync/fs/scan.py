"""Walk the folder and produce its index. Never follows symlinks; rehashes
(blake3) only files whose size, mtime, ctime or inode changed since the
manifest last saw them, so a no-change scan of a big tree costs one stat each."""
from __future__ import annotations

import errno
import logging
import os
import ssl
import stat
from dataclasses import field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .. import hashing, identity
from ..core import version as vv
from ..core.entry import DIR, FILE, SYMLINK, Entry, Xattrs
from ..core.limits import DELTA_MIN, SEGMENT_SIZE
from ..core.record import Mutable, record
from ..errors import UsageError
from ..store.manifest import DELETED, KIND, SETTLED, Manifest, Seen, StatRow
from . import xattrs
from .ignore import Ignore
from .safe import DIR_FLAGS, TMP_PREFIX, has_reserved, is_reserved, open_dir_at

if TYPE_CHECKING:
    from ..config import Folder

log = logging.getLogger(__name__)
MAX_WITHIN = 10_000  # changed paths a scan looks at one by one; past this, a whole walk is cheaper
# A look at one path costs about what a walk spends on LOOK_COST paths (16 and 4 us, measured on
# 10,000 files): past CHEAP_LOOKS, more looks than a walk's worth of the tree make it a walk.
LOOK_COST, CHEAP_LOOKS = 4, 256
# a scan that records writes what it found a batch at a time, and keeps of it only the big files
# (their signatures are made while the network works) and a bounded list of changed paths: a
# first scan of a million files holds one batch, not the tree
FLUSH_ROWS = 8192
MAX_CHANGED_KEPT = 100_000


@record
class ScanResult(Mutable):
    """What a scan found. Entries it made (new, changed or newly deleted paths)
    are in `fresh` -- of a big scan that records, only the files of at least
    DELTA_MIN and those of its last batch: the rest are in the manifest, like
    the rest of the index, read only when asked for (`entries`, `pick`), less
    what the index leaves out now (ignored paths, and what could not be read
    this time): an unchanged file costs its stat, and no scan holds more than
    one directory's rows. `changed` lists what changed (of a scan that records,
    up to MAX_CHANGED_KEPT paths)."""

    manifest: Manifest
    fresh: dict[str, Entry] = field(default_factory=dict)
    hashed_files: int = 0
    hashed_bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # not indexed this time: never taken for deleted
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of what we could not read
    nested: dict[str, str] = field(default_factory=dict)  # folder path -> peer ID of a shared folder inside ours
    changed: list[str] = field(default_factory=list)
    ignore: Ignore = field(default_factory=Ignore)  # the rules it followed (a peer's index is filtered by them too)
    partial: bool = False  # it looked at what a watcher saw change, not at everything
    sequence: int | None = None  # (a scan that records) the manifest's sequence once it had recorded
    _all: dict[str, Entry] | None = field(default=None, repr=False)

    @property
    def entries(self) -> dict[str, Entry]:
        """The whole index, path -> entry (read from the manifest once, on first use)."""
        if self._all is None:
            stored = self.manifest.all_entries(self.fresh)
            stored.update(self.fresh)
            self._all = {p: e for p, e in sorted(stored.items()) if not self.hidden(p, e)}
        return self._all

    def hidden(self, path: str, e: Entry) -> bool:
        """A recorded path the index leaves out: ignored now, or not readable this time."""
        if self.skipped and (path in self.skipped or "" in self.skipped
                             or any(path.startswith(s + "/") for s in self.skipped)):
            return True
        return bool(self.ignore.lines) and self.ignore(path, e.kind == DIR)

    def pick(self, paths: set[str] | None) -> dict[str, Entry]:
        """The index's entries of these paths (None: all)."""
        if paths is None:
            return self.entries
        if self._all is not None:
            return {p: self._all[p] for p in paths if p in self._all}
        stored = self.manifest.entries(p for p in paths if p not in self.fresh)
        stored.update((p, self.fresh[p]) for p in paths if p in self.fresh)
        return {p: e for p, e in stored.items() if not self.hidden(p, e)}

    def refuse_nesting(self, peer_id: str, whose: str) -> None:
        """A peer whose folder lies inside ours would receive our tree into itself, again
        and again (`S/inner/inner/...`): refuse before anything moves."""
        inside = next((path for path, pid in self.nested.items() if pid == peer_id), None)
        if inside is not None:
            raise UsageError(f"{whose} folder is inside this one (at {inside}/): syncing them would copy the folder "
                             f"into itself; exclude {inside}/ or sync a folder that does not contain the other")

    def skip(self, path: str, why: str) -> None:
        self.skipped.append(path)
        self.errors.append((path, why))
        log.warning("%s: %s", path or ".", why)


def _stat_fields(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def hash_fd(fd: int, st: os.stat_result, segment_size: int = 0) -> tuple[str, bytes] | None:
    """blake3 of an open regular file (and of its segments, with `segment_size`),
    or None if it is not the file `st` saw or it changed while we read it."""
    before = os.fstat(fd)
    if _stat_fields(before)[:3] != _stat_fields(st)[:3]:
        return None
    digests = hashing.of_fd(fd, segment_size)
    return digests if _stat_fields(os.fstat(fd)) == _stat_fields(before) else None


def _folder_id(dfd: int, name: str) -> str:
    """The peer ID of a shared folder whose state folder is `name` (in `dfd`); '' if unreadable."""
    try:
        mfd = os.open(name, DIR_FLAGS, dir_fd=dfd)
        try:
            cfd = os.open("cert.pem", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=mfd)
        finally:
            os.close(mfd)
        with os.fdopen(cfd, "rb") as f:
            pem = f.read(16 * 1024).decode("ascii", "replace")
        return identity.fingerprint(ssl.PEM_cert_to_DER_cert(pem))
    except (OSError, ValueError):
        return ""


def _version(e: Entry, old: Seen | None, me: str) -> vv.Version:
    """The known version if nothing we sync changed; else a local change: bumped. A file's
    mtime is synced (`touch -d` travels, as `push -n` shows it); a directory's moves with
    its contents, so it is no change of its own."""
    if old is not None and not old.entry.deleted and old.entry.same_content(e) and old.entry.mode == e.mode \
            and old.entry.xattrs == e.xattrs \
            and (e.kind != FILE or (old.entry.mtime_ns, old.entry.link) == (e.mtime_ns, e.link)):
        return old.entry.version
    return vv.bump(old.entry.version if old else (), me)


def _unchanged(st: os.stat_result, row: StatRow | None) -> bool:
    """Is this path what the manifest recorded (so no entry need be made)? An edit, chmod,
    xattr change or rename moves the ctime; a hard-linked file is always looked at (which
    of its names leads depends on the walk)."""
    if row is None or not row[SETTLED]:
        return False
    mode = st.st_mode
    if stat.S_ISREG(mode):
        if row[KIND] != FILE or st.st_nlink != 1 or row[4] != st.st_size:
            return False
    elif row[KIND] != DIR or not stat.S_ISDIR(mode):
        return False
    return row[5] == st.st_mtime_ns and row[6] == st.st_ino and row[7] == st.st_ctime_ns \
        and row[8] == stat.S_IMODE(mode)


def scan(root: Path, manifest: Manifest, ignore: Ignore | None = None, me: str = "local",
         record: bool = True, keep_xattrs: bool = True, within: Iterable[str] | None = None) -> ScanResult:
    """Index the folder. The index holds live paths and tombstones (deleted
    paths we knew, with a bumped version); `me` is our key in version vectors.
    `changed` lists the paths that are new, changed or deleted since the last
    scan; with `record=False` the manifest is left as it was (a look, not a sync).

    The walk goes from directory descriptor to directory descriptor with
    O_NOFOLLOW, so a directory swapped for a symlink mid-walk is refused by the
    kernel, never followed: the index lists nothing outside the folder. What
    cannot be read is listed in `errors` (and never taken for a delete).

    `within` (what a watcher saw change) looks at those paths only -- each, what
    is inside it, and its directories' own entries -- and leaves the rest of
    the index as the manifest has it; a hard-linked file among them, or too
    many paths, make it a whole walk."""
    ignore = ignore or Ignore.for_folder(root)
    if within is not None:
        within = set(within)
        tops = _tops(p for p in within if not p.startswith(OWN))
        own = _owns((p[1:] for p in within if p.startswith(OWN)), tops or [])
        looks = len(tops) + len(own) if tops is not None and own is not None else None
        if looks is None or looks > MAX_WITHIN or (looks > CHEAP_LOOKS and looks * LOOK_COST > manifest.rows()):
            within = None
        else:
            ancestors = ({a for t in [*tops, *own] for a in _ancestors(t)} | own) - set(tops)
            try:
                return _scan(root, manifest, ignore, me, record, keep_xattrs, tops, ancestors)
            except _WholeWalk:
                within = None
    return _scan(root, manifest, ignore, me, record, keep_xattrs, None, set())


OWN = "\0"  # before a path in `within`: only its own entry changed (a directory's mode), not what is inside


def _plain(paths: Iterable[str]) -> bool:
    """No path names the top itself or climbs out of it (such a report means: look at everything)."""
    return not any(p in ("", ".") or p.startswith("..") or "/../" in p for p in paths)


def _tops(paths: Iterable[str]) -> list[str] | None:
    """The paths to look at, none inside another; None: look at everything."""
    picked = sorted({p.strip("/") for p in paths})
    if len(picked) > MAX_WITHIN or not _plain(picked):
        return None
    tops: list[str] = []
    for p in picked:  # sorted: a directory comes before what is inside it
        if not (tops and p.startswith(tops[-1] + "/")) and not has_reserved(p):
            tops.append(p)
    return tops


def _owns(paths: Iterable[str], tops: list[str]) -> set[str] | None:
    """Directories whose own entry only is to be looked at (`OWN`), less those a top covers;
    None: look at everything."""
    picked = {p.strip("/") for p in paths}
    if not _plain(picked):
        return None
    covered = set(tops)
    return {p for p in picked if not has_reserved(p) and p not in covered
            and not any(a in covered for a in _ancestors(p))}


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _scan(root: Path, manifest: Manifest, ignore: Ignore, me: str, record: bool, keep_xattrs: bool,
          within: list[str] | None, ancestors: set[str]) -> ScanResult:
    tops = within or []
    result = ScanResult(manifest, ignore=ignore, partial=within is not None)
    fresh = result.fresh
    rows: list[Seen] = []
    started = manifest.index_state()[1]  # rows recorded past this were found by this scan
    flushed = False
    listed: set[str] = set()  # directories listed, not entered yet: their rows wait (entering may fail)
    missing: list[str] = []  # recorded, live, and not found now: tombstones
    emptied: list[str] = []  # recorded directories gone or now something else: what was inside goes too
    segments: list[tuple[str, int, bytes]] = []
    inodes: dict[tuple[int, int], str] = {}  # hard-linked files: (device, inode) -> its first path

    def attrs(fd: int, old: Seen | None) -> Xattrs:
        """The extended attributes we sync, read now; as recorded (a peer's) where we keep none.
        Callers read them only when the inode changed (an xattr edit moves its ctime) or they
        were never read."""
        if not keep_xattrs:
            return old.entry.xattrs if old is not None else ()
        return xattrs.read(fd)

    def entry_for(dfd: int, name: str, path: str, st: os.stat_result, old: Seen | None) -> Entry | None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            moved = old is None or (old.ino, old.ctime_ns) != (st.st_ino, st.st_ctime_ns) or not old.xattrs_known
            found: Xattrs = old.entry.xattrs if old is not None else ()
            if keep_xattrs and moved:
                dfd2 = os.open(name, DIR_FLAGS, dir_fd=dfd)
                try:
                    found = attrs(dfd2, old)
                finally:
                    os.close(dfd2)
            e = Entry(path, DIR, 0, st.st_mtime_ns, stat.S_IMODE(mode), xattrs=found)
            return replace(e, version=_version(e, old, me))
        if stat.S_ISLNK(mode):
            target = os.readlink(name, dir_fd=dfd)
            return Entry(path, SYMLINK, 0, 0, 0, target=target,
                         version=_version(Entry(path, SYMLINK, target=target), old, me))
        if not stat.S_ISREG(mode):
            return None  # fifos, sockets, devices are not synced
        if st.st_nlink > 1 and within is not None:
            raise _WholeWalk()  # which name of a hard-linked file leads is decided in walk order
        same = bool(old and old.entry.kind == FILE and old.entry.blake3
                    and (old.entry.size, old.entry.mtime_ns, old.ino, old.ctime_ns) == _stat_fields(st))
        if same and old is not None and (old.xattrs_known or not keep_xattrs):
            digest: str = str(old.entry.blake3)
            found = old.entry.xattrs
        else:
            big = st.st_size >= DELTA_MIN
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
            try:
                found = attrs(fd, old)
                hashed = (str(old.entry.blake3), b"") if same and old is not None else \
                    hash_fd(fd, st, SEGMENT_SIZE if big else 0)
            finally:
                os.close(fd)
            if hashed is None:
                raise _Unstable()
            digest = hashed[0]
            if not same:
                if big:
                    segments.append((digest, SEGMENT_SIZE, hashed[1]))
                result.hashed_files += 1
                result.hashed_bytes += st.st_size
        fmode = stat.S_IMODE(mode)
        link = None
        if st.st_nlink > 1:  # the first name of an inode in walk order leads; later names link to it
            link = inodes.setdefault((st.st_dev, st.st_ino), path)
            link = None if link == path else link
        version = vv.bump((), me) if old is None else \
            _version(Entry(path, FILE, st.st_size, st.st_mtime_ns, fmode, digest, link=link, xattrs=found), old, me)
        return Entry(path, FILE, st.st_size, st.st_mtime_ns, fmode, digest, version=version, link=link, xattrs=found)

    def visit(dfd: int, rel: str, only: str | None = None) -> list[tuple[str, str]]:
        """Index one directory's entries (or only the one named `only`: gone is deleted);
        return its subdirectories (name, path) to walk."""
        listing: list[tuple[str, os.DirEntry[str] | None]]
        if only is not None:
            listing = [(only, None)]
        else:
            try:
                with os.scandir(dfd) as it:
                    listing = sorted(((d.name, d) for d in it), key=lambda nd: nd[0])
            except OSError as err:
                result.skip(rel, f"cannot list: {err.strerror}")
                return []
        subdirs = []
        looked: list[tuple[str, str, os.stat_result | None]] = []  # in name order: (name, path, stat or None)
        here = f"{rel}/{only}" if only is not None and rel else only
        known = manifest.stat_rows_in(rel, keep_xattrs) if here is None else manifest.stat_rows_of([here], keep_xattrs)
        handled: set[str] = set()  # found, ignored, or not readable: no tombstone
        rules = bool(ignore.lines)
        for name, de in listing:
            path = f"{rel}/{name}" if rel else name
            if is_reserved(name):
                if rel and de is not None and de.is_dir(follow_symlinks=False):
                    result.nested[rel] = _folder_id(dfd, name)
                continue
            if not name.isascii():
                try:
                    path.encode("utf-8")
                except UnicodeEncodeError:
                    result.skip(path.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                                "name is not valid UTF-8; not synced")
                    continue
            try:
                st = de.stat(follow_symlinks=False) if de is not None else \
                    os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except OSError as err:
                if de is None and isinstance(err, FileNotFoundError):
                    continue  # gone: a tombstone, below
                result.skip(path, f"cannot read: {err.strerror or err}")
                continue
            if rules or de is None or name.startswith(TMP_PREFIX):
                is_dir = stat.S_ISDIR(st.st_mode)
                if ignore.own(path, is_dir, name) if de is not None else ignore(path, is_dir):
                    handled.add(path)
                    continue
            looked.append((name, path, None if _unchanged(st, known.get(path)) else st))
        olds = manifest.seen_of([path for _, path, st in looked if st is not None and path in known])
        for name, path, st in looked:
            if st is None:  # as recorded
                handled.add(path)
                if known[path][KIND] == DIR:
                    subdirs.append((name, path))
                continue
            old = olds.get(path)
            try:
                e = entry_for(dfd, name, path, st, old)
            except _Unstable:
                result.skip(path, "changing while it was read; it goes with the next sync")
                handled.add(path)
                continue
            except OSError as err:
                result.skip(path, f"cannot read: {err.strerror or err}")
                handled.add(path)
                continue
            except (ValueError, OverflowError) as err:  # one odd entry never stops the scan
                result.skip(path, f"cannot index: {err}")
                handled.add(path)
                continue
            if e is None:
                continue  # a fifo, socket or device now: what was recorded there is gone
            handled.add(path)
            if old is not None and old.entry.kind == DIR and not old.entry.deleted and e.kind != DIR:
                emptied.append(path)
            if old is None or old.entry != e or (old.ino, old.ctime_ns) != (st.st_ino, st.st_ctime_ns) \
                    or not old.xattrs_known:
                fresh[path] = e
                rows.append(Seen(e, st.st_ino, st.st_ctime_ns))
                if old is None or old.entry.version != e.version:
                    result.changed.append(path)
            if e.kind == DIR:
                subdirs.append((name, path))
        for path, row in known.items():
            if path not in handled and not row[DELETED] and path not in result.skipped \
                    and not ignore(path, row[KIND] == DIR):
                missing.append(path)
                if row[KIND] == DIR:
                    emptied.append(path)
        subdirs.reverse()  # the walk pops from the end: name order, O(1) a directory
        listed.update(path for _, path in subdirs)
        return subdirs

    def flush() -> None:
        """Record what was found so far (but directories not entered yet) and let it go."""
        nonlocal flushed
        done = [r for r in rows if r.entry.path not in listed]
        rows[:] = [r for r in rows if r.entry.path in listed]
        manifest.record(done)
        flushed = True
        for r in done:
            if r.entry.kind != FILE or r.entry.size < DELTA_MIN or r.entry.deleted:
                fresh.pop(r.entry.path, None)
        if len(result.changed) > MAX_CHANGED_KEPT:
            del result.changed[MAX_CHANGED_KEPT:]

    def walk(stack: list[tuple[int, list[tuple[str, str]]]]) -> None:
        """Depth-first, holding one descriptor per level of the current path only."""
        while stack:
            dfd, todo = stack[-1]
            if not todo:
                os.close(dfd)
                stack.pop()
                continue
            name, path = todo.pop()
            listed.discard(path)
            try:
                sub = os.open(name, DIR_FLAGS, dir_fd=dfd)
            except OSError as err:  # swapped for a symlink or a file since it was listed, or gone
                if fresh.pop(path, None) is not None:
                    rows[:] = [r for r in rows if r.entry.path != path]
                    result.changed = [p for p in result.changed if p != path]
                result.skip(path, f"cannot enter: {err.strerror}")
                continue
            stack.append((sub, visit(sub, path)))
            if record and len(rows) >= FLUSH_ROWS:
                flush()

    if within is None:
        top = os.open(root, DIR_FLAGS)
        walk([(top, visit(top, ""))])
    else:
        whole = set(tops)
        for path in sorted(whole | ancestors):
            parent, _, name = path.rpartition("/")
            try:
                dfd = open_dir_at(root, parent)
            except OSError as err:
                if isinstance(err, (FileNotFoundError, NotADirectoryError)) or err.errno == errno.ELOOP:
                    continue  # its directory is gone (or is no directory now): a tombstone, below
                result.skip(path, f"cannot enter: {err.strerror or err}")
                continue
            subdirs = visit(dfd, parent, only=name)
            walk([(dfd, subdirs if path in whole else [])])  # an ancestor's own entry only

    skipped = tuple(s + "/" for s in result.skipped)
    olds = manifest.seen_of(missing)
    for d in emptied:
        olds.update((p, old) for p, old in manifest.seen_under(d).items() if not old.entry.deleted
                    and not p.startswith(skipped) and not ignore(p, old.entry.kind == DIR))
    again = {p for p, (seq, _, _) in manifest.sequences_of(list(olds)).items() if seq > started} if flushed else set()
    for path, old in sorted(olds.items()):
        if path in fresh or path in again:
            continue  # found again (a directory's contents moved in whole)
        tomb = Entry(path, old.entry.kind, 0, old.entry.mtime_ns, 0,
                     version=vv.bump(old.entry.version, me), deleted=True)
        fresh[path] = tomb
        rows.append(Seen(tomb, 0, 0))
        result.changed.append(path)
    result.changed.sort()
    if rows and record:
        manifest.record(rows)
    if segments and record:
        manifest.store_segments(segments)
    if record:
        result.sequence = manifest.index_state()[1]
    return result


class Unscanned:
    """What changed since the folder was last scanned, as a watcher reports it: the next scan
    looks at those paths only. None: at everything (at start, for the safety rescan that
    catches what a watcher can miss, and for as long as no watcher runs)."""

    def __init__(self) -> None:
        self._paths: set[str] | None = None
        self._blind = False

    def add(self, paths: Iterable[str]) -> None:
        """More changed paths; past MAX_WITHIN, none are kept: the next scan walks everything."""
        if self._paths is not None:
            self._paths.update(paths)
            if len(self._paths) > MAX_WITHIN:
                self._paths = None

    def forget(self) -> None:
        """Walk everything next time (a scan that took the paths failed, or it is time for the safety net)."""
        self._paths = None

    def blind(self, blind: bool = True) -> None:
        """The watcher stopped (True: every scan walks everything) or runs again (False: the
        next scan still walks everything, for what changed while none ran)."""
        self._blind = blind
        self._paths = None

    def take(self) -> set[str] | None:
        """For the scan about to run: what it must look at; from now on, changes are for the next one."""
        paths, self._paths = self._paths, None if self._blind else set()
        return paths


class _Unstable(Exception):
    """A file changed while we hashed it."""


class _WholeWalk(Exception):
    """A look at some paths met what only a walk of the whole folder decides."""


def rescan_folder(folder: "Folder", manifest: Manifest, before: ScanResult, excludes: list[str] | None,
                  within: Iterable[str] | None) -> ScanResult:
    """What we hold after a sync's pull half, for its push half: `before` itself when nothing was
    recorded since it (nothing pulled, merged or moved aside, here or by another session), as a
    walk would find it too; else a new scan. A change made meanwhile goes with the next session."""
    if before.sequence is not None and manifest.index_state()[1] == before.sequence:
        return before
    return scan_folder(folder, manifest, excludes, True, within)


def scan_folder(folder: "Folder", manifest: Manifest, excludes: list[str] | None = None,
                record: bool = True, within: Iterable[str] | None = None) -> ScanResult:
    """Our folder's index as every command takes it: its `.deltasyncignore` plus
    `excludes`, and our own key in version vectors."""
    return scan(folder.root, manifest, Ignore.for_folder(folder.root, excludes), folder.short_id, record,
                bool(folder.config().setting("xattrs")), within)
