"""blake3 of files and segments. Large reads use blake3's own threads, so
hashing a 500 MB file costs a fraction of a second and constant memory."""
from __future__ import annotations

import os
from typing import BinaryIO

from blake3 import blake3

READ_SIZE = 4 * 1024 * 1024


def of_bytes(data: bytes | memoryview) -> str:
    return blake3(data, max_threads=blake3.AUTO if len(data) >= READ_SIZE else 1).hexdigest()


def file_hasher(threads: bool = False) -> blake3:
    """A hasher for a whole file, fed in pieces. blake3's threads pay only for big
    pieces: fed librsync's patch output (tens of KiB a call) they cost ten times the hashing."""
    return blake3(max_threads=blake3.AUTO if threads else 1)


def of_fd(fd: int, segment_size: int = 0) -> tuple[str, bytes]:
    """Hash an open file descriptor from offset 0 without moving its position.
    With `segment_size`, also the 32-byte blake3 of every segment, concatenated:
    a later version is compared with them at fixed offsets, so segments that did
    not change need no rolling search (see sender.FileSender)."""
    h = file_hasher(threads=True)
    segments = bytearray()
    step = segment_size or READ_SIZE
    offset = 0
    while chunk := os.pread(fd, step, offset):
        h.update(chunk)
        if segment_size:
            segments += blake3(chunk, max_threads=blake3.AUTO).digest()
        offset += len(chunk)
    return h.hexdigest(), bytes(segments)


class HashingWriter:
    """A write-through file wrapper that hashes and bounds what passes
    (librsync's patch output goes through it, so a segment is verified as it
    is written and can never grow past its declared length)."""

    def __init__(self, f: BinaryIO, limit: int, along: blake3 | None = None) -> None:
        self._f = f
        self._h = blake3()
        self._along = along  # a second hasher fed the same bytes (the whole file's)
        self._limit = limit
        self.written = 0

    def write(self, data: bytes) -> int:
        if self.written + len(data) > self._limit:
            # a delta may not expand past its declared length (a hostile one could fill the disk)
            raise OverflowError(f"output exceeds the declared {self._limit} bytes")
        self._h.update(data)
        if self._along is not None:
            self._along.update(data)
        self.written += len(data)
        return self._f.write(data)

    # librsync's binding checks for a file-like object
    def read(self, n: int = -1) -> bytes:  # pragma: no cover - never called by patch
        raise OSError("write-only")

    def seek(self, *_: int) -> int:  # pragma: no cover
        raise OSError("not seekable")

    def hexdigest(self) -> str:
        return self._h.hexdigest()
