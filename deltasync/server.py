"""The main server: accept, handshake, then read each frame's header and hand
the work to its handler (the seed's "server helpers"): the index, the
receiving side of files (`inbound.py`), and the sending side for pulls.

A peer that breaks the protocol gets one `error` frame and its connection is
closed; it is logged with its peer ID, and the server keeps serving others.
Frames are read ahead into a small bounded queue, so the network keeps flowing
while a segment is being patched and fsynced.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import sys
import threading
from typing import Any, Callable

from . import engines, identity
from .core import limits
from .apply import Receiver, Result
from .config import Folder
from .core.entry import FILE, Entry
from .errors import DeltasyncError, PeerUnreachable, ProtocolError, redact
from .fs import safe
from .fs.ignore import Ignore
from .fs.scan import ScanResult, scan
from .inbound import ACTIONS, Inbound, ack
from .store.manifest import Manifest
from .core.plan import DELTA_MIN, SEGMENT_SIZE, Transfer
from .wire.framing import Buffer, Frame, encode
from .sender import FileSender, Outcome, batches, peer_signature
from .session import (
    COMPRESS,
    check_hello,
    hello_frame,
    index_frames,
    partials_wire,
    peer_engine,
    refuse_nesting,
    wants,
)
from .transport import Admission, Connection, serve, split_address

log = logging.getLogger(__name__)
READ_AHEAD = 1  # frames decoded ahead of the one being applied (each up to 16 MiB)
STOP_GRACE = 5.0  # seconds a SIGTERM/SIGINT waits for sessions before the process ends anyway
_watchdog: threading.Timer | None = None


def _hard_exit() -> None:
    """Whatever a session is stuck in (a peer's slow input, a thread in librsync),
    the process ends: committed files are committed, journaled segments resume."""
    log.warning("stopping now: a session did not end within %.0f s", STOP_GRACE)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def arm_watchdog() -> None:
    global _watchdog
    if _watchdog is None and threading.current_thread() is threading.main_thread():
        _watchdog = threading.Timer(STOP_GRACE * 2, _hard_exit)
        _watchdog.daemon = True
        _watchdog.start()


class Server:
    def __init__(self, folder: Folder) -> None:
        self.folder = folder
        self.config = folder.config()
        self.manifest = Manifest(folder.db)
        self.receiver = Receiver(folder, self.manifest)
        self._scan_lock = asyncio.Lock()
        self.sessions: dict[asyncio.Task[Any], str] = {}  # running sessions and their peer IDs
        # peers this process is syncing with as a client right now (watch): a
        # crossing session from the same peer is told to retry, so the two never
        # send the same files to each other at once
        self.outgoing: set[str] = set()

    def close(self) -> None:
        self.receiver.close()
        self.manifest.close()

    def redact(self, text: str) -> str:
        """Text for a peer: our own location on disk is none of its business."""
        return redact(text, self.folder.root)

    def busy_with(self, peer_id: str) -> bool:
        """Is a session with this peer (as our client or theirs) running now?"""
        return peer_id in self.outgoing or peer_id in self.incoming

    @property
    def incoming(self) -> set[str]:
        return set(self.sessions.values())

    async def scan(self, record: bool = True) -> ScanResult:
        async with self._scan_lock:
            return await asyncio.to_thread(scan, self.folder.root, self.manifest, Ignore.for_folder(self.folder.root),
                                           self.folder.short_id, record)

    async def handle(self, conn: Connection) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.sessions[task] = conn.peer.id
        try:
            await self._session(conn)
        finally:
            self.sessions.pop(task, None)

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

        async def send_ack(res: Result) -> None:
            await conn.send(ack(res, self.folder.root))

        reader = asyncio.create_task(read_ahead())
        inbound = Inbound(self.receiver, conn.send, send_ack, conn.peer.id)
        index: dict[str, Entry] | None = None
        looking = False  # a --dry-run session: it changes nothing here, not even our manifest
        try:
            first = await queue.get()
            if isinstance(first, BaseException):
                raise first
            check_hello(first)
            assert isinstance(first, Frame)
            log.debug("peer %s: engine %s", who, peer_engine(first))
            conn.compress = wants(first, COMPRESS)
            zstd_index = wants(first, "zstd")  # indexes compress well (paths, keys), so always when readable
            if conn.peer.id in self.outgoing:
                log.info("peer %s: a session with it is already running; asked to retry", who)
                await conn.send(encode("error", message="busy: a sync with you is already running; retry later"))
                return
            await conn.send(hello_frame(self.folder.peer_id))
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    log.info("peer %s closed the session", who)
                    return
                if item.action == "bye":
                    await inbound.flush()
                    try:
                        if not looking:
                            self.manifest.mark_synced(conn.peer.id, "served")
                    except sqlite3.Error as e:  # bookkeeping only; never fail a finished session
                        log.warning("cannot record the sync time: %s", e)
                    await conn.send(encode("bye"))
                    return
                if item.action not in ACTIONS:
                    await inbound.flush()
                if item.action == "request_file_list":
                    looking = item.get("dry_run") is True
                    scanned = await self.scan(record=not looking)
                    refuse_nesting(scanned.nested, conn.peer.id, "your")
                    index = scanned.entries
                    for frame in index_frames(index.values(), partials_wire(self.manifest.partials()),
                                              zstd_index):
                        await conn.send(frame)
                elif item.action == "request_file":
                    if index is None:
                        raise ProtocolError("request_file before request_file_list")
                    await self.send_requested(conn, item, index)
                elif item.action in ACTIONS:
                    await inbound.handle(item)
                    if queue.empty():  # nothing waiting: commit what is staged now, not later
                        await inbound.flush()
                else:
                    raise ProtocolError(f"unexpected {item.action} in this session")
        except (PeerUnreachable, ConnectionError) as e:
            log.info("peer %s: %s", who, e)
        except DeltasyncError as e:  # the peer broke the protocol or asked for what we refuse
            log.warning("peer %s (%s): protocol error: %s", who, conn.peer.address, e)
            try:
                await conn.send(encode("error", message=self.redact(str(e))[:1000]))
            except (OSError, DeltasyncError):
                pass
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug, a full disk under SQLite, an unforeseen input: this session ends, the server does not
            log.error("peer %s: session failed: %s: %s", who, type(e).__name__, e)
            log.debug("traceback", exc_info=True)
            try:
                await conn.send(encode("error", message=f"internal error: {type(e).__name__}"))  # no detail leaves
            except (OSError, DeltasyncError):
                pass
        finally:
            reader.cancel()
            await inbound.close()

    async def send_requested(self, conn: Connection, f: Frame, index: dict[str, Entry]) -> None:
        """A pull: send the files asked for (as of the index we sent), then `request_done`.
        A file that changed here since is refused with a failed ack."""
        outcome = Outcome()
        sender = FileSender(safe.SafeRoot(self.folder.root), conn, outcome, segments_of=self.manifest.segments_of)
        small: list[tuple[Entry, str | None]] = []
        dests: dict[str, str] = {}
        sig = f.body or None

        async def given_signature(t: Transfer) -> Buffer | None:
            return None if sig is None else await peer_signature(sig, t)

        try:
            for req in f["files"]:
                if not isinstance(req, dict):
                    raise ProtocolError("request_file: entry is not an object")
                path, dest = req.get("path"), req.get("dest", req.get("path"))
                safe.check_relpath(path)
                safe.check_relpath(dest)
                assert isinstance(path, str) and isinstance(dest, str)  # checked just above
                replaces, basis = req.get("replaces"), req.get("basis")
                if not all(x is None or (isinstance(x, str) and len(x) == 64) for x in (replaces, basis)):
                    raise ProtocolError("request_file: replaces and basis must be 64-character digests")
                seg = limits.check_segment_size(req.get("segment_size", SEGMENT_SIZE), "request_file: segment_size")
                basis_size = limits.check_int(req.get("basis_size", 0), 0, limits.MAX_FILE_SIZE,
                                              "request_file: basis_size")
                e = index.get(path)
                if e is None or e.deleted or e.kind != FILE or e.blake3 != req.get("blake3"):
                    await conn.send(ack(Result(dest, False, f"{path}: changed on the peer; run again"), self.folder.root))
                    continue
                done = req.get("done") or []
                total = limits.segments_of(e.size, seg)
                if not isinstance(done, list) or len(done) > total or \
                        not all(type(i) is int and 0 <= i < total for i in done):
                    raise ProtocolError("request_file: done must list segment indexes of that file")
                if basis is None and e.size < DELTA_MIN and not done:
                    small.append((e, replaces))
                    dests[e.path] = dest
                    continue
                if basis is not None and (sig is None or len(f["files"]) != 1):
                    raise ProtocolError("request_file: a delta request carries its signature, one per frame")
                await sender.large(Transfer(e, basis, replaces, seg, frozenset(done), basis_size), given_signature,
                                   dest)
            for batch in batches(small):
                await sender.small(batch, dest=lambda e: dests[e.path])
            for fail in outcome.failures:
                await conn.send(ack(Result(dests.get(fail["path"], fail["path"]), False, fail["error"]), self.folder.root))
        finally:
            sender.close()
        await conn.send(encode("request_done"))


async def run(folder: Folder, listen: str, on_listening: Callable[[str], None] | None = None,
              stop: asyncio.Event | None = None, server: Server | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or `stop`); in-flight files are left as
    resumable partials, and anything committed stays committed."""
    engines.get()  # chosen before we listen: a missing librsync is one line now, not in a peer's session
    server = server or Server(folder)
    cfg = server.config
    stale = server.receiver.clean_stale(float(cfg.setting("partial_max_age_hours")) * 3600)
    if stale:
        log.info("dropped %d stale partial transfers", stale)
    host, port = split_address(listen)
    admission = Admission(int(cfg.setting("max_pending_handshakes")), int(cfg.setting("max_handshakes_per_address")),
                          int(cfg.setting("max_connections")), int(cfg.setting("max_sessions_per_peer")))
    srv = await serve(folder, host, port, server.handle, float(cfg.setting("handshake_timeout")),
                      float(cfg.setting("idle_timeout")), admission)
    sock = srv.sockets[0].getsockname()
    actual = f"{sock[0]}:{sock[1]}" if ":" not in sock[0] else f"[{sock[0]}]:{sock[1]}"
    if on_listening:
        on_listening(actual)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int, _frame: object) -> None:
        # a Python-level handler runs between bytecodes even while the loop is busy;
        # the watchdog ends the process if the orderly stop has not within STOP_GRACE
        loop.call_soon_threadsafe(stop.set)
        arm_watchdog()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (an embedding caller stops us through `stop`)
            pass
    try:
        await stop.wait()
    finally:
        srv.close()
        try:
            await asyncio.wait_for(server.shutdown(), STOP_GRACE)
        except asyncio.TimeoutError:
            log.warning("sessions did not stop within %.0f s; leaving them as resumable partials", STOP_GRACE)
