"""Frames over a transport, for one session: the decoder on the way in, and
the `--bwlimit` pacing on the way out (a session concern, not the transport's)."""
from __future__ import annotations

import asyncio
import time
from collections import deque

from ..errors import PeerUnreachable, UsageError
from ..transports.base import Peer, Transport
from ..wire.framing import Frame, FrameDecoder, inflate


def parse_rate(text: str) -> float | None:
    """`--bwlimit` values like rsync's: a number of KiB/s, or with a K, M or G suffix; 0 is no limit."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    t = text.strip().upper().removesuffix("B").removesuffix("/S")
    mult = units.get(t[-1:], None)
    try:
        value = float(t[:-1] if mult else t) * (mult or 1024)
    except ValueError:
        raise UsageError(f"not a rate: {text!r} (try 10M or 500K)") from None
    if value < 0:
        raise UsageError(f"--bwlimit must not be negative, not {text!r}")
    return value or None


class Pace:
    """At most `rate` bytes a second through one direction, on average since the start."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.moved = 0
        self.started = time.monotonic()

    async def __call__(self, nbytes: int) -> None:
        self.moved += nbytes
        ahead = self.moved / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            await asyncio.sleep(ahead)


class Channel:
    def __init__(self, transport: Transport, bwlimit: float | None = None) -> None:
        self.transport = transport
        # --bwlimit holds each direction to the rate: what we send, and what we read (a reader
        # that waits slows the sender through the connection's flow control, as rsync's does)
        self._out, self._in = (Pace(bwlimit), Pace(bwlimit)) if bwlimit else (None, None)
        self._decoder = FrameDecoder()
        self._ready: deque[Frame] = deque()

    @property
    def peer(self) -> Peer:
        return self.transport.peer

    async def send(self, *parts: bytes) -> None:
        if self._out is not None:
            await self._out(sum(len(p) for p in parts))
        await self.transport.send(*parts)

    async def recv(self) -> Frame | None:
        """The next frame (its body inflated), or None on a clean end between frames.
        A pending body is received straight into its own buffer, all of it at once."""
        while not self._ready:
            room = self._decoder.space()
            n = await self.transport.receive_into(room, len(room) if self._decoder.in_body else 1)
            if self._in is not None:
                await self._in(n)
            if not n:
                if self._decoder.buffered:
                    raise PeerUnreachable(f"connection to {self.peer.address} closed mid-frame")
                return None
            self._ready.extend(self._decoder.filled(n))
        return inflate(self._ready.popleft())  # one frame at a time: a burst of tiny zstd frames stays small

    async def close(self) -> None:
        await self.transport.close()


async def exchange(channel: Channel, data: list[bytes], read_for: float) -> list[Frame | Exception]:
    """Raw bytes out (a hostile peer's frames, no machine on our side), then every
    frame that comes back within `read_for` seconds -- or the error that ended it."""
    got: list[Frame | Exception] = []
    try:
        for chunk in data:
            await channel.send(chunk)
        deadline = time.monotonic() + read_for
        while (left := deadline - time.monotonic()) > 0:
            frame = await asyncio.wait_for(channel.recv(), left)
            if frame is None:
                break
            got.append(frame)
    except Exception as e:  # the peer closing on us is the expected end
        got.append(e)
    finally:
        await channel.close()
    return got
