"""Holes: runs of zero blocks in a segment travel as their place, not their
bytes, and the receiver leaves them unwritten (like `rsync -S`). Pure: bytes
in, runs out; the sender finds them, the receiver rebuilds and checks them.

A run is `(start, length)` within a segment, whole 4 KiB blocks (the
filesystem's allocation unit, and segments are block-aligned in the file).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable

from blake3 import blake3

from ..errors import ProtocolError

BLOCK = 4096
MAX_RUNS = 1024  # per segment: the header stays small; zero runs past this travel as bytes
_ZERO = bytes(BLOCK)

Runs = tuple[tuple[int, int], ...]


@lru_cache(maxsize=8)
def zero_digest(length: int) -> str:
    """The blake3 of `length` zero bytes (a hole's segment hash; segments share a few lengths)."""
    return blake3(bytes(length)).hexdigest()


def is_zero(data: bytes | memoryview) -> bool:
    """Every byte zero (checked a block at a time: a data block answers at its first byte)."""
    view = memoryview(data)
    for i in range(0, len(view), BLOCK):
        piece = view[i : i + BLOCK]
        if piece != _ZERO[: len(piece)]:
            return False
    return True


def holes_of(data: bytes | memoryview) -> Runs:
    """The runs of whole zero blocks in `data`, in order (at most MAX_RUNS)."""
    view = memoryview(data)
    runs: list[tuple[int, int]] = []
    start = -1
    whole = len(view) - len(view) % BLOCK
    for i in range(0, whole, BLOCK):
        if view[i : i + BLOCK] == _ZERO:
            if start < 0:
                if len(runs) == MAX_RUNS:
                    break
                start = i
        elif start >= 0:
            runs.append((start, i - start))
            start = -1
    if start >= 0:
        runs.append((start, whole - start))
    return tuple(runs)


def squeeze(data: bytes | memoryview, runs: Runs) -> bytes:
    """`data` without its holes: what goes on the wire."""
    view, out, at = memoryview(data), [], 0
    for start, length in runs:
        out.append(view[at:start])
        at = start + length
    out.append(view[at:])
    return b"".join(out)


def expand(body: bytes | memoryview, runs: Runs, length: int) -> bytearray:
    """The segment again: the body's bytes around zero-filled holes."""
    out = bytearray(length)
    view, at, taken = memoryview(body), 0, 0
    for start, size in runs:
        n = start - at
        out[at:start] = view[taken : taken + n]
        taken += n
        at = start + size
    out[at:] = view[taken:]
    return out


def data_runs(runs: Runs, length: int) -> Iterable[tuple[int, int]]:
    """The complement of `runs` in a segment of `length`: where there is data to write."""
    at = 0
    for start, size in runs:
        if start > at:
            yield at, start - at
        at = start + size
    if at < length:
        yield at, length - at


def from_wire(value: Any, length: int, body_len: int, what: str) -> Runs:
    """A peer's runs, checked: pairs of ints, in order, apart, inside the segment, and
    the body exactly the rest. Anything else is a protocol error."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_RUNS:
        raise ProtocolError(f"{what}: holes must be a list of at most {MAX_RUNS} runs")
    runs, at = [], 0
    for run in value:
        if not (isinstance(run, list) and len(run) == 2 and all(type(x) is int for x in run)):
            raise ProtocolError(f"{what}: a hole is [start, length]")
        start, size = run
        if start < at or size <= 0 or start + size > length:
            raise ProtocolError(f"{what}: holes out of order or outside the segment")
        runs.append((start, size))
        at = start + size
    if body_len != length - sum(size for _, size in runs):
        raise ProtocolError(f"{what}: the body does not fill what the holes leave")
    return tuple(runs)
