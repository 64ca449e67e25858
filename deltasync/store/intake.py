"""One session's receiving side: the files it has open, the small files it
staged, and its ticket (whose claims go when it ends). Each call does the
disk work of one effect and turns a file's failure into that file's verdict;
only a broken protocol raises. Blocking: the driver runs it on a worker."""
from __future__ import annotations

import itertools

from ..core.result import FileResult
from ..errors import AlreadyPresent, DiskFull, TransferFailed
from ..wire.messages import BeginFile, RequestSignature, SendChanges, SendDelta, SendFile, Signature
from .claims import Ticket
from .local import on_disk
from .receiver import Receiver
from .segments import OpenFile
from .small import Staged


class Intake:
    def __init__(self, receiver: Receiver, ticket: Ticket | None) -> None:
        self.r = receiver
        self.ticket = ticket
        self.open: dict[str, OpenFile] = {}
        self.staged: Staged = []

    def stage(self, m: SendFile) -> list[FileResult]:
        return on_disk(lambda: self.r.stage_small(m, self.staged, self.ticket))

    def take(self) -> Staged:
        """The small files staged so far, for one commit; what is staged after goes to the next."""
        staged, self.staged = self.staged, []
        return staged

    def commit(self, staged: Staged) -> list[FileResult]:
        return on_disk(lambda: self.r.commit_small(staged, self.ticket))

    def begin(self, m: BeginFile) -> FileResult | None:
        """None: the file is open for its segments; else why it is not (and its segments are to be skipped)."""
        try:
            self.open[m.path] = on_disk(lambda: self.r.begin(m, self.ticket))
            return None
        except AlreadyPresent:
            return FileResult(m.path, True)  # the content is here already
        except TransferFailed as e:
            return FileResult.failed(m.path, str(e))

    def write(self, m: SendDelta) -> FileResult | None:
        f = self.open[m.path]
        try:
            on_disk(lambda: self.r.segment(f, m))
            return None
        except TransferFailed as e:
            del self.open[m.path]
            self.r.abandon(f, isinstance(e, DiskFull))
            return FileResult.failed(m.path, str(e))
        except BaseException:
            del self.open[m.path]
            self.r.abandon(f)
            raise

    def finish(self, path: str) -> FileResult:
        f = self.open.pop(path)
        try:
            return on_disk(lambda: self.r.finish(f))
        except TransferFailed as e:
            self.r.abandon(f, isinstance(e, DiskFull))
            return FileResult.failed(path, str(e))

    def abandon(self, path: str) -> None:
        self.r.abandon(self.open.pop(path))

    def apply(self, m: SendChanges) -> list[FileResult]:
        """The ops in order; each run of meta ops in one go (`TreeOps.apply_metas`)."""
        out: list[FileResult] = []
        for meta, run in itertools.groupby(m.ops, lambda op: op.kind == "meta"):
            ops = list(run)
            if meta:
                out += self.r.apply_metas([op.entry for op in ops], self.ticket)
                continue
            for op in ops:
                try:
                    out.append(on_disk(lambda: self.r.apply_op(op, self.ticket)))
                except TransferFailed as e:
                    out.append(FileResult.failed(op.entry.path, str(e)))
        return out

    def sign(self, m: RequestSignature) -> Signature:
        """Our signature of the version the sender planned against; none if we hold another now."""
        try:
            sig = on_disk(lambda: self.r.signature_for(m.path, m.blake3))
        except TransferFailed:
            sig = None
        return Signature(m.path, None) if sig is None else Signature(m.path, m.blake3, sig[0], sig[1])

    def close(self) -> None:
        """The session ended: open files stay as resumable partials; small files
        not yet committed are dropped (never acknowledged, so resent)."""
        for f in self.open.values():
            self.r.abandon(f)
        self.open.clear()
        self.r.drop_small(self.staged)
