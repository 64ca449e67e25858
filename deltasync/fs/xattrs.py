"""Extended attributes on an open file or directory: read the ones we sync,
and make a file's match a peer's (set what differs, remove what it lacks).
Only the user namespace and the POSIX ACL attributes (`core.entry.synced_xattr`);
nothing where the platform has no xattr calls (then nothing is read or written
and a peer's are kept as it said them)."""
from __future__ import annotations

import errno
import os

from ..core.entry import Xattrs, synced_xattr
from ..errors import TransferFailed

AVAILABLE = hasattr(os, "listxattr")
_ABSENT = (errno.ENODATA, errno.ENOTSUP, getattr(errno, "ENOATTR", errno.ENODATA))


def read(fd: int) -> Xattrs:
    if not AVAILABLE:
        return ()
    try:
        names = [n for n in os.listxattr(fd) if synced_xattr(n)]
    except OSError as e:
        if e.errno in _ABSENT:
            return ()
        raise
    out = []
    for name in names:
        try:
            out.append((name, os.getxattr(fd, name)))
        except OSError as e:
            if e.errno not in _ABSENT:  # gone since it was listed: as if never there
                raise
    return tuple(sorted(out))


def apply(fd: int, want: Xattrs, path: str) -> None:
    """Make `fd`'s synced attributes exactly `want`."""
    if not AVAILABLE:
        return
    try:
        have = dict(read(fd))
        wanted = dict(want)
        for name in have.keys() - wanted.keys():
            os.removexattr(fd, name)
        for name, value in wanted.items():
            if have.get(name) != value:
                os.setxattr(fd, name, value)
    except OSError as e:
        hint = " (not supported here: set xattrs = false in config.toml to leave them)" \
            if e.errno == errno.ENOTSUP else ""
        raise TransferFailed(f"{path}: extended attributes: {e.strerror}{hint}") from None
