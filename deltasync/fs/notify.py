"""Linux inotify for `serve`: what changed in the folder, exactly, at the moment a
session asks -- so a session's scan looks at those paths only, not at the tree.

`watch` has watchfiles, whose events come after a debounce; a server cannot
wait for that: a change made just before a peer's push must be in the index
that push is planned from. Here the kernel queues an event as each change is
made, and `take()` reads the queue to its end before it answers, so nothing
done before the session asked is missed. Whatever cannot be followed exactly
(the kernel's queue overflowed, no more watches allowed, a directory moved in
from outside while it was being filled) makes the next scan walk everything,
as does a walk due every `full_every` seconds (a change the kernel does not
report: a network filesystem's remote writers). Elsewhere than Linux, or when
inotify cannot start, `start()` returns None and every scan walks everything,
as before.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import sys
import time
from pathlib import Path

from .safe import TMP_PREFIX, is_reserved
from .scan import OWN, Unscanned

log = logging.getLogger(__name__)

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x4000, 0x8000, 0x40000000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_EXCL_UNLINK = 0x01000000, 0x02000000, 0x04000000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
_HEAD = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of NUL-padded name)
_TMP = TMP_PREFIX.encode()


class Notified(Unscanned):
    """An `Unscanned` fed by inotify watches on every directory of the folder."""

    def __init__(self, root: Path, libc: ctypes.CDLL, fd: int, full_every: float) -> None:
        super().__init__()
        self.root, self._libc, self.fd, self.full_every = root, libc, fd, full_every
        self._paths_of: dict[int, str] = {}  # watch descriptor -> directory ('' : the top)
        self._wd_of: dict[str, int] = {}
        self._last_full = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.blind()  # until every directory is watched, scans walk everything

    def watch_all(self) -> None:
        """Watch every directory, top down: one made after its parent's watch is reported."""
        self._add_tree("")
        if self.fd >= 0:  # (not given up on: the watch limit)
            self.blind(False)  # what changed while we were adding: the next scan walks everything

    def _add_tree(self, top: str) -> None:
        todo = [top]
        while todo:
            rel = todo.pop()
            if not self._add(rel):
                continue
            try:
                with os.scandir(self.root / rel if rel else self.root) as it:
                    todo.extend(f"{rel}/{d.name}" if rel else d.name for d in it
                                if d.is_dir(follow_symlinks=False) and not is_reserved(d.name))
            except OSError:
                continue  # gone or unreadable: the scan says so

    def _add(self, rel: str) -> bool:
        path = os.fsencode(self.root / rel if rel else self.root)
        wd = self._libc.inotify_add_watch(self.fd, path, MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:  # fs.inotify.max_user_watches: from now on, every scan walks all
                log.warning("cannot watch %s for changes (the inotify watch limit, fs.inotify.max_user_watches); "
                            "each session walks the whole folder", self.root)
                self.close()
            return False
        old = self._paths_of.get(wd)
        if old is not None and old != rel:
            self._wd_of.pop(old, None)
        self._paths_of[wd], self._wd_of[rel] = rel, wd
        return True

    def _drop_tree(self, top: str) -> None:
        """A directory moved out of the folder (or away): stop following it and what is inside."""
        inside = top + "/"
        for rel in [r for r in self._wd_of if r == top or r.startswith(inside)]:
            wd = self._wd_of.pop(rel)
            self._paths_of.pop(wd, None)
            self._libc.inotify_rm_watch(self.fd, wd)

    def attach(self, loop: asyncio.AbstractEventLoop, every: float = 1.0) -> None:
        """Read events as they come too, so the kernel's bounded queue does not overflow between
        sessions -- at most once every `every` seconds, in big reads: a session writing ten
        thousand files must not wake the loop ten thousand times."""
        self._loop = loop

        def readable() -> None:
            loop.remove_reader(self.fd)
            self._read_once()
            loop.call_later(every, arm)

        def arm() -> None:
            if self.fd >= 0:
                loop.add_reader(self.fd, readable)
        arm()

    def close(self) -> None:
        """Stop following the folder: from now on, every scan walks everything."""
        if self.fd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self.fd)  # (whether armed or not)
            os.close(self.fd)
            self.fd = -1
        self._paths_of.clear()
        self._wd_of.clear()
        self.blind()

    def read(self) -> None:
        """Everything the kernel has queued, to its end."""
        while self._read_once():
            pass

    def _read_once(self) -> bool:
        """One read of queued events; False when there were none (or we gave up)."""
        if self.fd < 0:
            return False
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return False
        except OSError as e:
            log.warning("cannot read folder changes (%s); each session walks the whole folder", e)
            self.close()
            return False
        self._parse(data)
        return True

    def _parse(self, data: bytes) -> None:
        changed: list[str] = []
        at, end = 0, len(data)
        while at < end:
            wd, mask, _cookie, n = _HEAD.unpack_from(data, at)
            name = data[at + 16: at + 16 + n].rstrip(b"\0")
            at += 16 + n
            if mask & IN_Q_OVERFLOW:
                self.forget()
                continue
            rel = self._paths_of.get(wd)
            if rel is None:
                continue
            if not name:  # the directory itself: gone, moved, or no longer watched
                if mask & (IN_IGNORED | IN_DELETE_SELF):
                    self._paths_of.pop(wd, None)
                    if self._wd_of.get(rel) == wd:
                        del self._wd_of[rel]
                continue
            if name.startswith(_TMP):
                continue
            text = os.fsdecode(name)
            if is_reserved(text):
                continue
            path = f"{rel}/{text}" if rel else text
            if not mask & IN_ISDIR:
                changed.append(path)
                continue
            if mask & IN_MOVED_FROM:  # (a removed directory's watch goes by itself: IN_IGNORED, above)
                self._drop_tree(path)
                changed.append(path)  # and what was inside it
            elif mask & IN_DELETE:
                changed.append(path)
            elif mask & (IN_CREATE | IN_MOVED_TO) or path not in self._wd_of:  # new here, or made readable
                self._add_tree(path)
                changed.append(path)  # and what is inside it
            else:  # its mode, mtime or xattrs: our own receiver sets a directory's mtime after its files
                changed.append(OWN + path)
        if changed:
            self.add(changed)

    def take(self) -> set[str] | None:
        self.read()
        if time.monotonic() - self._last_full > self.full_every:
            self.forget()
        paths = super().take()
        if paths is None:
            self._last_full = time.monotonic()
        return paths


def start(root: Path, full_every: float) -> Notified | None:
    """A `Notified` for the folder at `root` with every directory watched, or None where
    inotify is not there (not Linux) or cannot start (the instance limit): one line says so."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        log.warning("cannot watch %s for changes (%s; raise fs.inotify.max_user_instances); each session walks "
                    "the whole folder", root, os.strerror(ctypes.get_errno()))
        return None
    notified = Notified(root, libc, fd, full_every)
    notified.watch_all()
    return notified
