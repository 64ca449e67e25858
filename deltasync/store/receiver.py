"""The receiving side of one folder, shared by every session that writes into
it: small files (`small.py`), big files in segments (`segments.py`), tree
changes (`tree.py`), all on the checks of `local.py`; plus our signatures for
peers that delta against us, and the cleaning of what a killed run left."""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from ..config import Folder
from ..core.entry import FILE, Entry
from ..fs import safe
from .local import writer_alive
from .manifest import Manifest
from .segments import SegmentedFiles
from .signatures import Signatures
from .small import SmallFiles
from .tree import TreeOps

log = logging.getLogger(__name__)


class Receiver(SmallFiles, SegmentedFiles, TreeOps):
    def __init__(self, folder: Folder, manifest: Manifest, background: bool = True) -> None:
        super().__init__(folder, manifest)
        self.signatures = Signatures(self.safe, manifest, self.current, background)
        self.durability = ThreadPoolExecutor(1, thread_name_prefix="durable") if background else None

    def close(self, wait_signatures: float = 0.0) -> None:
        """Stop. Background signature jobs get up to `wait_signatures` seconds
        (inf: until done); the rest are abandoned mid-read, not waited for."""
        self.signatures.close(wait_signatures)
        if self.durability is not None:
            self.durability.shutdown(wait=True)

    def signature_for(self, path: str, blake3: str) -> tuple[int, bytes] | None:
        """Our signature of `path` if it still has content `blake3`; None if not."""
        safe.check_relpath(path)
        cur = self.current(path)
        if cur is None or cur.kind != FILE or cur.blake3 != blake3:
            return None
        return self.signatures.get(cur)

    def precompute_signature(self, entry: Entry) -> None:
        self.signatures.precompute(entry)

    def clean_stale(self, max_age_s: float) -> int:
        """Drop partials untouched for longer than `max_age_s`, orphan temp files,
        and versions past their policy. The state folders are opened without
        following links: a symlink planted there never leads a delete outside."""
        now = time.time()
        dropped = 0
        for p in self.manifest.partials():
            if now - p.updated > max_age_s and not self.registry.claimed(p.path):
                self.discard(p)
                dropped += 1
        known = {p.name for p in self.manifest.partials()}
        for sub in ("partial", "tmp"):
            try:
                dfd = safe.state_dir(self.folder.root, sub)
            except OSError as e:
                log.warning("%s/%s: not cleaned (%s)", safe.META, sub, e.strerror)
                continue
            try:
                for name in os.listdir(dfd):
                    if name not in known and not writer_alive(name):
                        try:
                            os.unlink(name, dir_fd=dfd)
                        except OSError:
                            pass  # a directory someone made there: not ours to remove
            finally:
                os.close(dfd)
        self.versions.clean_orphans()
        self.versions.prune()
        return dropped
