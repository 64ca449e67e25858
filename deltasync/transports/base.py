"""What a session needs from the network, and nothing more: send bytes,
receive bytes, close, who the peer is, and how many bytes went each way.
Framing, compression and bandwidth limits are the session's (`run/channel.py`)."""
from __future__ import annotations

from typing import Protocol

from ..core.record import Record, record


@record
class Peer(Record):
    id: str  # its pinned peer ID (the fingerprint of its certificate)
    address: str


class Transport(Protocol):
    peer: Peer
    bytes_sent: int
    bytes_received: int

    async def send(self, *parts: bytes) -> None:
        """Write `parts` in order, waiting while the peer is slow to take them."""

    async def receive_into(self, buf: memoryview, least: int = 1) -> int:
        """Write the peer's next bytes into `buf` (no copy on the way where the transport
        can help it), waiting for at least `least` of them; fewer only at the end of the
        stream (0: the peer has closed its side)."""

    async def close(self) -> None:
        """Close; never raises."""
