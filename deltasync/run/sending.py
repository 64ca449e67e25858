"""The sending side of files, for whichever end sends: the client in a push,
the server answering a pull's `request_file`.

Small files go many per `send_file` frame; large ones in segments, each a
librsync delta against the receiver's signature (or literal without a basis).
Deltas of the next segments are computed on workers (librsync releases the
GIL) while the current one is on the wire. A source that changes while it is
read is detected and the file is aborted, never delivered torn.
"""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import Future
from dataclasses import replace
from typing import Awaitable, Callable

from .. import engine, hashing
from ..core import sparse
from ..core.entry import Entry
from ..core.plan import Transfer
from ..core.result import FileResult
from ..errors import SourceChanged
from ..fs import native
from ..fs.safe import SafeRoot
from ..progress import Progress
from ..wire.framing import Buffer
from ..wire.messages import (
    AbortFile,
    BeginFile,
    FileDone,
    Message,
    Op,
    SendChanges,
    SendDelta,
    SendFile,
    SmallFile,
)
from .workers import Workers

WINDOW = 1  # segments computed ahead of the one being sent (2 cores; each holds up to 2 x 4 MiB)

Say = Callable[[Message], Awaitable[None]]
SignatureSource = Callable[[Transfer], Awaitable["Buffer | None"]]


async def peer_signature(workers: Workers, sig: Buffer, t: Transfer) -> Buffer:
    """A signature that came from the peer, checked off the event loop before
    librsync ever loads it (our own cached signatures need no check)."""
    await workers.run(engine.check_signature, sig, t.basis_size)
    return sig


class FileSender:
    def __init__(self, safe: SafeRoot, say: Say, failed: Callable[[FileResult], Awaitable[None]],
                 progress: Progress, workers: Workers,
                 segments_of: Callable[[str, int], list[bytes] | None] = lambda _b, _s: None,
                 holes: Callable[[], bool] = lambda: False,
                 digests_of: Callable[[str, int], bytes | None] = lambda _b, _n: None) -> None:
        self.safe = safe
        self.holes = holes  # the peer takes segments with holes: zero runs cost nothing on the wire
        self.say = say
        self.failed = failed  # what we could not send: the file's verdict
        self.progress = progress
        self.workers = workers
        self.segments_of = segments_of  # per-segment blake3 of content we held (manifest.segments_of)
        self.digests_of = digests_of  # its blocks' blake3 digests (manifest.digests_of)
        self.literal_bytes = 0

    async def ops(self, ops: list[Op]) -> None:
        for m in SendChanges.grouped(ops):
            await self.say(m)

    def _read_small(self, batch: list[tuple[Entry, str | None]]) -> list[bytes | Exception]:
        """A frame's files read in one go on a worker (one hop, each directory walked to once);
        each file's bytes, or why it cannot go."""
        out: list[bytes | Exception] = []
        with self.safe.batch() as root:
            for e, _ in batch:
                try:
                    with root.open_read(e.path) as f:
                        data = f.read(e.size + 1)
                    if len(data) != e.size or hashing.of_bytes(data) != e.blake3:
                        raise SourceChanged(f"{e.path}: changed since it was scanned; run again")
                    out.append(data)
                except (OSError, SourceChanged) as err:
                    out.append(err)
        return out

    async def small(self, batch: list[tuple[Entry, str | None]], dest: Callable[[str], str] = lambda p: p) -> None:
        """One `send_file` frame of whole files (each to `dest(path)` on the peer)."""
        files, chunks = [], []
        for (e, replaces), data in zip(batch, await self.workers.run(self._read_small, batch)):
            if isinstance(data, Exception):
                await self.failed(FileResult.failed(dest(e.path), str(data)))
                continue
            path = dest(e.path)
            files.append(SmallFile(e if path == e.path else replace(e, path=path), replaces))
            chunks.append(data)
            self.progress.advance(e.path, e.size)
        if files:
            body = b"".join(chunks)
            self.literal_bytes += len(body)
            await self.say(SendFile(tuple(files), body))

    def _segment(self, fd: int, t: Transfer, idx: int, sig: Buffer | None, path: str,
                 old: list[bytes] | None, digests: bytes | None = None) -> SendDelta:
        """One segment, cheapest first: a hole (nothing but its place travels; a
        sparse file's holes are not even read), unchanged at its offset (its hash),
        a delta (blocks compared where they were, else librsync's search), else
        literal -- with its zero runs left out."""
        offset = idx * t.segment_size
        length = min(t.segment_size, t.entry.size - offset)
        holes = self.holes()
        if holes and native.no_data(fd, offset, length):
            return SendDelta(path, idx, offset, length, sparse.zero_digest(length), True, holes=((0, length),))
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise SourceChanged(f"{t.entry.path}: shrank while being sent")
        if holes and sparse.is_zero(data):
            return SendDelta(path, idx, offset, length, sparse.zero_digest(length), True, holes=((0, length),))
        digest = hashing.of_bytes(data)
        if old is not None and idx < len(old) and old[idx] == bytes.fromhex(digest):
            return SendDelta(path, idx, offset, length, digest, False, True)
        runs = sparse.holes_of(data) if holes else ()
        if sig is not None and offset < t.basis_size:
            d = engine.segment_delta(data, offset, sig, digests)
            if len(d) < length:
                return SendDelta(path, idx, offset, length, digest, False, False, d, runs)
        return SendDelta(path, idx, offset, length, digest, True, False, sparse.squeeze(data, runs) if runs else data,
                         runs)

    async def large(self, t: Transfer, signature: SignatureSource, dest: str | None = None) -> bool:
        """Send one file in segments; False if it could not be sent (its verdict given)."""
        e = t.entry
        path = dest or e.path
        sig = None
        if t.basis is not None:
            sig = await signature(t)
            if sig is None:
                await self.failed(FileResult.failed(path, "changed on the peer since its index was sent; "
                                                          "not overwritten"))
                return False
        try:
            f = self.safe.open_read(e.path)
        except OSError as err:
            await self.failed(FileResult.failed(path, f"cannot read: {err}"))
            return False
        with f:
            fd = f.fileno()
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns) != (e.size, e.mtime_ns):
                await self.failed(FileResult.failed(path, "changed since it was scanned; run again"))
                return False
            await self.say(BeginFile(path, e.size, e.mtime_ns, e.mode, str(e.blake3), t.segment_size, t.basis,
                                     t.replaces, dict(e.version), e.xattrs))
            todo = [i for i in range(t.segments) if i not in t.done]
            old = self.segments_of(t.basis, t.segment_size) if t.basis is not None else None
            digests = self.digests_of(t.basis, engine.block_len_of(sig)) if t.basis is not None and sig else None
            loop = asyncio.get_running_loop()
            window: list[Future[SendDelta]] = []
            try:
                for pos in range(len(todo)):
                    while len(window) <= WINDOW and pos + len(window) < len(todo):
                        window.append(self.workers.submit(self._segment, fd, t, todo[pos + len(window)], sig, path,
                                                          old, digests))
                    m = await asyncio.wrap_future(window.pop(0), loop=loop)
                    self.literal_bytes += len(m.body)
                    await self.say(m)
                    self.progress.advance(path, m.length)
            except SourceChanged as err:
                for w in window:
                    w.cancel()
                await self.say(AbortFile(path, str(err)))
                await self.failed(FileResult.failed(path, str(err)))
                return False
            st2 = os.fstat(fd)
            if (st2.st_size, st2.st_mtime_ns, st2.st_ino) != (st.st_size, st.st_mtime_ns, st.st_ino):
                await self.say(AbortFile(path, "source changed"))
                await self.failed(FileResult.failed(path, "changed while being sent; not delivered (run again)"))
                return False
            await self.say(FileDone(path))
            return True
