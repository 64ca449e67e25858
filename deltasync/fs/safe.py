"""The only place that turns a peer's path into something done on disk.

A peer path is a relative POSIX path: no empty, `.` or `..` component, not
absolute, no NUL, not under `.deltasync/`, bounded in length. Every operation
then walks from the folder's root one directory at a time with
``O_DIRECTORY | O_NOFOLLOW`` on directory file descriptors, so a symlink (or a
directory swapped for one mid-way) can never lead a write outside the folder:
the kernel refuses instead of following. Files are written aside, fsynced and
renamed into place, so a final path holds the old or the new version, never a
torn one.
"""
from __future__ import annotations

import errno
import os
import stat
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from ..core.entry import Xattrs
from ..errors import TransferFailed, UnsafePath
from . import native, xattrs

META = ".deltasync"
TMP_PREFIX = ".deltasync-tmp-"  # a symlink made aside in its own directory before its rename
MAX_PATH = 4096
MAX_NAME = 255
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_FLAGS = _DIR_FLAGS
Keeper = Callable[[int, str], "str | None"]  # (parent dir fd, name) -> kept version's name


def fold(name: str) -> str:
    """A name as a case-insensitive, normalising filesystem sees it (vfat, exFAT,
    NTFS, SMB, ext4 casefold, APFS): `.DeltaSync` and `.deltasync` are one folder there."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


_META_FOLDED = fold(META)


def is_reserved(name: str) -> bool:
    """Is this path component our state folder, on any filesystem it may land on?"""
    if name.isascii():  # NFKC leaves ASCII as it is, and casefold is lower(): the common case, at C speed
        return name.lower() == META
    return fold(name) == _META_FOLDED


def has_reserved(path: str) -> bool:
    """Does any component of this relative path name a state folder (at any depth)?"""
    return any(is_reserved(part) for part in path.split("/"))


def open_dir(name: str, dir_fd: int, create_mode: int | None = None) -> int:
    """Open directory `name` in `dir_fd` without following a link; made first (with
    `create_mode`) when absent and asked to."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if create_mode is None:
            raise
        try:
            os.mkdir(name, create_mode, dir_fd=dir_fd)
        except FileExistsError:
            pass
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def open_dir_at(root: Path, rel: str) -> int:
    """The directory at `rel` under `root`, opened component by component without following
    a link (FileNotFoundError, NotADirectoryError or ELOOP when it is not a directory there)."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in rel.split("/") if rel else ():
            sub = open_dir(part, fd)
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_relpath(path: object, max_len: int = MAX_PATH) -> tuple[str, ...]:
    """Validate a peer's path; return its components or raise UnsafePath."""
    if not isinstance(path, str) or not path:
        raise UnsafePath("path is empty or not a string")
    shown = repr(path[:200])
    if "\x00" in path:
        raise UnsafePath(f"path {shown} contains NUL")
    try:
        encoded = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise UnsafePath(f"path {shown} is not encodable") from None
    if len(encoded) > max_len:
        raise UnsafePath(f"path {shown} is longer than {max_len} bytes")
    if path.startswith("/"):
        raise UnsafePath(f"path {shown} is absolute")
    parts = tuple(path.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath(f"path {shown} has an empty, '.' or '..' component")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME:
            raise UnsafePath(f"path {shown} has a component longer than {MAX_NAME} bytes")
        if is_reserved(part):
            raise UnsafePath(f"path {shown} names a {META}/ state folder")
    return parts


def _unsafe_from(e: OSError, path: str) -> Exception:
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafePath(f"path {path[:200]!r} passes through a symlink or a non-directory")
    if e.errno == errno.ENOSPC:
        return TransferFailed(f"{path[:200]}: no space left on device")
    return TransferFailed(f"{path[:200]}: {e.strerror}")


class SafeRoot:
    """Operations on peer-named paths below one folder."""

    def __init__(self, root: Path, max_path: int = MAX_PATH) -> None:
        self.root = root
        self.meta = root / META
        self.max_path = max_path  # config.toml's max_path_length

    @contextmanager
    def parent(self, path: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """Yield (fd of the parent directory, final name), walked without following links."""
        parts = self._parts(path)
        with self._walk(parts[:-1], path, create) as fd:
            yield fd, parts[-1]

    def _parts(self, path: str) -> tuple[str, ...]:
        return check_relpath(path, self.max_path)

    @contextmanager
    def directory(self, rel: str) -> Iterator[int]:
        """Yield the fd of directory `rel` ("": the root), walked to without following links."""
        with self._walk(check_relpath(rel, self.max_path) if rel else (), rel, False) as fd:
            yield fd

    @contextmanager
    def _walk(self, parts: tuple[str, ...], path: str, create: bool) -> Iterator[int]:
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts:
                nfd = open_dir(part, fd, 0o755 if create else None)
                os.close(fd)
                fd = nfd
            yield fd
        except OSError as e:
            raise _unsafe_from(e, path) from None
        finally:
            os.close(fd)

    @contextmanager
    def batch(self) -> Iterator[SafeRoot]:
        """This root for many operations in a few directories (a commit of small files): each
        directory is walked to once, as `parent` walks, and its fd reused until the batch ends."""
        b = _Batch(self.root, self.max_path)
        try:
            yield b
        finally:
            b.close()

    def lstat(self, path: str) -> os.stat_result | None:
        try:
            with self.parent(path) as (fd, name):
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, TransferFailed):
            return None

    def open_read(self, path: str) -> BinaryIO:
        """Open a regular file for reading; a symlink or special file is refused."""
        with self.parent(path) as (dfd, name):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as e:
                raise _unsafe_from(e, path) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePath(f"{path[:200]!r} is not a regular file")
        return os.fdopen(fd, "rb")

    def replace(self, src: Path, path: str, durable: bool = True, keep: Keeper | None = None) -> str | None:
        """Atomically rename our own file `src` (under .deltasync/) to `path`.
        `keep(dir_fd, name)` runs first, in the same directory: it keeps the
        version about to be replaced (see store/versions.py); what it returns is returned."""
        with self.parent(path, create=True) as (fd, name):
            kept = keep(fd, name) if keep is not None else None
            try:
                os.rename(src, name, dst_dir_fd=fd)
            except IsADirectoryError:
                raise TransferFailed(f"{path[:200]}: is a directory here, not a file") from None
            except OSError as e:
                raise _unsafe_from(e, path) from None
            if durable:
                os.fsync(fd)
        return kept

    def symlink(self, target: str, path: str, tmp_name: str) -> None:
        """Create or replace a symlink atomically (made aside in the same directory)."""
        if "\x00" in target or len(target) > MAX_PATH:
            raise UnsafePath(f"symlink target for {path[:200]!r} is not acceptable")
        with self.parent(path, create=True) as (fd, name):
            os.symlink(target, tmp_name, dir_fd=fd)
            try:
                os.rename(tmp_name, name, src_dir_fd=fd, dst_dir_fd=fd)
            except OSError:
                os.unlink(tmp_name, dir_fd=fd)
                raise

    def mkdir(self, path: str, mode: int) -> None:
        with self.parent(path, create=True) as (fd, name):
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise TransferFailed(f"{path[:200]}: exists here and is not a directory") from None
        self.set_meta(path, mode, None)

    def set_meta(self, path: str, mode: int, mtime_ns: int | None, attrs: Xattrs | None = None) -> None:
        """Extended attributes (None: leave them), mode bits and mtime of a file or directory
        (never through a symlink)."""
        with self.parent(path) as (dfd, name):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            try:
                if attrs is not None:
                    xattrs.apply(fd, attrs, path)
                os.fchmod(fd, mode & 0o7777)
                if mtime_ns is not None:
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)

    def delete(self, path: str, keep: Keeper | None = None) -> str | None:
        """Remove a file, symlink or empty directory; a non-empty directory stays.
        `keep(dir_fd, name)` may move a file away first (a kept version): its answer is returned."""
        with self.parent(path) as (fd, name):
            kept = keep(fd, name) if keep is not None else None
            if kept is not None:
                return kept
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)
        return None


class _Batch(SafeRoot):
    """Directory fds held for a batch. Each was reached without following a link; one swapped
    for a symlink meanwhile is not followed either: the fd is the directory that was walked."""

    MAX_FDS = 128
    MAX_CHECKED = 1 << 16

    def __init__(self, root: Path, max_path: int) -> None:
        super().__init__(root, max_path)
        self.fds: dict[tuple[str, ...], int] = {}
        self.depth = 0  # walks in progress: fds are let go only between them
        # directories found absent: the files of a new directory are not looked for one by one (until
        # a walk that creates makes it; what a create does next is checked there, as for any path)
        self.missing: set[tuple[str, ...]] = set()
        self.checked: dict[str, tuple[str, ...]] = {}  # paths checked already: a commit looks at each 3 times

    def _parts(self, path: str) -> tuple[str, ...]:
        parts = self.checked.get(path)
        if parts is None:
            if len(self.checked) >= self.MAX_CHECKED:
                self.checked.clear()
            parts = self.checked[path] = check_relpath(path, self.max_path)
        return parts

    def lstat(self, path: str) -> os.stat_result | None:
        """As SafeRoot.lstat, without a walk's two context managers: a commit of small files
        takes three a file, and they cost twice the stat itself."""
        parts = self._parts(path)
        if len(self.fds) >= self.MAX_FDS and not self.depth:
            self.close()
        try:
            return os.stat(parts[-1], dir_fd=self._dir(parts[:-1], False), follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _unsafe_from(e, path) from None
            return None

    def _dir(self, parts: tuple[str, ...], create: bool) -> int:
        fd = self.fds.get(parts)
        if fd is None:
            if not create and parts in self.missing:
                raise FileNotFoundError(errno.ENOENT, "no such directory", "/".join(parts))
            if parts:
                parent = self._dir(parts[:-1], create)
                try:
                    fd = open_dir(parts[-1], parent, 0o755 if create else None)
                except FileNotFoundError:
                    self.missing.add(parts)
                    raise
                self.missing.difference_update(parts[:i] for i in range(1, len(parts) + 1))
            else:
                fd = os.open(self.root, _DIR_FLAGS)
            self.fds[parts] = fd
        return fd

    @contextmanager
    def _walk(self, parts: tuple[str, ...], path: str, create: bool) -> Iterator[int]:
        if len(self.fds) >= self.MAX_FDS and not self.depth:
            self.close()
        self.depth += 1
        try:
            yield self._dir(parts, create)
        except OSError as e:
            raise _unsafe_from(e, path) from None
        finally:
            self.depth -= 1

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def state_dir(root: Path, sub: str, create: bool = False) -> int:
    """A directory of ours under `root/.deltasync/`, opened without following any link."""
    meta = os.open(root / META, _DIR_FLAGS)
    try:
        return open_dir(sub, meta, 0o700 if create else None)
    finally:
        os.close(meta)


def unlink_state(root: Path, sub: str, name: str) -> None:
    """Remove our file `name` from `.deltasync/sub/` (gone already is fine), never through a link."""
    try:
        dfd = state_dir(root, sub)
    except OSError:
        return
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
    finally:
        os.close(dfd)


def write_aside(directory: Path, name: str, chunks: Iterable[bytes | memoryview], mode: int,
                mtime_ns: int, fsync: bool = True, attrs: Xattrs | None = None, path: str = "") -> Path:
    """Write a new file under our own state folder with its final mode and mtime."""
    tmp = directory / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        finish(fd, mode, mtime_ns, fsync, attrs, path)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def finish(fd: int, mode: int, mtime_ns: int, fsync: bool = True, attrs: Xattrs | None = None,
           path: str = "") -> None:
    """Final extended attributes (None: leave them), mode and mtime on an open file, then make it
    durable. Attributes go first: setting them needs write permission the final mode may take away."""
    if attrs is not None:
        xattrs.apply(fd, attrs, path)
    os.fchmod(fd, mode & 0o7777)
    os.utime(fd, ns=(mtime_ns, mtime_ns))
    if fsync:
        os.fsync(fd)


FLUSH_BATCH = 256  # files flushed together, so many fds stay open at once at most
FLUSH_THREADS = 8


def make_durable(files: list[Path]) -> bool:
    """Flush files written without fsync, before they are renamed into place; the caller fsyncs
    the directories they land in after the renames. On ext4 and XFS every file's writeback is
    started first and then waited for (sync_file_range), and the fsync of a directory they land
    in commits their sizes and blocks with the journal (one commit for a batch, not one per
    file). Elsewhere each file gets its own fdatasync, several at once. Never syncfs(2): it
    would flush every other program's dirty data too, and cost whatever that costs.

    True: the journal commits in order, so the fsync of the directory renamed into last commits
    the renames into every other (and the files' metadata) as well."""
    if not files:
        return False
    fd = os.open(files[0].parent, _DIR_FLAGS)
    try:
        ordered = native.ordered_journal(fd)
    finally:
        os.close(fd)
    if ordered:
        for i in range(0, len(files), FLUSH_BATCH):
            fds = []
            try:
                for f in files[i : i + FLUSH_BATCH]:
                    fds.append(os.open(f, os.O_RDONLY | os.O_CLOEXEC))
                    native.start_writeback(fds[-1])
                for fd in fds:
                    native.wait_written(fd)
            finally:
                for fd in fds:
                    os.close(fd)
        return True
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(FLUSH_THREADS, len(files))) as pool:
        list(pool.map(_datasync_path, files))
    return False


def _datasync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        native.datasync(fd)
    finally:
        os.close(fd)
