"""`deltasync rdiff`: librsync's `rdiff` command, same arguments and file
formats (signatures, deltas and patches interchange with the real `rdiff`).
Files may be `-` (or absent) for stdin/stdout; the delta given to `patch` is
spooled to a temporary file when it is not seekable, as librsync requires."""
from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack
from typing import BinaryIO

from . import engine, engines
from .errors import UsageError

MAGICS = {("blake2", "rabinkarp"): engines.RS_RK_BLAKE2_SIG_MAGIC,
          ("blake2", "rollsum"): engines.RS_BLAKE2_SIG_MAGIC,
          ("md4", "rabinkarp"): engines.RS_RK_MD4_SIG_MAGIC,
          ("md4", "rollsum"): engines.RS_MD4_SIG_MAGIC}


def _in(stack: ExitStack, path: str | None) -> BinaryIO:
    if path in (None, "-"):
        return sys.stdin.buffer
    return stack.enter_context(open(path, "rb"))


def _out(stack: ExitStack, path: str | None, force: bool) -> BinaryIO:
    if path in (None, "-"):
        return sys.stdout.buffer
    if os.path.exists(path) and not force:
        raise FileExistsError(errno.EEXIST, "exists; use --force to overwrite it", path)
    return stack.enter_context(open(path, "wb"))


def _moved(f: BinaryIO) -> int | None:
    """How far a stream was read or written (unknown for a pipe)."""
    try:
        return f.tell()
    except OSError:
        return None


Moved = tuple["int | None", "int | None"]  # bytes in, bytes out (for -s)


def _seekable(stack: ExitStack, f: BinaryIO) -> BinaryIO:
    if f.seekable():
        return f
    spool = stack.enter_context(tempfile.TemporaryFile())
    shutil.copyfileobj(f, spool, 1 << 20)
    spool.seek(0)
    return spool


def signature(basis: str | None, sig: str | None, block_size: int = 0, sum_size: int = 0, hash_alg: str = "blake2",
              rollsum: str = "rabinkarp", force: bool = False) -> Moved:
    magic = MAGICS.get((hash_alg, rollsum))
    if magic is None:
        raise UsageError(f"unknown --hash {hash_alg!r} or --rollsum {rollsum!r}")
    if block_size < 0 or sum_size < 0:
        raise UsageError("--block-size and --sum-size must be 0 (recommended) or positive")
    with ExitStack() as stack:
        f = _in(stack, basis)
        size = os.fstat(f.fileno()).st_size if f.seekable() else -1
        magic, block, strong = engine.sig_args(size, magic, block_size, sum_size)
        out = _out(stack, sig, force)
        engine.signature_to(f, out, block, strong, magic)
        return _moved(f), _moved(out)


def delta(sig: str, new: str | None, out_path: str | None, force: bool = False) -> Moved:
    with ExitStack() as stack:
        f, out = _in(stack, new), _out(stack, out_path, force)
        engine.delta_to(f, _in(stack, sig), out)
        return _moved(f), _moved(out)


def patch(basis: str, delta_path: str | None, new: str | None, force: bool = False) -> Moved:
    with ExitStack() as stack:
        b = stack.enter_context(open(basis, "rb"))
        d = _seekable(stack, _in(stack, delta_path))
        out = _out(stack, new, force)
        engine.patch(b, d, out)
        return _moved(d), _moved(out)
