"""The sending side of files, for whichever end sends: the client in a push,
the server answering a pull's `request_file`.

Small files go many per `send_file` frame; large ones in segments, each a
librsync delta against the receiver's signature (or literal without a basis).
Deltas of the next segments are computed on worker threads (librsync releases
the GIL) while the current one is on the wire. A source that changes while it
is read is detected and the file is aborted, never delivered torn.
"""
from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from . import engine, hashing
from .core import version as vv
from .core.entry import Entry
from .errors import SourceChanged
from .fs.safe import SafeRoot
from .core.plan import Transfer
from .progress import Quiet
from .wire.framing import MAX_HEADER, Buffer, encode, encode_parts, json_array, json_body, json_chunks
from .transport import Connection

log = logging.getLogger(__name__)

BATCH_BYTES = 4 * 1024 * 1024
BATCH_FILES = 1000
OPS_BYTES = 4 * 1024 * 1024  # a `send_changes` body
OPS_PER_FRAME = 500
WINDOW = 1  # segments computed ahead of the one being sent (2 cores; each holds up to 2 x 4 MiB)


@dataclass
class Outcome:
    """What the sending side itself saw fail (the receiver's verdicts come as acks)."""

    literal_bytes: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)

    def failed(self, path: str, why: str) -> None:
        self.failures.append({"path": path, "error": why})
        log.warning("%s: %s", path, why)


def small_meta(e: Entry, replaces: str | None, dest: str) -> dict[str, Any]:
    """One file's record in a `send_file` header."""
    return {"path": dest, "size": e.size, "mtime_ns": e.mtime_ns, "mode": e.mode, "blake3": e.blake3,
            "replaces": replaces, "version": vv.to_wire(e.version)}


def batches(small: list[tuple[Entry, str | None]]) -> list[list[tuple[Entry, str | None]]]:
    """Group small files so each `send_file` frame stays well under the limits
    (the header is measured as it will be sent: long paths and big version
    vectors make fewer files per frame, never a frame over the limit)."""
    out: list[list[tuple[Entry, str | None]]] = []
    cur: list[tuple[Entry, str | None]] = []
    size = header = 0
    for item in small:
        e = item[0]
        h = len(json_body(small_meta(e, item[1], e.path))) + 128  # + room for a conflict copy's longer name
        if cur and (size + e.size > BATCH_BYTES or len(cur) >= BATCH_FILES or header + h > MAX_HEADER // 2):
            out.append(cur)
            cur, size, header = [], 0, 0
        cur.append(item)
        size += e.size
        header += h
    if cur:
        out.append(cur)
    return out


def op_dict(op: str, e: Entry) -> dict[str, Any]:
    """One `send_changes` op: the entry's wire form plus the op name (applied
    remotely by the peer's `Receiver.apply_op`, or locally by ours in a pull)."""
    return dict(e.to_wire(), op=op)


SignatureSource = Callable[[Transfer], Awaitable["Buffer | None"]]


async def peer_signature(sig: Buffer, t: Transfer) -> Buffer:
    """A signature that came from the peer, checked off the event loop before
    librsync ever loads it (our own cached signatures need no check)."""
    await asyncio.to_thread(engine.check_signature, sig, t.basis_size)
    return sig


class FileSender:
    def __init__(self, safe: SafeRoot, conn: Connection, outcome: Outcome, progress: Quiet | None = None,
                 segments_of: Callable[[str, int], list[bytes] | None] = lambda _b, _s: None) -> None:
        self.safe = safe
        self.conn = conn
        self.outcome = outcome
        self.progress = progress or Quiet()
        self.segments_of = segments_of  # per-segment blake3 of content we held (manifest.segments_of)
        self.pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="delta")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def ops(self, op: str, entries: list[Entry]) -> None:
        for group in json_chunks((op_dict(op, e) for e in entries), OPS_BYTES, OPS_PER_FRAME):
            await self.conn.send(encode("send_changes", json_array(group)))

    def _read_small(self, e: Entry) -> bytes:
        with self.safe.open_read(e.path) as f:
            data = f.read(e.size + 1)
        if len(data) != e.size or hashing.of_bytes(data) != e.blake3:
            raise SourceChanged(f"{e.path}: changed since it was scanned; run again")
        return data

    async def small(self, batch: list[tuple[Entry, str | None]],
                    dest: Callable[[Entry], str] = lambda e: e.path) -> None:
        metas, chunks = [], []
        for e, replaces in batch:
            try:
                data = await asyncio.to_thread(self._read_small, e)
            except (OSError, SourceChanged) as err:
                self.outcome.failed(e.path, str(err))
                continue
            metas.append(small_meta(e, replaces, dest(e)))
            chunks.append(data)
            self.progress.advance(e.path, e.size)
        if metas:
            body = b"".join(chunks)
            self.outcome.literal_bytes += len(body)
            await self.conn.send(*encode_parts("send_file", body, self.conn.compress, files=metas))

    def _segment(self, fd: int, t: Transfer, idx: int, sig: Buffer | None, path: str,
                 old: list[bytes] | None) -> tuple[bytes, dict[str, Any]]:
        """One segment, cheapest first: unchanged at its offset (nothing but its
        hash travels), past the end of the basis (literal), else a librsync delta."""
        offset = idx * t.segment_size
        length = min(t.segment_size, t.entry.size - offset)
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise SourceChanged(f"{t.entry.path}: shrank while being sent")
        digest = hashing.of_bytes(data)
        header = {"path": path, "index": idx, "offset": offset, "length": length, "blake3": digest, "literal": True}
        if old is not None and idx < len(old) and old[idx] == bytes.fromhex(digest):
            return b"", dict(header, literal=False, same=True)
        if sig is not None and offset < t.basis_size:
            d = engine.delta(data, sig)
            if len(d) < length:
                header["literal"] = False
                return d, header
        return data, header

    async def large(self, t: Transfer, signature: SignatureSource, dest: str | None = None) -> bool:
        """Send one file in segments; False if it could not be sent (reported)."""
        e = t.entry
        path = dest or e.path
        sig = None
        if t.basis is not None:
            sig = await signature(t)
            if sig is None:
                self.outcome.failed(path, "changed on the peer since its index was sent; not overwritten")
                return False
        try:
            f = self.safe.open_read(e.path)
        except OSError as err:
            self.outcome.failed(path, f"cannot read: {err}")
            return False
        with f:
            fd = f.fileno()
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns) != (e.size, e.mtime_ns):
                self.outcome.failed(path, "changed since it was scanned; run again")
                return False
            await self.conn.send(encode("begin_file", path=path, size=e.size, mtime_ns=e.mtime_ns, mode=e.mode,
                                        blake3=e.blake3, segment_size=t.segment_size, basis=t.basis,
                                        replaces=t.replaces, version=vv.to_wire(e.version)))
            todo = [i for i in range(t.segments) if i not in t.done]
            old = self.segments_of(t.basis, t.segment_size) if t.basis is not None else None
            loop = asyncio.get_running_loop()
            window: list[Future[tuple[bytes, dict[str, Any]]]] = []
            try:
                for pos in range(len(todo)):
                    while len(window) <= WINDOW and pos + len(window) < len(todo):
                        window.append(self.pool.submit(self._segment, fd, t, todo[pos + len(window)], sig, path,
                                                       old))
                    body, header = await asyncio.wrap_future(window.pop(0), loop=loop)
                    self.outcome.literal_bytes += len(body)
                    await self.conn.send(*encode_parts("send_delta", body, self.conn.compress, **header))
                    self.progress.advance(path, header["length"])
            except SourceChanged as err:
                for w in window:
                    w.cancel()
                await self.conn.send(encode("abort_file", path=path, reason=str(err)))
                self.outcome.failed(path, str(err))
                return False
            st2 = os.fstat(fd)
            if (st2.st_size, st2.st_mtime_ns, st2.st_ino) != (st.st_size, st.st_mtime_ns, st.st_ino):
                await self.conn.send(encode("abort_file", path=path, reason="source changed"))
                self.outcome.failed(path, "changed while being sent; not delivered (run again)")
                return False
            await self.conn.send(encode("file_done", path=path))
            return True
