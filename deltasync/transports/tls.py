"""TLS 1.3 over TCP: the connection's byte stream, the trust preamble, and admission.

The only module that touches the network. How a connection starts:

1. Plain TCP. The client sends ``DSYNC1`` and its certificate (DER). The server
   compares the certificate's fingerprint with its trust list; an unknown peer
   gets one "refused" byte and the connection closes -- it learns no file name,
   no index, not even the server's certificate.
2. A trusted client gets the server's certificate. The client closes unless that
   fingerprint is one it trusts (and the one it pinned for this address).
3. Both upgrade to TLS 1.3, each loading *only the other's pinned certificate*
   as its trust anchor and requiring the other's certificate: the handshake
   proves each side holds the key of the ID it claimed. Python's ssl module has
   no verify callback, so this is how stdlib TLS gets pinned mutual auth that
   follows trust-list edits without a restart.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from typing import Awaitable, Callable

from .. import identity
from ..config import Folder
from ..errors import DeltasyncError, PeerRefused, PeerUnreachable, ProtocolError, UsageError
from ..wire.messages import Error
from .base import Peer

log = logging.getLogger(__name__)

MAGIC = b"DSYNC1"
MAX_CERT = 16 * 1024
WRITE_SLICE = 256 * 1024
_OK, _REFUSED = b"\x00", b"\x01"


class Stream(asyncio.BufferedProtocol):
    """One TCP connection, plain for the trust preamble and then TLS: the peer's
    bytes land straight in the buffer a `receive_into` offers (asyncio's TLS layer
    decrypts into it, so a 4 MiB segment is never copied on its way in), and what
    is sent waits while the peer is slow to take it.

    Reading is paused whenever nobody asks: the peer's bytes then wait in the
    kernel and in the TLS layer's bounded buffer, not in ours."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer = Peer("", "?")
        self.idle_timeout = 300.0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.opened: Callable[[Stream], None] | None = None  # (server) a connection arrived
        self._loop = asyncio.get_running_loop()
        self._want: memoryview | None = None  # what a receive_into waits to fill
        self._got = 0
        self._least = 1
        self._ready: asyncio.Future[None] | None = None
        self._spare = bytearray()  # bytes that came while nobody asked (the rare case)
        self._scratch = memoryview(bytearray(64 * 1024))
        self._ended = False
        self._lost: BaseException | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused = False
        self._active = 0.0  # when bytes last moved (the idle timeout's clock)
        self._timer: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio's side ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        self.transport = transport  # type: ignore[assignment]
        transport.pause_reading()  # type: ignore[attr-defined]
        if first and self.opened is not None:
            self.opened(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        # never an empty buffer: asyncio's TLS layer would take a read of 0 for the peer's close
        if self._want is not None and self._got < len(self._want):
            return self._want[self._got :]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self._active = self._loop.time()
        if self._want is None or self._got >= len(self._want):
            self._spare += self._scratch[:nbytes]
            return
        self._got += nbytes
        if self._got >= self._least:
            assert self.transport is not None
            self.transport.pause_reading()  # type: ignore[attr-defined]  # at once: before another read
            self._wake()

    def eof_received(self) -> bool:
        self._ended = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        self._lost = exc
        self._wake()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _wake(self) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    # -- ours ------------------------------------------------------------------------
    def _gone(self) -> PeerUnreachable:
        why = (str(self._lost) or type(self._lost).__name__) if self._lost is not None else "closed"
        return PeerUnreachable(f"connection to {self.peer.address} lost: {why}")

    async def receive_into(self, buf: memoryview, least: int = 1) -> int:
        got = 0
        if self._spare:
            got = min(len(buf), len(self._spare))
            buf[:got] = self._spare[:got]
            del self._spare[:got]
            if got >= least:
                self.bytes_received += got
                return got
        if self._ended:
            if self._lost is not None:
                raise self._gone()
            self.bytes_received += got
            return got
        assert self.transport is not None and self._want is None
        self._want, self._got, self._least = buf, got, least
        self._ready = self._loop.create_future()
        self._active = self._loop.time()
        self._timer = self._loop.call_later(self.idle_timeout, self._idle, self._ready)
        self.transport.resume_reading()  # type: ignore[attr-defined]
        try:
            await self._ready
        finally:
            if self._timer is not None:
                self._timer.cancel()
            got, self._want, self._ready = self._got, None, None
            if not self._ended and self.transport is not None:
                self.transport.pause_reading()  # type: ignore[attr-defined]
        if self._lost is not None and got < least:
            raise self._gone()
        self.bytes_received += got
        return got

    def _idle(self, ready: asyncio.Future[None]) -> None:
        """The idle timeout's check: bytes that moved since restart its clock."""
        left = self._active + self.idle_timeout - self._loop.time()
        if ready.done():
            return
        if left > 0:
            self._timer = self._loop.call_later(left, self._idle, ready)
        else:
            ready.set_exception(ProtocolError(f"peer idle for {self.idle_timeout:.0f} s"))

    async def receive_exactly(self, n: int) -> bytes:
        buf = bytearray(n)
        got = await self.receive_into(memoryview(buf), n)
        if got != n:
            raise asyncio.IncompleteReadError(bytes(buf[:got]), n)
        return bytes(buf)

    async def send(self, *parts: bytes) -> None:
        """Write a frame's parts (header, then body, uncopied) in slices, each taken
        by the TLS layer before the next: it never holds a whole encrypted segment."""
        assert self.transport is not None
        for p in parts:
            view = memoryview(p)
            for i in range(0, len(view), WRITE_SLICE):
                if self._ended:
                    raise self._gone()
                self.transport.write(view[i : i + WRITE_SLICE])
                if self._paused:
                    await self._drain()
            self.bytes_sent += len(view)

    async def _drain(self) -> None:
        """Wait for the peer to take our bytes, but not forever: a peer that stops reading is idle."""
        self._writable = self._loop.create_future()
        done, _ = await asyncio.wait([self._writable], timeout=self.idle_timeout)
        if not done:
            raise PeerUnreachable(f"{self.peer.address} stopped reading for {self.idle_timeout:.0f} s")
        if self._ended:
            raise self._gone()

    async def start_tls(self, ctx: ssl.SSLContext, server_side: bool, timeout: float) -> bytes:
        """Upgrade to TLS; the certificate the peer proved it holds the key of."""
        assert self.transport is not None
        if self._spare:
            raise ProtocolError("data before the TLS handshake")
        self.transport = await self._loop.start_tls(self.transport, self, ctx, server_side=server_side,
                                                    ssl_handshake_timeout=timeout)
        if self.transport is None:
            raise PeerUnreachable(f"connection to {self.peer.address} closed during the TLS handshake")
        return self.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def close(self) -> None:
        if self.transport is None:
            return
        try:
            self.transport.close()
            await asyncio.wait_for(asyncio.shield(self.closed), 5)
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            self.transport.abort()


def _context(folder: Folder, server_side: bool, peer_der: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(folder.cert, folder.key)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=peer_der)
    return ctx


def _pack_cert(der: bytes) -> bytes:
    return struct.pack(">H", len(der)) + der


async def _read_cert(stream: Stream) -> bytes:
    (n,) = struct.unpack(">H", await stream.receive_exactly(2))
    if not 0 < n <= MAX_CERT:
        raise ProtocolError("certificate length out of range")
    return await stream.receive_exactly(n)


DEFAULT_PORT = 8730


def split_address(address: str, default_port: int | None = None) -> tuple[str, int]:
    """HOST:PORT (or [v6]:PORT) -> (host, port); a port outside 0-65535 is a usage error, not a
    wrap-around. With `default_port` (where we listen), HOST alone is enough."""
    host, sep, port = address.rpartition(":")
    if default_port is not None and "/" not in address and (not sep or "]" in port or address.count(":") > 1
                                                            and not address.startswith("[")):
        host, sep, port = address, ":", str(default_port)  # a host, a [v6] or a bare v6 address alone
    if not sep or not port.isdigit() or "/" in host:
        raise UsageError(f"not a HOST:PORT address: {address!r}")
    if not 0 <= int(port) <= 65535:
        raise UsageError(f"port {int(port)} in {address!r} is outside 0-65535")
    return host.strip("[]") or "127.0.0.1", int(port)


async def connect(folder: Folder, address: str, expect_id: str | None = None,
                  timeout: float = 10.0, idle_timeout: float = 300.0) -> Stream:
    """Open a trusted, encrypted connection to the peer at `address`."""
    host, port = split_address(address)
    trusted = folder.config().trusted_ids()
    own_der = identity.cert_der(folder.cert)
    loop = asyncio.get_running_loop()
    try:
        _, stream = await asyncio.wait_for(loop.create_connection(Stream, host, port), timeout)
    except ConnectionRefusedError:
        raise PeerUnreachable(f"cannot reach {address}: connection refused (is deltasync serve or watch "
                              f"running there?)") from None
    except (OSError, asyncio.TimeoutError) as e:
        raise PeerUnreachable(f"cannot reach {address}: {getattr(e, 'strerror', None) or e or 'timed out'}") from None
    stream.peer, stream.idle_timeout = Peer("", address), timeout
    try:
        await stream.send(MAGIC + _pack_cert(own_der))
        magic = await asyncio.wait_for(stream.receive_exactly(len(MAGIC) + 1), timeout)
        if magic[: len(MAGIC)] != MAGIC:
            raise PeerRefused(f"{address} does not speak deltasync")
        if magic[-1:] == _REFUSED:
            raise PeerRefused(f"{address} does not trust this folder; on the peer run: "
                              f"deltasync trust DIR {identity.format_id(folder.peer_id)}")
        peer_der = await asyncio.wait_for(_read_cert(stream), timeout)
        peer_id = identity.fingerprint(peer_der)
        if (expect_id and peer_id != expect_id) or peer_id not in trusted:
            raise PeerRefused(f"{address} presented peer ID {identity.format_id(peer_id)}, which is not trusted "
                              f"here (verify it, then: deltasync trust {folder.root} {identity.format_id(peer_id)})")
        if await stream.start_tls(_context(folder, False, peer_der), False, timeout) != peer_der:
            raise PeerRefused(f"{address} changed certificate during the handshake")
    except asyncio.TimeoutError:
        stream.abort()
        raise PeerUnreachable(f"no deltasync handshake from {address} within {timeout:.0f} s (is deltasync serve "
                              f"or watch listening there?)") from None
    except (asyncio.IncompleteReadError, PeerUnreachable, ConnectionError) as e:
        stream.abort()
        raise PeerRefused(f"{address} closed the connection during the handshake ({type(e).__name__})") from None
    except ssl.SSLError as e:
        stream.abort()
        raise PeerRefused(f"TLS handshake with {address} failed: {e.reason or e}") from None
    except BaseException:
        stream.abort()
        raise
    stream.peer, stream.idle_timeout = Peer(peer_id, address), idle_timeout
    return stream


Handler = Callable[[Stream], Awaitable[None]]


class Admission:
    """Who gets a slot, before and after authentication.

    Connections that have not yet finished the trust preamble and the TLS
    handshake share a small budget of their own, `max_pending` overall and
    `per_address` per source address; when a budget is full the oldest pending
    connection (of that address, or of the address holding the most) is cut.
    An idle flood from one address therefore evicts only itself, and a peer
    whose preamble takes milliseconds always gets through. Authenticated
    sessions have their own slots (`max_sessions`, and `per_peer` for one peer
    ID), so a trusted peer never waits behind strangers."""

    def __init__(self, max_pending: int = 64, per_address: int = 8, max_sessions: int = 16,
                 per_peer: int = 4) -> None:
        self.max_pending, self.per_address = max_pending, per_address
        self.max_sessions, self.per_peer = max_sessions, per_peer
        self.pending: dict[Stream, str] = {}  # insertion order = age
        self.sessions: dict[str, int] = {}  # peer ID -> sessions running
        self.evicted = 0

    def _evict(self, conn: Stream) -> None:
        self.pending.pop(conn, None)
        self.evicted += 1
        conn.abort()

    def arrive(self, writer: Stream, host: str) -> None:
        same = [w for w, h in self.pending.items() if h == host]
        if len(same) >= self.per_address:
            self._evict(same[0])
        if len(self.pending) >= self.max_pending:
            counts: dict[str, int] = {}
            for h in self.pending.values():
                counts[h] = counts.get(h, 0) + 1
            worst = max(counts, key=lambda h: counts[h])
            self._evict(next(w for w, h in self.pending.items() if h == worst))
        self.pending[writer] = host

    def leave(self, writer: Stream) -> None:
        self.pending.pop(writer, None)

    def open_session(self, peer_id: str) -> str | None:
        """Take a session slot for `peer_id`; the reason it cannot have one, if not."""
        if sum(self.sessions.values()) >= self.max_sessions:
            return f"server busy: {self.max_sessions} sessions already running; retry later"
        if self.sessions.get(peer_id, 0) >= self.per_peer:
            return f"busy: {self.per_peer} sessions with you already running; retry later"
        self.sessions[peer_id] = self.sessions.get(peer_id, 0) + 1
        return None

    def close_session(self, peer_id: str) -> None:
        n = self.sessions.get(peer_id, 0) - 1
        if n > 0:
            self.sessions[peer_id] = n
        else:
            self.sessions.pop(peer_id, None)


async def serve(folder: Folder, host: str, port: int, handler: Handler, handshake_timeout: float = 10.0,
                idle_timeout: float = 300.0, admission: Admission | None = None) -> asyncio.Server:
    """Accept connections; hand each trusted, encrypted one to `handler`."""
    own_der = identity.cert_der(folder.cert)
    adm = admission or Admission()
    loop = asyncio.get_running_loop()
    accepting: set[asyncio.Task[None]] = set()

    async def accept(conn: Stream) -> None:
        assert conn.transport is not None
        addr = conn.transport.get_extra_info("peername")
        conn.peer, conn.idle_timeout = Peer("", f"{addr[0]}:{addr[1]}" if addr else "?"), handshake_timeout
        address = conn.peer.address
        adm.arrive(conn, addr[0] if addr else "?")
        try:
            peer_der = await asyncio.wait_for(_handshake(conn, own_der), handshake_timeout)
        except PeerRefused as e:
            log.warning("refused %s: %s", address, e)
            await conn.close()
            return
        except (ProtocolError, PeerUnreachable, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError,
                asyncio.TimeoutError, OSError) as e:
            log.info("handshake with %s failed: %s", address, e or type(e).__name__)
            conn.abort()
            return
        finally:
            adm.leave(conn)
        conn.peer, conn.idle_timeout = Peer(identity.fingerprint(peer_der), address), idle_timeout
        why = adm.open_session(conn.peer.id)
        if why is not None:
            log.warning("peer %s: %s", identity.format_id(conn.peer.id)[:15], why)
            try:
                await asyncio.wait_for(conn.send(*Error(why).parts()), 5)  # before any session: no machine yet
            except (DeltasyncError, asyncio.TimeoutError):
                pass
            await conn.close()
            return
        try:
            await handler(conn)
        except asyncio.CancelledError:
            pass  # the server is stopping: the session left its files as resumable partials
        finally:
            adm.close_session(conn.peer.id)
            await conn.close()

    async def _handshake(conn: Stream, own: bytes) -> bytes:
        if await conn.receive_exactly(len(MAGIC)) != MAGIC:
            raise ProtocolError("not a deltasync client")
        peer_der = await _read_cert(conn)
        peer_id = identity.fingerprint(peer_der)
        if peer_id not in folder.config().trusted_ids():
            await conn.send(MAGIC + _REFUSED)
            raise PeerRefused(f"peer {identity.format_id(peer_id)} is not trusted")
        await conn.send(MAGIC + _OK + _pack_cert(own))
        if await conn.start_tls(_context(folder, True, peer_der), True, handshake_timeout) != peer_der:
            raise PeerRefused("certificate changed during the handshake")
        return peer_der

    def opened(conn: Stream) -> None:
        task = loop.create_task(accept(conn))
        accepting.add(task)
        task.add_done_callback(accepting.discard)

    def factory() -> Stream:
        conn = Stream()
        conn.opened = opened
        return conn

    return await loop.create_server(factory, host, port, reuse_address=True, family=socket.AF_UNSPEC, backlog=256)
