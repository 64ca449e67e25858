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


Data = bytes | bytearray  # not a memoryview: comparing those goes byte by byte, bytes use memcmp


@lru_cache(maxsize=4)
def _zeros(length: int) -> bytes:
    return bytes(length)


@lru_cache(maxsize=8)
def zero_digest(length: int) -> str:
    """The blake3 of `length` zero bytes (a hole's segment hash; segments share a few lengths)."""
    return blake3(_zeros(length)).hexdigest()


def is_zero(data: Data) -> bool:
    """Every byte zero: a data segment answers at its first block, a zero one in one memcmp."""
    return data[:BLOCK] == _ZERO[: min(BLOCK, len(data))] and data == _zeros(len(data))


def holes_of(data: Data) -> Runs:
    """The runs of whole zero blocks in `data`, in order (at most MAX_RUNS). The search for
    a zero block is `find` (C speed over data); only zero blocks are stepped through here."""
    runs: list[tuple[int, int]] = []
    whole = len(data) - len(data) % BLOCK
    at = 0
    while at < whole and len(runs) < MAX_RUNS:
        found = data.find(_ZERO, at, whole)
        if found < 0:
            break
        start = -(-found // BLOCK) * BLOCK  # the first whole block of that zero run
        end = start
        while end < whole and data[end : end + BLOCK] == _ZERO:
            end += BLOCK
        if end > start:
            runs.append((start, end - start))
            at = end
        else:  # zeros that fill no aligned block: the next one can only start past `start`
            at = start + 1
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


def from_wire(value: Any, length: int, body_len: int | None, what: str) -> Runs:
    """A peer's runs, checked: pairs of ints, in order, apart, inside the segment, and (for a
    literal segment, whose body they were left out of) the body exactly the rest. Anything
    else is a protocol error."""
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
    if body_len is not None and body_len != length - sum(size for _, size in runs):
        raise ProtocolError(f"{what}: the body does not fill what the holes leave")
    return tuple(runs)
