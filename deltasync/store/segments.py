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
from typing import BinaryIO

from .. import engine, hashing
from ..core import limits, sparse
from ..core import version as vv
from ..core.entry import FILE, Entry, Xattrs
from ..core.result import FileResult
from ..errors import ProtocolError, TransferFailed
from ..fs import native, safe
from ..wire.framing import Buffer
from ..wire.messages import BeginFile, SendDelta
from .claims import Ticket
from .local import LocalState, tmp_name
from .manifest import Partial
from .signatures import Signatures

# Written segments are fsynced and journaled together, every SYNC_BYTES or SYNC_SECONDS:
# one fdatasync per 4 MiB segment cost 1.56 s per 500 MB here, one per 32 MiB about a
# third of that. A crash loses at most the unjournaled group (a quarter second of a slow
# link, 16 MiB of a fast one), which a resume resends.
SYNC_BYTES = 16 * 1024 * 1024
SYNC_SECONDS = 0.25


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    """The basis's bytes at this offset into the partial: only its data where the partial
    has nothing yet (a sparse basis stays sparse), else every byte."""
    if os.fstat(src).st_size < offset + length:
        raise ProtocolError("the basis is shorter than the segment it should hold")
    extents = native.data_extents(src, offset, length) if os.fstat(dst).st_size <= offset else [(offset, length)]
    for start, size in extents:
        if native.copy_range(src, dst, start, size) != size:
            raise ProtocolError("the basis is shorter than the segment it should hold")


def _pwrite_all(fd: int, data: Buffer, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write(fd: int, data: Buffer, offset: int, holes: sparse.Runs) -> None:
    """A segment into the partial file, its holes left unwritten where the file has
    nothing yet (past its end: they read as zeros, and take no space)."""
    if not holes or os.fstat(fd).st_size > offset:  # over earlier bytes (a resume): write the zeros too
        _pwrite_all(fd, data, offset)
        return
    view = memoryview(data)
    for start, length in sparse.data_runs(holes, len(view)):
        _pwrite_all(fd, view[start : start + length], offset + start)


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

    def __init__(self, partial: Partial, fd: int, basis: BinaryIO | None,
                 basis_segments: list[bytes] | None = None, ticket: Ticket | None = None,
                 attrs: Xattrs | None = None) -> None:
        self.partial = partial
        self.attrs = attrs  # the extended attributes the finished file gets (None: we keep none)
        self.ticket = ticket
        self.fd = fd
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

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.basis is not None:
            self.basis.close()


class SegmentedFiles(LocalState):
    signatures: Signatures

    def begin(self, m: BeginFile, ticket: Ticket | None = None) -> OpenFile:
        safe.check_relpath(m.path, self.safe.max_path)
        limits.check_int(m.size, 0, self.max_file_size, "begin_file: size")
        self.registry.claim(m.path, ticket)
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
            fd = os.open(self.folder.partials / part.name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if not keep:
                os.ftruncate(fd, 0)
                self.manifest.begin_partial(part)
            known = self.manifest.segments_of(m.basis, m.segment_size) if basis is not None else None
            return OpenFile(part, fd, basis, known, ticket, self.attrs_of(m.entry))
        except BaseException:
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
                _copy_range(f.basis.fileno(), f.fd, offset, length)  # in the kernel; we know its hash
            else:
                data = os.pread(f.basis.fileno(), length, offset)
                if len(data) != length or hashing.of_bytes(data) != m.blake3:
                    raise ProtocolError(f"{p.path}: segment {idx} is not what the basis holds there")
                _pwrite_all(f.fd, data, offset)
                self._hashed(f, offset, data)
        elif m.literal:
            data = sparse.expand(m.body, m.holes, length) if m.holes else m.body
            whole_hole = m.holes == ((0, length),)
            if len(data) != length or (sparse.zero_digest(length) if whole_hole else hashing.of_bytes(data)) \
                    != m.blake3:
                # the sender hashed exactly these bytes: a mismatch is never innocent
                raise ProtocolError(f"{p.path}: segment {idx} failed verification")
            _write(f.fd, data, offset, m.holes)
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
        along = f.hasher if not punch and _hash_in_order(f, m.offset) else None
        out = os.fdopen(os.dup(f.fd), "wb", buffering=1024 * 1024)
        try:
            out.seek(m.offset)
            w = hashing.HashingWriter(out, m.length, along)  # bounded and hashed as it is written
            try:
                engine.patch(f.basis, m.body, w)
            except engine.DeltaError as e:
                raise ProtocolError(f"{p.path}: segment {m.index}: {e}") from None
            out.flush()
        finally:
            out.close()
        if w.written != m.length or w.hexdigest() != m.blake3:
            raise ProtocolError(f"{p.path}: segment {m.index} failed verification")
        if along is not None:
            f.hashed += m.length
        if punch:  # the zero runs the sender found give their space back (a false claim fails the file's check)
            for start, size in m.holes:
                native.punch_hole(f.fd, m.offset + start, size)

    def _written(self, f: OpenFile, idx: int, length: int) -> None:
        f.unsynced.append(idx)
        f.unsynced_bytes += length
        if f.unsynced_bytes >= SYNC_BYTES or time.monotonic() - f.synced_at >= SYNC_SECONDS:
            self._sync_segments(f)

    def _sync_segments(self, f: OpenFile) -> None:
        """Make written segments durable, then journal them: never the other way round."""
        if f.unsynced:
            native.datasync(f.fd)
            self.manifest.segments_done(f.partial.path, f.unsynced)
            f.done.update(f.unsynced)
            f.unsynced.clear()
        f.unsynced_bytes = 0
        f.synced_at = time.monotonic()

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
