"""Our own librsync signatures: cached by content in the manifest, computed
in the background (on a thread that runs only on an idle core) once a version lands, so the next delta against it -- ours,
or a peer's that asks -- never waits for a read of the whole file, and a
sender that held the peer's version needs no signature from the wire."""
from __future__ import annotations

import math
import os
import threading
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Callable

from .. import engine, engines
from ..core.entry import Entry
from ..errors import TransferFailed
from ..fs import native
from ..fs.safe import SafeRoot
from .manifest import Manifest
from ..core.limits import DELTA_MIN


READ = 1024 * 1024
SIGN_THREADS = min(os.cpu_count() or 1, 4)  # a signature someone waits for is signed on this many at once


class _Interruptible:
    """A file as librsync reads it, that stops the read when `stop` is set.

    Reads are at least 1 MiB, whatever the binding asks (python-rsync asks for 64 KiB; both
    bindings take what they are given): each read takes the GIL, and this thread runs only on
    an idle core, so a read preempted while holding it stalls the transfer's threads until
    the core is idle again -- sixteen times fewer reads, sixteen times fewer such stalls.
    `tap` sees every byte read, in order (the blocks' digests are made of the same read); if
    the binding ever moved in the file instead, `tapped` is False."""

    def __init__(self, f: BinaryIO, stop: threading.Event, tap: Callable[[bytes], None] = lambda _d: None) -> None:
        self._f, self._stop, self._tap = f, stop, tap
        self.tapped = True

    def read(self, n: int = -1) -> bytes:
        if self._stop.is_set():
            raise OSError("stopped")
        data = self._f.read(n if n < 0 else max(n, READ))
        self._tap(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        self.tapped = False
        return self._f.seek(pos, whence)

    def tell(self) -> int:
        return self._f.tell()

    def write(self, _: bytes) -> int:  # the binding checks for a file-like object
        raise OSError("read-only")


class Signatures:
    def __init__(self, root: SafeRoot, manifest: Manifest, current: Callable[[str], Entry | None],
                 background: bool = True) -> None:
        self._root = root
        self._background = background  # off: no threads, nothing precomputed (the cache fills on demand)
        self._manifest = manifest
        self._current = current  # what a path holds now (to never cache a signature of a stale read)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="signature", initializer=native.background_thread) \
            if background else None
        self._jobs: dict[tuple[str, str], Future[tuple[int, bytes]]] = {}
        self._stop = threading.Event()

    def get(self, entry: Entry) -> tuple[int, bytes]:
        """(block length, signature) of this version of a file we hold: cached,
        or from a background job under way, or computed now."""
        assert entry.blake3 is not None
        cached = self._manifest.signature(entry.path, entry.blake3, engine.SIG_FORMAT)
        if cached is not None:
            return cached
        job = self._jobs.get((entry.path, entry.blake3))
        if job is not None:
            try:
                return job.result()
            except (engine.DeltaError, OSError, TransferFailed, futures.CancelledError):
                pass  # that job was stopped or failed: compute it here
        return self._compute(entry, interruptible=False)

    def precompute(self, entry: Entry) -> None:
        """Compute and cache a version's signature in the background."""
        if entry.size < DELTA_MIN or not self._background:
            return
        key = (entry.path, entry.blake3 or "")
        assert self._pool is not None
        fut = self._pool.submit(self._compute, entry)
        self._jobs[key] = fut
        fut.add_done_callback(lambda _f: self._jobs.pop(key, None))

    def close(self, wait: float = 0.0) -> None:
        """Give background jobs up to `wait` seconds (inf: until done), then stop the rest mid-read."""
        pending = list(self._jobs.values())
        if pending and wait > 0:
            futures.wait(pending, timeout=None if math.isinf(wait) else wait)
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _compute(self, entry: Entry, interruptible: bool = True) -> tuple[int, bytes]:
        """Sign a version. In the background its blocks' blake3 digests are kept too (made of the
        same read): our own next delta against this version checks its blocks with them
        (`engine.segment_delta`); someone waiting gets the signature alone, at once."""
        block = engine.block_len_for(entry.size)
        digests = None
        with self._root.open_read(entry.path) as f:
            if interruptible:
                made = engine.BlockDigests(block)
                read = _Interruptible(f, self._stop, made.update)
                sig = engine.signature(read, block)
                digests = made.digests() if read.tapped else None
            else:  # someone waits for it: on every core
                sig = engine.signature_of_fd(f.fileno(), os.fstat(f.fileno()).st_size, block,
                                             SIGN_THREADS if self._background else 1)
        assert entry.blake3 is not None
        cur = self._current(entry.path)
        if cur is not None and cur.blake3 == entry.blake3:
            self._manifest.store_signature(entry.path, entry.blake3, block, sig, engine.SIG_FORMAT, engines.get().name,
                                           digests)
        return block, sig
