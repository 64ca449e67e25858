"""What `deltasync status` reports, as data (the CLI renders it or prints JSON)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from . import identity
from .config import Folder
from .fs.scan import scan_folder
from .store.manifest import Manifest


def _when(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds") if ts else None


def collect(directory: Path) -> dict[str, Any]:
    folder = Folder.open(directory)
    cfg = folder.config()
    m = Manifest(folder.db)
    try:
        seen = m.last_synced()
        partials = m.partials()
        known = m.seen()
        look = scan_folder(folder, m, record=False)
    finally:
        m.close()
    conflicts = sorted(p for p, s in known.items() if not s.entry.deleted and ".sync-conflict-" in p.rsplit("/", 1)[-1])
    return {
        "peer_id": identity.format_id(folder.peer_id),
        "peers": [{"name": p.name, "id": identity.format_id(p.id), "address": p.address,
                   "last_sync": _when(seen.get(p.id, (None, ""))[0])} for p in cfg.peers.values()],
        "partials": [{"path": p.path, "segments_done": len(p.done), "segments_total": p.segments_total,
                      "bytes_done": p.bytes_done, "size": p.size, "updated": _when(p.updated)}
                     for p in partials],
        "conflicts": conflicts,
        "pending": look.changed,  # changed here since the last sync or scan, not yet sent
    }
