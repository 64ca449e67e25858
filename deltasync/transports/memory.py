"""Two ends of a session in one process: no socket, no thread. For testing
whole conversations; bounded like a socket buffer, so a sender that runs ahead
waits for its reader as it would on a network."""
from __future__ import annotations

import asyncio
from collections import deque

from ..errors import PeerUnreachable
from .base import Peer

CHUNK = 256 * 1024


class _Pipe:
    """One direction: bytes in order, at most `limit` waiting, then an end."""

    def __init__(self, limit: int) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.limit = limit
        self.ended = False  # the writer is done: the reader gets what is left, then the end
        self.deaf = False  # the reader is gone: what is written is lost, as in a closed socket's buffer
        self.changed = asyncio.Condition()

    async def put(self, chunk: bytes) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.size < self.limit or self.ended or self.deaf)
            if self.deaf:
                return
            if self.ended:
                raise PeerUnreachable("in-memory connection closed")
            self.chunks.append(chunk)
            self.size += len(chunk)
            self.changed.notify_all()

    async def get_into(self, buf: memoryview) -> int:
        """Some of the bytes waiting, into `buf`; 0 at the end."""
        async with self.changed:
            await self.changed.wait_for(lambda: bool(self.chunks) or self.ended)
            if not self.chunks:
                return 0
            chunk = self.chunks[0]
            n = min(len(chunk), len(buf))
            buf[:n] = chunk[:n]
            if n == len(chunk):
                self.chunks.popleft()
            else:
                self.chunks[0] = chunk[n:]
            self.size -= n
            self.changed.notify_all()
            return n

    async def end(self) -> None:
        async with self.changed:
            self.ended = True
            self.changed.notify_all()

    async def stop_reading(self) -> None:
        async with self.changed:
            self.deaf = True
            self.chunks.clear()
            self.size = 0
            self.changed.notify_all()


class MemoryTransport:
    def __init__(self, peer: Peer, inbox: _Pipe, outbox: _Pipe) -> None:
        self.peer = peer
        self._inbox, self._outbox = inbox, outbox
        self.bytes_sent = self.bytes_received = 0

    async def send(self, *parts: bytes) -> None:
        for p in parts:
            for i in range(0, len(p), CHUNK):
                chunk = bytes(memoryview(p)[i : i + CHUNK])
                await self._outbox.put(chunk)
                self.bytes_sent += len(chunk)

    async def receive_into(self, buf: memoryview, least: int = 1) -> int:
        got = 0
        while got < least and not self._inbox.deaf:
            n = await self._inbox.get_into(buf[got:])
            if not n:
                break
            got += n
        self.bytes_received += got
        return got

    async def close(self) -> None:
        await self._outbox.end()  # what we sent is still read to its end
        await self._inbox.stop_reading()  # and what the peer still sends is lost


def pair(client: Peer, server: Peer, limit: int = 4 * 1024 * 1024) -> tuple[MemoryTransport, MemoryTransport]:
    """(the client's end, the server's end); each end's `peer` is the other side."""
    up, down = _Pipe(limit), _Pipe(limit)
    return MemoryTransport(server, down, up), MemoryTransport(client, up, down)
