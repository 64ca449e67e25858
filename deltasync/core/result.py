"""A file's verdict, wherever it is decided: the receiver (written, or why
not), the sender (could not send it), or the peer (its `ack`)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileResult:
    path: str
    ok: bool
    error: str | None = None
    whole: bool = False  # it travelled whole (no delta basis)
    kept: str | None = None  # the version it replaced or deleted, kept under .deltasync/versions/

    @classmethod
    def failed(cls, path: str, why: str) -> "FileResult":
        return cls(path, False, why)
