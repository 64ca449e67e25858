"""The rsync algorithm behind one interface, with the binding chosen once.

Two engines speak librsync's formats byte for byte: python-rsync (a compiled
binding that bundles librsync; wheels up to CPython 3.12) and our own ctypes
binding to the system's librsync (`librsync.so.2`: Debian's librsync2, Homebrew's
librsync). `DELTASYNC_ENGINE=pyrsync|librsync` forces one; otherwise
python-rsync is used where it imports and round-trips, else the system library.
Nothing outside this package imports either binding.
"""
from __future__ import annotations

import io
import os
from typing import Any, BinaryIO, Protocol

from ..errors import DeltasyncError, TransferFailed

# librsync's file formats (the magic number that opens a signature or a delta)
RS_MD4_SIG_MAGIC = 0x72730136
RS_BLAKE2_SIG_MAGIC = 0x72730137
RS_RK_MD4_SIG_MAGIC = 0x72730146
RS_RK_BLAKE2_SIG_MAGIC = 0x72730147
RS_DELTA_MAGIC = 0x72730236
SIG_MAGICS = frozenset({RS_MD4_SIG_MAGIC, RS_BLAKE2_SIG_MAGIC, RS_RK_MD4_SIG_MAGIC, RS_RK_BLAKE2_SIG_MAGIC})


# librsync's rs_result codes (rdiff exits with them)
RS_RESULTS = {"RS_IO_ERROR": 100, "RS_SYNTAX_ERROR": 101, "RS_MEM_ERROR": 102, "RS_INPUT_ENDED": 103,
              "RS_BAD_MAGIC": 104, "RS_UNIMPLEMENTED": 105, "RS_CORRUPT": 106, "RS_INTERNAL_ERROR": 107,
              "RS_PARAM_ERROR": 108}


class DeltaError(TransferFailed):
    """librsync refused a delta or signature (corrupt, or from a hostile peer)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code  # librsync's rs_result, when it said one

    @classmethod
    def of(cls, what: str, e: BaseException) -> "DeltaError":
        """A binding's own error (python-rsync names the rs_result) as ours."""
        return e if isinstance(e, DeltaError) else cls(f"{what} failed: {e}", RS_RESULTS.get(str(e)))


class EngineMissing(DeltasyncError):
    """No librsync binding could be loaded: one line says what to install."""


class Engine(Protocol):
    """signature / delta / patch over file-like streams, in librsync's formats."""

    name: str
    version: str  # of the librsync that does the work

    def signature(self, src: Any, out: Any, block_len: int, strong_len: int, magic: int) -> None: ...

    def delta(self, new: Any, sig: Any, out: Any) -> None: ...

    def patch(self, basis: Any, delta: Any, out: Any) -> None:
        """`basis` must be seekable (COPY commands read from anywhere in it)."""
        ...

    def sig_args(self, size: int, magic: int, block_len: int, strong_len: int) -> tuple[int, int, int]:
        """librsync's recommended (magic, block length, strong length) for a file of `size` bytes (-1: unknown)."""
        ...


_chosen: Engine | None = None


def _round_trips(engine: Engine) -> bool:
    """A binding that imports can still be broken (an sdist without its compiled module)."""
    try:
        old, new = os.urandom(20_000), os.urandom(5_000)
        new = old[:7_000] + new + old[7_000:]
        sig, d, out = io.BytesIO(), io.BytesIO(), io.BytesIO()
        engine.signature(io.BytesIO(old), sig, 2048, 16, RS_RK_BLAKE2_SIG_MAGIC)
        sig.seek(0)
        engine.delta(io.BytesIO(new), sig, d)
        d.seek(0)
        engine.patch(io.BytesIO(old), d, out)
        return out.getvalue() == new
    except Exception:
        return False


def _load(name: str) -> Engine:
    if name == "pyrsync":
        from .pyrsync_engine import PyrsyncEngine

        return PyrsyncEngine()
    if name == "librsync":
        from .librsync import LibrsyncEngine

        return LibrsyncEngine()
    raise EngineMissing(f"DELTASYNC_ENGINE={name!r}: choose pyrsync or librsync")


def get() -> Engine:
    """The engine of this process, chosen at first use."""
    global _chosen
    if _chosen is not None:
        return _chosen
    forced = os.environ.get("DELTASYNC_ENGINE", "").strip()
    if forced:
        try:
            _chosen = _load(forced)
        except (ImportError, OSError) as e:
            raise EngineMissing(f"DELTASYNC_ENGINE={forced}: cannot load it ({e})") from None
        return _chosen
    try:
        candidate = _load("pyrsync")
        if _round_trips(candidate):
            _chosen = candidate
            return _chosen
    except ImportError:
        pass
    try:
        _chosen = _load("librsync")
    except OSError:
        raise EngineMissing("no librsync found: install the system library (Debian/Ubuntu: apt-get install "
                            "librsync2; macOS: brew install librsync; or set DELTASYNC_LIBRSYNC to its path), or "
                            "python-rsync on Python 3.12 or older") from None
    return _chosen


def available() -> list[Engine]:
    """Every engine that loads and round-trips here (the tests run each)."""
    out = []
    for name in ("pyrsync", "librsync"):
        try:
            e = _load(name)
        except (ImportError, OSError):
            continue
        if _round_trips(e):
            out.append(e)
    return out


def use(engine: Engine | None) -> None:
    """Choose the engine explicitly (tests; None: choose again at next use)."""
    global _chosen
    _chosen = engine


def describe(load: bool = True) -> str:
    """The engine and its librsync; with `load` False, without choosing one (a session that
    moves nothing never needs it, and loading and checking one costs a few ms of its start)."""
    if not load and _chosen is None:
        return "not loaded yet"
    e = get()
    return f"{e.name} (librsync {e.version})"


__all__ = ["DeltaError", "Engine", "EngineMissing", "SIG_MAGICS", "available", "describe", "get", "use",
           "BinaryIO"]
