"""What a session needs from the network, and nothing more: send bytes,
receive bytes, close, who the peer is, and how many bytes went each way.
Framing, compression and bandwidth limits are the session's (`run/channel.py`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Peer:
    id: str  # its pinned peer ID (the fingerprint of its certificate)
    address: str


class Transport(Protocol):
    peer: Peer
    bytes_sent: int
    bytes_received: int

    async def send(self, *parts: bytes) -> None:
        """Write `parts` in order, waiting while the peer is slow to take them."""

    async def receive(self) -> bytes:
        """The next bytes the peer sent; b"" once it has closed its side."""

    async def close(self) -> None:
        """Close; never raises."""
