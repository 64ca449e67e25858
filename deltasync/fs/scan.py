"""Walk the folder and produce its index. Never follows symlinks; rehashes
(blake3) only files whose size, mtime, ctime or inode changed since the
manifest last saw them, so a no-change scan of a big tree costs one stat each."""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .. import hashing
from .. import version as vv
from ..entry import DIR, FILE, SYMLINK, Entry
from ..manifest import Manifest, Seen
from ..plan import DELTA_MIN, SEGMENT_SIZE
from .ignore import Ignore

log = logging.getLogger(__name__)


@dataclass
class ScanResult:
    entries: dict[str, Entry]
    hashed_files: int = 0
    hashed_bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # unreadable, unstable or un-encodable names
    changed: list[str] = field(default_factory=list)


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


def hash_file(path: Path, st: os.stat_result, segment_size: int = 0) -> tuple[str, bytes] | None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return hash_fd(fd, st, segment_size)
    finally:
        os.close(fd)


def _version(e: Entry, old: Seen | None, me: str) -> vv.Version:
    """The known version if nothing but mtime moved; else a local change: bumped."""
    if old is not None and not old.entry.deleted and old.entry.same_content(e) and old.entry.mode == e.mode:
        return old.entry.version
    return vv.bump(old.entry.version if old else (), me)


def scan(root: Path, manifest: Manifest, ignore: Ignore | None = None, me: str = "local",
         record: bool = True) -> ScanResult:
    """Index the folder. `entries` holds live paths and tombstones (deleted
    paths we knew, with a bumped version); `me` is our key in version vectors.
    `changed` lists the paths that are new, changed or deleted since the last
    scan; with `record=False` the manifest is left as it was (a look, not a sync)."""
    ignore = ignore or Ignore.for_folder(root)
    seen = manifest.seen()
    result = ScanResult({})
    rows: list[Seen] = []
    segments: list[tuple[str, int, bytes]] = []

    def visit(dirpath: Path, rel: str) -> None:
        try:
            it = list(os.scandir(dirpath))
        except OSError as err:
            log.warning("cannot list %s: %s", dirpath, err.strerror)
            result.skipped.append(rel)
            return
        for de in sorted(it, key=lambda d: d.name):
            path = f"{rel}/{de.name}" if rel else de.name
            try:
                path.encode("utf-8")
                st = de.stat(follow_symlinks=False)
            except (UnicodeEncodeError, OSError):
                result.skipped.append(path)
                continue
            mode = st.st_mode
            is_dir = stat.S_ISDIR(mode)
            if ignore(path, is_dir):
                continue
            old = seen.get(path)
            if is_dir:
                e = Entry(path, DIR, 0, st.st_mtime_ns, stat.S_IMODE(mode))
                e = Entry(path, DIR, 0, e.mtime_ns, e.mode, version=_version(e, old, me))
            elif stat.S_ISLNK(mode):
                try:
                    target = os.readlink(de.path)
                    e = Entry(path, SYMLINK, 0, 0, 0, target=target,
                              version=_version(Entry(path, SYMLINK, target=target), old, me))
                except OSError:
                    result.skipped.append(path)
                    continue
            elif stat.S_ISREG(mode):
                if (old and old.entry.kind == FILE and old.entry.blake3
                        and (old.entry.size, old.entry.mtime_ns, old.ino, old.ctime_ns) == _stat_fields(st)):
                    digest: str | None = old.entry.blake3
                else:
                    big = st.st_size >= DELTA_MIN
                    try:
                        hashed = hash_file(Path(de.path), st, SEGMENT_SIZE if big else 0)
                    except OSError:
                        hashed = None
                    if hashed is None:
                        result.skipped.append(path)
                        continue
                    digest = hashed[0]
                    if big:
                        segments.append((digest, SEGMENT_SIZE, hashed[1]))
                    result.hashed_files += 1
                    result.hashed_bytes += st.st_size
                fmode = stat.S_IMODE(mode)
                e = Entry(path, FILE, st.st_size, st.st_mtime_ns, fmode, digest,
                          version=_version(Entry(path, FILE, st.st_size, 0, fmode, digest), old, me))
            else:
                continue  # fifos, sockets, devices are not synced
            result.entries[path] = e
            if old is None or old.entry != e or (old.ino, old.ctime_ns) != (st.st_ino, st.st_ctime_ns):
                rows.append(Seen(e, st.st_ino, st.st_ctime_ns))
            if is_dir:
                visit(Path(de.path), path)

    visit(root, "")
    for path, old in seen.items():
        if path in result.entries or path in result.skipped or any(
                path.startswith(s + "/") for s in result.skipped):
            continue
        if old.entry.deleted:
            result.entries[path] = old.entry
        elif not ignore(path, old.entry.kind == DIR):
            tomb = Entry(path, old.entry.kind, 0, old.entry.mtime_ns, 0,
                         version=vv.bump(old.entry.version, me), deleted=True)
            result.entries[path] = tomb
            rows.append(Seen(tomb, 0, 0))
    result.changed = sorted(p for p, e in result.entries.items()
                            if p not in seen or seen[p].entry.version != e.version)
    if rows and record:
        manifest.record(rows)
    if segments and record:
        manifest.store_segments(segments)
    return result

