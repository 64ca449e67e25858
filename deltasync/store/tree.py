"""Changes that carry no file content: directories, symlinks, metadata,
deletes, and copies from content we already hold (a rename or a copy on the
peer) -- applied for a peer's `send_changes`, or by a pull for its own plan."""
from __future__ import annotations

import os
from typing import Iterator

from .. import hashing
from ..core.entry import DIR, FILE, SYMLINK, Entry
from ..core.result import FileResult
from ..errors import TransferFailed
from ..fs import safe
from ..wire.messages import Op
from .claims import Ticket
from .local import LocalState, on_disk, tmp_name
from .manifest import Seen


class TreeOps(LocalState):
    def apply_op(self, op: Op, ticket: Ticket | None = None) -> FileResult:
        e = op.entry
        try:
            if op.kind == "copy":
                assert op.origin is not None
                return self.copy_local(e, op.origin, op.replaces, ticket)
            if op.kind == "hardlink":
                assert op.origin is not None
                return self._hardlink(e, op.origin, op.replaces, ticket)
            if op.kind == "delete":
                return self._delete(e, ticket)
            if op.kind == "meta":
                return self.apply_metas([e], ticket)[0]
            cur = self.current(e.path)
            if op.kind == "mkdir":
                if cur is not None and cur.kind != DIR:
                    raise TransferFailed(f"{e.path}: is a {cur.kind} here, not a directory")
                self.safe.mkdir(e.path, e.mode)
            elif op.kind == "symlink":
                if cur is not None and cur.kind != SYMLINK:
                    raise TransferFailed(f"{e.path}: is a {cur.kind} here, not a symlink")
                assert e.target is not None
                self.safe.symlink(e.target, e.path, f"{safe.TMP_PREFIX}{tmp_name()}")
            self.record(e, ticket=ticket)
            return FileResult(e.path, True)
        except TransferFailed as err:
            return FileResult.failed(e.path, str(err))

    def apply_metas(self, entries: list[Entry], ticket: Ticket | None = None) -> list[FileResult]:
        """Meta ops of many paths at once: their rows read in one query, their directories opened
        once, and what they leave recorded in one transaction. A first sync of two copies of one
        tree is a version-only op for every path. (A crash before the record loses no data: the
        next scan sees the metadata set here as a change of its own.)"""
        known = self.manifest.seen_of(e.path for e in entries)
        out, rows = [], []
        with self.safe.batch() as root:
            for e in entries:
                try:
                    row = on_disk(lambda: self._meta(e, self.current(e.path, root, known), root, known, ticket))
                    if row is not None:
                        rows.append(row)
                    out.append(FileResult(e.path, True))
                except TransferFailed as err:
                    out.append(FileResult.failed(e.path, str(err)))
            self.manifest.record(rows)
        return out

    def _meta(self, e: Entry, cur: Entry | None, root: safe.SafeRoot, known: dict[str, Seen] | None,
              ticket: Ticket | None) -> Seen | None:
        """Give the path holding `e`'s content `e`'s metadata; the row to record for it."""
        if cur is None or not cur.same_content(e):
            raise TransferFailed(f"{e.path}: changed here since the index was sent")
        if e.kind != SYMLINK and not self._meta_is(e, root, known):  # (a symlink's metadata is not kept)
            root.set_meta(e.path, e.mode, e.mtime_ns, self.attrs_of(e))
        return self.seen_row(e, root, ticket)

    def _meta_is(self, e: Entry, root: safe.SafeRoot, known: dict[str, Seen] | None) -> bool:
        """Does the path hold `e`'s metadata already (a new version only: two peers' histories
        merged)? Then nothing on disk is touched -- no ctime moves, no watcher sees a change.
        Known from its row, when the row is of what is on disk now (its inode and ctime)."""
        seen, st = self.recorded(e.path, known), root.lstat(e.path)
        return seen is not None and st is not None and (seen.ino, seen.ctime_ns) == (st.st_ino, st.st_ctime_ns) \
            and seen.xattrs_known and seen.entry.xattrs == e.xattrs \
            and (seen.entry.mode, seen.entry.mtime_ns) == (e.mode, e.mtime_ns) == (st.st_mode & 0o7777, st.st_mtime_ns)

    def _delete(self, e: Entry, ticket: Ticket | None) -> FileResult:
        cur = self.current(e.path)
        kept = None
        if cur is not None:
            if not cur.same_content(e):
                raise TransferFailed(f"{e.path}: changed here since the index was sent; not deleted")
            try:
                kept = self.safe.delete(e.path, keep=self.keeper(e.path, ticket, "deleted", move=True))
            except OSError as err:
                raise TransferFailed(f"{e.path}: not deleted: {err.strerror}") from None
        self.manifest.record([Seen(Entry(e.path, e.kind, version=e.version, deleted=True), 0, 0)])
        return FileResult(e.path, True, kept=kept)

    def copy_local(self, e: Entry, origin: str, replaces: str | None, ticket: Ticket | None = None) -> FileResult:
        """Make `e` from content we already hold at `origin`: read, verified and
        written aside like any received file."""
        safe.check_relpath(origin)
        self.registry.claim(e.path, ticket)
        try:
            self.expect(e.path, replaces)
            with self.safe.open_read(origin) as f:
                chunks = iter(lambda: f.read(hashing.READ_SIZE), b"")
                h = hashing.blake3(max_threads=hashing.blake3.AUTO)

                def hashed() -> Iterator[bytes]:
                    for c in chunks:
                        h.update(c)
                        yield c

                tmp = safe.write_aside(self.folder.tmp, tmp_name(), hashed(), e.mode, e.mtime_ns,
                                       attrs=self.attrs_of(e), path=e.path)
            try:
                if h.hexdigest() != e.blake3:
                    raise TransferFailed(f"{e.path}: {origin} no longer holds that content")
                kept = self.safe.replace(tmp, e.path, keep=self.keeper(e.path, ticket, "replaced"))
            finally:
                tmp.unlink(missing_ok=True)
            self.record(e)
            return FileResult(e.path, True, kept=kept)
        finally:
            self.registry.release(e.path)

    def _hardlink(self, e: Entry, origin: str, replaces: str | None, ticket: Ticket | None) -> FileResult:
        """Make `e` a second name of the file at `origin`, which must hold `e`'s content:
        linked aside under our state folder, then renamed into place (the old file kept)."""
        self.registry.claim(e.path, ticket)
        try:
            self.expect(e.path, replaces)
            lead = self.current(origin)
            if lead is None or lead.kind != FILE or lead.blake3 != e.blake3:
                raise TransferFailed(f"{e.path}: {origin} does not hold that content; not linked")
            tmp = self.folder.tmp / tmp_name()
            with self.safe.parent(origin) as (fd, name):
                os.link(name, tmp, src_dir_fd=fd, follow_symlinks=False)
            try:
                kept = self.safe.replace(tmp, e.path, keep=self.keeper(e.path, ticket, "replaced"))
            finally:
                tmp.unlink(missing_ok=True)
            self.record(e)
            return FileResult(e.path, True, kept=kept)
        except OSError as err:
            raise TransferFailed(f"{e.path}: not linked: {err.strerror or err}") from None
        finally:
            self.registry.release(e.path)

    def move_aside(self, path: str, new_path: str) -> None:
        """Keep our losing version of a conflict under its conflict name."""
        safe.check_relpath(new_path)
        with self.safe.parent(path) as (sfd, sname), self.safe.parent(new_path, create=True) as (dfd, dname):
            if os.path.lexists(os.path.join(f"/proc/self/fd/{dfd}", dname)):
                raise TransferFailed(f"{new_path}: exists already")
            os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
        self.manifest.record([], [path])
