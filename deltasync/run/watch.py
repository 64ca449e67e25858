"""`deltasync watch`: the seed's peer -- a server, a client and a file manager.

It serves the folder, watches it (`watchfiles`), and syncs with every peer
when something changed and has settled (size and mtime unchanged for
`settle_seconds`, so a big file being written is sent once), when a peer was
unreachable (retried with backoff), and every `rescan_seconds` as a safety
net. On start it syncs with every peer to catch up in both directions.
Between those walks of the whole folder, a scan -- ours, or our server's
for a peer -- looks only at the paths the watcher saw change, so a change in
a big tree costs about that change.
Events are logged as JSON lines when `--json` is given.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from ..config import Folder
from ..errors import DeltasyncError, PeerBusy
from ..fs.safe import has_reserved
from ..fs.scan import MAX_WITHIN, Unscanned
from ..progress import Ticker
from .client import session
from .report import said
from .server import Server
from .server import run as serve

log = logging.getLogger(__name__)


def _stat(root: Path, paths: set[str]) -> dict[str, tuple[int, int] | None]:
    out: dict[str, tuple[int, int] | None] = {}
    for p in paths:
        try:
            st = os.stat(root / p, follow_symlinks=False)
            out[p] = (st.st_size, st.st_mtime_ns)
        except OSError:
            out[p] = None
    return out


RETRIED = ("; run again", " (run again)")  # advice for one-shot commands: watch runs again by itself


def _text(value: Any) -> str:
    """An event's field as a person reads it (JSON lines keep the structure)."""
    if isinstance(value, list):
        return "; ".join(f"{c['path']} (the {c['loser']} version is kept as {c['copy']})" if "copy" in c
                         else said(str(c.get("path")), _retried(str(c.get("error")))) for c in value) or "none"
    return str(value)


def _retried(why: str) -> str:
    for advice in RETRIED:
        why = why.replace(advice, "; it goes with the next sync")
    return why


class Watcher:
    def __init__(self, folder: Folder, peers: list[str], as_json: bool = False, bwlimit: float | None = None,
                 excludes: list[str] | None = None) -> None:
        self.folder = folder
        self.peers = peers
        self.as_json = as_json
        self.bwlimit = bwlimit
        self.excludes = excludes  # left alone both ways: our sessions skip them, and our server tells its clients
        cfg = folder.config()
        self.settle = float(cfg.setting("settle_seconds"))
        self.rescan = float(cfg.setting("rescan_seconds"))
        # changed paths whose settling we watch: a sample, past MAX_WITHIN (a session that writes a
        # million files must not have a million paths stat'ed every second); `changes` counts them all
        self.pending: set[str] = set()
        self.changes = 0
        self.unscanned = Unscanned()  # what changed since a scan last looked: the next one looks at that only
        self.wake = asyncio.Event()
        self.stop = asyncio.Event()
        self.server = Server(folder, excludes=excludes, unscanned=self.unscanned)

    def event(self, kind: str, level: int = logging.INFO, **fields: Any) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(dict(fields, event=kind, time=round(time.time(), 3))) + "\n")
            sys.stdout.flush()
        else:
            log.log(level, "%s %s", kind, " ".join(f"{k}={_text(v)}" for k, v in fields.items()))

    async def watch_files(self) -> None:
        """Feed changed paths to the next scan. A watcher that cannot start or stops (Linux's
        inotify limits, most often) is one clear line, not silence: scans then walk everything,
        at each `rescan_seconds`, and the watcher is tried again then."""
        from watchfiles import awatch

        root = str(self.folder.root)

        def wanted(_change: object, path: str) -> bool:  # nothing inside a state folder, at any depth
            return not has_reserved(os.path.relpath(path, root).replace(os.sep, "/"))

        while not self.stop.is_set():
            try:
                async for changes in awatch(root, stop_event=self.stop, debounce=400, step=50, recursive=True,
                                            watch_filter=wanted):
                    paths = {os.path.relpath(p, root).replace(os.sep, "/") for _c, p in changes}
                    self.changes += len(paths)
                    if len(self.pending) < MAX_WITHIN:
                        self.pending.update(paths)
                    self.unscanned.add(paths)
                    self.wake.set()
                return
            except Exception as e:  # watchfiles' own errors derive from Exception, not OSError
                self.unscanned.blind()
                advice = " (raise fs.inotify.max_user_watches and max_user_instances)" \
                    if sys.platform.startswith("linux") else ""
                self.event("watch_failed", logging.WARNING, error=f"cannot watch the folder for changes ({e}); "
                           f"looking for them by a walk of the whole folder every {self.rescan:g} s, and trying "
                           f"again then{advice}")
            try:
                await asyncio.wait_for(self.stop.wait(), self.rescan)
            except asyncio.TimeoutError:
                self.unscanned.blind(False)

    async def settled(self) -> None:
        """Wait until the changed paths stop changing, and no new ones come."""
        while True:
            before = self.changes, _stat(self.folder.root, self.pending)
            await asyncio.sleep(self.settle)
            if (self.changes, _stat(self.folder.root, self.pending)) == before:
                return

    async def sync_all(self, reason: str) -> bool:
        ok = True
        for peer in self.peers:
            _, pinned = self.folder.config().resolve(peer)
            registry = self.server.receiver.registry
            if pinned and registry.busy_with(pinned):
                ok = False  # that peer is syncing with us right now; look again shortly
                continue
            # held from before we connect: a crossing session from that peer is told to retry
            ticket = registry.open(pinned or "", "client")
            try:
                ticker = Ticker(lambda done, size, rate: self.event(
                    "progress", peer=peer, bytes_done=done, bytes_total=size, rate=round(rate)))
                r = await session(self.folder, peer, "sync", excludes=self.excludes, bwlimit=self.bwlimit,
                                  progress=ticker, keep_signatures=True, unscanned=self.unscanned)
                moved = r.files_total - r.files_unchanged
                if moved or r.conflicts or reason == "start":
                    self.event("synced", peer=peer, reason=reason, sent=r.files_sent_whole + r.files_sent_delta,
                               received=r.files_received, copied=r.files_copied, meta=r.files_meta,
                               deleted=r.files_deleted, failed=r.files_failed, conflicts=r.conflicts,
                               failures=r.failures[:20], bytes_sent=r.bytes_sent, bytes_received=r.bytes_received,
                               seconds=round(r.seconds, 3))
                ok = ok and not r.failures
            except PeerBusy:  # two watchers crossed: the other end is syncing with us right now
                log.debug("%s is syncing with us; looking again shortly", peer)
                ok = False
            except DeltasyncError as e:
                self.event("peer_unavailable", peer=peer, error=str(e))
                ok = False
            finally:
                registry.close(ticket)
        return ok

    async def loop(self) -> None:
        backoff = 1.0
        await asyncio.sleep(0)
        ok = await self.sync_all("start")
        while not self.stop.is_set():
            timeout = self.rescan if ok else backoff
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
                reason = "change"
            except asyncio.TimeoutError:
                reason = "rescan" if ok else "retry"
            self.wake.clear()
            if reason == "change":
                await self.settled()
            else:  # the safety net: a walk of everything, for what events can miss
                self.unscanned.forget()
            self.pending.clear()
            ok = await self.sync_all(reason)
            # jitter, so two peers that crossed do not cross again in step
            backoff = 1.0 if ok else min(backoff * 2, 30.0) * random.uniform(0.5, 1.0)

    async def run(self, listen: str) -> None:
        def announce(actual: str) -> None:
            self.event("listening", address=actual) if self.as_json else print(f"listening on {actual}", flush=True)

        if not self.peers:
            log.warning("no peers to sync with: serving only (trust a peer with --address, or pass --peer)")
        server = asyncio.create_task(serve(self.folder, listen, announce, self.stop, self.server))
        await asyncio.sleep(0.05)
        tasks = [asyncio.create_task(self.watch_files()), asyncio.create_task(self.loop())]
        try:
            await server  # returns on SIGINT/SIGTERM
        finally:
            self.stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
