"""The folder's memory, in SQLite (WAL): what each path was when last seen
(so a scan rehashes only what changed), cached librsync signatures, and the
journal of partial transfers (so a crash resumes at the first missing segment).

Every change recorded gets the next number of the folder's sequence, and the
folder's index has an ID (see `index_state`): a peer that holds our index up
to sequence N asks only for what is newer (docs/PROTOCOL.md, "Index exchange").

One `Manifest` may be shared by threads: every call takes the lock.
"""
from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..core import version as vv
from ..core.entry import Entry, xattrs_from_wire, xattrs_to_wire
from ..core.limits import MAX_VECTOR_KEY_LEN
from ..core.record import Record, record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, kind TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    mode INTEGER NOT NULL, ino INTEGER NOT NULL, ctime_ns INTEGER NOT NULL DEFAULT 0,
    blake3 TEXT, target TEXT, version TEXT NOT NULL DEFAULT '{}', deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS signatures (
    path TEXT PRIMARY KEY, blake3 TEXT NOT NULL, block_len INTEGER NOT NULL, sig BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS signatures_by_content ON signatures (blake3);
CREATE TABLE IF NOT EXISTS segments (
    blake3 TEXT NOT NULL, segment_size INTEGER NOT NULL, hashes BLOB NOT NULL, PRIMARY KEY (blake3, segment_size)
);
CREATE TABLE IF NOT EXISTS partials (
    path TEXT PRIMARY KEY, target_blake3 TEXT NOT NULL, replaces TEXT, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, mode INTEGER NOT NULL, segment_size INTEGER NOT NULL,
    name TEXT NOT NULL, started REAL NOT NULL, updated REAL NOT NULL, version TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS partial_segments (
    path TEXT NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (path, idx)
);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL,
    blake3 TEXT, mtime_ns INTEGER NOT NULL, mode INTEGER NOT NULL, version TEXT NOT NULL, kept REAL NOT NULL,
    peer TEXT NOT NULL, reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_by_path ON versions (path, kept);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS peers_seen (
    peer_id TEXT PRIMARY KEY, last_sync REAL NOT NULL, direction TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Seen:
    """A manifest row: the entry plus the stat fields that tell us whether to rehash."""

    entry: Entry
    ino: int
    ctime_ns: int
    xattrs_known: bool = True  # False for a row from before xattrs were kept: read them at the next scan
    by: str | None = None  # the peer whose session made it exactly as that peer sent it (it holds it: no echo)


# What a scan compares a path's stat with (no entry is made for an unchanged path), as a plain
# row (a million of them are read per scan): path, kind, deleted, settled (live, and nothing
# in its entry waits for a look: a file's blake3, a link's leader, xattrs), then size (0 for
# a directory), mtime_ns, ino, ctime_ns, mode.
StatRow = tuple[str, str, int, int, int, int, int, int, int]
KIND, DELETED, SETTLED = 1, 2, 3


@record
class Partial(Record):
    path: str
    target_blake3: str
    replaces: str | None
    size: int
    mtime_ns: int
    mode: int
    segment_size: int
    name: str
    started: float
    updated: float
    version: str  # JSON of the version vector the finished file will carry
    done: frozenset[int]

    @property
    def segments_total(self) -> int:
        return max(1, -(-self.size // self.segment_size))

    @property
    def bytes_done(self) -> int:
        return sum(min(self.segment_size, self.size - i * self.segment_size) for i in self.done)


CACHED_TEXT = vv.CACHED_KEYS * (MAX_VECTOR_KEY_LEN + 26)  # a small vector's JSON at most


@vv.cached_when(lambda text: len(text) <= CACHED_TEXT)
def _version(text: str) -> vv.Version:
    """A stored vector, parsed once per distinct small one: most rows of a folder share a few."""
    return vv.from_stored(json.loads(text))


@vv.cached_when(lambda v: len(v) <= vv.CACHED_KEYS)
def version_text(v: vv.Version) -> str:
    """A vector as stored (JSON): a first scan's or a first push's rows all carry the same one."""
    return json.dumps(vv.to_wire(v))


class Manifest:
    def __init__(self, path: Path) -> None:
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Add columns that newer versions introduced to a manifest made by an older one."""
        for table, column, decl in (("files", "version", "TEXT NOT NULL DEFAULT '{}'"),
                                    ("files", "deleted", "INTEGER NOT NULL DEFAULT 0"),
                                    ("partials", "version", "TEXT NOT NULL DEFAULT '{}'"),
                                    # what made a cached signature: its format (magic/strong length) and engine
                                    ("signatures", "format", "TEXT NOT NULL DEFAULT ''"),
                                    ("signatures", "engine", "TEXT NOT NULL DEFAULT ''"),
                                    ("signatures", "digests", "BLOB"),  # engine.block_digests; NULL: none
                                    ("files", "link", "TEXT"),  # hard links (rsync -H)
                                    ("files", "xattrs", "TEXT"),  # JSON {name: base64}; '': none; NULL: not read yet
                                    ("files", "seq", "INTEGER NOT NULL DEFAULT 0"),  # when it last changed
                                    ("files", "by_peer", "TEXT"),  # `Seen.by`: not sent back to that peer
                                    ("files", "parent", "TEXT")):  # its directory ('' at the top): a scan reads
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}  # one directory's rows at a time
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        if self._db.execute("SELECT 1 FROM files WHERE parent IS NULL LIMIT 1").fetchone():
            with self.tx():
                self._db.executemany("UPDATE files SET parent=? WHERE path=?", [
                    (p.rpartition("/")[0], p) for (p,) in self._db.execute(
                        "SELECT path FROM files WHERE parent IS NULL").fetchall()])
        self._db.execute("CREATE INDEX IF NOT EXISTS files_by_seq ON files (seq)")
        self._db.execute("CREATE INDEX IF NOT EXISTS files_by_parent ON files (parent)")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('index_id', ?)", (_new_index_id(),))
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('sequence', '0')")

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for the stores that keep their tables here (take `lock` around it)."""
        return self._db

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- files -------------------------------------------------------------
    _COLS = "path, kind, size, mtime_ns, mode, ino, ctime_ns, blake3, target, version, deleted, link, xattrs"

    @staticmethod
    def _seen(r: tuple) -> Seen:
        version = _version(r[9])
        xattrs = xattrs_from_wire(json.loads(r[12]), "manifest") if r[12] else ()  # '': none; NULL: not read
        return Seen(Entry(r[0], r[1], r[2], r[3], r[4], r[7], r[8], version, bool(r[10]), r[11], xattrs), r[5], r[6],
                    r[12] is not None)

    @classmethod
    def row_entry(cls, r: tuple) -> Entry:
        """An entry from a row in this table's layout (`_COLS`)."""
        return cls._seen(r).entry

    def seen(self) -> dict[str, Seen]:
        """Every path we know, tombstones included."""
        with self._lock:
            rows = self._db.execute(f"SELECT {self._COLS} FROM files").fetchall()
        return {r[0]: self._seen(r) for r in rows}

    def _stat_query(self, xattrs: bool) -> str:
        known = "xattrs IS NOT NULL" if xattrs else "1"
        return (f"SELECT path, kind, deleted, deleted = 0 AND {known} AND (kind = 'dir' OR "
                "(kind = 'file' AND blake3 IS NOT NULL AND link IS NULL)), size, mtime_ns, ino, ctime_ns, mode "
                "FROM files")

    def stat_rows_in(self, directory: str, xattrs: bool = True) -> dict[str, StatRow]:
        """The paths we know directly in `directory` ('' : the top), with only what tells a scan
        it is unchanged (`xattrs`: we keep them). A scan holds one directory's at a time."""
        with self._lock:
            rows = self._db.execute(self._stat_query(xattrs) + " WHERE parent = ?", (directory,)).fetchall()
        return {r[0]: r for r in rows}

    def stat_rows_of(self, paths: list[str], xattrs: bool = True) -> dict[str, StatRow]:
        out: dict[str, StatRow] = {}
        with self._lock:
            for chunk in in_chunks(paths):
                q = self._stat_query(xattrs) + f" WHERE path IN ({','.join('?' * len(chunk))})"
                out.update((r[0], r) for r in self._db.execute(q, chunk))
        return out

    def seen_under(self, directory: str) -> dict[str, Seen]:
        """The rows of every path inside `directory`, at any depth."""
        with self._lock:  # '0' follows '/': the range is exactly what is inside
            rows = self._db.execute(f"SELECT {self._COLS} FROM files WHERE path > ? AND path < ?",
                                    (directory + "/", directory + "0")).fetchall()
        return {r[0]: self._seen(r) for r in rows}

    def all_entries(self, but: dict[str, Entry] | set[str] = frozenset()) -> dict[str, Entry]:  # type: ignore
        """Every recorded entry, but for the paths in `but` (a scan's fresh ones: not made twice)."""
        with self._lock:
            cur = self._db.execute(f"SELECT {self._COLS} FROM files")
            out: dict[str, Entry] = {}
            while rows := cur.fetchmany(4096):
                out.update((r[0], self._seen(r).entry) for r in rows if r[0] not in but)
        return out

    def seen_of(self, paths: Iterable[str]) -> dict[str, Seen]:
        """The rows of these paths (those we have)."""
        out: dict[str, Seen] = {}
        with self._lock:
            for chunk in in_chunks(list(paths)):
                q = f"SELECT {self._COLS} FROM files WHERE path IN ({','.join('?' * len(chunk))})"
                out.update((r[0], self._seen(r)) for r in self._db.execute(q, chunk))
        return out

    def get(self, path: str) -> Seen | None:
        with self._lock:
            r = self._db.execute(f"SELECT {self._COLS} FROM files WHERE path=?", (path,)).fetchone()
        return self._seen(r) if r else None

    def entries(self, paths: Iterable[str]) -> dict[str, Entry]:
        """The recorded entries of these paths (those we have a row for)."""
        return {p: s.entry for p, s in self.seen_of(paths).items()}

    def record(self, rows: Iterable[Seen], removed: Iterable[str] = ()) -> None:
        """Store what a scan (or a commit) saw, in one transaction, each row under
        the next sequence number. A row removed outright (not a tombstone) cannot be
        told to a peer that holds our index: the index gets a new ID, so each peer
        asks for all of it once."""
        with self._lock, self.tx():
            seq = int(self._db.execute("SELECT value FROM meta WHERE key='sequence'").fetchone()[0])
            rows = iter(rows)
            while batch := list(itertools.islice(rows, 4096)):  # a first scan's rows, a batch at a time
                values = []
                for s in batch:
                    seq += 1
                    values.append((s.entry.path, s.entry.kind, s.entry.size, s.entry.mtime_ns, s.entry.mode, s.ino,
                                   s.ctime_ns, s.entry.blake3, s.entry.target, version_text(s.entry.version),
                                   int(s.entry.deleted), s.entry.link,
                                   json.dumps(xattrs_to_wire(s.entry.xattrs)) if s.entry.xattrs else "", seq,
                                   s.entry.path.rpartition("/")[0], s.by))
                self._db.executemany(f"INSERT OR REPLACE INTO files ({self._COLS}, seq, parent, by_peer) "
                                     "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", values)
            self._db.execute("UPDATE meta SET value=? WHERE key='sequence'", (str(seq),))
            gone = [(p,) for p in removed]
            if gone:
                self._db.executemany("DELETE FROM files WHERE path=?", gone)
                self._db.executemany("DELETE FROM signatures WHERE path=?", gone)
                self._db.execute("UPDATE meta SET value=? WHERE key='index_id'", (_new_index_id(),))

    def sequences_of(self, paths: list[str]) -> dict[str, tuple[int, str, bool]]:
        """When each of `paths` was last recorded (those we have a row for), and as what: its kind,
        and whether it is a tombstone."""
        out: dict[str, tuple[int, str, bool]] = {}
        with self._lock:
            for chunk in in_chunks(paths):
                q = f"SELECT path, seq, kind, deleted FROM files WHERE path IN ({','.join('?' * len(chunk))})"
                out.update((p, (seq, kind, bool(deleted))) for p, seq, kind, deleted in self._db.execute(q, chunk))
        return out

    def index_state(self) -> tuple[str, int]:
        """Our index's ID and the highest sequence number recorded in it."""
        with self._lock:
            meta = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN ('index_id', 'sequence')"))
        return meta["index_id"], int(meta["sequence"])

    def since(self, sequence: int, top: int, batch: int = 4096, not_by: str | None = None) -> Iterator[list[Entry]]:
        """Every entry recorded after `sequence` (-1: all) up to `top`, in sequence order, a
        batch at a time: a whole index is never one list in memory. Rows recorded while
        this runs are left to the next ask (their numbers are past `top`). `not_by`: less
        the rows that peer's sessions made as it sent them (it holds those already)."""
        last = sequence
        while True:
            with self._lock:
                rows = self._db.execute(f"SELECT {self._COLS}, seq FROM files WHERE seq > ? AND seq <= ? "
                                        "AND (? IS NULL OR by_peer IS NOT ?) ORDER BY seq LIMIT ?",
                                        (last, top, not_by, not_by, batch)).fetchall()
            if not rows:
                return
            last = rows[-1][-1]
            yield [self._seen(r).entry for r in rows]

    def changed_since(self, sequence: int, most: int = -2) -> list[str] | None:
        """The paths recorded after `sequence`; None if there are more than `most` (-2: no bound)."""
        with self._lock:
            paths = [r[0] for r in self._db.execute("SELECT path FROM files WHERE seq > ? LIMIT ?",
                                                    (sequence, most + 1))]
        return paths if most < 0 or len(paths) <= most else None

    def rows(self) -> int:
        """Paths we have a row for (tombstones too): the size of a walk of the folder."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0])

    def live_files(self) -> tuple[int, int]:
        """How many regular files we hold (by the last scan), and their bytes."""
        with self._lock:
            n, size = self._db.execute("SELECT COUNT(*), TOTAL(size) FROM files WHERE kind='file' AND deleted=0"
                                       ).fetchone()
        return int(n), int(size)

    # -- signatures --------------------------------------------------------
    def signature(self, path: str, blake3: str, fmt: str) -> tuple[int, bytes] | None:
        """A cached signature of `path` at content `blake3`, in format `fmt` (see engine.SIG_FORMAT)."""
        with self._lock:
            r = self._db.execute("SELECT block_len, sig FROM signatures WHERE path=? AND blake3=? AND format=?",
                                 (path, blake3, fmt)).fetchone()
        return (r[0], bytes(r[1])) if r else None

    def signature_of_content(self, blake3: str, fmt: str) -> tuple[int, bytes] | None:
        """A cached signature of this content, whatever path held it (a
        signature depends only on the bytes, the block length and the format)."""
        with self._lock:
            r = self._db.execute("SELECT block_len, sig FROM signatures WHERE blake3=? AND format=? LIMIT 1",
                                 (blake3, fmt)).fetchone()
        return (r[0], bytes(r[1])) if r else None

    def store_segments(self, items: Iterable[tuple[str, int, bytes]]) -> None:
        """Per-segment blake3 of content we hold (content-addressed, like signatures)."""
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO segments VALUES (?,?,?)", list(items))

    def segments_of(self, blake3: str, segment_size: int) -> list[bytes] | None:
        with self._lock:
            r = self._db.execute("SELECT hashes FROM segments WHERE blake3=? AND segment_size=?",
                                 (blake3, segment_size)).fetchone()
        if r is None:
            return None
        raw = bytes(r[0])
        return [raw[i : i + 32] for i in range(0, len(raw), 32)]

    def missing_signatures(self, entries: Iterable[Entry], min_size: int) -> list[Entry]:
        with self._lock:
            have = {r[0] for r in self._db.execute("SELECT blake3 FROM signatures WHERE format != '' "
                                                   "AND digests IS NOT NULL")}  # (signed on demand: again, whole)
        return [e for e in entries if e.kind == "file" and not e.deleted and e.size >= min_size
                and e.blake3 not in have]

    def store_signature(self, path: str, blake3: str, block_len: int, sig: bytes, fmt: str, engine: str,
                        digests: bytes | None = None) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO signatures (path, blake3, block_len, sig, format, engine, "
                             "digests) VALUES (?,?,?,?,?,?,?)", (path, blake3, block_len, sig, fmt, engine, digests))

    def digests_of(self, blake3: str, block_len: int) -> bytes | None:
        """The blocks' blake3 digests (`engine.block_digests`) of content we held, if kept with its
        signature (a digest depends only on the bytes and the block length)."""
        with self._lock:
            r = self._db.execute("SELECT digests FROM signatures WHERE blake3=? AND block_len=? "
                                 "AND digests IS NOT NULL LIMIT 1", (blake3, block_len)).fetchone()
        return bytes(r[0]) if r else None

    # -- partial-transfer journal -----------------------------------------
    def partials(self) -> list[Partial]:
        with self._lock:
            rows = self._db.execute(
                "SELECT path, target_blake3, replaces, size, mtime_ns, mode, segment_size, name, started, updated, "
                "version FROM partials ORDER BY path").fetchall()
            segs: dict[str, set[int]] = {}
            for p, i in self._db.execute("SELECT path, idx FROM partial_segments"):
                segs.setdefault(p, set()).add(i)
        return [Partial(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10],
                        frozenset(segs.get(r[0], ()))) for r in rows]

    def partial(self, path: str) -> Partial | None:
        return next((p for p in self.partials() if p.path == path), None)

    def begin_partial(self, p: Partial) -> None:
        with self._lock, self.tx():
            self._db.execute("DELETE FROM partial_segments WHERE path=?", (p.path,))
            self._db.execute("INSERT OR REPLACE INTO partials VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                             (p.path, p.target_blake3, p.replaces, p.size, p.mtime_ns, p.mode,
                              p.segment_size, p.name, p.started, p.updated, p.version))

    def segments_done(self, path: str, idxs: Iterable[int]) -> None:
        """Called only after the segments' bytes are verified and fsynced."""
        with self._lock, self.tx():
            self._db.executemany("INSERT OR IGNORE INTO partial_segments VALUES (?,?)", [(path, i) for i in idxs])
            self._db.execute("UPDATE partials SET updated=? WHERE path=?", (time.time(), path))

    def drop_partial(self, path: str) -> None:
        with self._lock, self.tx():
            self._db.execute("DELETE FROM partial_segments WHERE path=?", (path,))
            self._db.execute("DELETE FROM partials WHERE path=?", (path,))

    # -- kept versions (see versions.py, beside this) ----------------------------------
    def add_version(self, path: str, name: str, size: int, blake3: str | None, mtime_ns: int, mode: int,
                    version: str, kept: float, peer: str, reason: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO versions (path, name, size, blake3, mtime_ns, mode, version, kept, peer, "
                             "reason) VALUES (?,?,?,?,?,?,?,?,?,?)",
                             (path, name, size, blake3, mtime_ns, mode, version, kept, peer, reason))

    def versions(self, path: str | None = None) -> list[tuple]:
        """Rows of kept versions, newest first."""
        cols = "id, path, name, size, blake3, mtime_ns, mode, version, kept, peer, reason"
        with self._lock:
            if path is None:
                return self._db.execute(f"SELECT {cols} FROM versions ORDER BY kept DESC, id DESC").fetchall()
            return self._db.execute(f"SELECT {cols} FROM versions WHERE path=? ORDER BY kept DESC, id DESC",
                                    (path,)).fetchall()

    def version_names(self) -> dict[str, int]:
        """Every kept version's file name, with its row's id."""
        with self._lock:
            return dict(self._db.execute("SELECT name, id FROM versions"))

    def doomed_versions(self, cutoff: float, per_path: int, max_bytes: int) -> list[tuple[int, str]]:
        """(id, name) of the kept versions past the policy: kept before `cutoff`, past the
        `per_path` newest of their path, or (`max_bytes` > 0) past the newest that fit in it."""
        rows = ("SELECT id, name, size, kept, ROW_NUMBER() OVER (PARTITION BY path ORDER BY kept DESC, id DESC) "
                "AS n FROM versions")
        with self._lock:
            doomed = self._db.execute(f"SELECT id, name FROM ({rows}) WHERE kept < ? OR n > ?",
                                      (cutoff, per_path)).fetchall()
            if max_bytes > 0:  # of the rest, newest first: those past the cap (a running total)
                doomed += self._db.execute(
                    f"SELECT id, name FROM (SELECT id, name, SUM(size) OVER (ORDER BY kept DESC, id DESC ROWS "
                    f"UNBOUNDED PRECEDING) AS total FROM ({rows}) WHERE kept >= ? AND n <= ?) WHERE total > ?",
                    (cutoff, per_path, max_bytes)).fetchall()
        return doomed

    def drop_version(self, vid: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM versions WHERE id=?", (vid,))

    # -- peers -------------------------------------------------------------
    def mark_synced(self, peer_id: str, direction: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO peers_seen VALUES (?,?,?)", (peer_id, time.time(), direction))

    def last_synced(self) -> dict[str, tuple[float, str]]:
        with self._lock:
            return {r[0]: (r[1], r[2]) for r in self._db.execute("SELECT * FROM peers_seen")}

    def tx(self) -> "_Tx":
        """One write transaction (inside `lock`)."""
        return _Tx(self._db)


def _new_index_id() -> str:
    return os.urandom(8).hex()  # what secrets.token_hex does, without importing secrets (and random) at every start


def in_chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """Values for `IN (...)`, a few hundred at a time: under SQLite's limit on bound parameters."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
