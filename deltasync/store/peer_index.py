"""Our copy of each peer's index, and how far our last session with it got.

A peer sends its whole index once; after that only the entries it recorded
since the sequence number we say we hold (Syncthing's delta indexes). The copy
lives in the folder's manifest database, so the next session plans against it
without the peer sending what did not change. Beside it, per peer: up to which
of *our* sequence numbers the last complete session settled everything, and
the paths it left unsettled (failed, blocked, held) -- the next session looks
at those again, and at nothing else that did not change.
"""
from __future__ import annotations

import json
from typing import Callable, Iterable

from ..core.entry import Entry, xattrs_to_wire
from ..errors import ProtocolError
from .manifest import Manifest, in_chunks, version_text

_SCHEMA = """
CREATE TABLE IF NOT EXISTS peer_index (
    peer_id TEXT PRIMARY KEY, index_id TEXT NOT NULL, sequence INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS peer_files (
    peer_id TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    mode INTEGER NOT NULL, blake3 TEXT, target TEXT, version TEXT NOT NULL, deleted INTEGER NOT NULL, link TEXT,
    xattrs TEXT NOT NULL, PRIMARY KEY (peer_id, path)
);
CREATE INDEX IF NOT EXISTS peer_files_by_content ON peer_files (peer_id, blake3);
CREATE TABLE IF NOT EXISTS peer_settled (
    peer_id TEXT PRIMARY KEY, shape TEXT NOT NULL, sequence INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS peer_heard (peer_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS peer_unsettled (
    peer_id TEXT NOT NULL, path TEXT NOT NULL, PRIMARY KEY (peer_id, path)
);
"""
# read back in Manifest's row layout (no inode or ctime: a peer's stat is none of ours)
_COLS = "path, kind, size, mtime_ns, mode, 0, 0, blake3, target, version, deleted, link, xattrs"
# A path both sides hold exactly alike, as one SQL condition over our row `f` and the copy's `p`
# (parameter: the peer): a comparison of everything passes over it in SQL, and no entry is made.
# Not directories: their metadata is settled after what changes inside them, so plans see them.
_ALIKE = ("p.peer_id = ? AND p.path = f.path AND f.kind != 'dir' AND p.kind = f.kind AND p.size = f.size "
          "AND p.mtime_ns = f.mtime_ns AND p.mode = f.mode AND p.blake3 IS f.blake3 AND p.target IS f.target "
          "AND p.version = f.version AND p.deleted = f.deleted AND p.link IS f.link AND p.xattrs = f.xattrs")
# an entry that changes in place (a row of the copy updated, not deleted and made again: its index
# entries stay where they are when its content does)
_UPSERT = ("INSERT INTO peer_files VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (peer_id, path) DO UPDATE SET "
           + ", ".join(f"{c}=excluded.{c}" for c in ("kind", "size", "mtime_ns", "mode", "blake3", "target", "version",
                                                      "deleted", "link", "xattrs")))
_OURS = ", ".join(f"f.{c}" for c in Manifest._COLS.split(", "))


class PeerIndex:
    def __init__(self, manifest: Manifest, peer_id: str) -> None:
        self.manifest = manifest
        self.peer = peer_id
        with manifest.lock:
            manifest.db.executescript(_SCHEMA)

    def held(self) -> tuple[str, int] | None:
        """The peer's index ID and the sequence we hold it up to, if we hold a copy."""
        with self.manifest.lock:
            r = self.manifest.db.execute("SELECT index_id, sequence FROM peer_index WHERE peer_id=?",
                                         (self.peer,)).fetchone()
        return (r[0], r[1]) if r else None

    def start(self, full: bool) -> None:
        """An index begins to arrive: a whole one (`full`) replaces our copy, which is gone until
        `finish` (a session cut short leaves no mark, so the next one asks for all of it)."""
        if full:
            self._drop(("peer_files", "peer_index", "peer_settled"))

    def add(self, entries: Iterable[Entry]) -> None:
        """One part of what the peer sent, stored as it arrives: no index is one dict in memory."""
        rows = [(self.peer, e.path, e.kind, e.size, e.mtime_ns, e.mode, e.blake3, e.target,
                 version_text(e.version), int(e.deleted), e.link,
                 json.dumps(xattrs_to_wire(e.xattrs)) if e.xattrs else "") for e in entries]
        with self.manifest.lock, self.manifest.tx():
            self.manifest.db.executemany(_UPSERT, rows)

    def heard_all(self) -> bool:
        """Does our copy hold every verdict the peer gave us (our last session with it heard them all)?"""
        with self.manifest.lock:
            return self.manifest.db.execute("SELECT 1 FROM peer_heard WHERE peer_id=?", (self.peer,)).fetchone() \
                is not None

    def heard(self, all_of_it: bool) -> None:
        with self.manifest.lock, self.manifest.tx():
            if all_of_it:
                self.manifest.db.execute("INSERT OR IGNORE INTO peer_heard VALUES (?)", (self.peer,))
            else:
                self.manifest.db.execute("DELETE FROM peer_heard WHERE peer_id=?", (self.peer,))

    def finish(self, index_id: str, sequence: int, most: int) -> None:
        """The index arrived whole: we hold it up to `sequence`. Our copy holds at most `most`
        entries, however many sessions a peer sends new ones in: past that, the copy is dropped
        (the next session asks for all of it) and the session fails."""
        db = self.manifest.db
        with self.manifest.lock, self.manifest.tx():
            db.execute("INSERT OR REPLACE INTO peer_index VALUES (?,?,?)", (self.peer, index_id, sequence))
            held = db.execute("SELECT COUNT(*) FROM peer_files WHERE peer_id=?", (self.peer,)).fetchone()[0]
        if held > most:
            self._drop(("peer_files", "peer_index", "peer_settled", "peer_unsettled", "peer_heard"))
            raise ProtocolError(f"peer index has more than {most} entries")

    def _drop(self, tables: tuple[str, ...]) -> None:
        with self.manifest.lock, self.manifest.tx():
            for table in tables:
                self.manifest.db.execute(f"DELETE FROM {table} WHERE peer_id=?", (self.peer,))

    def entries(self, paths: Iterable[str] | None = None) -> dict[str, Entry]:
        """Our copy of the peer's entries for these paths (None: all of them)."""
        db, out = self.manifest.db, {}
        with self.manifest.lock:
            if paths is None:
                rows = db.execute(f"SELECT {_COLS} FROM peer_files WHERE peer_id=?", (self.peer,)).fetchall()
            else:
                rows = []
                for chunk in in_chunks(list(paths)):
                    rows += db.execute(f"SELECT {_COLS} FROM peer_files WHERE peer_id=? AND path IN "
                                       f"({','.join('?' * len(chunk))})", (self.peer, *chunk)).fetchall()
        for r in rows:
            out[r[0]] = Manifest.row_entry(r)
        return out

    def after(self, path: str, limit: int) -> list[Entry]:
        """The next `limit` entries of our copy past `path` that we do not hold alike, in path
        order (a comparison of everything reads it so, a page at a time)."""
        cols = ", ".join(f"p.{c}" if c[0].isalpha() else c for c in _COLS.split(", "))
        with self.manifest.lock:
            rows = self.manifest.db.execute(
                f"SELECT {cols} FROM peer_files p WHERE p.peer_id=? AND p.path > ? AND NOT EXISTS "
                f"(SELECT 1 FROM files f WHERE {_ALIKE}) ORDER BY p.path LIMIT ?",
                (self.peer, path, self.peer, limit)).fetchall()
        return [Manifest.row_entry(r) for r in rows]

    def ours_after(self, path: str, limit: int) -> list[Entry]:
        """The next `limit` entries of our manifest past `path` that our copy does not hold alike."""
        with self.manifest.lock:
            rows = self.manifest.db.execute(
                f"SELECT {_OURS} FROM files f WHERE f.path > ? AND NOT EXISTS "
                f"(SELECT 1 FROM peer_files p WHERE {_ALIKE}) ORDER BY f.path LIMIT ?",
                (path, self.peer, limit)).fetchall()
        return [Manifest.row_entry(r) for r in rows]

    def alike(self) -> tuple[int, int]:
        """How many live files (and their bytes) both sides hold alike: what a comparison in ranges
        passes over, counted as unchanged."""
        with self.manifest.lock:
            n, size = self.manifest.db.execute(
                f"SELECT COUNT(*), TOTAL(f.size) FROM files f WHERE f.kind='file' AND f.deleted=0 AND EXISTS "
                f"(SELECT 1 FROM peer_files p WHERE {_ALIKE})", (self.peer,)).fetchone()
        return int(n), int(size)

    def holding(self, contents: Iterable[str], allowed: Callable[[str], bool],
                stable: bool = False) -> dict[str, str]:
        """For each content (blake3), the first `allowed` path where the peer holds it as a live
        file, if any. `stable`: only where it will still hold it while a plan runs in parts (we
        hold the same there, or nothing live: a delete waits for the end)."""
        db, out = self.manifest.db, {}
        keep = (" AND NOT EXISTS (SELECT 1 FROM files f WHERE f.path = p.path AND f.deleted = 0 "
                "AND f.blake3 IS NOT p.blake3)") if stable else ""
        with self.manifest.lock:
            for chunk in in_chunks(sorted(set(contents))):
                rows = db.execute(f"SELECT blake3, path FROM peer_files p WHERE peer_id=? AND deleted=0 AND size>0 "
                                  f"AND blake3 IN ({','.join('?' * len(chunk))}){keep} ORDER BY path",
                                  (self.peer, *chunk)).fetchall()
                for b3, path in rows:
                    if b3 not in out and allowed(path):
                        out[b3] = path
        return out

    def differing(self, ours: bool) -> tuple[int, int]:
        """How many live files (and their bytes) one side holds that the other does not hold with the
        same content at the same path: `ours` (what a push may send), else the peer's (what a pull may
        fetch). What a comparison in ranges shows as its progress's total, before it knows."""
        if ours:
            q = ("SELECT COUNT(*), TOTAL(f.size) FROM files f WHERE f.kind='file' AND f.deleted=0 AND NOT EXISTS "
                 "(SELECT 1 FROM peer_files p WHERE p.peer_id=? AND p.path=f.path AND p.deleted=0 AND p.blake3=f.blake3)")
        else:
            q = ("SELECT COUNT(*), TOTAL(p.size) FROM peer_files p WHERE p.peer_id=? AND p.kind='file' AND p.deleted=0 "
                 "AND NOT EXISTS (SELECT 1 FROM files f WHERE f.path=p.path AND f.deleted=0 AND f.blake3=p.blake3)")
        with self.manifest.lock:
            n, size = self.manifest.db.execute(q, (self.peer,)).fetchone()
        return int(n), int(size)

    def settled(self, shape: str) -> tuple[int, set[str]] | None:
        """Our sequence up to which the last complete session of this `shape` settled
        everything, and the paths it left unsettled; None: look at everything."""
        db = self.manifest.db
        with self.manifest.lock:
            r = db.execute("SELECT shape, sequence FROM peer_settled WHERE peer_id=?", (self.peer,)).fetchone()
            if r is None or r[0] != shape:
                return None
            left = {p for (p,) in db.execute("SELECT path FROM peer_unsettled WHERE peer_id=?", (self.peer,))}
        return r[1], left

    def settle(self, shape: str, sequence: int, unsettled: Iterable[str]) -> None:
        """A session of `shape` completed: everything we recorded up to `sequence` is settled but `unsettled`."""
        db = self.manifest.db
        with self.manifest.lock, self.manifest.tx():
            db.execute("DELETE FROM peer_unsettled WHERE peer_id=?", (self.peer,))
            db.executemany("INSERT OR IGNORE INTO peer_unsettled VALUES (?,?)", [(self.peer, p) for p in unsettled])
            db.execute("INSERT OR REPLACE INTO peer_settled VALUES (?,?,?)", (self.peer, shape, sequence))
