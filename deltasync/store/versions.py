"""File versions: whatever a peer's session replaces or deletes here is kept
first under `.deltasync/versions/`, so nothing a peer does is unrecoverable.

A replaced file is kept by a hard link made just before the rename that
replaces it; a deleted one by renaming it into the versions folder. Neither
copies a byte, and a crash between the link and the rename leaves the old file
in place plus a spare version, never less. Each version is a row in the
manifest (path, content, version vector, when, and the peer that replaced it).

Policy (`config.toml` `[folder]`): `versioning = "trashcan"` (default) or
`"off"`; `versions_keep_days` (30); `versions_max_mb` (0: no cap; else the
oldest go first); `versions_per_path` (10).
"""
from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, Callable

from ..core import version as vv
from ..core.record import Record, record
from ..errors import TransferFailed, UsageError
from ..fs import safe
from .manifest import Manifest, Seen, version_text

log = logging.getLogger(__name__)

OFF, TRASHCAN = "off", "trashcan"


@record
class Kept(Record):
    """One kept version (a manifest row and its file under `.deltasync/versions/`)."""

    id: int
    path: str
    name: str
    size: int
    blake3: str | None
    mtime_ns: int
    mode: int
    version: vv.Version
    kept: float  # when it was replaced or deleted
    peer: str  # the peer whose session replaced it ('' for a local restore)
    reason: str  # replaced, deleted, restored

    def to_json(self, number: int) -> dict[str, Any]:
        return {"number": number, "path": self.path, "size": self.size, "blake3": self.blake3,
                "mtime_ns": self.mtime_ns, "kept": self.kept, "peer": self.peer, "reason": self.reason,
                "version": vv.to_wire(self.version), "file": f"{safe.META}/versions/{self.name}"}


class Versions:
    def __init__(self, root: Path, manifest: Manifest, settings: dict[str, Any]) -> None:
        self.root = root
        self.dir = root / safe.META / "versions"
        self.manifest = manifest
        self.mode = str(settings.get("versioning", TRASHCAN))
        if self.mode not in (OFF, TRASHCAN):
            raise UsageError(f"config.toml: versioning must be {TRASHCAN!r} or {OFF!r}, not {self.mode!r}")
        self.keep_days = float(settings.get("versions_keep_days", 30))
        self.max_bytes = int(float(settings.get("versions_max_mb", 0)) * 1024 * 1024)
        self.per_path = int(settings.get("versions_per_path", 10))

    @property
    def on(self) -> bool:
        return self.mode != OFF

    def _dir_fd(self) -> int:
        """The versions folder, opened without following links (made if absent)."""
        return safe.state_dir(self.root, "versions", create=True)

    def keep(self, dfd: int, name: str, path: str, peer: str, reason: str, move: bool = False,
             recorded: Callable[[], Seen | None] | None = None) -> str | None:
        """Keep the regular file `name` (in directory `dfd`, standing for `path`)
        before a peer replaces (`move=False`: hard link) or deletes it
        (`move=True`: renamed away). Returns the kept name, or None when there
        is nothing to keep or versioning is off (then a delete is the caller's). `recorded`: our
        row of `path`, when the caller has read its batch's rows already."""
        if not self.on:
            return None
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        seen = recorded() if recorded is not None else self.manifest.get(path)
        same = seen is not None and (seen.entry.size, seen.entry.mtime_ns, seen.ino) == (
            st.st_size, st.st_mtime_ns, st.st_ino)
        kept_name = os.urandom(16).hex()  # (as uuid4 would, without importing uuid and platform)
        vfd = self._dir_fd()
        try:
            try:
                if move:
                    os.rename(name, kept_name, src_dir_fd=dfd, dst_dir_fd=vfd)
                else:
                    os.link(name, kept_name, src_dir_fd=dfd, dst_dir_fd=vfd, follow_symlinks=False)
            except OSError as e:
                raise TransferFailed(f"{path}: cannot keep the version it replaces ({e.strerror}); not changed "
                                     f"(versioning = \"off\" in config.toml allows it)") from None
        finally:
            os.close(vfd)
        self.manifest.add_version(path, kept_name, st.st_size, seen.entry.blake3 if same and seen else None,
                                  st.st_mtime_ns, stat.S_IMODE(st.st_mode),
                                  version_text(seen.entry.version) if same and seen else "{}",
                                  time.time(), peer, reason)
        return kept_name

    def list(self, path: str | None = None) -> list[Kept]:
        """Kept versions, newest first (of one path, or all)."""
        return [Kept(r[0], r[1], r[2], r[3], r[4], r[5], r[6], vv.from_stored(json.loads(r[7])), r[8], r[9], r[10])
                for r in self.manifest.versions(path)]

    def prune(self, now: float | None = None) -> int:
        """Drop versions past their age, past `versions_per_path`, and past the size cap (oldest first)."""
        now = time.time() if now is None else now
        doomed = self.manifest.doomed_versions(now - self.keep_days * 86400, self.per_path, self.max_bytes)
        for vid, name in doomed:
            self.manifest.drop_version(vid)
            safe.unlink_state(self.root, "versions", name)
        return len(doomed)

    def clean_orphans(self) -> int:
        """Files with no row (a crash between the link and the row) and rows with no file."""
        try:
            vfd = self._dir_fd()
        except OSError:
            return 0
        try:
            names = set(os.listdir(vfd))
            known = self.manifest.version_names()
            gone = 0
            for n in names - known.keys():
                os.unlink(n, dir_fd=vfd)
                gone += 1
            for n in known.keys() - names:
                self.manifest.drop_version(known[n])
                gone += 1
            return gone
        finally:
            os.close(vfd)

    def open(self, k: Kept) -> int:
        """A read descriptor on a kept version's file."""
        vfd = self._dir_fd()
        try:
            return os.open(k.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=vfd)
        finally:
            os.close(vfd)


def parse_when(text: str) -> float:
    """`--at` values: seconds since the epoch, or an ISO 8601 date/time (local time when no zone is given)."""
    import datetime as dt

    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"not a time: {text!r} (use 2026-11-25T14:30 or seconds since the epoch)") from None


def choose(kept: list[Kept], path: str, at: float | None = None, number: int | None = None) -> Kept:
    """The version `restore` puts back: number N (1 = newest, as `versions` lists them), or
    the one that was in place at time `at` (the first replaced after it), or the newest."""
    if not kept:
        raise UsageError(f"no kept versions of {path} (see: deltasync versions DIR)")
    if number is not None:
        if not 1 <= number <= len(kept):
            raise UsageError(f"{path} has {len(kept)} kept version(s); --version takes 1 to {len(kept)}")
        return kept[number - 1]
    if at is not None:
        later = [k for k in kept if k.kept >= at]
        if not later:
            raise UsageError(f"no version of {path} was replaced after that time; the current file is that version")
        return later[-1]  # oldest of those replaced after `at`: the one in place then
    return kept[0]


def restore(folder: Any, path: str, at: float | None = None, number: int | None = None) -> Kept:
    """Put a kept version back at `path`, as a new local change (so it syncs).
    The file there now, if any, is kept as a version first: a restore is undoable."""
    from .local import tmp_name

    safe.check_relpath(path)
    manifest = Manifest(folder.db)
    try:
        store = Versions(folder.root, manifest, folder.config().folder)
        k = choose(store.list(path), path, at, number)
        src = store.open(k)
        tmp = folder.tmp / tmp_name()
        try:
            with os.fdopen(src, "rb") as f:
                safe.write_aside(folder.tmp, tmp.name, iter(lambda: f.read(1 << 20), b""), k.mode, k.mtime_ns)
            root = safe.SafeRoot(folder.root)
            root.replace(tmp, path, keep=lambda fd, name: store.keep(fd, name, path, "", "restored"))
        finally:
            tmp.unlink(missing_ok=True)
        return k
    finally:
        manifest.close()
