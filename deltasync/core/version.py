"""Version vectors: `{peer: counter}` as a sorted tuple of pairs (hashable,
comparable). A local change bumps our own counter; the order between two
vectors says which version replaces which, or that they are concurrent (a
conflict)."""
from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from ..errors import ProtocolError
from .limits import INT64_MAX, MAX_VECTOR_KEY_LEN, MAX_VECTOR_KEYS

Version = tuple[tuple[str, int], ...]
EQUAL, NEWER, OLDER, CONCURRENT = "equal", "newer", "older", "concurrent"


def _bounded(d: dict[str, int], keep: str | None = None) -> Version:
    """A vector a peer will accept: at most MAX_VECTOR_KEYS keys (the smallest
    counters go first, never `keep`). A dropped key can only turn a later
    comparison into a conflict, where both versions are kept: nothing is lost."""
    if len(d) > MAX_VECTOR_KEYS:
        drop = sorted((n, k) for k, n in d.items() if k != keep)[: len(d) - MAX_VECTOR_KEYS]
        for _, k in drop:
            del d[k]
    return tuple(sorted(d.items()))


CACHED_KEYS = 8  # vectors of at most this many keys (a real folder's: a few peers) are made once and kept
CACHED = 1024  # distinct vectors kept at most: with CACHED_KEYS, a bound on what a peer's vectors can make us hold
F = TypeVar("F", bound=Callable[..., Any])


def cached_when(small: Callable[..., bool]) -> Callable[[F], F]:
    """`fn` computed once per distinct arguments for which `small(*args)`, up to CACHED of them
    (its `cache_info` tells); for any other, each time: what a cache holds stays bounded whatever
    a peer sends."""
    def wrap(fn: F) -> F:
        cached = functools.lru_cache(maxsize=CACHED)(fn)

        @functools.wraps(fn)
        def call(*args: Any) -> Any:
            return cached(*args) if small(*args) else fn(*args)

        call.cache_info = cached.cache_info  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]
    return wrap


@cached_when(lambda v, me: len(v) <= CACHED_KEYS)
def bump(v: Version, me: str) -> Version:
    """`v` with our counter one up (a first scan bumps () for each file: made once)."""
    d = dict(v)
    d[me] = min(d.get(me, 0) + 1, INT64_MAX)  # saturates: a peer's huge counter cannot make ours unsendable
    return _bounded(d, me)


def merge(a: Version, b: Version) -> Version:
    d = dict(a)
    for k, n in b:
        d[k] = max(d.get(k, 0), n)
    return _bounded(d)


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
    if not isinstance(d, dict) or len(d) > MAX_VECTOR_KEYS or not all(
            isinstance(k, str) and 0 < len(k) <= MAX_VECTOR_KEY_LEN and type(n) is int and 0 <= n <= INT64_MAX
            for k, n in d.items()):
        raise ProtocolError(f"version must be an object of at most {MAX_VECTOR_KEYS} peer keys "
                            f"(up to {MAX_VECTOR_KEY_LEN} characters) -> non-negative 64-bit int")
    return tuple(sorted(d.items()))


def from_stored(d: Any) -> Version:
    """A vector from our own manifest. Older versions accepted vectors of up to
    1000 keys from peers; they are cut to what a peer accepts now, so a stored
    row can never make our index unsendable."""
    if not isinstance(d, dict):
        return ()
    good = {k: min(n, INT64_MAX) for k, n in d.items()
            if isinstance(k, str) and 0 < len(k) <= MAX_VECTOR_KEY_LEN and type(n) is int and n >= 0}
    return _bounded(good)
