"""Our ctypes binding to the system's librsync (`librsync.so.2`), for every
CPython python-rsync has no wheel for.

It drives librsync's streaming job API (`rs_*_begin`, `rs_job_iter`) with 1 MiB
buffers: ctypes releases the GIL around each call, and large buffers keep the
number of calls -- and of GIL hand-overs while another thread is busy -- small.
The library is found in `DELTASYNC_LIBRSYNC`, as `librsync.so.2`, by
`ctypes.util.find_library`, and in Homebrew's lib folders, in that order.
"""
from __future__ import annotations

import ctypes
import os
from typing import Any, Callable, Iterator

from . import RS_RESULTS, DeltaError

RS_DONE, RS_BLOCKED, RS_IO_ERROR = 0, 1, 100
BUF = 1024 * 1024

_rs_long = ctypes.c_int64
_copy_cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, _rs_long, ctypes.POINTER(ctypes.c_size_t),
                            ctypes.POINTER(ctypes.c_void_p))


class _Buffers(ctypes.Structure):
    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_size_t), ("eof_in", ctypes.c_int),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_size_t)]


def _candidates() -> Iterator[str]:
    """Where librsync may be, cheapest first: `find_library` runs `ldconfig -p` (a few ms a
    command), so it is asked only when the soname the dynamic loader finds by itself is not there."""
    yield from filter(None, [os.environ.get("DELTASYNC_LIBRSYNC", ""), "librsync.so.2"])
    import ctypes.util  # (it imports shutil, tempfile and more: 13 ms)
    yield from filter(None, [ctypes.util.find_library("rsync") or "", "/opt/homebrew/lib/librsync.dylib",
                             "/usr/local/lib/librsync.dylib", "librsync.dylib"])


def _open() -> ctypes.CDLL:
    errors = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            lib.rs_job_iter  # noqa: B018 - the symbol that makes it librsync
            return lib
        except (OSError, AttributeError) as e:
            errors.append(f"{path}: {e}")
    raise OSError("librsync not found (" + "; ".join(errors) + ")")


def _declare(lib: ctypes.CDLL) -> None:
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.rs_sig_begin.argtypes, lib.rs_sig_begin.restype = [sz, sz, ctypes.c_int], vp
    lib.rs_loadsig_begin.argtypes, lib.rs_loadsig_begin.restype = [ctypes.POINTER(vp)], vp
    lib.rs_build_hash_table.argtypes, lib.rs_build_hash_table.restype = [vp], ctypes.c_int
    lib.rs_delta_begin.argtypes, lib.rs_delta_begin.restype = [vp], vp
    lib.rs_patch_begin.argtypes, lib.rs_patch_begin.restype = [_copy_cb, vp], vp
    lib.rs_job_iter.argtypes, lib.rs_job_iter.restype = [vp, ctypes.POINTER(_Buffers)], ctypes.c_int
    lib.rs_job_free.argtypes, lib.rs_job_free.restype = [vp], ctypes.c_int
    lib.rs_free_sumset.argtypes, lib.rs_free_sumset.restype = [vp], None
    lib.rs_strerror.argtypes, lib.rs_strerror.restype = [ctypes.c_int], ctypes.c_char_p
    lib.rs_sig_args.argtypes = [_rs_long, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(sz), ctypes.POINTER(sz)]
    lib.rs_sig_args.restype = ctypes.c_int


class LibrsyncEngine:
    name = "librsync"

    def __init__(self) -> None:
        self._lib = _open()
        _declare(self._lib)
        try:
            raw = ctypes.c_char.in_dll(self._lib, "rs_librsync_version")
            text = ctypes.cast(ctypes.addressof(raw), ctypes.c_char_p).value or b"unknown"
            self.version = text.decode(errors="replace").removeprefix("librsync ")
        except (ValueError, AttributeError):
            self.version = "unknown"

    def _error(self, what: str, r: int) -> DeltaError:
        return DeltaError(f"{what} failed: {self._lib.rs_strerror(r).decode(errors='replace')}", r)

    def _drive(self, job: int, what: str, read: Callable[[int], bytes], write: Callable[[bytes], Any] | None,
               failed: list[BaseException] | None = None) -> None:
        """Feed `read` into the job and its output to `write` until it is done."""
        lib = self._lib
        inbuf = ctypes.create_string_buffer(BUF)
        outbuf = ctypes.create_string_buffer(BUF if write is not None else 1)
        bufs = _Buffers(None, 0, 0, None, 0)
        stalled = 0
        try:
            while True:
                if bufs.avail_in == 0 and not bufs.eof_in:
                    data = read(BUF)
                    if data:
                        ctypes.memmove(inbuf, data, len(data))
                        bufs.next_in, bufs.avail_in = ctypes.addressof(inbuf), len(data)
                    else:
                        bufs.eof_in = 1
                before_in = bufs.avail_in
                bufs.next_out, bufs.avail_out = ctypes.addressof(outbuf), len(outbuf)
                r = lib.rs_job_iter(job, ctypes.byref(bufs))
                made = len(outbuf) - bufs.avail_out
                if made and write is not None:
                    write(ctypes.string_at(outbuf, made))
                if failed:
                    raise failed[0]
                if r == RS_DONE:
                    return
                if r != RS_BLOCKED:
                    raise self._error(what, r)
                # blocked with all input given and nothing moving: the input ended early
                stalled = stalled + 1 if (bufs.eof_in and not made and bufs.avail_in == before_in) else 0
                if stalled > 2:
                    raise DeltaError(f"{what} failed: input ended early", RS_RESULTS["RS_INPUT_ENDED"])
        finally:
            lib.rs_job_free(job)

    def signature(self, src: Any, out: Any, block_len: int, strong_len: int, magic: int) -> None:
        job = self._lib.rs_sig_begin(block_len, strong_len, magic)
        if not job:
            raise DeltaError("signature failed: bad arguments")
        self._drive(job, "signature", src.read, out.write)

    def delta(self, new: Any, sig: Any, out: Any) -> None:
        sumset = ctypes.c_void_p()
        job = self._lib.rs_loadsig_begin(ctypes.byref(sumset))
        try:
            self._drive(job, "loading the signature", sig.read, None)
            r = self._lib.rs_build_hash_table(sumset)
            if r != RS_DONE:
                raise self._error("indexing the signature", r)
            self._drive(self._lib.rs_delta_begin(sumset), "delta", new.read, out.write)
        finally:
            if sumset:
                self._lib.rs_free_sumset(sumset)

    def patch(self, basis: Any, delta: Any, out: Any) -> None:
        failed: list[BaseException] = []

        def copy(_opaque: int, pos: int, length: Any, buf: Any) -> int:
            # an exception must not cross into C: it is kept and raised once librsync returns
            try:
                basis.seek(pos)
                data = basis.read(length[0])
                ctypes.memmove(buf[0], data, len(data))
                length[0] = len(data)
                return RS_DONE
            except BaseException as e:  # noqa: BLE001 - re-raised by _drive
                failed.append(e)
                return RS_IO_ERROR

        callback = _copy_cb(copy)  # kept alive for the whole job
        self._drive(self._lib.rs_patch_begin(callback, None), "patch", delta.read, out.write, failed)

    def sig_args(self, size: int, magic: int, block_len: int, strong_len: int) -> tuple[int, int, int]:
        m, b, s = ctypes.c_int(magic), ctypes.c_size_t(block_len), ctypes.c_size_t(strong_len)
        r = self._lib.rs_sig_args(size, ctypes.byref(m), ctypes.byref(b), ctypes.byref(s))
        if r != RS_DONE:
            raise self._error("signature arguments", r)
        return m.value, b.value, s.value
