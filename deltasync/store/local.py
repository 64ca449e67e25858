"""What a path holds here now, and the check every change makes first: that
it still holds what our index told the sender (``replaces``). A file edited
here meanwhile is never overwritten or deleted, so nothing is lost."""
from __future__ import annotations

import errno
import itertools
import os
import stat
from dataclasses import replace
from typing import Callable, TypeVar

from ..config import Folder
from ..core import limits
from ..core.entry import DIR, FILE, SYMLINK, Entry, Xattrs
from ..errors import AlreadyPresent, DiskFull, TransferFailed
from ..fs import safe, xattrs
from ..fs.scan import hash_fd
from .claims import Registry, Ticket, registry
from .manifest import Manifest, Seen
from .versions import Versions


_names = itertools.count()
_prefix = ""


def _new_prefix() -> None:
    global _prefix
    _prefix = f"{os.getpid()}-{os.urandom(8).hex()}"  # this process's: with a counter, every name is new


_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)


def tmp_name(suffix: str = "") -> str:
    """Temp and partial files carry their writer's PID: one whose writer is gone
    (killed mid-write) is an orphan and is cleaned, whatever its age."""
    return f"{_prefix}{next(_names):x}{suffix}"


def writer_alive(name: str) -> bool:
    pid = name.split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


T = TypeVar("T")


def on_disk(fn: Callable[[], T]) -> T:
    """An OS error (a full disk, say) fails the file at hand, not the session."""
    try:
        return fn()
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull("no space left on the receiving device") from None
        raise TransferFailed(str(e.strerror or e)) from None


def why(path: str, err: Exception) -> str:
    if isinstance(err, OSError):  # a full disk fails this file; the old version stays
        return f"{path}: {err.strerror or err}"
    return str(err)


class LocalState:
    """The folder as the receiving side sees it: shared by every session."""

    def __init__(self, folder: Folder, manifest: Manifest) -> None:
        self.folder = folder
        self.manifest = manifest
        cfg = folder.config()
        self.safe = safe.SafeRoot(folder.root, int(cfg.setting("max_path_length")))
        self.versions = Versions(folder.root, manifest, cfg.folder)
        self.registry: Registry = registry(str(folder.root))
        self.max_file_size = min(int(cfg.setting("max_file_size")), limits.MAX_FILE_SIZE)
        self.keep_xattrs = bool(cfg.setting("xattrs")) and xattrs.AVAILABLE

    def attrs_of(self, e: Entry) -> Xattrs | None:
        """The extended attributes to give what we write for `e` (None: we keep none)."""
        return e.xattrs if self.keep_xattrs else None

    def current(self, path: str, root: safe.SafeRoot | None = None,
                known: dict[str, Seen] | None = None) -> Entry | None:
        """The entry at `path` as it is on disk now (hashing only if its stat moved). For a batch:
        `root`, a batch of `self.safe` whose directories are open already; `known`, the manifest's
        rows of its paths read at once (a path without one has none)."""
        root = root or self.safe
        st = root.lstat(path)
        if st is None:
            return None
        if stat.S_ISDIR(st.st_mode):
            return Entry(path, DIR, 0, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
        if stat.S_ISLNK(st.st_mode):
            with root.parent(path) as (fd, name):
                return Entry(path, SYMLINK, target=os.readlink(name, dir_fd=fd))
        if not stat.S_ISREG(st.st_mode):
            return Entry(path, "other")
        seen = self.recorded(path, known)
        if (seen and seen.entry.kind == FILE and seen.entry.blake3 and
                (seen.entry.size, seen.entry.mtime_ns, seen.ino, seen.ctime_ns)
                == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)):
            digest: str | None = seen.entry.blake3
        else:
            with root.open_read(path) as f:  # through the folder, never through a symlink
                hashed = hash_fd(f.fileno(), st)
            if hashed is None:
                raise TransferFailed(f"{path}: changing here right now")
            digest = hashed[0]
        return Entry(path, FILE, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), digest)

    def recorded(self, path: str, known: dict[str, Seen] | None = None) -> Seen | None:
        """Our manifest's row of `path`: from `known` (a batch's rows, read at once) when given."""
        return known.get(path) if known is not None else self.manifest.get(path)

    def expect(self, path: str, replaces: str | None, incoming: Entry | None = None,
               since_plan: bool = True, root: safe.SafeRoot | None = None,
               known: dict[str, Seen] | None = None) -> Entry | None:
        """Check that `path` still holds what the sender planned against (and, with
        `since_plan`, that we recorded nothing there since: `recorded_since_plan`). If
        it already holds exactly the incoming content, record its version and
        raise AlreadyPresent: two sessions crossed, and nothing is lost."""
        cur = self.current(path, root, known)
        if incoming is not None and cur is not None and cur.kind == FILE and cur.blake3 == incoming.blake3 \
                and replaces != cur.blake3:
            self.record(replace(incoming, mtime_ns=cur.mtime_ns, mode=cur.mode), root)
            raise AlreadyPresent(path)
        have = cur.blake3 if cur is not None and cur.kind == FILE else None
        if cur is not None and cur.kind != FILE:
            raise TransferFailed(f"{path}: is a {cur.kind} here, not a file")
        if have != replaces or since_plan and path in self.recorded_since_plan([path], self.registry.holder(path)):
            raise TransferFailed(f"{path}: changed here since the index was sent; not overwritten")
        return cur

    def recorded_since_plan(self, paths: list[str], ticket: Ticket | None) -> set[str]:
        """Those of `paths` we recorded after the sender's plan was made. Their disk may look as
        planned (a file deleted here meanwhile is absent, as it was), but the record is newer: a
        delete made or taken here since must not be undone by a plan that never saw it. (The delete
        of a directory or a link is not undone by a file made at its path: it is how a push replaces
        one with the other, deleting the old kind first, in the same session.)"""
        if ticket is None or ticket.planned_at is None or not paths:
            return set()
        return {p for p, (seq, kind, deleted) in self.manifest.sequences_of(paths).items()
                if seq > ticket.planned_at and not (deleted and kind != FILE)}

    def record(self, entry: Entry, root: safe.SafeRoot | None = None, ticket: Ticket | None = None) -> None:
        """Remember what we just wrote, with the version it came with, so the
        next scan neither rehashes it nor takes it for a local change."""
        row = self.seen_row(entry, root, ticket)
        if row is not None:
            self.manifest.record([row])

    def seen_row(self, entry: Entry, root: safe.SafeRoot | None = None, ticket: Ticket | None = None) -> Seen | None:
        """The row of what `entry` now is on disk. `ticket`, of a session we serve whose peer sent
        `entry`: if the row is just what it sent, it is marked as that peer's (`Seen.by`), which
        keeps the row out of what our index tells that peer next (it knows it)."""
        st = (root or self.safe).lstat(entry.path)
        if st is None:
            return None
        link = entry.kind == SYMLINK
        size, mtime_ns, mode = (st.st_size if entry.kind == FILE else 0, 0 if link else st.st_mtime_ns,
                                0 if link else stat.S_IMODE(st.st_mode))
        now = entry if (entry.size, entry.mtime_ns, entry.mode) == (size, mtime_ns, mode) else \
            replace(entry, size=size, mtime_ns=mtime_ns, mode=mode)  # (as written, mostly: no copy made)
        by = ticket.peer if ticket is not None and ticket.role == "server" and now == entry else None
        return Seen(now, st.st_ino, st.st_ctime_ns, by=by)

    def keeper(self, path: str, ticket: Ticket | None, reason: str, move: bool = False,
               known: dict[str, Seen] | None = None) -> safe.Keeper:
        """Keep the version at `path` before a peer's session replaces or deletes it (`known`: as
        `current` takes it)."""
        peer = ticket.peer if ticket is not None else ""
        return lambda fd, name: self.versions.keep(fd, name, path, peer, reason, move,
                                                   lambda: self.recorded(path, known))

    def sync_dirs(self, dirs: set[str], root: safe.SafeRoot | None = None) -> None:
        """Make the renames into these directories durable (reached without following a link)."""
        root = root or self.safe
        for d in dirs:
            with root.directory(d) as fd:
                os.fsync(fd)
