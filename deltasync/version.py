"""Version vectors: `{peer: counter}` as a sorted tuple of pairs (hashable,
comparable). A local change bumps our own counter; the order between two
vectors says which version replaces which, or that they are concurrent (a
conflict)."""
from __future__ import annotations

from typing import Any

from .errors import ProtocolError

Version = tuple[tuple[str, int], ...]
EQUAL, NEWER, OLDER, CONCURRENT = "equal", "newer", "older", "concurrent"
MAX_PEERS = 1000


def bump(v: Version, me: str) -> Version:
    d = dict(v)
    d[me] = d.get(me, 0) + 1
    return tuple(sorted(d.items()))


def merge(a: Version, b: Version) -> Version:
    d = dict(a)
    for k, n in b:
        d[k] = max(d.get(k, 0), n)
    return tuple(sorted(d.items()))


def compare(a: Version, b: Version) -> str:
    """How `a` stands to `b`: equal, newer (dominates), older, or concurrent."""
    da, db = dict(a), dict(b)
    keys = da.keys() | db.keys()
    ge = all(da.get(k, 0) >= db.get(k, 0) for k in keys)
    le = all(da.get(k, 0) <= db.get(k, 0) for k in keys)
    if ge and le:
        return EQUAL
    return NEWER if ge else OLDER if le else CONCURRENT


def to_wire(v: Version) -> dict[str, int]:
    return dict(v)


def from_wire(d: Any) -> Version:
    if d is None:
        return ()
    if not isinstance(d, dict) or len(d) > MAX_PEERS or not all(
            isinstance(k, str) and len(k) <= 64 and type(n) is int and 0 <= n < 2**63 for k, n in d.items()):
        raise ProtocolError("version must be an object of peer -> non-negative int")
    return tuple(sorted(d.items()))
