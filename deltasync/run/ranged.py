"""A session that compares everything, one path range at a time
(`core.streamed`): both indexes are read from the manifest in path order, each
range is planned and carried out before the next is read (the next one is
planned while this one goes), and what must wait for the end -- deletes, what
replaces a directory, hard links, directory metadata -- waits in a spool on
disk. Memory holds a range of each index, not the tree. Push, pull and sync
alike: a sync pulls every range first, rescans, then pushes every range.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, TypeVar

from ..config import Folder
from ..core.entry import DIR, Entry
from ..core.plan import PartialInfo, Plan, SyncPlan, copyable, plan_sync
from ..core.streamed import Streamed, ranges
from ..fs.ignore import Ignore
from ..fs.scan import ScanResult, rescan_folder
from ..progress import Progress
from ..store.manifest import Manifest
from ..store.peer_index import PeerIndex
from ..store.spool import KINDS, Spool
from .carry import Puller, Pusher, kept_here, record_merged
from .driver import Driver
from .report import Report

log = logging.getLogger(__name__)
T = TypeVar("T")
Leaders = Callable[[list[str]], dict[str, Entry]]  # first names of hard links, by path, from one side


class Ranged:
    """One session's comparison of everything, in ranges (see the module's docstring)."""

    def __init__(self, d: Driver, manifest: Manifest, cache: PeerIndex, theirs: Ignore, report: Report,
                 max_delete: int | None) -> None:
        self.d, self.manifest, self.cache, self.theirs, self.report = d, manifest, cache, theirs, report
        self.deletes_left = max_delete  # --max-delete over both halves of a sync together
        report.forget_done()

    def settle(self, plan: Plan, pulled: bool = False) -> Plan:
        """A plan as it will run: --max-delete applied, then counted."""
        plan.cap_deletes(self.deletes_left)
        if self.deletes_left is not None:
            self.deletes_left -= len(plan.deletes)
        self.report.count(plan, pulled)
        return plan

    def _theirs(self, path: str, is_dir: bool) -> bool:
        return bool(self.theirs.lines) and self.theirs(path, is_dir)

    def allowed(self, scanned: ScanResult, path: str) -> bool:
        """A path neither side ignores (where content may be copied from)."""
        return not scanned.ignore(path) and not self._theirs(path, False)

    async def each(self, scanned: ScanResult, plan: Callable[[dict[str, Entry], dict[str, Entry]], T],
                   carry: Callable[[T], Awaitable[None]]) -> None:
        """Every range of both indexes -- what either side ignores, and what both hold alike, left
        out -- planned (on a worker, the next while this one is carried out) and carried out, in
        path order."""
        run, pairs = self.d.workers.run, ranges(self.cache.ours_after, self.cache.after)

        def planned(ours: list[Entry], peers: list[Entry]) -> T:
            local = {e.path: e for e in ours if not scanned.hidden(e.path, e) and not self._theirs(e.path, e.kind == DIR)}
            remote = {e.path: e for e in peers if not scanned.ignore(e.path, e.kind == DIR)
                      and not self._theirs(e.path, e.kind == DIR)}
            return plan(local, remote)

        async def following() -> tuple[T] | None:
            pair = await run(next, pairs, None)
            return None if pair is None else (await run(planned, *pair),)

        ahead = asyncio.ensure_future(following())
        try:
            while (got := await ahead) is not None:
                ahead = asyncio.ensure_future(following())
                await carry(got[0])
        finally:
            await asyncio.gather(ahead, return_exceptions=True)  # (cut short: let its range finish first)

    async def at_end(self, streamer: Streamed, spool: Spool, leaders: Leaders,
                     carry: Callable[[Plan], Awaitable[None]]) -> None:
        """What waited for every range, in its order: deletes (deepest first), what replaces a
        directory, hard links, directory metadata."""
        spool.put(streamer.take())
        spool.add("dir_meta", ((e, None) for e in streamer.finish()))
        run = self.d.workers.run
        for kind in KINDS:
            batches = spool.take(kind)
            while (batch := await run(next, batches, None)) is not None:
                entries = [e for e, _ in batch]
                if kind == "create":  # what was a directory there: gone now, so made anew
                    links = [e.link for e in entries if e.link]
                    plan = streamer.made(entries, await run(leaders, links) if links else {})
                elif kind == "hardlink":
                    plan = Plan(hardlinks=batch)
                else:
                    plan = Plan(deletes=entries) if kind == "delete" else Plan(dir_meta=entries)
                await carry(plan)


def _links(index: dict[str, Entry]) -> list[str]:
    return [e.link for e in index.values() if e.link and e.link not in index]


async def _push(r: Ranged, scanned: ScanResult, streamer: Streamed,
                plan_of: Callable[[dict[str, Entry], dict[str, Entry]], Plan]) -> None:
    """Every range planned by `plan_of` (through `streamer`, told our hard links' first names) and sent."""
    spool, pusher = Spool(r.manifest), Pusher(r.d, r.manifest)

    def plan(local: dict[str, Entry], remote: dict[str, Entry]) -> Plan:
        links = _links(local)
        streamer.around.leaders = r.manifest.entries(links) if links else {}
        out = plan_of(local, remote)
        spool.put(streamer.take())
        return out

    async def carry(p: Plan) -> None:
        await pusher.run(r.settle(p))

    try:
        await r.each(scanned, plan, carry)
        await r.at_end(streamer, spool, r.manifest.entries, carry)
    finally:
        spool.close()


async def push(r: Ranged, scanned: ScanResult, partials: dict[str, PartialInfo], me: str, delete: bool,
               update: bool) -> None:
    """Make the peer hold what we hold (`make_plan`, range by range); content the peer holds
    elsewhere, where it stays while the ranges run, is copied there."""
    streamer = Streamed(partials, delete, me, update)

    def plan_of(local: dict[str, Entry], remote: dict[str, Entry]) -> Plan:
        wanted = copyable(local, remote)
        elsewhere = r.cache.holding(wanted, lambda p: r.allowed(scanned, p), stable=True) if wanted else {}
        return streamer.plan(local, remote, elsewhere)

    await _push(r, scanned, streamer, plan_of)


async def pull(r: Ranged, scanned: ScanResult, puller: Puller, partials: dict[str, PartialInfo],
               peer_partials: dict[str, PartialInfo], me: str, peer: str, then_push: bool) -> None:
    """Fetch what the peer has newer, by version vectors (a pull, or a sync's first half)."""
    streamer, spool, run = Streamed(partials, True, peer), Spool(r.manifest), r.d.workers.run

    def plan(local: dict[str, Entry], remote: dict[str, Entry]) -> SyncPlan:
        links = _links(remote)
        streamer.around.leaders = r.cache.entries(links) if links else {}
        sp = plan_sync(local, remote, me, peer, partials, peer_partials, pull=True, push=False,
                       planners=(streamer.plan, None))
        if then_push:
            sp.pull.left = []  # not left: the push half comes next
        spool.put(streamer.take())
        return sp

    async def carry(sp: SyncPlan) -> None:
        r.settle(sp.pull, pulled=True)
        for c in sp.conflicts:
            log.warning("conflict on %s: the %s version is kept as %s", c.path, c.loser, c.copy)
            r.report.conflicts.append({"path": c.path, "copy": c.copy, "loser": c.loser})
        await puller.run(sp, drain=False)
        if sp.merged:  # a conflict won here waits for its copy, fetched after the ranges: then again, below
            await run(record_merged, r.manifest, sp)
            won = {c.path for c in sp.conflicts if c.path in sp.merged}
            if won:
                conflicted.append(SyncPlan(Plan(), Plan(), sp.conflicts, {p: sp.merged[p] for p in won}))

    async def carry_plan(p: Plan) -> None:
        await puller.run(SyncPlan(r.settle(p, pulled=True), Plan(), [], {}), drain=False)

    conflicted: list[SyncPlan] = []  # conflicts won here, whose copies the ranges asked for
    try:
        await r.each(scanned, plan, carry)
        await puller.answered()  # what the ranges asked for has landed before anything is deleted
        for sp in conflicted:
            await run(record_merged, r.manifest, sp)
        await r.at_end(streamer, spool, r.cache.entries, carry_plan)
        await puller.answered()
    finally:
        spool.close()


async def push_half(r: Ranged, now: ScanResult, peer_partials: dict[str, PartialInfo], me: str,
                    peer: str) -> None:
    """A sync's second half, on what we hold now (what was pulled, conflict copies): what is
    newer here, by version vectors."""
    streamer, kept = Streamed(peer_partials, True, me), kept_here(r.manifest)

    def plan(local: dict[str, Entry], remote: dict[str, Entry]) -> Plan:
        sp = plan_sync(local, remote, me, peer, None, peer_partials, pull=False, planners=(None, streamer.plan),
                       kept=kept)
        record_merged(r.manifest, sp)
        return sp.push

    await _push(r, now, streamer, plan)


async def session(r: Ranged, folder: Folder, scanned: ScanResult, mode: str, puller: Puller,
                  peer_partials: dict[str, PartialInfo], peer: str, delete: bool, update: bool,
                  excludes: list[str] | None, within: set[str] | None, progress: Progress) -> None:
    """`mode` (push, pull or sync), comparing everything in ranges."""
    d, me = r.d, folder.short_id
    transport = d.channel.transport
    # what moves is known range by range: the total is what either side holds and the other does not
    sides = [(False, mode != "push"), (True, mode != "pull")]
    totals = [await d.workers.run(r.cache.differing, ours) for ours, wanted in sides if wanted]
    progress.start(sum(n for n, _ in totals), sum(b for _, b in totals),
                   wire=lambda: transport.bytes_sent + transport.bytes_received)
    alike, alike_bytes = await d.workers.run(r.cache.alike)  # no range shows these
    r.report.count(Plan(unchanged=alike, unchanged_bytes=alike_bytes))
    if mode == "push":
        await push(r, scanned, peer_partials, me, delete, update)
        return
    partials = {p.path: PartialInfo(p.path, p.target_blake3, p.replaces, p.segment_size, p.done)
                for p in r.manifest.partials()}
    await pull(r, scanned, puller, partials, peer_partials, me, peer, mode == "sync")
    if mode == "sync":  # on what we hold now: what was pulled, and conflict copies
        now = await d.workers.run(rescan_folder, folder, r.manifest, scanned, excludes, within)
        await push_half(r, now, peer_partials, me, peer)

