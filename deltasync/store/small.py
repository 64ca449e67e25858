"""Small files, many per frame: verified and written aside as they arrive
(`stage`), then made durable together and put in place (`commit`) -- one
filesystem sync for thousands of files, not one fsync (a journal commit) each."""
from __future__ import annotations

import os
from pathlib import Path

from .. import hashing
from ..core.entry import Entry
from ..core.result import FileResult
from ..errors import AlreadyPresent, TransferFailed
from ..fs import safe
from ..wire.messages import SendFile
from .claims import Ticket
from .local import LocalState, tmp_name, why
from .manifest import Seen

Staged = list[tuple[Entry, str | None, Path]]  # what arrived, what it replaces, where it waits


class SmallFiles(LocalState):
    def stage_small(self, m: SendFile, staged: Staged, ticket: Ticket | None = None) -> list[FileResult]:
        """Verify one frame's files and write them aside (not yet durable, not yet
        in place); the ones that failed or were here already come back."""
        results: list[FileResult] = []
        view = memoryview(m.body)
        offset = 0
        known = self.manifest.seen_of(f.entry.path for f in m.files)
        with self.safe.batch() as root:
            for f in m.files:
                e = f.entry
                data = view[offset : offset + e.size]
                offset += e.size
                try:
                    self.registry.claim(e.path, ticket)
                except TransferFailed as err:
                    results.append(FileResult.failed(e.path, str(err)))
                    continue
                try:
                    if hashing.of_bytes(data) != e.blake3:
                        raise TransferFailed(f"{e.path}: blake3 mismatch, not applied")
                    self.expect(e.path, f.replaces, e, since_plan=False, root=root, known=known)  # again at commit
                    staged.append((e, f.replaces, safe.write_aside(self.folder.tmp, tmp_name(), [data], e.mode,
                                                                   e.mtime_ns, fsync=False, attrs=self.attrs_of(e),
                                                                   path=e.path)))
                except AlreadyPresent:
                    results.append(FileResult(e.path, True))
                    self.registry.release(e.path)
                except (TransferFailed, OSError, ValueError, OverflowError) as err:
                    results.append(FileResult.failed(e.path, why(e.path, err)))
                    self.registry.release(e.path)
                except BaseException:
                    self.registry.release(e.path)
                    raise
        return results

    def commit_small(self, staged: Staged, ticket: Ticket | None = None) -> list[FileResult]:
        """Make staged files durable together (`safe.make_durable`), rename them into place, and
        record them in one transaction. Each path is checked again first, as a big
        file is at `file_done`: what changed here since the file was staged (an edit,
        a delete) is not overwritten."""
        results: list[FileResult] = []
        placed: set[Path] = set()  # renamed into place: nothing left to remove
        try:
            ordered = safe.make_durable([tmp for _, _, tmp in staged])
            with self.safe.batch() as root:
                dirs = self._place(staged, ticket, root, results, placed)
                self.sync_dirs(set(dirs[-1:] if ordered else dirs), root)  # one journal: the last commits all
        finally:
            self.drop_small(staged, placed)
        return results

    def _place(self, staged: Staged, ticket: Ticket | None, root: safe.SafeRoot, results: list[FileResult],
               placed: set[Path]) -> list[str]:
        """Rename the durable staged files into place and record them in one transaction; the
        directories renamed into, in the order of the renames."""
        rows: list[Seen] = []
        dirs: list[str] = []
        late = self.recorded_since_plan([e.path for e, _, _ in staged], ticket)
        known = self.manifest.seen_of(e.path for e, _, _ in staged)
        for e, replaces, tmp in staged:
            try:
                cur = self.expect(e.path, replaces, e, since_plan=False, root=root, known=known)
                if e.path in late:
                    raise TransferFailed(f"{e.path}: changed here since the index was sent; not overwritten")
            except AlreadyPresent:
                results.append(FileResult(e.path, True))
                continue
            except TransferFailed as err:
                results.append(FileResult.failed(e.path, str(err)))
                continue
            try:
                keep = self.keeper(e.path, ticket, "replaced", known=known) if cur is not None else None
                kept = root.replace(tmp, e.path, durable=False, keep=keep)
                placed.add(tmp)
                dirs.append(os.path.dirname(e.path))
                row = self.seen_row(e, root, ticket)
                if row is not None:
                    rows.append(row)
                results.append(FileResult(e.path, True, whole=True, kept=kept))
            except (TransferFailed, OSError) as err:
                results.append(FileResult.failed(e.path, why(e.path, err)))
        self.manifest.record(rows)
        return dirs

    def drop_small(self, staged: Staged, placed: set[Path] | frozenset[Path] = frozenset()) -> None:
        """Forget staged files (a session that ended before their commit; or committed: `placed`)."""
        for e, _, tmp in staged:
            if tmp not in placed:
                tmp.unlink(missing_ok=True)
            self.registry.release(e.path)
        staged.clear()
