"""The receiving side of one connection: the frames that carry files in
(`send_file`, `begin_file`, `send_delta`, `file_done`, `abort_file`,
`send_changes`, `request_signature`), whichever end receives -- the server in
a push, the client in a pull. Disk work runs on threads; each file's verdict
goes to `on_result` (the server turns it into an `ack`)."""
from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any, Awaitable, Callable

from .apply import Incoming, Receiver, Result, Writer
from .core.entry import Entry
from .core.limits import MAX_FILES_IN_FLIGHT
from .errors import AlreadyPresent, DiskFull, ProtocolError, TransferFailed, redact
from .wire.framing import Frame, body_json, encode

MAX_STAGED_FILES = 5000
MAX_STAGED_BYTES = 64 * 1024 * 1024  # on disk, in .deltasync/tmp; not in memory
ACTIONS = frozenset({"send_file", "send_changes", "request_signature", "begin_file", "send_delta", "file_done",
                     "abort_file"})


async def disk(fn: Callable[..., Any], *args: Any) -> Any:
    """Run receiver work on a thread; an OS error (a full disk, say) fails the
    file at hand, not the session or the server."""
    try:
        return await asyncio.to_thread(fn, *args)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull("no space left on the receiving device") from None
        raise TransferFailed(str(e.strerror or e)) from None


def ack(r: Result, root: Path) -> bytes:
    fields: dict[str, Any] = {"whole": r.whole}
    if r.kept:
        fields["kept"] = r.kept
    if r.error:
        fields["error"] = redact(r.error, root)[:1000]
    return encode("ack", path=r.path, ok=r.ok, **fields)


class Inbound:
    def __init__(self, receiver: Receiver, send: Callable[[bytes], Awaitable[None]],
                 on_result: Callable[[Result], Awaitable[None]], peer: str = "") -> None:
        self.r = receiver
        self.writer = Writer(peer)
        self.send = send
        self.on_result = on_result
        self.incoming: dict[str, Incoming] = {}
        self.failed: set[str] = set()
        self.staged: list[tuple[Entry, Path]] = []  # small files written aside, not yet committed
        self.staged_bytes = 0

    async def close(self) -> None:
        """The session ended: in-flight files stay as resumable partials;
        small files not yet committed are dropped (never acknowledged, so resent)."""
        try:
            for inc in self.incoming.values():
                await asyncio.to_thread(self.r.abandon, inc)
            self.incoming.clear()
            await asyncio.to_thread(self.r.drop_small, self.staged)
        finally:  # whatever failed above, no path stays claimed by a session that is gone
            self.r.release_all(self.writer)

    async def flush(self) -> None:
        """Commit the staged small files and report them. Called when no frame is
        waiting, before any other kind of frame, and when many are staged."""
        if self.staged:
            staged, self.staged, self.staged_bytes = self.staged, [], 0
            for res in await disk(self.r.commit_small, staged, self.writer):
                await self.on_result(res)

    async def handle(self, f: Frame) -> None:
        r, a = self.r, f.action
        if a == "send_file":
            for res in await disk(r.stage_small, f["files"], f.body, self.staged, self.writer):
                await self.on_result(res)
            self.staged_bytes += len(f.body)
            if len(self.staged) >= MAX_STAGED_FILES or self.staged_bytes >= MAX_STAGED_BYTES:
                await self.flush()
            return
        await self.flush()
        if a == "send_changes":
            ops = body_json(f)
            if not isinstance(ops, list):
                raise ProtocolError("send_changes: body must be a list")
            for op in ops:
                try:
                    res = await disk(r.apply_op, op, self.writer)
                except TransferFailed as e:
                    res = Result(str(op.get("path", "?"))[:4096], False, str(e))
                await self.on_result(res)
        elif a == "request_signature":
            try:
                sig = await disk(r.signature_for, f["path"], f["blake3"])
            except TransferFailed:
                sig = None
            if sig is None:
                await self.send(encode("signature", path=f["path"], blake3=None))
            else:
                await self.send(encode("signature", sig[1], path=f["path"], blake3=f["blake3"], block_len=sig[0]))
        elif a == "begin_file":
            path = f["path"]
            if path in self.incoming:
                raise ProtocolError(f"begin_file: {path[:200]!r} is already in flight")
            if len(self.incoming) >= MAX_FILES_IN_FLIGHT:
                raise ProtocolError(f"begin_file: more than {MAX_FILES_IN_FLIGHT} files in flight at once")
            self.failed.discard(path)
            if len(self.failed) > MAX_FILES_IN_FLIGHT * 64:
                raise ProtocolError("begin_file: too many failed files left open")
            try:
                self.incoming[path] = await disk(r.begin, f.header, self.writer)
            except AlreadyPresent:
                self.failed.add(path)  # skip its segments; the content is here already
                await self.on_result(Result(path, True))
            except TransferFailed as e:
                self.failed.add(path)
                await self.on_result(Result(path, False, str(e)))
        elif a in ("send_delta", "file_done", "abort_file"):
            path = f["path"]
            if path in self.failed:
                if a != "send_delta":
                    self.failed.discard(path)
                return
            inc = self.incoming.get(path)
            if inc is None:
                raise ProtocolError(f"{a}: {path[:200]!r} was not begun")
            await self._file_step(f, inc)
        else:
            raise ProtocolError(f"unexpected {a} in this session")

    async def _file_step(self, f: Frame, inc: Incoming) -> None:
        path = f["path"]
        try:
            if f.action == "send_delta":
                await disk(self.r.segment, inc, f.header, f.body)
                return
            del self.incoming[path]
            if f.action == "abort_file":
                await asyncio.to_thread(self.r.abandon, inc)
                return
            await self.on_result(await disk(self.r.finish, inc))
        except TransferFailed as e:
            if self.incoming.pop(path, None) is not None:
                self.failed.add(path)
            await asyncio.to_thread(self.r.abandon, inc, isinstance(e, DiskFull))
            await self.on_result(Result(path, False, str(e)))
        except BaseException:
            if self.incoming.pop(path, None) is not None:
                await asyncio.to_thread(self.r.abandon, inc)
            raise
