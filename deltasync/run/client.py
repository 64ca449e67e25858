"""One session against one peer, from the client's end: `push` (make the peer
hold what we hold, like rsync), `pull` (fetch what the peer has newer, by
version vectors) or `sync` (both, in one session, with the same conflict rules).

The conversation runs in the driver; here is only what the client decides:
which paths to compare (what changed since the last session, or everything,
then in ranges: `ranged`), the plan, and carrying it out (`carry`).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Awaitable, Callable

from ..config import Folder
from ..core.entry import FILE, Entry
from ..core.limits import DELTA_MIN
from ..core.plan import PartialInfo, Plan, SyncPlan, copyable, make_plan, plan_sync
from ..core.result import FileResult
from ..errors import DeltasyncError, ProtocolError
from ..fs.ignore import Ignore
from ..fs.scan import Unscanned, rescan_folder, scan_folder
from ..progress import Progress
from ..store.manifest import Manifest
from ..store.peer_index import PeerIndex
from ..store.receiver import Receiver
from ..transports import tls
from ..transports.base import Transport
from ..wire import machine as mc
from ..wire.messages import INDEX_DELTA, Bye, Hello, IndexMark, RequestFileList
from . import ranged
from .carry import Puller, Pusher, kept_here, record_merged
from .channel import Channel
from .driver import MAX_CHANGED_PATHS, Driver, Listing, Offer
from .report import Report
from .scope import Scope, shape, widen
from .workers import Workers

log = logging.getLogger(__name__)
Connect = Callable[[Folder, str, "str | None", float], Awaitable[Transport]]


async def _tls(folder: Folder, address: str, expect: str | None, idle_timeout: float) -> Transport:
    return await tls.connect(folder, address, expect, idle_timeout=idle_timeout)


def _work(plans: list[Plan]) -> tuple[int, int]:
    """Files and bytes a set of plans will move (for progress)."""
    files = size = 0
    for p in plans:
        files += len(p.small) + len(p.large) + len(p.copies)
        size += sum(e.size for e, _ in p.small)
        size += sum(t.entry.size - len(t.done) * t.segment_size for t in p.large)
    return files, max(size, 0)


class _Client:
    """The client's part of a session (the driver's `Host`): verdicts go to the report."""

    def __init__(self, report: Report) -> None:
        self.report = report

    async def greet(self, hello: Hello) -> str | None:
        raise ProtocolError("a server does not say hello first")

    async def index(self, dry_run: bool, held: IndexMark | None, heard: bool) -> Offer:
        raise ProtocolError("a server does not ask for our index")

    def closing(self) -> None:
        raise ProtocolError("a server does not say bye first")

    def result(self, r: FileResult, remote: bool) -> None:
        self.report.result(r, remote)


async def session(folder: Folder, target: str, mode: str = "push", delete: bool = False, dry_run: bool = False,
                  excludes: list[str] | None = None, bwlimit: float | None = None,
                  progress: Progress | None = None, compress: bool = False, keep_signatures: bool = False,
                  update: bool = False, max_delete: int | None = None, itemized: Callable[[str], None] | None = None,
                  connect: Connect = _tls, workers: Workers | None = None, unscanned: Unscanned | None = None
                  ) -> Report:
    """One session with the peer at `target` (HOST:PORT or a peer name). With `unscanned` (watch),
    our scan looks only at what changed since the last one."""
    progress = progress or Progress()
    workers = workers or Workers()
    started = time.monotonic()
    cfg = folder.config()
    address, expect = cfg.resolve(target)
    manifest = Manifest(folder.db)
    receiver = Receiver(folder, manifest, background=workers.threads)
    if not dry_run:
        receiver.clean_stale(float(cfg.setting("partial_max_age_hours")) * 3600)  # orphans of a killed run
    # rows recorded from here on (by our scan, or by a session with another peer) are looked at next time too
    before = manifest.index_state()[1]
    # our scan runs while we connect and the peer scans: the two overlap
    within = unscanned.take() if unscanned is not None and not dry_run else None
    scanning = asyncio.ensure_future(workers.run(scan_folder, folder, manifest, excludes, not dry_run, within))
    try:
        transport = await connect(folder, address, expect, float(cfg.setting("idle_timeout")))
        report = Report(_say=itemized)
        driver = Driver(mc.Conversation(mc.CLIENT, compress, int(cfg.setting("max_index_entries"))),
                        Channel(transport, bwlimit), receiver, receiver.registry.open(transport.peer.id, "client"),
                        _Client(report), workers, progress)
        driver.start()
        try:
            await _converse(driver, folder, manifest, receiver, report, mode, delete, dry_run, update, progress,
                            scanning, excludes, max_delete, before, within, keep_signatures)
            await driver.hold_heard(done=True)
        except (OSError, DeltasyncError) as e:
            why = driver.failure()  # the peer's own account (its error) says more than our broken pipe
            if why is not None and why is not e and isinstance(why, DeltasyncError):
                raise why from None
            raise
        finally:
            progress.close()
            await driver.hold_heard()
            report.literal_bytes += driver.sender.literal_bytes
            report.literal_bytes_received += driver.data_received
            report.bytes_sent = transport.bytes_sent
            report.bytes_received = transport.bytes_received
            assert driver.pump_task is not None
            driver.pump_task.cancel()
            await asyncio.gather(driver.pump_task, return_exceptions=True)
            await driver.close()
            await transport.close()
        # our new versions' signatures make the next delta cheaper (no signature on the wire): worth
        # waiting for when the session moved nothing or the caller lives on (watch), else not at all
        moved = report.literal_bytes or report.files_received
        await workers.run(receiver.close, math.inf if keep_signatures or not moved else 0.0)
        report.seconds = time.monotonic() - started
        return report
    finally:
        if not scanning.done():  # never close the manifest under a running scan
            await asyncio.wait([scanning])
        failed = scanning.cancelled() or scanning.exception() is not None  # (retrieved: raised already, or moot)
        if failed and unscanned is not None and within is not None:
            unscanned.forget()  # what it was to look at is looked at, with everything, next time
        receiver.close()
        manifest.close()
        if workers.threads:
            workers.close()


async def _converse(d: Driver, folder: Folder, manifest: Manifest, receiver: Receiver, report: Report, mode: str,
                    delete: bool, dry_run: bool, update: bool, progress: Progress,
                    scanning: "asyncio.Future", excludes: list[str] | None, max_delete: int | None,
                    before: int, within: set[str] | None, keep_signatures: bool) -> None:
    peer = d.channel.peer.id
    await d.say(Hello.ours(folder.peer_id, d.conv.want_compress))
    greeting = await d.wait(d.greeted)
    cache = PeerIndex(manifest, peer) if greeting.wants(INDEX_DELTA) and not dry_run else None
    held = (cache.held() if cache is not None else None) or ("", 0)
    d.listing.spool = cache  # the peer's index goes to our copy as it arrives
    heard = cache is not None and await d.workers.run(cache.heard_all)
    if heard:  # (until this session has heard every verdict in turn)
        await d.workers.run(cache.heard, False)
    await d.say(RequestFileList(dry_run, IndexMark(*held) if cache is not None else None, heard))
    scanned = await scanning
    scanned.refuse_nesting(peer, "the peer's")
    if d.ticket is not None and not dry_run:  # what we pull was planned against what our scan saw
        d.ticket.planned_at = manifest.index_state()[1]
    for path, why in scanned.errors:
        report.fail(path, why)
    # cache our new versions' signatures (see Pusher._signature): while the network works when the
    # caller lives on (watch); else once the plan says the session sends no file data -- the end waits
    # for them then, and a session that moves data stops them unfinished, having only taken CPU from it
    precompute = [] if dry_run else manifest.missing_signatures(scanned.fresh.values(), DELTA_MIN)
    if keep_signatures:
        for e in precompute:
            receiver.precompute_signature(e)
    listing = await d.wait(d.listed)
    theirs = Ignore(listing.ignore)
    kept = shape(excludes, scanned.ignore.lines, listing.ignore)
    scope = Scope(None, listing.entries)
    settled: tuple[int, set[str]] | None = None
    in_ranges = False  # compare everything, a path range at a time (`ranged`)
    if cache is not None and listing.mark is not None:
        mark = listing.mark
        await d.workers.run(cache.finish, mark.index_id, mark.sequence, d.conv.max_index_entries)
        settled = await d.workers.run(cache.settled, kept)
        paths: set[str] | None = None  # what can differ (None: everything, or more than is worth a list)
        if settled is not None and listing.paths is not None:
            changed = await d.workers.run(manifest.changed_since, settled[0], MAX_CHANGED_PATHS)
            paths = None if changed is None else {*changed, *listing.paths, *settled[1]}
        in_ranges = paths is None or len(paths) > MAX_CHANGED_PATHS
        if paths is not None and not in_ranges:
            scope = await d.workers.run(widen, paths, scanned, cache)
    report.index_entries = d.conv.index_entries
    report.paths_compared = None if scope.paths is None else len(scope.paths)
    if in_ranges:
        assert cache is not None
        await ranged.session(ranged.Ranged(d, manifest, cache, theirs, report, max_delete), folder, scanned, mode,
                             Puller(d, receiver, report), listing.partials, peer[:12], delete, update, excludes,
                             within, progress)
        await _close(d, manifest, peer, mode, cache, listing, kept, before, report)
        return

    def ours_to_sync(entries: dict[str, Entry]) -> dict[str, Entry]:
        """What the peer ignores we leave alone too, there and here: never sent, fetched nor deleted."""
        return {p: e for p, e in entries.items() if not theirs(p, e.kind == "dir")} if listing.ignore else entries

    def shared(entries: dict[str, Entry]) -> dict[str, Entry]:
        """The peer's entries we sync: neither side ignores them."""
        return ours_to_sync({p: e for p, e in entries.items() if not scanned.ignore(p, e.kind == "dir")})

    remote = shared(scope.remote)
    picked = await d.workers.run(scanned.pick, scope.paths)
    local = ours_to_sync(picked)
    elsewhere: dict[str, str] = {}
    if scope.paths is not None and cache is not None:  # content the peer holds outside the paths compared
        wanted = copyable(local, remote)
        elsewhere = await d.workers.run(cache.holding, wanted, lambda p: not scanned.ignore(p) and not theirs(p))
    sp: SyncPlan | None = None
    if mode == "push":
        push_plan: Plan | None = make_plan(local, remote, listing.partials, delete=delete, me=folder.short_id,
                                           update=update, elsewhere=elsewhere)
    else:
        lpartials = {p.path: PartialInfo(p.path, p.target_blake3, p.replaces, p.segment_size, p.done)
                     for p in manifest.partials()}
        sp = plan_sync(local, remote, folder.short_id, peer[:12], lpartials, listing.partials, pull=True,
                       push=mode == "sync")
        push_plan = sp.push if mode == "sync" else None
        report.conflicts = [{"path": c.path, "copy": c.copy, "loser": c.loser} for c in sp.conflicts]
    if scope.paths is not None:  # the files outside the paths compared are the same on both sides
        files, size = manifest.live_files()
        inside = [e for e in picked.values() if e.kind == FILE and not e.deleted]
        first = sp.pull if sp is not None else push_plan
        assert first is not None
        first.unchanged += max(0, files - len(inside))
        first.unchanged_bytes += max(0, size - sum(e.size for e in inside))
    deletes_left = max_delete

    def settle(plan: Plan, pulled: bool = False) -> Plan:
        """A plan as it will run: --max-delete over both halves of a session together, then counted."""
        nonlocal deletes_left
        plan.cap_deletes(deletes_left)
        if deletes_left is not None:
            deletes_left -= len(plan.deletes)
        report.count(plan, pulled)
        return plan

    if not keep_signatures and not any(p.small or p.large for p in (push_plan, sp and sp.pull) if p is not None):
        for e in precompute:
            receiver.precompute_signature(e)
    if sp is not None:
        settle(sp.pull, pulled=True)
    if push_plan is not None and (dry_run or sp is None):  # a sync's push half is settled once re-planned
        settle(push_plan)
    if dry_run:
        report.plan = ([dict(i, direction="pull") for i in sp.pull.items()] if sp else []) + \
                      ([dict(i, direction="push") for i in push_plan.items()] if push_plan else [])
    else:
        transport = d.channel.transport
        progress.start(*_work(([sp.pull] if sp else []) + ([push_plan] if push_plan else [])),
                       wire=lambda: transport.bytes_sent + transport.bytes_received)
        if sp is not None:
            for c in sp.conflicts:
                log.warning("conflict on %s: the %s version is kept as %s", c.path, c.loser, c.copy)
            await Puller(d, receiver, report).run(sp)
            record_merged(manifest, sp)
            if push_plan is not None:  # plan the push half on what we hold now (conflict copies too)
                now = await d.workers.run(rescan_folder, folder, manifest, scanned, excludes, within)
                if scope.paths is not None and now is not scanned:
                    assert cache is not None and settled is not None
                    grown = await d.workers.run(widen, {*scope.paths, *manifest.changed_since(settled[0])}, now,
                                                cache)
                    scope, remote = grown, shared(grown.remote)
                local = ours_to_sync(await d.workers.run(now.pick, scope.paths))
                second = plan_sync(local, remote, folder.short_id, peer[:12], None, listing.partials, pull=False,
                                   kept=kept_here(manifest))
                record_merged(manifest, second)
                push_plan = settle(second.push)
        if push_plan is not None:
            await Pusher(d, manifest).run(push_plan)
    await _close(d, manifest, peer, mode, cache if not dry_run else None, listing, kept, before, report, dry_run)


async def _close(d: Driver, manifest: Manifest, peer: str, mode: str, cache: PeerIndex | None, listing: Listing,
                 kept: str, before: int, report: Report, dry_run: bool = False) -> None:
    """Bye, and (unless a dry run) what the next session starts from."""
    await d.say(Bye())
    await d.wait(d.closed)
    if not dry_run:
        manifest.mark_synced(peer, mode)
        if cache is not None and listing.mark is not None:  # everything we held before our scan is settled
            cache.settle(kept, before, report.unsettled)
