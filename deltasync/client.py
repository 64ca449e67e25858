"""Drives a session against one peer: push (what they lack or hold older).

The sender never waits per file or per segment: acks are collected by a
reader task while frames keep flowing; deltas of the next segments are
computed on worker threads (librsync releases the GIL) while the current one
is on the wire.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from . import engine, hashing
from .config import Folder
from .entry import Entry
from .errors import DeltasyncError, PartialSuccess, ProtocolError, SourceChanged
from .fs.ignore import Ignore
from .fs.safe import SafeRoot
from .fs.scan import scan
from .manifest import Manifest
from .plan import Plan, Transfer, make_plan
from .protocol import MAX_HEADER, Frame, encode, json_body
from .session import client_hello, read_index
from .transport import Connection, connect

log = logging.getLogger(__name__)

BATCH_BYTES = 4 * 1024 * 1024
BATCH_FILES = 1000
WINDOW = 3  # segments computed ahead of the one being sent


@dataclass
class Report:
    files_total: int = 0
    files_sent_whole: int = 0
    files_sent_delta: int = 0
    files_unchanged: int = 0
    files_deleted: int = 0
    files_failed: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    literal_bytes: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)
    plan: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if d["plan"] is None:
            del d["plan"]
        d["seconds"] = round(self.seconds, 3)
        return d


class _Acks:
    """Collects the peer's answers while we keep sending."""

    def __init__(self, conn: Connection, report: Report) -> None:
        self.conn = conn
        self.report = report
        self.signatures: asyncio.Queue[Frame] = asyncio.Queue()
        self.bye = asyncio.get_running_loop().create_future()
        self.delta_paths: set[str] = set()
        self.delete_paths: set[str] = set()

    async def run(self) -> None:
        try:
            while True:
                f = await self.conn.recv()
                if f is None:
                    raise ProtocolError("peer closed the session before it was finished")
                if f.action == "ack":
                    self._ack(f)
                elif f.action == "signature":
                    await self.signatures.put(f)
                elif f.action == "bye":
                    self.bye.set_result(None)
                    return
                elif f.action == "error":
                    raise ProtocolError(f"peer: {f.get('message', '')[:500]}")
                else:
                    raise ProtocolError(f"unexpected {f.action} from peer")
        except Exception as e:
            if not self.bye.done():
                self.bye.set_exception(e)
                self.bye.exception()  # retrieved here; raised by whoever awaits it

    def _ack(self, f: Frame) -> None:
        path = f["path"]
        if not f["ok"]:
            self.report.files_failed += 1
            self.report.failures.append({"path": path, "error": str(f.get("error", "failed"))[:1000]})
            log.warning("%s", f.get("error", path))
        elif path in self.delete_paths:
            self.report.files_deleted += 1
        elif f.get("whole") is True:
            self.report.files_sent_whole += 1
        elif path in self.delta_paths:
            self.report.files_sent_delta += 1


def _batches(small: list[tuple[Entry, str | None]]) -> list[list[tuple[Entry, str | None]]]:
    out: list[list[tuple[Entry, str | None]]] = []
    cur: list[tuple[Entry, str | None]] = []
    size = header = 0
    for item in small:
        e = item[0]
        h = len(e.path.encode()) + 200
        if cur and (size + e.size > BATCH_BYTES or len(cur) >= BATCH_FILES or header + h > MAX_HEADER // 2):
            out.append(cur)
            cur, size, header = [], 0, 0
        cur.append(item)
        size += e.size
        header += h
    if cur:
        out.append(cur)
    return out


class Pusher:
    def __init__(self, folder: Folder, conn: Connection, report: Report) -> None:
        self.folder = folder
        self.conn = conn
        self.report = report
        self.safe = SafeRoot(folder.root)
        self.pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="delta")
        self.acks = _Acks(conn, report)

    def _failed(self, path: str, why: str) -> None:
        self.report.files_failed += 1
        self.report.failures.append({"path": path, "error": why})
        log.warning("%s: %s", path, why)

    async def run(self, plan: Plan) -> None:
        reader = asyncio.create_task(self.acks.run())
        try:
            try:
                await self._send_all(plan)
                await self.conn.send(encode("bye"))
            except (OSError, DeltasyncError):
                # the peer's own account (an error frame) says more than our broken pipe
                if self.acks.bye.done() and self.acks.bye.exception() is not None:
                    raise self.acks.bye.exception() from None  # type: ignore[misc]
                raise
            await self.acks.bye
        finally:
            reader.cancel()
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def _send_all(self, plan: Plan) -> None:
        self.acks.delete_paths = {e.path for e in plan.deletes}
        await self._ops("delete", plan.deletes)
        await self._ops("mkdir", plan.mkdirs)
        for batch in _batches(plan.small):
            await self._send_small(batch)
        await self._ops("symlink", plan.symlinks)
        await self._ops("meta", plan.meta)
        for t in plan.large:
            await self._send_large(t)
        await self._ops("meta", plan.dir_meta)

    async def _ops(self, op: str, entries: list[Entry]) -> None:
        for i in range(0, len(entries), 500):
            ops = [dict(e.to_wire(), op=op) for e in entries[i : i + 500]]
            await self.conn.send(encode("send_changes", json_body(ops)))

    def _read_small(self, e: Entry) -> bytes:
        with self.safe.open_read(e.path) as f:
            data = f.read(e.size + 1)
        if len(data) != e.size or hashing.of_bytes(data) != e.blake3:
            raise SourceChanged(f"{e.path}: changed since it was scanned; run again")
        return data

    async def _send_small(self, batch: list[tuple[Entry, str | None]]) -> None:
        metas, chunks = [], []
        for e, replaces in batch:
            try:
                data = await asyncio.to_thread(self._read_small, e)
            except (OSError, SourceChanged) as err:
                self._failed(e.path, str(err))
                continue
            metas.append({"path": e.path, "size": e.size, "mtime_ns": e.mtime_ns, "mode": e.mode,
                          "blake3": e.blake3, "replaces": replaces})
            chunks.append(data)
        if metas:
            body = b"".join(chunks)
            self.report.literal_bytes += len(body)
            await self.conn.send(encode("send_file", body, files=metas))

    async def _signature(self, t: Transfer) -> bytes | None:
        await self.conn.send(encode("request_signature", path=t.entry.path, blake3=t.basis))
        f = await self.acks.signatures.get()
        if f["path"] != t.entry.path:
            raise ProtocolError("signature for the wrong file")
        return f.body if f.get("blake3") == t.basis else None

    def _segment(self, fd: int, t: Transfer, idx: int, sig: bytes | None) -> tuple[bytes, dict[str, Any]]:
        offset = idx * t.segment_size
        length = min(t.segment_size, t.entry.size - offset)
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise SourceChanged(f"{t.entry.path}: shrank while being sent")
        header = {"path": t.entry.path, "index": idx, "offset": offset, "length": length,
                  "blake3": hashing.of_bytes(data), "literal": True}
        if sig is not None:
            d = engine.delta(data, sig)
            if len(d) < length:
                header["literal"] = False
                return d, header
        return data, header

    async def _send_large(self, t: Transfer) -> None:
        e = t.entry
        sig = None
        if t.basis is not None:
            sig = await self._signature(t)
            if sig is None:
                self._failed(e.path, "changed on the peer since its index was sent; not overwritten")
                return
        try:
            f = self.safe.open_read(e.path)
        except OSError as err:
            self._failed(e.path, f"cannot read: {err}")
            return
        with f:
            fd = f.fileno()
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns) != (e.size, e.mtime_ns):
                self._failed(e.path, "changed since it was scanned; run again")
                return
            if t.basis is not None:
                self.acks.delta_paths.add(e.path)
            await self.conn.send(encode("begin_file", path=e.path, size=e.size, mtime_ns=e.mtime_ns, mode=e.mode,
                                        blake3=e.blake3, segment_size=t.segment_size, basis=t.basis,
                                        replaces=t.replaces))
            todo = [i for i in range(t.segments) if i not in t.done]
            loop = asyncio.get_running_loop()
            window: list[Future[tuple[bytes, dict[str, Any]]]] = []
            try:
                for pos in range(len(todo)):
                    while len(window) <= WINDOW and pos + len(window) < len(todo):
                        window.append(self.pool.submit(self._segment, fd, t, todo[pos + len(window)], sig))
                    body, header = await asyncio.wrap_future(window.pop(0), loop=loop)
                    self.report.literal_bytes += len(body)
                    await self.conn.send(encode("send_delta", body, **header))
            except SourceChanged as err:
                for w in window:
                    w.cancel()
                await self.conn.send(encode("abort_file", path=e.path, reason=str(err)))
                self._failed(e.path, str(err))
                return
            st2 = os.fstat(fd)
            if (st2.st_size, st2.st_mtime_ns, st2.st_ino) != (st.st_size, st.st_mtime_ns, st.st_ino):
                await self.conn.send(encode("abort_file", path=e.path, reason="source changed"))
                self._failed(e.path, "changed while being sent; not delivered (run again)")
                return
            await self.conn.send(encode("file_done", path=e.path))


def local_index(folder: Folder, manifest: Manifest, excludes: list[str] | None = None) -> dict[str, Entry]:
    return scan(folder.root, manifest, Ignore.for_folder(folder.root, excludes)).entries


async def push(folder: Folder, target: str, delete: bool = False, dry_run: bool = False,
               excludes: list[str] | None = None, bwlimit: float | None = None) -> Report:
    """Make the peer at `target` hold what this folder holds."""
    started = time.monotonic()
    cfg = folder.config()
    address, expect = cfg.resolve(target)
    manifest = Manifest(folder.db)
    try:
        local = await asyncio.to_thread(local_index, folder, manifest, excludes)
        conn = await connect(folder, address, expect, idle_timeout=float(cfg.setting("idle_timeout")))
        conn.bwlimit = bwlimit
        report = Report()
        try:
            await client_hello(conn, folder.peer_id)
            await conn.send(encode("request_file_list"))
            remote, partials = await read_index(conn, int(cfg.setting("max_index_entries")))
            ignore = Ignore.for_folder(folder.root, excludes)
            remote = {p: e for p, e in remote.items() if not ignore(p, e.kind == "dir")}
            plan = make_plan(local, remote, partials, delete=delete)
            report.files_total = plan.files_total
            report.files_unchanged = plan.unchanged
            for path, why in plan.blocked:
                report.failures.append({"path": path, "error": why})
                report.files_failed += 1
            if dry_run:
                report.plan = plan.items()
                await conn.send(encode("bye"))
                await conn.recv()
            else:
                await Pusher(folder, conn, report).run(plan)
                manifest.mark_synced(conn.peer.id, "sent")
        finally:
            report.bytes_sent = conn.bytes_sent
            report.bytes_received = conn.bytes_received
            await conn.close()
        report.seconds = time.monotonic() - started
        return report
    finally:
        manifest.close()


def check(report: Report) -> None:
    """Raise PartialSuccess (exit 3) when some files did not make it."""
    if report.files_failed:
        first = report.failures[0]
        raise PartialSuccess(f"{report.files_failed} file(s) failed; first: {first['path']}: {first['error']}")
