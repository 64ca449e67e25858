"""Who is syncing with whom, and which paths each session is writing.

One registry per folder in this process: a `watch` process serves peers and
syncs with them as a client at once, and two sessions must never write one
path at the same time, nor two sessions with one peer send each other the
same files. Everything a session claimed goes when it ends, however it ended.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..errors import TransferFailed


@dataclass(eq=False)
class Ticket:
    """One session: the peer it is with, and whether we are its client or its server."""

    peer: str = ""
    role: str = "server"
    paths: set[str] = field(default_factory=set)
    # the sequence our index had when the peer's plan was made from it (ours, as a server; as a
    # client, after our scan): a file recorded since changed after that plan, and is not overwritten
    planned_at: int | None = None


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # claims are taken on worker threads
        self._sessions: set[Ticket] = set()
        self._claims: dict[str, Ticket | None] = {}

    def open(self, peer: str, role: str) -> Ticket:
        ticket = Ticket(peer, role)
        with self._lock:
            self._sessions.add(ticket)
        return ticket

    def close(self, ticket: Ticket) -> int:
        """The session ended: its claims go with it. How many were left."""
        with self._lock:
            self._sessions.discard(ticket)
            mine = [p for p, owner in self._claims.items() if owner is ticket]
            for p in mine:
                del self._claims[p]
        return len(mine)

    def busy_with(self, peer: str, role: str | None = None) -> bool:
        """Is a session with `peer` (in `role`, or either) running now?"""
        with self._lock:
            return any(t.peer == peer and role in (None, t.role) for t in self._sessions)

    def claim(self, path: str, ticket: Ticket | None) -> None:
        with self._lock:
            if path in self._claims:
                raise TransferFailed(f"{path}: another session is writing it")
            self._claims[path] = ticket

    def holder(self, path: str) -> Ticket | None:
        """The session writing `path` now, if one claimed it."""
        with self._lock:
            return self._claims.get(path)

    def release(self, path: str) -> None:
        with self._lock:
            self._claims.pop(path, None)

    def claimed(self, path: str) -> bool:
        with self._lock:
            return path in self._claims


_REGISTRIES: dict[str, Registry] = {}
_REGISTRIES_LOCK = threading.Lock()


def registry(root: str) -> Registry:
    """The registry of the folder at `root` (one per process)."""
    with _REGISTRIES_LOCK:
        return _REGISTRIES.setdefault(root, Registry())
