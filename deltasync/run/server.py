"""The server: accept, handshake (`transports/tls.py`), then one driver per
session (`driver.py`). What only the server does is here: greet (or say
busy), scan and list the folder, record a finished sync.

A peer that breaks the protocol gets one `error` message and its connection
is closed; it is logged with its peer ID, and the server keeps serving others.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from typing import Any, Callable

from .. import engines, identity
from ..config import Folder, Peer
from ..core.entry import DIR
from ..core.plan import PartialInfo
from ..core.result import FileResult
from ..errors import DeltasyncError, PeerUnreachable, redact
from ..fs.scan import ScanResult, Unscanned, scan_folder
from ..progress import Lines
from ..store.manifest import Manifest
from ..store.receiver import Receiver
from ..transports.base import Transport
from ..transports.tls import DEFAULT_PORT, Admission, serve, split_address
from ..wire import machine as mc
from ..wire.messages import NO_ECHO, Error, Hello, IndexMark
from .channel import Channel
from .driver import Driver, Offer
from .workers import Workers

log = logging.getLogger(__name__)
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


def partials_of(manifest: Manifest) -> list[PartialInfo]:
    """The transfers we hold in part, as a peer resumes them."""
    return [PartialInfo(p.path, p.target_blake3, p.replaces, p.segment_size, p.done) for p in manifest.partials()]


class Server:
    def __init__(self, folder: Folder, workers: Workers | None = None, excludes: list[str] | None = None,
                 unscanned: Unscanned | None = None) -> None:
        self.folder = folder
        self.unscanned = unscanned  # what changed since our last scan (watch: its watcher; serve: inotify)
        self.excludes = excludes  # beside .deltasyncignore (watch --exclude): told to every client
        self.config = folder.config()
        self.workers = workers or Workers()
        self.manifest = Manifest(folder.db)
        self.receiver = Receiver(folder, self.manifest, background=self.workers.threads)
        self._scan_lock = asyncio.Lock()
        self.sessions: set[asyncio.Task[Any]] = set()

    def close(self) -> None:
        self.receiver.close()
        self.manifest.close()

    async def scan(self, record: bool = True) -> ScanResult:
        async with self._scan_lock:
            within = self.unscanned.take() if self.unscanned is not None and record else None
            try:
                return await self.workers.run(scan_folder, self.folder, self.manifest, self.excludes, record,
                                              within)
            except BaseException:
                if self.unscanned is not None and within is not None:
                    self.unscanned.forget()
                raise

    async def shutdown(self) -> None:
        """Stop sessions; each leaves its in-flight files as resumable partials."""
        for t in list(self.sessions):
            t.cancel()
        await asyncio.gather(*self.sessions, return_exceptions=True)
        self.close()

    async def handle(self, transport: Transport) -> None:
        """One session, from the client's hello to its bye (or to whatever ended it)."""
        task = asyncio.current_task()
        assert task is not None
        self.sessions.add(task)
        peer = transport.peer
        who = identity.format_id(peer.id)[:15]
        host = _Session(self, peer.id)
        driver = Driver(mc.Conversation(mc.SERVER), Channel(transport), self.receiver,
                        self.receiver.registry.open(peer.id, "server"), host, self.workers, Lines())
        started, outcome = time.monotonic(), "ok"
        try:
            await driver.pump()
        except (PeerUnreachable, ConnectionError) as e:
            outcome = f"ended: {e}"
        except DeltasyncError as e:  # the peer broke the protocol or asked for what we refuse
            outcome = f"protocol error: {e}"
            log.warning("peer %s (%s): protocol error: %s", who, peer.address, e)
            await _tell(driver, redact(str(e), self.folder.root)[:1000])
        except asyncio.CancelledError:
            outcome = "stopped (its files stay resumable)"
            raise
        except Exception as e:  # a bug, a full disk under SQLite, an unforeseen input: this session ends, the server does not
            outcome = f"failed: {type(e).__name__}"
            log.error("peer %s: session failed: %s: %s", who, type(e).__name__, e)
            log.debug("traceback", exc_info=True)
            await _tell(driver, f"internal error: {type(e).__name__}")  # no detail leaves
        finally:
            self.sessions.discard(task)
            await driver.close()
            if driver.turned_away is None:  # (a peer asked to retry has its one line already)
                log.info("%s", session_line(self.folder.config().peer_by_id(peer.id), peer.id, driver, transport,
                                            time.monotonic() - started, outcome))


def session_line(known: Peer | None, peer_id: str, driver: Driver, transport: Transport, seconds: float,
                 outcome: str) -> str:
    """The one line a served session leaves in the log: who, which way, files, bytes, time, result."""
    conv = driver.conv
    name = f"{known.name} " if known is not None else ""
    ways = [w for w, did in (("push", conv.files_pushed), ("pull", conv.files_requested)) if did]
    took = f"{driver.verdicts[True]} changes in" + (f" ({driver.verdicts[False]} failed)"
                                                    if driver.verdicts[False] else "")
    sent = conv.files_requested - conv.refused
    return (f"session with {name}({identity.format_id(peer_id)[:15]}): {'+'.join(ways) or 'nothing to do'}; "
            f"{took}, {sent} files out; {transport.bytes_received:,} bytes in, {transport.bytes_sent:,} bytes out; "
            f"{seconds:.2f} s; {outcome}")


async def _tell(driver: Driver, message: str) -> None:
    try:
        await driver.say(Error(message))
    except (OSError, DeltasyncError):
        pass


class _Session:
    """The server's part of one session (the driver's `Host`)."""

    def __init__(self, server: Server, peer_id: str) -> None:
        self.server = server
        self.peer_id = peer_id
        self.looking = False  # a --dry-run session: it changes nothing here, not even our manifest
        self.no_echo = False  # the client keeps what we acknowledged in its copy of our index

    async def greet(self, hello: Hello) -> str | None:
        log.debug("peer %s: engine %s", identity.format_id(self.peer_id)[:15], hello.engine)
        self.no_echo = hello.wants(NO_ECHO)
        if self.server.receiver.registry.busy_with(self.peer_id, "client"):
            # we are syncing with it as its client right now (watch): the two would
            # send the same files to each other at once
            return "busy: a sync with you is already running; retry later"
        return None

    async def index(self, dry_run: bool, held: IndexMark | None, heard: bool) -> Offer:
        self.looking = dry_run
        manifest = self.server.manifest
        scanned = await self.server.scan(record=not dry_run)
        scanned.refuse_nesting(self.peer_id, "your")
        ignore = scanned.ignore
        ignored = (lambda path: ignore(path)) if ignore.lines else (lambda path: False)  # pulls ask for files
        partials = partials_of(manifest)
        if dry_run or held is None:  # a look (nothing recorded), or a client that keeps no copy
            return Offer(scanned.entries.values(), partials, ignore.lines, ignored=ignored)
        index_id, top = manifest.index_state()
        since = held.sequence if held.index_id == index_id and held.sequence <= top else -1
        mine = self.peer_id if self.no_echo and heard and since >= 0 else None  # (a whole index: everything)
        rows = (e for batch in manifest.since(since, top, not_by=mine) for e in batch)
        entries = (e for e in rows if not ignore(e.path, e.kind == DIR)) if ignore.lines else rows
        return Offer(entries, partials, ignore.lines, IndexMark(index_id, top), since < 0, ignored)

    def closing(self) -> None:
        try:
            if not self.looking:
                self.server.manifest.mark_synced(self.peer_id, "served")
        except sqlite3.Error as e:  # bookkeeping only; never fail a finished session
            log.warning("cannot record the sync time: %s", e)

    def result(self, r: FileResult, remote: bool) -> None:
        raise AssertionError("a server's verdicts go to the client")


async def run(folder: Folder, listen: str, on_listening: Callable[[str], None] | None = None,
              stop: asyncio.Event | None = None, server: Server | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or `stop`); in-flight files are left as
    resumable partials, and anything committed stays committed."""
    engines.get()  # chosen before we listen: a missing librsync is one line now, not in a peer's session
    loop = asyncio.get_running_loop()
    notified = None
    if server is None:  # `serve`: inotify tells each session's scan what changed (`watch` has its watcher)
        from ..fs import notify

        server = Server(folder)
        notified = await asyncio.to_thread(notify.start, folder.root, float(server.config.setting("rescan_seconds")))
        if notified is not None:
            server.unscanned = notified
            notified.attach(loop)
    cfg = server.config
    stale = server.receiver.clean_stale(float(cfg.setting("partial_max_age_hours")) * 3600)
    if stale:
        log.info("dropped %d stale partial transfers", stale)
    host, port = split_address(listen, DEFAULT_PORT)
    admission = Admission(int(cfg.setting("max_pending_handshakes")), int(cfg.setting("max_handshakes_per_address")),
                          int(cfg.setting("max_connections")), int(cfg.setting("max_sessions_per_peer")))
    try:
        srv = await serve(folder, host, port, server.handle, float(cfg.setting("handshake_timeout")),
                          float(cfg.setting("idle_timeout")), admission)
    except OSError as e:
        taken = e.errno == errno.EADDRINUSE
        raise DeltasyncError(f"cannot listen on {host}:{port}: " + (
            "the address is in use (by another deltasync serve or watch, or another program); pass --listen "
            "HOST:PORT" if taken else f"{e.strerror or e}")) from None
    sock = srv.sockets[0].getsockname()
    actual = f"{sock[0]}:{sock[1]}" if ":" not in sock[0] else f"[{sock[0]}]:{sock[1]}"
    if on_listening:
        on_listening(actual)
    stop = stop or asyncio.Event()

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
        if notified is not None:
            notified.close()
        try:
            await asyncio.wait_for(server.shutdown(), STOP_GRACE)
        except asyncio.TimeoutError:
            log.warning("sessions did not stop within %.0f s; leaving them as resumable partials", STOP_GRACE)
