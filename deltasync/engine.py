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
import struct
from typing import Any, BinaryIO

from . import engines
from .core import limits
from .engines import RS_RESULTS, RS_RK_BLAKE2_SIG_MAGIC, SIG_MAGICS, DeltaError
from .errors import ProtocolError

STRONG_LEN = 16
MIN_BLOCK = 8 * 1024
MAX_BLOCKS = 65536
MAGIC = RS_RK_BLAKE2_SIG_MAGIC
SIG_FORMAT = f"{MAGIC:08x}/{STRONG_LEN}"  # recorded with every cached signature; both engines write these bytes

__all__ = ["DeltaError", "SIG_MAGICS", "MAGIC", "block_len_for", "check_signature", "delta", "delta_to", "patch",
           "signature", "signature_to", "sig_args"]


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


def patch(basis: BinaryIO, delta_bytes: bytes | BinaryIO, out: Any) -> None:
    """Apply a delta; `basis` must be seekable, and so must the delta (librsync's rule)."""
    d = io.BytesIO(delta_bytes) if isinstance(delta_bytes, (bytes, bytearray)) else delta_bytes
    try:
        engines.get().patch(_Basis(basis), d, out)
    except Exception as e:
        raise DeltaError.of("patch", e) from None
