"""TLS 1.3 over TCP: asyncio streams, the trust preamble, and admission.

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
READ_SIZE = 256 * 1024
WRITE_SLICE = 256 * 1024
_OK, _REFUSED = b"\x00", b"\x01"


class TlsTransport:
    """One TLS stream, with byte counters and an idle timeout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer,
                 idle_timeout: float = 300.0) -> None:
        self._reader = reader
        self._writer = writer
        self.peer = peer
        self.idle_timeout = idle_timeout
        self.bytes_sent = 0
        self.bytes_received = 0

    async def send(self, *parts: bytes) -> None:
        """Write a frame's parts (header, then body, uncopied) with backpressure."""
        try:
            for p in parts:
                # big bodies go in slices, each drained: the TLS layer then never holds a
                # whole encrypted segment besides the plain one (flat memory per side)
                for i in range(0, len(p), WRITE_SLICE):
                    self._writer.write(memoryview(p)[i : i + WRITE_SLICE] if len(p) > WRITE_SLICE else p)
                    if len(p) > WRITE_SLICE:
                        await self._drain()
            self.bytes_sent += sum(len(p) for p in parts)
            await self._drain()
        except (ConnectionError, ssl.SSLError) as e:
            raise PeerUnreachable(f"connection to {self.peer.address} lost: {e or type(e).__name__}") from None

    async def _drain(self) -> None:
        """Wait for the peer to take our bytes, but not forever: a peer that stops reading is idle."""
        if self._writer.transport.get_write_buffer_size() <= 64 * 1024:
            await self._writer.drain()  # not paused: returns at once (and raises if the connection is lost)
            return
        try:
            await asyncio.wait_for(self._writer.drain(), self.idle_timeout)
        except asyncio.TimeoutError:
            raise PeerUnreachable(f"{self.peer.address} stopped reading for {self.idle_timeout:.0f} s") from None

    async def receive(self) -> bytes:
        try:
            chunk = await asyncio.wait_for(self._reader.read(READ_SIZE), self.idle_timeout)
        except asyncio.TimeoutError:
            raise ProtocolError(f"peer idle for {self.idle_timeout:.0f} s") from None
        except (ConnectionError, ssl.SSLError) as e:
            raise PeerUnreachable(f"connection to {self.peer.address} lost: {e}") from None
        self.bytes_received += len(chunk)
        return chunk

    async def close(self) -> None:
        try:
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 5)
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            pass


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


async def _read_cert(reader: asyncio.StreamReader) -> bytes:
    (n,) = struct.unpack(">H", await reader.readexactly(2))
    if not 0 < n <= MAX_CERT:
        raise ProtocolError("certificate length out of range")
    return await reader.readexactly(n)


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
                  timeout: float = 10.0, idle_timeout: float = 300.0) -> TlsTransport:
    """Open a trusted, encrypted connection to the peer at `address`."""
    host, port = split_address(address)
    trusted = folder.config().trusted_ids()
    own_der = identity.cert_der(folder.cert)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except ConnectionRefusedError:
        raise PeerUnreachable(f"cannot reach {address}: connection refused (is deltasync serve or watch "
                              f"running there?)") from None
    except (OSError, asyncio.TimeoutError) as e:
        raise PeerUnreachable(f"cannot reach {address}: {getattr(e, 'strerror', None) or e or 'timed out'}") from None
    try:
        writer.write(MAGIC + _pack_cert(own_der))
        await writer.drain()
        magic = await asyncio.wait_for(reader.readexactly(len(MAGIC) + 1), timeout)
        if magic[: len(MAGIC)] != MAGIC:
            raise PeerRefused(f"{address} does not speak deltasync")
        if magic[-1:] == _REFUSED:
            raise PeerRefused(f"{address} does not trust this folder; on the peer run: "
                              f"deltasync trust DIR {identity.format_id(folder.peer_id)}")
        peer_der = await asyncio.wait_for(_read_cert(reader), timeout)
        peer_id = identity.fingerprint(peer_der)
        if (expect_id and peer_id != expect_id) or peer_id not in trusted:
            raise PeerRefused(f"{address} presented peer ID {identity.format_id(peer_id)}, which is not trusted "
                              f"here (verify it, then: deltasync trust {folder.root} {identity.format_id(peer_id)})")
        await asyncio.wait_for(writer.start_tls(_context(folder, False, peer_der)), timeout)
        got = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        if got != peer_der:
            raise PeerRefused(f"{address} changed certificate during the handshake")
    except asyncio.TimeoutError:
        writer.close()
        raise PeerUnreachable(f"no deltasync handshake from {address} within {timeout:.0f} s (is deltasync serve "
                              f"or watch listening there?)") from None
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        writer.close()
        raise PeerRefused(f"{address} closed the connection during the handshake ({type(e).__name__})") from None
    except ssl.SSLError as e:
        writer.close()
        raise PeerRefused(f"TLS handshake with {address} failed: {e.reason or e}") from None
    except BaseException:
        writer.close()
        raise
    return TlsTransport(reader, writer, Peer(peer_id, address), idle_timeout)


Handler = Callable[[TlsTransport], Awaitable[None]]


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
        self.pending: dict[asyncio.StreamWriter, str] = {}  # insertion order = age
        self.sessions: dict[str, int] = {}  # peer ID -> sessions running
        self.evicted = 0

    def _evict(self, writer: asyncio.StreamWriter) -> None:
        self.pending.pop(writer, None)
        self.evicted += 1
        transport = writer.transport
        if transport is not None:
            transport.abort()

    def arrive(self, writer: asyncio.StreamWriter, host: str) -> None:
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

    def leave(self, writer: asyncio.StreamWriter) -> None:
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

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        address = f"{addr[0]}:{addr[1]}" if addr else "?"
        adm.arrive(writer, addr[0] if addr else "?")
        try:
            peer_der = await asyncio.wait_for(_handshake(reader, writer, own_der), handshake_timeout)
        except PeerRefused as e:
            log.warning("refused %s: %s", address, e)
            writer.close()
            return
        except (ProtocolError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError,
                asyncio.TimeoutError, OSError) as e:
            log.info("handshake with %s failed: %s", address, e or type(e).__name__)
            writer.close()
            return
        finally:
            adm.leave(writer)
        conn = TlsTransport(reader, writer, Peer(identity.fingerprint(peer_der), address), idle_timeout)
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

    async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, own: bytes) -> bytes:
        if await reader.readexactly(len(MAGIC)) != MAGIC:
            raise ProtocolError("not a deltasync client")
        peer_der = await _read_cert(reader)
        peer_id = identity.fingerprint(peer_der)
        if peer_id not in folder.config().trusted_ids():
            writer.write(MAGIC + _REFUSED)
            await writer.drain()
            raise PeerRefused(f"peer {identity.format_id(peer_id)} is not trusted")
        writer.write(MAGIC + _OK + _pack_cert(own))
        await writer.drain()
        await writer.start_tls(_context(folder, True, peer_der))
        if writer.get_extra_info("ssl_object").getpeercert(binary_form=True) != peer_der:
            raise PeerRefused("certificate changed during the handshake")
        return peer_der

    server = await asyncio.start_server(accept, host, port, reuse_address=True, family=socket.AF_UNSPEC,
                                        backlog=256)
    return server
