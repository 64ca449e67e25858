"""The record of one path in an index: what scan produces, the manifest
stores, `send_file_list` carries and the planner compares."""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from . import limits
from . import version as vv
from ..errors import ProtocolError

FILE, DIR, SYMLINK = "file", "dir", "symlink"
KINDS = (FILE, DIR, SYMLINK)
# the extended attributes we sync (like rsync -X as a user, and -A's POSIX ACLs)
XATTR_PREFIX = "user."
ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
Xattrs = tuple[tuple[str, bytes], ...]  # sorted by name


def parents(path: str) -> list[str]:
    """The directories above a relative path, top first: 'a/b/c' -> ['a', 'a/b']."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def synced_xattr(name: str) -> bool:
    return name.startswith(XATTR_PREFIX) or name in ACL_XATTRS


def xattrs_to_wire(xattrs: Xattrs) -> dict[str, str]:
    return {name: base64.b64encode(value).decode("ascii") for name, value in xattrs}


def xattrs_from_wire(value: Any, what: str) -> Xattrs:
    """A peer's extended attributes, checked: names we sync, bounded in count and size."""
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > limits.MAX_XATTRS:
        raise ProtocolError(f"{what}: xattrs must be an object of at most {limits.MAX_XATTRS} names")
    out, total = [], 0
    for name, text in value.items():
        if not (isinstance(name, str) and synced_xattr(name) and len(name) <= limits.MAX_XATTR_NAME
                and isinstance(text, str) and len(text) <= limits.MAX_XATTR_VALUE * 4 // 3 + 4):
            raise ProtocolError(f"{what}: an xattr name or value is not one we take")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(f"{what}: an xattr value is not base64") from None
        total += len(name) + len(raw)
        if total > limits.MAX_XATTR_BYTES:
            raise ProtocolError(f"{what}: xattrs larger than {limits.MAX_XATTR_BYTES} bytes")
        out.append((name, raw))
    return tuple(sorted(out))


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    kind: str
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0
    blake3: str | None = None  # files only
    target: str | None = None  # symlinks only
    version: vv.Version = ()
    deleted: bool = False  # a tombstone: deletes travel, so a deleted file does not come back
    link: str | None = None  # files only: a hard link of this earlier path in the folder (rsync -H)
    xattrs: Xattrs = ()  # files and directories: extended attributes we sync (rsync -X)

    def same_content(self, other: "Entry") -> bool:
        if self.deleted or other.deleted:
            return self.deleted == other.deleted
        if self.kind != other.kind:
            return False
        if self.kind == FILE:
            return self.size == other.size and self.blake3 == other.blake3
        if self.kind == SYMLINK:
            return self.target == other.target
        return True

    def same_meta(self, other: "Entry") -> bool:
        """Mode and mtime as we keep them (symlink metadata is not kept; dir mtimes are)."""
        if self.kind == SYMLINK:
            return True
        return self.mode == other.mode and self.mtime_ns == other.mtime_ns and self.xattrs == other.xattrs

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "kind": self.kind, "size": self.size, "mtime_ns": self.mtime_ns,
                             "mode": self.mode, "version": dict(self.version)}
        if self.blake3 is not None:
            d["blake3"] = self.blake3
        if self.target is not None:
            d["target"] = self.target
        if self.deleted:
            d["deleted"] = True
        if self.link is not None:
            d["link"] = self.link
        if self.xattrs:
            d["xattrs"] = xattrs_to_wire(self.xattrs)
        return d

    @classmethod
    def from_wire(cls, d: Any) -> "Entry":
        """Validate a peer's index entry; a bad one is a protocol error."""
        if not isinstance(d, dict):
            raise ProtocolError("index entry is not an object")
        path, kind = d.get("path"), d.get("kind")
        if not isinstance(path, str) or kind not in KINDS or not 0 < len(path) <= limits.MAX_PATH_CHARS:
            raise ProtocolError("index entry needs a path and a kind")
        what = f"index entry {path[:200]!r}"
        ints = {"size": limits.check_int(d.get("size", 0), 0, limits.MAX_FILE_SIZE, f"{what}: size"),
                "mtime_ns": limits.check_mtime(d.get("mtime_ns", 0), f"{what}: mtime_ns"),
                "mode": limits.check_int(d.get("mode", 0), 0, limits.MAX_MODE, f"{what}: mode")}
        b3, target = d.get("blake3"), d.get("target")
        version, deleted = vv.from_wire(d.get("version")), d.get("deleted", False)
        if type(deleted) is not bool:
            raise ProtocolError(f"index entry {path[:200]!r}: deleted must be a bool")
        if deleted:
            return cls(path, kind, 0, ints["mtime_ns"], 0, version=version, deleted=True)
        if kind == FILE and not (isinstance(b3, str) and len(b3) == 64):
            raise ProtocolError(f"index entry {path[:200]!r}: a file needs a blake3")
        if kind == SYMLINK and not (isinstance(target, str) and 0 < len(target) <= limits.MAX_PATH_CHARS):
            raise ProtocolError(f"index entry {path[:200]!r}: a symlink needs a target")
        link = d.get("link")
        if link is not None and not (kind == FILE and isinstance(link, str) and 0 < len(link) <= limits.MAX_PATH_CHARS
                                     and link != path):
            raise ProtocolError(f"index entry {path[:200]!r}: a hard link names another file's path")
        xattrs = xattrs_from_wire(d.get("xattrs"), what) if kind != SYMLINK else ()
        return cls(path, kind, ints["size"], ints["mtime_ns"], ints["mode"] & 0o7777,
                   b3 if kind == FILE else None, target if kind == SYMLINK else None, version, link=link,
                   xattrs=xattrs)
