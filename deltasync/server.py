"""The main server: accept, handshake, then read each frame's header and hand
the work to its handler (the seed's "server helpers").

A peer that breaks the protocol gets one `error` frame and its connection is
closed; it is logged with its peer ID, and the server keeps serving others.
Frames are read ahead into a small bounded queue, so the network keeps flowing
while a segment is being patched and fsynced.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import signal
import sqlite3
from typing import Any, Callable

from . import identity
from .apply import Incoming, Receiver, Result
from .config import Folder
from .errors import DeltasyncError, DiskFull, PeerUnreachable, ProtocolError, TransferFailed, UnsafePath
from .fs.ignore import Ignore
from .fs.scan import scan
from .manifest import Manifest
from .protocol import Frame, encode
from .session import check_hello, hello_frame, index_frames, partials_wire
from .transport import Connection, serve, split_address

log = logging.getLogger(__name__)
READ_AHEAD = 4


async def disk(fn: Callable[..., Any], *args: Any) -> Any:
    """Run receiver work on a thread; an OS error (a full disk, say) fails the
    file at hand, not the session or the server."""
    try:
        return await asyncio.to_thread(fn, *args)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull("no space left on the receiving device") from None
        raise TransferFailed(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}") from None


def ack(r: Result) -> bytes:
    fields: dict[str, Any] = {"whole": r.whole}
    if r.error:
        fields["error"] = r.error[:1000]
    return encode("ack", path=r.path, ok=r.ok, **fields)


class Server:
    def __init__(self, folder: Folder) -> None:
        self.folder = folder
        self.config = folder.config()
        self.manifest = Manifest(folder.db)
        self.receiver = Receiver(folder, self.manifest)
        self._scan_lock = asyncio.Lock()
        self.sessions: set[asyncio.Task[Any]] = set()

    def close(self) -> None:
        self.receiver.close()
        self.manifest.close()

    async def index(self) -> list[bytes]:
        async with self._scan_lock:
            result = await asyncio.to_thread(scan, self.folder.root, self.manifest, Ignore.for_folder(self.folder.root))
        return index_frames(list(result.entries.values()), partials_wire(self.manifest.partials()))

    async def handle(self, conn: Connection) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.sessions.add(task)
        try:
            await self._session(conn)
        finally:
            self.sessions.discard(task)

    async def shutdown(self) -> None:
        """Stop sessions; each leaves its in-flight files as resumable partials."""
        for t in list(self.sessions):
            t.cancel()
        await asyncio.gather(*self.sessions, return_exceptions=True)
        self.close()

    async def _session(self, conn: Connection) -> None:
        who = identity.format_id(conn.peer.id)[:15]
        queue: asyncio.Queue[Frame | None | BaseException] = asyncio.Queue(READ_AHEAD)

        async def read_ahead() -> None:
            try:
                while True:
                    frame = await conn.recv()
                    await queue.put(frame)
                    if frame is None or frame.action == "bye":
                        return
            except BaseException as e:  # delivered to the handler loop in order
                await queue.put(e)

        reader = asyncio.create_task(read_ahead())
        incoming: dict[str, Incoming] = {}
        failed: set[str] = set()
        try:
            first = await queue.get()
            if isinstance(first, BaseException):
                raise first
            check_hello(first)
            await conn.send(hello_frame(self.folder.peer_id))
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    log.info("peer %s closed the session", who)
                    return
                if item.action == "bye":
                    try:
                        self.manifest.mark_synced(conn.peer.id, "received")
                    except sqlite3.Error as e:  # bookkeeping only; never fail a finished session
                        log.warning("cannot record the sync time: %s", e)
                    await conn.send(encode("bye"))
                    return
                await self.dispatch(conn, item, incoming, failed)
        except (ProtocolError, UnsafePath) as e:
            log.warning("peer %s (%s): protocol error: %s", who, conn.peer.address, e)
            try:
                await conn.send(encode("error", message=str(e)[:1000]))
            except (OSError, DeltasyncError):
                pass
        except (PeerUnreachable, ConnectionError) as e:
            log.info("peer %s: %s", who, e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug or an unforeseen input: this session ends, the server does not
            log.exception("peer %s: session failed", who)
            try:
                await conn.send(encode("error", message=f"internal error: {type(e).__name__}"))
            except (OSError, DeltasyncError):
                pass
        finally:
            reader.cancel()
            for inc in incoming.values():
                await asyncio.to_thread(self.receiver.abandon, inc)

    async def dispatch(self, conn: Connection, f: Frame, incoming: dict[str, Incoming], failed: set[str]) -> None:
        r = self.receiver
        a = f.action
        if a == "request_file_list":
            for frame in await self.index():
                await conn.send(frame)
        elif a == "send_file":
            for res in await disk(r.receive_small, f["files"], f.body):
                await conn.send(ack(res))
        elif a == "send_changes":
            from .protocol import body_json

            ops = body_json(f)
            if not isinstance(ops, list):
                raise ProtocolError("send_changes: body must be a list")
            for op in ops:
                try:
                    res = await disk(r.apply_op, op)
                except TransferFailed as e:
                    res = Result(str(op.get("path", "?"))[:4096], False, str(e))
                await conn.send(ack(res))
        elif a == "request_signature":
            try:
                sig = await disk(r.signature_for, f["path"], f["blake3"])
            except TransferFailed:
                sig = None
            if sig is None:
                await conn.send(encode("signature", path=f["path"], blake3=None))
            else:
                await conn.send(encode("signature", sig[1], path=f["path"], blake3=f["blake3"], block_len=sig[0]))
        elif a == "begin_file":
            path = f["path"]
            if path in incoming:
                raise ProtocolError(f"begin_file: {path!r} is already in flight")
            failed.discard(path)
            try:
                incoming[path] = await disk(r.begin, f.header)
            except TransferFailed as e:
                failed.add(path)
                await conn.send(ack(Result(path, False, str(e))))
        elif a in ("send_delta", "file_done", "abort_file"):
            path = f["path"]
            if path in failed:
                if a != "send_delta":
                    failed.discard(path)
                return
            inc = incoming.get(path)
            if inc is None:
                raise ProtocolError(f"{a}: {path[:200]!r} was not begun")
            await self._file_step(conn, f, inc, incoming, failed)
        else:
            raise ProtocolError(f"unexpected {a} in this session")

    async def _file_step(self, conn: Connection, f: Frame, inc: Incoming, incoming: dict[str, Incoming],
                         failed: set[str]) -> None:
        r = self.receiver
        path = f["path"]
        try:
            if f.action == "send_delta":
                await disk(r.segment, inc, f.header, f.body)
                return
            del incoming[path]
            if f.action == "abort_file":
                await asyncio.to_thread(r.abandon, inc)
                return
            await conn.send(ack(await disk(r.finish, inc)))
        except TransferFailed as e:
            if path in incoming:
                del incoming[path]
                failed.add(path)
            await asyncio.to_thread(r.abandon, inc, isinstance(e, DiskFull))
            await conn.send(ack(Result(path, False, str(e))))
        except BaseException:
            if incoming.pop(path, None) is not None:
                await asyncio.to_thread(r.abandon, inc)
            raise


async def run(folder: Folder, listen: str, on_listening: Callable[[str], None] | None = None,
              stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or `stop`); in-flight files are left as
    resumable partials, and anything committed stays committed."""
    server = Server(folder)
    cfg = server.config
    stale = server.receiver.clean_stale(float(cfg.setting("partial_max_age_hours")) * 3600)
    if stale:
        log.info("dropped %d stale partial transfers", stale)
    host, port = split_address(listen)
    srv = await serve(folder, host, port, server.handle, float(cfg.setting("handshake_timeout")),
                      float(cfg.setting("idle_timeout")), int(cfg.setting("max_connections")))
    sock = srv.sockets[0].getsockname()
    actual = f"{sock[0]}:{sock[1]}" if ":" not in sock[0] else f"[{sock[0]}]:{sock[1]}"
    if on_listening:
        on_listening(actual)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        srv.close()
        await server.shutdown()
