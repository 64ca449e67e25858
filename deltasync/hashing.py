"""blake3 of files and segments. Large reads use blake3's own threads, so
hashing a 500 MB file costs a fraction of a second and constant memory."""
from __future__ import annotations

import os

from blake3 import blake3

READ_SIZE = 4 * 1024 * 1024


def of_bytes(data: bytes | memoryview) -> str:
    return blake3(data, max_threads=blake3.AUTO if len(data) >= READ_SIZE else 1).hexdigest()


def file_hasher(threads: bool = False) -> blake3:
    """A hasher for a whole file, fed in pieces. blake3's threads pay only for big
    pieces (fed tens of KiB a call they cost ten times the hashing)."""
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
