"""Which paths a session compares: all of them the first time, then only what
changed since the last complete session with that peer.

A path needs a look when we recorded it since that session began, when the
peer's index says it changed since, or when that session left it unsettled
(failed, blocked, held, or left different on purpose: a push without
--delete, a pull). Everything else was the same on both sides and still is.
(A directory deleted on one side is no exception: each path inside it was
either the same on both sides, so it is deleted here too and recorded as a
tombstone, or it was left unsettled.) Around those paths, what a plan needs
to decide them: their directories (blocked parents, directory metadata) and
the first name of a hard link.
"""
from __future__ import annotations

import hashlib
import json

from ..core.entry import Entry, parents
from ..core.record import Mutable, record
from ..fs.scan import ScanResult
from ..store.peer_index import PeerIndex


def shape(excludes: list[str] | None, ours: list[str], theirs: list[str]) -> str:
    """What makes one session's settling valid for the next: the same rules on both sides. (Not the
    way it went: whatever a push, pull or sync leaves different on purpose is left unsettled.)"""
    raw = json.dumps([excludes or [], ours, theirs]).encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


@record
class Scope(Mutable):
    """The paths to compare (None: all) and the peer's entries for them."""

    paths: set[str] | None
    remote: dict[str, Entry]


def widen(paths: set[str], scanned: ScanResult, peer: PeerIndex) -> Scope:
    """`paths` and what deciding them needs (see the module's docstring), with the peer's entries."""
    paths = set(paths)
    remote = peer.entries(paths)
    local = scanned.pick(paths)
    leaders = {e.link for e in (*local.values(), *remote.values()) if e.link}
    extra = leaders | {q for p in paths | leaders for q in parents(p)}
    extra -= paths
    if extra:
        paths |= extra
        remote.update(peer.entries(extra))
    return Scope(paths, remote)
