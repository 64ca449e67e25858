"""What a comparison of everything sets aside until its last range has run
(`core.streamed.Later`), on disk: a million deletes are rows in a temporary
table of the manifest's connection, not a million entries in memory."""
from __future__ import annotations

import json
from typing import Iterable, Iterator

from ..core.entry import Entry
from ..core.streamed import Later
from .manifest import Manifest

KINDS = ("delete", "create", "hardlink", "dir_meta")  # the order they run in at the end


class Spool:
    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        with manifest.lock:
            manifest.db.execute("CREATE TEMP TABLE IF NOT EXISTS spool (n INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
                                "rank INTEGER NOT NULL, entry TEXT NOT NULL, extra TEXT)")
            manifest.db.execute("CREATE INDEX IF NOT EXISTS temp.spool_order ON spool (kind, rank, n)")
            manifest.db.execute("DELETE FROM temp.spool")

    def add(self, kind: str, items: Iterable[tuple[Entry, str | None]]) -> None:
        """Entries (each with a `replaces`, for a hard link) to run at the end, in the order added."""
        deep = kind == "delete"
        rows = [(kind, -e.path.count("/") if deep else 0, json.dumps(e.to_wire()), extra) for e, extra in items]
        if rows:
            with self.manifest.lock:
                self.manifest.db.executemany("INSERT INTO temp.spool (kind, rank, entry, extra) VALUES (?,?,?,?)",
                                             rows)

    def put(self, later: Later) -> None:
        """What ranges' plans left for the end."""
        self.add("delete", ((e, None) for e in later.deletes))
        self.add("create", ((e, None) for e in later.creations))
        self.add("hardlink", later.hardlinks)
        self.add("dir_meta", ((e, None) for e in later.dir_meta))

    def take(self, kind: str, page: int = 4096) -> Iterator[list[tuple[Entry, str | None]]]:
        """What was added of `kind`, a page at a time: deletes deepest first (a directory is empty
        when it goes), the rest in the order added."""
        at = (-(1 << 62), 0)
        while True:
            with self.manifest.lock:
                rows = self.manifest.db.execute("SELECT rank, n, entry, extra FROM temp.spool WHERE kind=? AND "
                                                "(rank, n) > (?, ?) ORDER BY rank, n LIMIT ?",
                                                (kind, *at, page)).fetchall()
            if not rows:
                return
            at = (rows[-1][0], rows[-1][1])
            yield [(Entry.from_wire(json.loads(entry)), extra) for _, _, entry, extra in rows]

    def close(self) -> None:
        with self.manifest.lock:
            self.manifest.db.execute("DELETE FROM temp.spool")
