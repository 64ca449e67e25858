"""The rsync algorithm as deltasync uses it: block sizes, checks on a peer's
signature, and signature/delta/patch over streams, done by the engine
`engines.get()` chose (python-rsync or the system librsync through ctypes).

Signatures use librsync's default since 2.2: RabinKarp rolling sums with
BLAKE2 strong sums, truncated to STRONG_LEN bytes (a false block match is
still caught by the end-to-end blake3 check).
"""
from __future__ import annotations

import io
import math
import os
import struct
from typing import Any, BinaryIO, Callable, Iterator

from blake3 import blake3

from . import engines
from .core import limits
from .engines import RS_BLAKE2_SIG_MAGIC, RS_DELTA_MAGIC, RS_RESULTS, RS_RK_BLAKE2_SIG_MAGIC, SIG_MAGICS, DeltaError
from .errors import ProtocolError

STRONG_LEN = 16
MIN_BLOCK = 8 * 1024
MAX_BLOCKS = 65536
MAGIC = RS_RK_BLAKE2_SIG_MAGIC
SIG_FORMAT = f"{MAGIC:08x}/{STRONG_LEN}"  # recorded with every cached signature; both engines write these bytes

__all__ = ["DeltaError", "SIG_MAGICS", "MAGIC", "aligned_delta", "block_len_for", "check_signature", "delta",
           "delta_to", "patch", "segment_delta", "signature", "signature_of_fd", "signature_to", "sig_args"]


def block_len_for(size: int) -> int:
    """8 KiB blocks (cheap deltas for shifted data: 1.8 MB vs 4.6 MB at the
    default 2 KiB-per-sqrt rule on a 500 MB file), doubled until the file has at
    most 65536 blocks, so a signature stays under ~1.3 MB (one frame) and the
    delta side's hash table stays small for any file size. A small file edited
    (under DELTA_MIN) gets the block that makes signature plus delta of one
    edit smallest: its signature costs 20 bytes a block and the edit about one
    block, so sqrt(20 * size) in 64s -- 832 bytes for 30 KiB, where 8 KiB would
    send ten times the edit."""
    if size < limits.DELTA_MIN:
        return max(512, -(-math.isqrt(20 * size) // 64) * 64)
    block = MIN_BLOCK
    while size // block > MAX_BLOCKS:
        block *= 2
    return block


def check_signature(sig: bytes | bytearray, basis_size: int) -> None:
    """Refuse a peer's signature before librsync loads it: a known format, a
    block length in range, exactly the blocks a basis of `basis_size` bytes
    has, and no weak sum shared by many different blocks (a signature built
    so that every byte of our file hits one hash bucket would make the delta
    search compare each position with thousands of strong sums)."""
    if len(sig) < 12:
        raise ProtocolError("signature: shorter than its header")
    magic, block, strong = struct.unpack_from(">III", sig)
    if magic not in SIG_MAGICS:
        raise ProtocolError("signature: unknown format")
    if not limits.MIN_BLOCK_LEN <= block <= limits.MAX_BLOCK_LEN or not 1 <= strong <= 32:
        raise ProtocolError("signature: block or strong-sum length out of range")
    blocks = -(-basis_size // block) if basis_size else 0
    if blocks > limits.MAX_SIG_BLOCKS or len(sig) != 12 + blocks * (4 + strong):
        raise ProtocolError(f"signature: does not describe a basis of {basis_size} bytes in {block}-byte blocks")
    first: dict[int, bytes] = {}  # weak sum -> its first strong sum (almost every weak sum is unique)
    more: dict[int, set[bytes]] = {}  # weak sums shared by different blocks -> their strong sums
    for weak, strong_sum in struct.iter_unpack(f">I{strong}s", memoryview(sig)[12:]):
        seen = first.setdefault(weak, strong_sum)
        if seen == strong_sum:
            continue
        strongs = more.setdefault(weak, {seen})
        if len(strongs) < limits.MAX_WEAK_COLLISIONS:
            strongs.add(strong_sum)
        elif strong_sum not in strongs:
            raise ProtocolError("signature: too many different blocks share one weak sum")


def signature(f: Any, block_len: int, strong_len: int = STRONG_LEN, magic: int = MAGIC) -> bytes:
    out = io.BytesIO()
    signature_to(f, out, block_len, strong_len, magic)
    return out.getvalue()


def signature_to(f: Any, out: BinaryIO, block_len: int, strong_len: int = STRONG_LEN,
                 magic: int = MAGIC) -> None:
    try:
        engines.get().signature(f, out, block_len, strong_len, magic)
    except Exception as e:  # a binding's own error type, as ours
        raise DeltaError.of("signature", e) from None


SIG_PART = 16 << 20  # bytes a thread signs at a time (`signature_of_fd`)


class _Part:
    """Bytes [start, stop) of a file, read as librsync reads a stream (positioned reads: the
    parts share one descriptor)."""

    def __init__(self, fd: int, start: int, stop: int) -> None:
        self._fd, self._at, self._stop = fd, start, stop

    def read(self, n: int = -1) -> bytes:
        n = self._stop - self._at if n < 0 else min(max(n, 1 << 20), self._stop - self._at)
        data = os.pread(self._fd, n, self._at) if n > 0 else b""
        self._at += len(data)
        return data

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:  # python-rsync asks for a stream that has these
        raise OSError("not seekable")

    def tell(self) -> int:
        raise OSError("not seekable")

    def write(self, _: bytes) -> int:
        raise OSError("read-only")


def signature_of_fd(fd: int, size: int, block_len: int, threads: int) -> bytes:
    """The signature of a file's first `size` bytes, signed in parts of whole blocks on up to
    `threads` threads at once (both bindings release the GIL while librsync works). librsync
    signs block by block, so the parts' signatures, each after its 12-byte header, join into
    exactly the bytes one pass would give: a 500 MB basis a peer waits for is signed in half
    the time on two cores."""
    part = max(SIG_PART // block_len, 1) * block_len
    bounds = [(at, min(at + part, size)) for at in range(0, size, part)] or [(0, 0)]
    sign = lambda b: signature(_Part(fd, *b), block_len)  # noqa: E731
    if threads < 2 or len(bounds) < 2:
        return b"".join(sign(b)[12 if i else 0:] for i, b in enumerate(bounds))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(threads, len(bounds)), thread_name_prefix="sign") as pool:
        return b"".join(s[12 if i else 0:] for i, s in enumerate(pool.map(sign, bounds)))


def sig_args(size: int, magic: int, block_len: int, strong_len: int) -> tuple[int, int, int]:
    """librsync's recommended signature arguments for a file of `size` bytes (rdiff's defaults)."""
    return engines.get().sig_args(size, magic, block_len, strong_len)


def delta(new: bytes, sig: bytes | bytearray) -> bytes:
    """Delta of one segment of the new file against the whole old file's signature."""
    out = io.BytesIO()
    delta_to(io.BytesIO(new), io.BytesIO(sig), out)
    return out.getvalue()


def delta_to(new: BinaryIO, sig: BinaryIO, out: BinaryIO) -> None:
    try:
        engines.get().delta(new, sig, out)
    except Exception as e:
        raise DeltaError.of("delta", e) from None


PROBE_BLOCKS = 32  # blocks hashed before a segment mostly not in place is asked whether its data moved
_OP_LITERAL_N4, _OP_COPY_N8_N4 = 0x43, 0x53  # librsync's delta commands (its prototab.h)
_WIDTHS = (1, 2, 4, 8)


def aligned_delta(data: bytes | bytearray | memoryview, offset: int, sig: bytes | bytearray | memoryview,
                  digests: bytes | None = None) -> bytes | None:
    """A delta of the segment at `offset`, in librsync's format (any patch applies it), that
    compares each block first with the old file's block at the same offset.

    Where data was overwritten in place, or is new, (most edits of most files) that finds at
    a fraction of the cost what librsync's search would: one BLAKE2 per block (the strong sum
    the signature holds) instead of a rolling sum at every byte (~12 ns a byte of new data,
    for nothing). The blocks that differ are searched by librsync only where their first
    or last blocks show moved data (`_moved`, among the old blocks from a segment before this one to
    a segment after it: an insertion or a deletion shifts what follows it by little; and,
    for a segment mostly not in place, among all of them). In a segment mostly in place they
    are then searched all in one call among those near blocks (data brought from farther
    away into such a segment travels literally); a segment mostly moved is None, for
    `segment_delta`. A false match is caught as any is: by the segment's blake3."""
    magic, block, strong = struct.unpack_from(">III", sig)
    if magic not in (RS_BLAKE2_SIG_MAGIC, RS_RK_BLAKE2_SIG_MAGIC) or offset % block:
        return None
    view = memoryview(data).cast("B")
    first, have = offset // block, _blocks(sig)
    count = -(-len(view) // block)
    lo, near = _near(sig, first, count)
    same: list[bool] = []
    for k in range(count):
        same.append(first + k < have and _is_block(view[k * block : (k + 1) * block], sig, first + k, strong, digests))
        if k + 1 == PROBE_BLOCKS and sum(same) * 2 < PROBE_BLOCKS and _moved(view, _runs(same, block, len(view)),
                                                                               block, near):
            return None  # moved early on: no point hashing the rest
    runs = _runs(same, block, len(view))
    mostly_moved = sum(same) * 2 < count
    if not _moved(view, runs, block, near):
        if mostly_moved and _moved(view, runs, block, sig):  # from far away
            return None
        return _spliced(runs, view, offset, None)
    if mostly_moved:
        return None
    changed = b"".join(view[a:b] for a, b, ok in runs if not ok)
    return _spliced(runs, view, offset, delta(changed, near), lo * block)


def segment_delta(data: bytes | bytearray | memoryview, offset: int, sig: bytes | bytearray | memoryview,
                  digests: bytes | None = None) -> bytes:
    """The delta of one segment of the new file against the old file's signature, cheapest
    first: blocks compared in place (`aligned_delta`); else librsync's search among the old
    blocks near the segment (a small table: ~40% less CPU, and what an insertion or a deletion
    moved is there); else, when that leaves more than an eighth of the segment literal (data
    from far away, or new), the search in the whole old file, the smaller of the two kept.
    `digests`: the old blocks' `block_digests`, if we have them: a block is then checked with
    blake3 (~4x cheaper than the signature's BLAKE2), the delta the same."""
    if digests is not None and len(digests) != DIGEST_LEN * _blocks(sig):
        digests = None  # not this signature's blocks: checked with its own sums
    d = aligned_delta(data, offset, sig, digests)
    if d is not None:
        return d
    block = block_len_of(sig)
    lo, near = _near(sig, offset // block, -(-len(data) // block))
    d = walked_delta(data, sig, lo, near, digests)
    if d is not None:
        return d
    d = _rebased(delta(data, near), lo * block)
    if sum(n for copy, _, n in _commands(d) if not copy) * 8 <= len(data):
        return d
    whole = delta(data, sig)
    return whole if len(whole) < len(d) else d


PROBE = 3  # blocks librsync searches where the data's displacement is not known


def walked_delta(data: bytes | bytearray | memoryview, sig: bytes | bytearray | memoryview, lo: int,
                 near: bytes, digests: bytes | None = None) -> bytes | None:
    """A delta of a segment whose data moved (an insertion or a deletion before it), found as
    librsync's search finds it at little more than `aligned_delta`'s cost: librsync searches
    only a few blocks' bytes (`PROBE`) to learn where the data came from; then, as long as
    it keeps coming from there, each next block is compared with the old block it should be
    (one BLAKE2, the strong sum the signature holds) instead of a rolling sum at every byte
    and a hash lookup (librsync's ~9-12 ms a 4 MiB segment; this, ~5). Where a block
    differs, librsync searches again from there, trying each starting position its own search
    would try, so the delta is as small as librsync's; a segment left more than an eighth
    literal is None (data from far away, or new: `segment_delta`'s search). A false match is
    caught as any is: by the segment's blake3."""
    magic, block, strong = struct.unpack_from(">III", sig)
    if magic not in (RS_BLAKE2_SIG_MAGIC, RS_RK_BLAKE2_SIG_MAGIC):
        return None
    view = memoryview(data).cast("B")
    size, budget = len(view), len(view) // 8
    have = _blocks(sig)
    ops: list[list[int]] = []  # [copy?, old offset or start in view, length], neighbours merged
    literal = 0

    def add(copy: int, at: int, n: int) -> None:
        if ops and ops[-1][0] == copy and ops[-1][1] + ops[-1][2] == at:
            ops[-1][2] += n
        else:
            ops.append([copy, at, n])

    p, old = 0, -1  # where we are; the old offset the next block should come from (-1: unknown)
    while p < size:
        j = old // block
        if old >= 0 and old % block == 0 and j < have and size - p >= block \
                and _is_block(view[p : p + block], sig, j, strong, digests):
            add(1, old, block)
            p, old = p + block, old + block
            continue
        window = view[p : p + PROBE * block]
        tried = len(window) - block + 1 if len(window) == PROBE * block else len(window)  # starts with a whole block
        q, old = 0, -1
        for copy, at, n in _commands(delta(window, near)):
            if copy:
                old = lo * block + at
                break
            q += n
        if old < 0:
            q = tried
        literal += q
        if literal > budget:
            return None
        if q:
            add(0, p, q)
        p += q
        if old >= 0:
            add(1, old, n)
            p, old = p + n, old + n
    out: list[bytes | memoryview] = [struct.pack(">I", RS_DELTA_MAGIC)]
    for copy, at, n in ops:
        out += [_copy_op(at, n)] if copy else [_literal_op(n), view[at : at + n]]
    out.append(b"\0")
    return b"".join(out)


def _is_block(piece: memoryview, sig: bytes | bytearray | memoryview, j: int, strong: int,
              digests: bytes | None = None) -> bool:
    """Is `piece` old block `j`? By its blake3 digest among `digests`, else by the signature's
    strong sum (BLAKE2, cut to the signature's `strong` bytes)."""
    if digests is not None:
        return blake3(piece).digest(DIGEST_LEN) == digests[j * DIGEST_LEN : (j + 1) * DIGEST_LEN]
    import hashlib  # here: a command that sends no delta does not pay for its import

    at = 12 + j * (4 + strong) + 4
    return hashlib.blake2b(piece, digest_size=32).digest()[:strong] == sig[at : at + strong]


DIGEST_LEN = 16  # bytes of each block's blake3 digest in `block_digests`
READ_CHUNK = 1 << 20


class BlockDigests:
    """The blake3 digest (DIGEST_LEN bytes) of each block of a file, as its signature cuts it
    into blocks (the last one short), in order, from its bytes fed in order in pieces of any
    length: what `segment_delta` checks a block with, where we have them, instead of the
    signature's BLAKE2. Fed by the read that signs the file, it costs no read of its own."""

    def __init__(self, block_len: int) -> None:
        self._block, self._rest, self._out = block_len, b"", bytearray()

    def update(self, data: bytes) -> None:
        view = memoryview(self._rest + data if self._rest else data)
        whole = len(view) - len(view) % self._block
        for k in range(0, whole, self._block):
            self._out += blake3(view[k : k + self._block]).digest(DIGEST_LEN)
        self._rest = bytes(view[whole:])

    def digests(self) -> bytes:
        return bytes(self._out) + (blake3(self._rest).digest(DIGEST_LEN) if self._rest else b"")


def block_digests(read: Callable[[int], bytes], block_len: int) -> bytes:
    """`BlockDigests` of a whole file (`read`: a file's, b"" at its end)."""
    d = BlockDigests(block_len)
    while data := read(READ_CHUNK):
        d.update(data)
    return d.digests()


def block_len_of(sig: bytes | bytearray | memoryview) -> int:
    """The block length a signature was made with (from its header)."""
    return int(struct.unpack_from(">I", sig, 4)[0])


def _blocks(sig: bytes | bytearray | memoryview) -> int:
    return (len(sig) - 12) // (4 + struct.unpack_from(">I", sig, 8)[0])


def _near(sig: bytes | bytearray | memoryview, first: int, count: int) -> tuple[int, bytes]:
    """The signature of the old blocks from `count` before block `first` to `count` after the
    segment's: (its first block, the signature)."""
    _, _, strong = struct.unpack_from(">III", sig)
    stride = 4 + strong
    have = _blocks(sig)
    lo, hi = max(0, first - count), min(have, first + 2 * count)
    return lo, bytes(sig[:12]) + bytes(sig[12 + lo * stride : 12 + hi * stride])


def _copy_op(offset: int, n: int) -> bytes:
    return struct.pack(">BQI", _OP_COPY_N8_N4, offset, n)


def _literal_op(n: int) -> bytes:
    return struct.pack(">BI", _OP_LITERAL_N4, n)


def _rebased(d: bytes, base: int) -> bytes:
    """A delta against the blocks of `_near` as one against the whole old file."""
    if not base:
        return d
    view = memoryview(d)
    out: list[bytes | memoryview] = [struct.pack(">I", RS_DELTA_MAGIC)]
    for copy, at, n in _commands(d):
        out += [_copy_op(base + at, n)] if copy else [_literal_op(n), view[at : at + n]]
    out.append(b"\0")
    return b"".join(out)


def _runs(same: list[bool], block: int, size: int) -> list[tuple[int, int, bool]]:
    """The blocks' verdicts as runs: (start, stop, in place)."""
    runs: list[tuple[int, int, bool]] = []
    for k, ok in enumerate(same):
        stop = min((k + 1) * block, size)
        if runs and runs[-1][2] == ok:
            runs[-1] = (runs[-1][0], stop, ok)
        else:
            runs.append((k * block, stop, ok))
    return runs


PINNED_BLOCKS = 8  # a changed run at most this long, in place on both sides, is taken as overwritten


def _moved(view: memoryview, runs: list[tuple[int, int, bool]], block: int, sig: bytes | bytearray | memoryview
           ) -> bool:
    """Do the first or the last three blocks of any changed run hold a whole old block of
    `sig`? Moved data shows there (what follows an insertion or a deletion is shifted; with
    two blocks an eighth of shifts went unseen; the last ones, where an overwrite follows the
    insertion), new data does not. A small signature (`_near`) librsync loads and indexes in
    no time; the whole file's costs ~2 ms a call.

    A short run (`PINNED_BLOCKS`) between blocks in place is not searched: its data is not
    shifted at either end, so only an insertion and a deletion both inside those 64 KiB could
    have moved any of it (that much would then travel literally). Scattered overwrites are
    such runs, and their search cost more than the rest of their delta (~0.3 CPU-s per 500 MB
    with a tenth rewritten)."""
    ends: list[memoryview] = []
    for i, (a, b, ok) in enumerate(runs):
        if ok or (0 < i < len(runs) - 1 and b - a <= PINNED_BLOCKS * block):
            continue
        ends += [view[a:b]] if b - a <= 6 * block else [view[a : a + 3 * block], view[b - 3 * block : b]]
    return bool(ends) and any(copy for copy, _, _ in _commands(delta(b"".join(ends), sig)))


def _commands(d: bytes) -> Iterator[tuple[bool, int, int]]:
    """The commands of a librsync delta: (True, basis offset, length) for a copy, (False,
    position in `d`, length) for a literal."""
    try:
        if struct.unpack_from(">I", d)[0] != RS_DELTA_MAGIC:
            raise DeltaError("delta: bad magic")
        i = 4
        while op := d[i]:
            i += 1
            if op <= 0x40:  # a literal of 1..64 bytes
                yield False, i, op
                i += op
            elif op <= 0x44:
                w = _WIDTHS[op - 0x41]
                n = int.from_bytes(d[i : i + w], "big")
                yield False, i + w, n
                i += w + n
            elif op <= 0x54:
                ow, lw = _WIDTHS[(op - 0x45) // 4], _WIDTHS[(op - 0x45) % 4]
                yield True, int.from_bytes(d[i : i + ow], "big"), int.from_bytes(d[i + ow : i + ow + lw], "big")
                i += ow + lw
            else:
                raise DeltaError(f"delta: unknown command {op:#x}")
    except (IndexError, struct.error):
        raise DeltaError("delta: ends early") from None


def _spliced(runs: list[tuple[int, int, bool]], data: memoryview, offset: int, moved: bytes | None,
             base: int = 0) -> bytes:
    """One delta for the segment `data`: a copy of each run in place, and for the others the
    commands of `moved` (librsync's delta of those runs one after another), cut at the runs'
    ends -- or, without it, their bytes."""
    out: list[bytes | memoryview] = [struct.pack(">I", RS_DELTA_MAGIC)]
    cmds = _commands(moved) if moved is not None else iter(())
    left: tuple[bool, int, int] | None = None
    view = memoryview(moved) if moved is not None else data
    for start, stop, in_place in runs:
        if in_place:
            out.append(_copy_op(offset + start, stop - start))
            continue
        if moved is None:
            out += [_literal_op(stop - start), data[start:stop]]
            continue
        need = stop - start
        while need:
            copy, at, n = left if left is not None else next(cmds)
            take = min(n, need)
            out += [_copy_op(base + at, take)] if copy else [_literal_op(take), view[at : at + take]]
            left = (copy, at + take, n - take) if n > take else None
            need -= take
    out.append(b"\0")  # end
    return b"".join(out)


class _Basis:
    """The basis as librsync's patch reads it: a COPY that reaches past the end
    is an error here (librsync itself would retry the short read forever)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._size = f.seek(0, io.SEEK_END)
        self._pos = 0

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        self._pos = self._f.seek(pos, whence)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n < 0 or self._pos + n > self._size:
            raise DeltaError(f"delta copies bytes {self._pos}..{self._pos + n} from a basis of {self._size} bytes",
                             RS_RESULTS["RS_CORRUPT"])
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def write(self, _: bytes) -> int:  # the binding checks for a file-like object
        raise OSError("read-only")


def patch_segment(basis_fd: int, d: bytes | memoryview, length: int) -> bytearray:
    """The `length` bytes a delta makes from the open basis: librsync's format, applied here.
    librsync's own patch reads the basis through a Python callback and writes its output in
    pieces, each copied and hashed on its way (a third of a receiver's CPU for a delta of
    mostly copies); here each command is one `preadv` into the segment's buffer, or a slice.
    A delta that makes more or less than `length`, or copies from past the basis's end, is a
    `DeltaError` before anything is read for it."""
    out = bytearray(length)
    view, size, p = memoryview(out), os.fstat(basis_fd).st_size, 0
    for copy, at, n in _commands(d):
        if p + n > length:
            raise DeltaError(f"patch: the delta makes more than the declared {length} bytes", RS_RESULTS["RS_CORRUPT"])
        if copy:
            if at + n > size:
                raise DeltaError(f"patch: a copy of bytes {at}..{at + n} from a basis of {size} bytes",
                                 RS_RESULTS["RS_CORRUPT"])
            if os.preadv(basis_fd, [view[p : p + n]], at) != n:
                raise DeltaError("patch: the basis ended early", RS_RESULTS["RS_IO_ERROR"])
        elif at + n > len(d):
            raise DeltaError("delta: ends early", RS_RESULTS["RS_INPUT_ENDED"])
        else:
            view[p : p + n] = d[at : at + n]
        p += n
    if p != length:
        raise DeltaError(f"patch: the delta makes {p} of the declared {length} bytes", RS_RESULTS["RS_CORRUPT"])
    return out


def patch(basis: BinaryIO, delta_bytes: bytes | BinaryIO, out: Any) -> None:
    """Apply a delta; `basis` must be seekable, and so must the delta (librsync's rule)."""
    d = io.BytesIO(delta_bytes) if isinstance(delta_bytes, (bytes, bytearray)) else delta_bytes
    try:
        engines.get().patch(_Basis(basis), d, out)
    except Exception as e:
        raise DeltaError.of("patch", e) from None
