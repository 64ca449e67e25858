"""Big files, in segments: a partial file beside the folder, a journal of
verified segments, a final verify, an atomic replace.

A segment is journaled only after its bytes are verified and fsynced, so after
a crash a transfer resumes at the first missing segment and never trusts
unverified bytes.
"""
from __future__ import annotations

import json
import os
import time
from concurrent import futures
from concurrent.futures import Executor, Future
from typing import BinaryIO

from .. import engine, hashing
from ..core import limits, sparse
from ..core import version as vv
from ..core.entry import FILE, Entry, Xattrs
from ..core.result import FileResult
from ..errors import ProtocolError, TransferFailed
from ..fs import native, safe
from ..fs.direct import DirectWriter, pwrite_all
from ..wire.framing import Buffer
from ..wire.messages import BeginFile, SendDelta
from .claims import Ticket
from .local import LocalState, tmp_name
from .manifest import Partial
from .signatures import Signatures

# Written segments are fsynced and journaled together, every SYNC_BYTES or SYNC_SECONDS:
# one fdatasync per 4 MiB segment cost 1.56 s per 500 MB here, one per 32 MiB about a
# third of that. A crash loses at most the unjournaled group (a quarter second of a slow
# link, 16 MiB of a fast one), which a resume resends. Each segment's writeback starts as
# it is written, and a group's fdatasync and journal entry run on the receiver's
# durability thread while the next segments are written (one group in flight per file).
SYNC_BYTES = 16 * 1024 * 1024
SYNC_SECONDS = 0.25


def _copy_range(src: int, w: DirectWriter, offset: int, length: int) -> bytes | None:
    """The basis's bytes at this offset into the partial: only its data where the partial
    has nothing yet (a sparse basis stays sparse), else every byte. In the kernel where
    that can share blocks; on ext4, where it would copy them through the page cache,
    through memory and past the cache -- then the bytes come back, for the running hash."""
    if os.fstat(src).st_size < offset + length:
        raise ProtocolError("the basis is shorter than the segment it should hold")
    extents = native.data_extents(src, offset, length) if os.fstat(w.fd).st_size <= offset else [(offset, length)]
    if w.direct and extents == [(offset, length)] and native.copies_bytes(w.fd):
        data = os.pread(src, length, offset)
        if len(data) != length:
            raise ProtocolError("the basis is shorter than the segment it should hold")
        w.pwrite(data, offset)
        return data
    for start, size in extents:
        if native.copy_range(src, w.fd, start, size) != size:
            raise ProtocolError("the basis is shorter than the segment it should hold")
    return None


def _write(w: DirectWriter, data: Buffer, offset: int, holes: sparse.Runs) -> None:
    """A segment into the partial file, its holes left unwritten where the file has
    nothing yet (past its end: they read as zeros, and take no space)."""
    if not holes or os.fstat(w.fd).st_size > offset:  # over earlier bytes (a resume): write the zeros too
        w.pwrite(data, offset)
        return
    view = memoryview(data)
    for start, length in sparse.data_runs(holes, len(view)):
        pwrite_all(w.fd, view[start : start + length], offset + start)


def _hash_through(f: "OpenFile", upto: int) -> None:
    """Feed the running hash what the partial holds below `upto` that it has not seen:
    segments that never passed through memory (resumed, copied in the kernel, holes punched)."""
    seg = f.partial.segment_size
    while f.hashed < upto:
        idx, n = f.hashed // seg, min(seg, upto - f.hashed)
        data = os.pread(f.fd, n, f.hashed)
        if len(data) < n:  # holes at the partial's end, not yet extended: they read as zeros at file_done
            data += bytes(n - len(data))
        f.hasher.update(data)
        if idx not in f.digests and n == min(seg, f.partial.size - f.hashed):
            f.digests[idx] = bytes.fromhex(hashing.of_bytes(data))
        f.hashed += n


def _hash_in_order(f: "OpenFile", offset: int) -> bool:
    """True when the segment at `offset` is next for the running hash (what lies before it caught up)."""
    _hash_through(f, offset)
    return f.hashed == offset


class OpenFile:
    """One file being received in segments: its partial, and the basis a delta patches."""

    def __init__(self, partial: Partial, fd: int, writer: DirectWriter, basis: BinaryIO | None,
                 basis_segments: list[bytes] | None = None, ticket: Ticket | None = None,
                 attrs: Xattrs | None = None) -> None:
        self.partial = partial
        self.attrs = attrs  # the extended attributes the finished file gets (None: we keep none)
        self.ticket = ticket
        self.fd = fd
        self.writer = writer  # whole blocks past the page cache (fs/direct)
        self.basis = basis
        self.basis_segments = basis_segments  # our own per-segment blake3 of the basis, when recorded
        self.done = set(partial.done)
        # the whole file's blake3, fed in order as segments pass through memory: file_done
        # then needs no second read of what just arrived (only of what never was in memory)
        self.hasher = hashing.file_hasher()
        self.hashed = 0  # bytes of the file the hasher has seen, from offset 0
        self.digests: dict[int, bytes] = {}  # each segment's verified blake3
        self.unsynced: list[int] = []  # written, not yet fsynced nor journaled
        self.unsynced_bytes = 0
        self.synced_at = time.monotonic()
        self.syncing: Future[None] | None = None  # a group being made durable in the background

    def settle(self) -> None:
        """Wait for the group being made durable in the background; its failure is raised here."""
        fut, self.syncing = self.syncing, None
        if fut is not None:
            fut.result()

    def close(self) -> None:
        if self.syncing is not None:  # never close the fd under its fdatasync
            futures.wait([self.syncing])
            self.syncing = None
        self.writer.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.basis is not None:
            self.basis.close()


class SegmentedFiles(LocalState):
    signatures: Signatures
    durability: Executor | None  # one thread for groups' fdatasyncs (None: each is done in line)

    def begin(self, m: BeginFile, ticket: Ticket | None = None) -> OpenFile:
        safe.check_relpath(m.path, self.safe.max_path)
        limits.check_int(m.size, 0, self.max_file_size, "begin_file: size")
        self.registry.claim(m.path, ticket)
        basis = None
        try:
            self.expect(m.path, m.replaces, m.entry)
            basis = self.safe.open_read(m.path) if m.basis is not None else None
            old = self.manifest.partial(m.path)
            keep = (old is not None and old.target_blake3 == m.blake3 and old.replaces == m.replaces
                    and old.size == m.size and old.segment_size == m.segment_size
                    and (self.folder.partials / old.name).exists())
            if keep:
                assert old is not None
                part = old
            else:
                if old is not None:
                    self.discard(old)
                now = time.time()
                version = json.dumps(vv.to_wire(vv.from_wire(m.version)))
                part = Partial(m.path, m.blake3, m.replaces, m.size, m.mtime_ns, m.mode, m.segment_size,
                               tmp_name(".part"), now, now, version, frozenset())
            where = self.folder.partials / part.name
            fd = os.open(where, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if not keep:
                    os.ftruncate(fd, 0)
                    self.manifest.begin_partial(part)
                known = self.manifest.segments_of(m.basis, m.segment_size) if basis is not None else None
                return OpenFile(part, fd, DirectWriter(where, fd), basis, known, ticket, self.attrs_of(m.entry))
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            if basis is not None:  # (the open file it would have read from, on a later failure)
                basis.close()
            self.registry.release(m.path)
            raise

    def segment(self, f: OpenFile, m: SendDelta) -> None:
        p = f.partial
        idx, offset, length = m.index, m.offset, m.length
        if idx >= p.segments_total or offset != idx * p.segment_size or \
                length != min(p.segment_size, p.size - offset):
            raise ProtocolError(f"send_delta: segment {idx} of {p.path} is out of range")
        if idx in f.done:
            return  # already verified and journaled; an idempotent resend
        if m.same:  # unchanged: the basis holds these bytes at this very offset
            if f.basis is None:
                raise ProtocolError(f"send_delta: {p.path} segment {idx} copies from a missing basis")
            known = f.basis_segments
            if known is not None and idx < len(known) and known[idx] == bytes.fromhex(m.blake3):
                copied = _copy_range(f.basis.fileno(), f.writer, offset, length)  # we know its hash
                if copied is not None:
                    self._hashed(f, offset, copied)
            else:
                data = os.pread(f.basis.fileno(), length, offset)
                if len(data) != length or hashing.of_bytes(data) != m.blake3:
                    raise ProtocolError(f"{p.path}: segment {idx} is not what the basis holds there")
                f.writer.pwrite(data, offset)
                self._hashed(f, offset, data)
        elif m.literal:
            data = sparse.expand(m.body, m.holes, length) if m.holes else m.body
            whole_hole = m.holes == ((0, length),)
            if len(data) != length or (sparse.zero_digest(length) if whole_hole else hashing.of_bytes(data)) \
                    != m.blake3:
                # the sender hashed exactly these bytes: a mismatch is never innocent
                raise ProtocolError(f"{p.path}: segment {idx} failed verification")
            _write(f.writer, data, offset, m.holes)
            self._hashed(f, offset, data)
        else:
            self._patch(f, m)
        f.digests[idx] = bytes.fromhex(m.blake3)
        self._written(f, idx, length)

    @staticmethod
    def _hashed(f: OpenFile, offset: int, data: Buffer) -> None:
        if _hash_in_order(f, offset):
            f.hasher.update(data)
            f.hashed += len(data)

    def _patch(self, f: OpenFile, m: SendDelta) -> None:
        p = f.partial
        if f.basis is None:
            raise ProtocolError(f"send_delta: delta for {p.path} without a basis")
        fresh = os.fstat(f.fd).st_size <= m.offset  # nothing of ours there yet: its holes may stay holes
        punch = fresh and bool(m.holes)  # then the file hash reads it back: a false hole claim must show
        try:
            data = engine.patch_segment(f.basis.fileno(), m.body, m.length)  # in memory, checked before it is written
        except engine.DeltaError as e:
            raise ProtocolError(f"{p.path}: segment {m.index}: {e}") from None
        if hashing.of_bytes(data) != m.blake3:
            raise ProtocolError(f"{p.path}: segment {m.index} failed verification")
        f.writer.pwrite(data, m.offset)
        if punch:  # the zero runs the sender found give their space back (a false claim fails the file's check)
            for start, size in m.holes:
                native.punch_hole(f.fd, m.offset + start, size)
        else:
            self._hashed(f, m.offset, data)

    def _written(self, f: OpenFile, idx: int, length: int) -> None:
        f.unsynced.append(idx)
        f.unsynced_bytes += length
        native.start_writeback(f.fd)  # the disk starts now; the group's fdatasync then waits for little
        if f.unsynced_bytes >= SYNC_BYTES or time.monotonic() - f.synced_at >= SYNC_SECONDS:
            self._sync_segments(f, wait=False)

    def _sync_segments(self, f: OpenFile, wait: bool = True) -> None:
        """Make written segments durable, then journal them: never the other way round. Without
        `wait`, on the durability thread (after the group before it is done)."""
        f.settle()
        if f.unsynced:
            group, f.unsynced = f.unsynced, []
            if wait or self.durability is None:
                self._make_durable(f, group)
            else:
                f.syncing = self.durability.submit(self._make_durable, f, group)
        f.unsynced_bytes = 0
        f.synced_at = time.monotonic()

    def _make_durable(self, f: OpenFile, group: list[int]) -> None:
        native.datasync(f.fd)
        self.manifest.segments_done(f.partial.path, group)
        f.done.update(group)

    def finish(self, f: OpenFile) -> FileResult:
        """Verify the whole file and put it in place. The partial is dropped
        when it can never become right; kept when only a resend is missing."""
        p = f.partial
        try:
            self._sync_segments(f)
            missing = p.segments_total - len(f.done)  # `done` holds only indexes below the total
            if missing:
                raise TransferFailed(f"{p.path}: {missing} segments missing at file_done")
            os.ftruncate(f.fd, p.size)
            _hash_through(f, p.size)
            digest = f.hasher.hexdigest()
            segments = b"".join(f.digests[i] for i in range(p.segments_total))
            if digest != p.target_blake3:
                self.discard(p)
                raise TransferFailed(f"{p.path}: whole-file blake3 mismatch; partial dropped")
            self.manifest.store_segments([(digest, p.segment_size, segments)])
            self.expect(p.path, p.replaces)
            safe.finish(f.fd, p.mode, p.mtime_ns, attrs=f.attrs, path=p.path)
            kept = self.safe.replace(self.folder.partials / p.name, p.path,
                                     keep=self.keeper(p.path, f.ticket, "replaced"))
            entry = Entry(p.path, FILE, p.size, p.mtime_ns, p.mode, p.target_blake3,
                          version=vv.from_stored(json.loads(p.version)), xattrs=f.attrs or ())
            self.record(entry)
            self.manifest.drop_partial(p.path)
            self.signatures.precompute(entry)
            return FileResult(p.path, True, whole=f.basis is None, kept=kept)
        finally:
            f.close()
            self.registry.release(p.path)

    def abandon(self, f: OpenFile, drop: bool = False) -> None:
        """The session ended mid-file: keep the verified segments for a resume
        (or drop them, when the disk is full and the space is worth more)."""
        if not drop and f.fd >= 0:
            try:
                self._sync_segments(f)  # what was written and verified is kept for the resume
            except OSError:
                pass
        f.close()
        if drop:
            self.discard(f.partial)
        self.registry.release(f.partial.path)

    def discard(self, p: Partial) -> None:
        safe.unlink_state(self.folder.root, "partial", p.name)
        self.manifest.drop_partial(p.path)
