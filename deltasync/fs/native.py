"""Linux-only system calls and their portable stand-ins, chosen once at start-up.

| call | Linux | elsewhere (or `DELTASYNC_PORTABLE=1`) |
| --- | --- | --- |
| `copy_range` | `copy_file_range(2)`: in the kernel, reflinked where the filesystem can | `pread`/`pwrite` in 1 MiB pieces |
| `datasync` | `fdatasync(2)` | `fsync(2)` (macOS has no fdatasync) |
| `ordered_journal` | ext4 or XFS (`fstatfs(2)`): a directory's fsync commits the journal up to it | False: callers fdatasync each file |
| `start_writeback`, `wait_written` | `sync_file_range(2)`: start a file's writeback; wait until it is written | nothing: `fdatasync` does both |
| `open_direct` | `open(2)` with `O_DIRECT`: writes that bypass the page cache (`fs/direct`) | -1: every write goes through the cache |
| `copies_bytes` | ext4 (`fstatfs(2)`): `copy_file_range` copies, where XFS or btrfs may share blocks | True: the stand-in copies |
| `punch_hole` | `fallocate(2)` `PUNCH_HOLE`: a zero range gives its space back | not available: it stays allocated |
| `tune_malloc` | glibc keeps freed big buffers for reuse, in one arena | nothing |
| `background_thread` | the calling thread runs only when a core is idle (`SCHED_IDLE`) | nothing: normal priority |

The stand-ins are tested on Linux by forcing them (`DELTASYNC_PORTABLE=1`, or `use(portable=True)`).
"""
from __future__ import annotations

import errno
import functools
import os
from typing import Any, Callable

COPY_CHUNK = 1024 * 1024
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2


def _copy_kernel(src: int, dst: int, offset: int, length: int) -> int:
    done = 0
    while done < length:
        n = os.copy_file_range(src, dst, length - done, offset + done, offset + done)
        if n == 0:
            break
        done += n
    return done


def _copy_portable(src: int, dst: int, offset: int, length: int) -> int:
    done = 0
    while done < length:
        data = os.pread(src, min(COPY_CHUNK, length - done), offset + done)
        if not data:
            break
        view = memoryview(data)
        while view:
            n = os.pwrite(dst, view, offset + done)
            view, done = view[n:], done + n
    return done


def no_data(fd: int, offset: int, length: int) -> bool:
    """True when `[offset, offset+length)` of the file is one hole (SEEK_DATA finds no data
    there), without reading it; False where the platform cannot tell."""
    if not hasattr(os, "SEEK_DATA") or length <= 0:
        return False
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + length
    except OSError as e:
        return e.errno == errno.ENXIO  # no data at all past offset


def data_extents(fd: int, offset: int, length: int) -> list[tuple[int, int]]:
    """Where `[offset, offset+length)` holds data (SEEK_DATA/SEEK_HOLE), as (start, length);
    the whole range where the platform cannot tell."""
    end = offset + length
    if not hasattr(os, "SEEK_HOLE"):
        return [(offset, length)]
    out, at = [], offset
    while at < end:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            return [(offset, length)]
        if start >= end:
            break
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        out.append((start, stop - start))
        at = stop
    return out


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    """The C library, loaded once, with fallocate's 64-bit offsets declared."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return libc


def _punch_linux(fd: int, offset: int, length: int) -> bool:
    try:
        return bool(_libc().fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0)
    except (OSError, AttributeError):
        return False


def _punch_none(_fd: int, _offset: int, _length: int) -> bool:
    return False


EXT4_MAGIC, XFS_MAGIC = 0xEF53, 0x58465342
SFR_WAIT_BEFORE, SFR_WRITE, SFR_WAIT_AFTER = 1, 2, 4
_fs_types: dict[int, int | None] = {}


def _fs_type(fd: int) -> int | None:
    """The filesystem's magic number (`fstatfs(2)`), asked once per device."""
    dev = os.fstat(fd).st_dev
    if dev not in _fs_types:
        import ctypes

        buf = ctypes.create_string_buffer(256)  # struct statfs; f_type (a long) comes first
        ok = _libc().fstatfs(fd, buf) == 0
        _fs_types[dev] = ctypes.c_long.from_buffer(buf).value if ok else None
    return _fs_types[dev]


def _ordered_linux(dir_fd: int) -> bool:
    """Is this an ext4 or XFS filesystem? Both keep one journal committed in order, so the fsync
    of a directory commits every metadata change logged before it. And both end a page's
    writeback only once the write's metadata is logged (the file's size, its blocks, an unwritten
    extent converted: ext4's and XFS's end-of-I/O work runs first), so a file whose writeback
    `wait_written` saw end is whole after that commit."""
    return _fs_type(dir_fd) in (EXT4_MAGIC, XFS_MAGIC)


def _copies_linux(fd: int) -> bool:
    """Does `copy_file_range` here copy the bytes, through the page cache? On ext4 it does (no
    reflinks); XFS, btrfs and others may share the blocks instead, which costs nothing."""
    return _fs_type(fd) == EXT4_MAGIC


def _ordered_none(_dir_fd: int) -> bool:
    return False


def _copies_always(_fd: int) -> bool:
    return True


def _sfr(fd: int, flags: int) -> None:
    if _libc().sync_file_range(fd, 0, 0, flags) != 0:
        import ctypes

        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _start_linux(fd: int) -> None:
    _sfr(fd, SFR_WRITE)


def _wait_linux(fd: int) -> None:
    _sfr(fd, SFR_WAIT_BEFORE | SFR_WRITE | SFR_WAIT_AFTER)


def _no_writeback(_fd: int) -> None:
    pass


def _open_direct_linux(path: Any) -> int:
    """A second, write-only descriptor of `path` whose writes skip the page cache (-1: the filesystem refuses)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return -1
        raise


def _open_direct_none(_path: Any) -> int:
    return -1


def background_thread() -> None:
    """Make the calling thread yield to every other (Linux schedules threads one
    by one): a cache filled in the background never slows the transfer in front."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass


def tune_malloc() -> None:
    """Keep freed segment buffers for the next segment instead of handing them
    back to the kernel: glibc's defaults mmap each 4 MiB buffer afresh and the
    page faults of that cost more CPU than the TLS. One arena (the few threads
    that allocate big buffers share it) keeps what is retained to one set of
    buffers, so peak RSS stays flat. Call before any thread starts."""
    import ctypes

    m_trim_threshold, m_top_pad, m_mmap_threshold, m_arena_max = -1, -2, -3, -8
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc: nothing to tune
    for opt, value in ((m_arena_max, 1), (m_mmap_threshold, 64 << 20), (m_trim_threshold, 64 << 20),
                       (m_top_pad, 16 << 20)):
        mallopt(opt, value)


copy_range: Callable[[int, int, int, int], int]
datasync: Callable[[int], None]
ordered_journal: Callable[[int], bool]
start_writeback: Callable[[int], None]
wait_written: Callable[[int], None]
punch_hole: Callable[[int, int, int], bool]  # give a zero range's space back (False: it stays allocated)
open_direct: Callable[[Any], int]
copies_bytes: Callable[[int], bool]
PORTABLE = False


def use(portable: bool) -> None:
    """Pick the implementations (at import, from the platform and DELTASYNC_PORTABLE)."""
    global copy_range, datasync, ordered_journal, start_writeback, wait_written, punch_hole, open_direct, \
        copies_bytes, PORTABLE
    linux = not portable and hasattr(os, "copy_file_range")
    copy_range = _copy_kernel if linux else _copy_portable
    datasync = os.fdatasync if not portable and hasattr(os, "fdatasync") else os.fsync
    sfr = not portable and os.uname().sysname == "Linux"
    ordered_journal = _ordered_linux if sfr else _ordered_none
    start_writeback, wait_written = (_start_linux, _wait_linux) if sfr else (_no_writeback, _no_writeback)
    punch_hole = _punch_linux if not portable and os.uname().sysname == "Linux" else _punch_none
    open_direct = _open_direct_linux if sfr and hasattr(os, "O_DIRECT") else _open_direct_none
    copies_bytes = _copies_linux if linux else _copies_always
    PORTABLE = portable or not linux


use(os.environ.get("DELTASYNC_PORTABLE", "") not in ("", "0"))
