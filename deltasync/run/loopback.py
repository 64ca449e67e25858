"""A server reached in memory: whole sessions with no socket, no process and
(with inline workers) no thread -- for the conversation tests and the fuzzer.
Trust is checked as the TLS preamble checks it: an untrusted peer gets nothing."""
from __future__ import annotations

import asyncio
from typing import Callable

from ..config import Folder
from ..errors import PeerRefused
from ..transports.base import Peer, Transport
from ..transports.memory import pair
from ..wire.framing import Frame
from .channel import Channel, exchange
from .server import Server


class Loopback:
    def __init__(self, server: Server, server_side: Callable[[Transport], Transport] = lambda t: t) -> None:
        self.server = server
        self.server_side = server_side  # what the server's end goes through (a test cuts it mid-transfer)
        self.sessions: list[asyncio.Task[None]] = []

    def open(self, client: Folder) -> Transport:
        """A connection from `client`'s folder, its server side served at once."""
        if client.peer_id not in self.server.folder.config().trusted_ids() or \
                self.server.folder.peer_id not in client.config().trusted_ids():
            raise PeerRefused("the two folders do not trust each other")
        mine, raw = pair(Peer(client.peer_id, "memory:client"), Peer(self.server.folder.peer_id, "memory:server"))
        theirs = self.server_side(raw)

        async def serve() -> None:
            try:
                await self.server.handle(theirs)
            finally:
                await theirs.close()

        self.sessions.append(asyncio.create_task(serve()))
        return mine

    async def connect(self, folder: Folder, _address: str, _expect: str | None, _idle: float) -> Transport:
        """`client.session(..., connect=loopback.connect)`."""
        return self.open(folder)

    async def settle(self) -> None:
        """Wait for every session served so far to end; what escaped the server (a crash) is raised."""
        results = await asyncio.gather(*self.sessions, return_exceptions=True)
        self.sessions.clear()
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                raise r

    async def exchange(self, client: Folder, data: list[bytes], read_for: float = 1.0) -> list[Frame | Exception]:
        """Raw bytes in (a hostile client's frames), every frame that came back out."""
        try:
            return await exchange(Channel(self.open(client)), data, read_for)
        finally:
            await self.settle()
