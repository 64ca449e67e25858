"""Drives one session against one peer: `push` (make the peer hold what we
hold, like rsync), `pull` (fetch what the peer has newer, by version vectors)
or `sync` (both, in one session, with the same conflict rules).

The sender never waits per file or per segment: acks are collected by a
reader task while frames keep flowing.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from . import engine
from .apply import Receiver, Result
from .config import Folder
from .core.entry import Entry
from .errors import DeltasyncError, PartialSuccess, ProtocolError
from .fs.ignore import Ignore
from .fs.safe import META
from .fs.safe import SafeRoot
from .fs.scan import ScanResult, scan
from .inbound import Inbound
from .store.manifest import Manifest
from .core.plan import DELTA_MIN, PartialInfo, Plan, SyncPlan, Transfer, make_plan, plan_sync
from .progress import Quiet
from .wire.framing import Buffer, Frame, encode
from .sender import FileSender, Outcome, batches, op_dict, peer_signature
from .session import client_hello, peer_error, read_index, refuse_nesting
from .transport import Connection, connect

log = logging.getLogger(__name__)
REQUEST_BATCH = 200
MAX_LISTED = 10_000  # failures kept in a report (all are counted)


@dataclass
class Report:
    files_total: int = 0
    files_sent_whole: int = 0
    files_sent_delta: int = 0
    files_received: int = 0
    files_unchanged: int = 0
    files_deleted: int = 0
    files_failed: int = 0
    files_skipped: int = 0  # newer on the peer, left alone (--update)
    bytes_sent: int = 0
    bytes_received: int = 0
    literal_bytes: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)
    conflicts: list[dict[str, str]] = field(default_factory=list)
    # a push replaced a version on the peer that ours does not descend from (edited there)
    overwritten: list[dict[str, str | None]] = field(default_factory=list)
    plan: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if d["plan"] is None:
            del d["plan"]
        d["seconds"] = round(self.seconds, 3)
        return d

    def fail(self, path: str, why: str) -> None:
        self.files_failed += 1
        if len(self.failures) < MAX_LISTED:  # counted always, listed up to a bound (a peer can send many)
            self.failures.append({"path": path[:4096], "error": why[:1000]})
        log.warning("%s", why if path in why else f"{path}: {why}")


class _Acks:
    """Collects the peer's answers while we keep sending."""

    def __init__(self, conn: Connection, report: Report, progress: Quiet) -> None:
        self.conn = conn
        self.report = report
        self.progress = progress
        self.signatures: asyncio.Queue[Frame] = asyncio.Queue()
        self.bye = asyncio.get_running_loop().create_future()
        self.delta_paths: set[str] = set()
        self.delete_paths: set[str] = set()
        self.signatures_wanted = 0  # a signature we did not ask for is a protocol error
        self.overwrites: set[str] = set()

    async def run(self) -> None:
        try:
            while True:
                f = await self.conn.recv()
                if f is None:
                    raise ProtocolError("peer closed the session before it was finished")
                if f.action == "ack":
                    self._ack(f)
                elif f.action == "signature":
                    if self.signatures_wanted <= 0:
                        raise ProtocolError("peer sent a signature that was not asked for")
                    self.signatures_wanted -= 1
                    await self.signatures.put(f)
                elif f.action == "bye":
                    self.bye.set_result(None)
                    return
                elif f.action == "error":
                    raise peer_error(f)
                else:
                    raise ProtocolError(f"unexpected {f.action} from peer")
        except Exception as e:
            if not self.bye.done():
                self.bye.set_exception(e)
                self.bye.exception()  # retrieved here; raised by whoever awaits it

    def _ack(self, f: Frame) -> None:
        path = f["path"]
        self.progress.file_done(path, f["ok"])
        if not f["ok"]:
            self.report.fail(path, str(f.get("error", "failed")))
            return
        if path in self.overwrites and len(self.report.overwritten) < MAX_LISTED:
            kept = f.get("kept")
            kept = f"{META}/versions/{kept}" if isinstance(kept, str) and kept.isalnum() else None
            self.report.overwritten.append({"path": path, "kept": kept})
            log.warning("%s: overwrote a newer version on the peer, %s", path,
                        f"kept there as {kept}" if kept else "not kept (versioning is off there)")
        if path in self.delete_paths:
            self.report.files_deleted += 1
        elif f.get("whole") is True:
            self.report.files_sent_whole += 1
        elif path in self.delta_paths:
            self.report.files_sent_delta += 1


class Pusher:
    """The sending half of a session (push, and the second half of sync)."""

    def __init__(self, folder: Folder, conn: Connection, report: Report, manifest: Manifest,
                 progress: Quiet) -> None:
        self.conn = conn
        self.report = report
        self.manifest = manifest
        self.outcome = Outcome()
        self.sender = FileSender(SafeRoot(folder.root), conn, self.outcome, progress, manifest.segments_of)
        self.acks = _Acks(conn, report, progress)

    async def run(self, plan: Plan) -> None:
        reader = asyncio.create_task(self.acks.run())
        try:
            try:
                await self._send_all(plan)
                await self.conn.send(encode("bye"))
            except (OSError, DeltasyncError):
                # the peer's own account (an error frame) says more than our broken pipe
                if self.acks.bye.done() and self.acks.bye.exception() is not None:
                    raise self.acks.bye.exception() from None  # type: ignore[misc]
                raise
            await self.acks.bye
        finally:
            reader.cancel()
            self.sender.close()
            self.report.literal_bytes += self.outcome.literal_bytes
            for fail in self.outcome.failures:
                self.report.fail(fail["path"], fail["error"])

    async def _signature(self, t: Transfer) -> Buffer | None:
        """The peer's signature of the version it holds: from our own cache when
        we held that content too (no round trip, no signature on the wire)."""
        assert t.basis is not None
        cached = self.manifest.signature_of_content(t.basis, engine.SIG_FORMAT)
        if cached is not None:
            return cached[1]
        self.acks.signatures_wanted += 1
        await self.conn.send(encode("request_signature", path=t.entry.path, blake3=t.basis))
        f = await self.acks.signatures.get()
        if f["path"] != t.entry.path:
            raise ProtocolError("signature for the wrong file")
        return await peer_signature(f.body, t) if f.get("blake3") == t.basis else None

    async def _send_all(self, plan: Plan) -> None:
        s = self.sender
        self.acks.delete_paths = {e.path for e in plan.deletes}
        self.acks.overwrites = set(plan.overwrites)
        for e, origin, replaces in plan.copies:  # before deletes: a rename's origin must still be there
            await self.conn.send(encode("send_changes", _json([dict(op_dict("copy", e), **{"from": origin},
                                                                    replaces=replaces)])))
        await s.ops("delete", plan.deletes)
        await s.ops("mkdir", plan.mkdirs)
        for batch in batches(plan.small):
            await s.small(batch)
        await s.ops("symlink", plan.symlinks)
        await s.ops("meta", plan.meta)
        for t in plan.large:
            if t.basis is not None:
                self.acks.delta_paths.add(t.entry.path)
            await s.large(t, self._signature)
        await s.ops("meta", plan.dir_meta)


def _json(value: Any) -> bytes:
    from .wire.framing import json_body

    return json_body(value)


class Puller:
    """The receiving half of a pull or sync: local changes applied here, files
    requested from the peer and received through the same `Inbound` the server uses."""

    def __init__(self, receiver: Receiver, conn: Connection, report: Report, progress: Quiet) -> None:
        self.conn = conn
        self.report = report
        self.receiver = receiver
        self.progress = progress
        self.inbound = Inbound(self.receiver, conn.send, self._result, conn.peer.id)

    async def _result(self, r: Result) -> None:
        self.progress.file_done(r.path, r.ok)
        if r.ok:
            self.report.files_received += 1
        else:
            self.report.fail(r.path, r.error or "failed")

    async def _local(self, op: str, entries: list[Entry]) -> None:
        for e in entries:
            try:
                res = await asyncio.to_thread(self.receiver.apply_op, op_dict(op, e), self.inbound.writer)
            except (OSError, DeltasyncError) as err:
                res = Result(e.path, False, str(err))
            if not res.ok:
                self.report.fail(e.path, res.error or "failed")
            elif op == "delete":
                self.report.files_deleted += 1

    async def run(self, sp: SyncPlan) -> None:
        plan = sp.pull
        try:
            for c in sp.conflicts:
                if c.loser == "local":
                    await asyncio.to_thread(self.receiver.move_aside, c.path, c.copy)
            for e, origin, replaces in plan.copies:
                res = await asyncio.to_thread(self.receiver.copy_local, e, origin, replaces, self.inbound.writer)
                await self._result(res)
            await self._local("delete", plan.deletes)
            await self._local("mkdir", plan.mkdirs)
            await self._local("symlink", plan.symlinks)
            await self._local("meta", plan.meta)
            await self._fetch(plan, sp.fetch_as)
            await self._local("meta", plan.dir_meta)
        finally:
            await self.inbound.close()

    async def _fetch(self, plan: Plan, fetch_as: dict[str, str]) -> None:
        requests: list[tuple[dict[str, Any], bytes]] = []
        small = [{"path": fetch_as.get(e.path, e.path), "dest": e.path, "blake3": e.blake3, "replaces": r}
                 for e, r in plan.small]
        for i in range(0, len(small), REQUEST_BATCH):
            requests.append(({"files": small[i : i + REQUEST_BATCH]}, b""))
        for t in plan.large:
            basis, sig = t.basis, b""
            if basis is not None:
                got = await asyncio.to_thread(self.receiver.signature_for, t.entry.path, basis)
                if got is None:
                    basis = None  # our copy changed meanwhile: fetch it whole (replaces still guards it)
                else:
                    sig = got[1]
            requests.append(({"files": [{"path": fetch_as.get(t.entry.path, t.entry.path), "dest": t.entry.path,
                                         "blake3": t.entry.blake3, "replaces": t.replaces, "basis": basis,
                                         "segment_size": t.segment_size, "done": sorted(t.done),
                                         "basis_size": t.basis_size}]}, sig))
        if not requests:
            return

        async def ask() -> None:
            for header, body in requests:
                await self.conn.send(encode("request_file", body, **header))

        asker = asyncio.create_task(ask())
        done = 0
        refusals = 0
        asked = sum(len(h["files"]) for h, _ in requests)
        try:
            while done < len(requests):
                f = await self.conn.recv()
                if f is None:
                    raise ProtocolError("peer closed the session during a pull")
                if f.action == "request_done":
                    await self.inbound.flush()
                    done += 1
                elif f.action == "ack":  # the peer could not send a file
                    refusals += 1
                    if refusals > asked:
                        raise ProtocolError("peer refused more files than were asked for")
                    self.report.fail(f["path"], str(f.get("error", "not sent")))
                elif f.action == "error":
                    raise peer_error(f)
                else:
                    await self.inbound.handle(f)
            await asker
        finally:
            asker.cancel()


def local_index(folder: Folder, manifest: Manifest, excludes: list[str] | None = None,
                record: bool = True) -> ScanResult:
    return scan(folder.root, manifest, Ignore.for_folder(folder.root, excludes), folder.short_id, record)


def _record_merged(manifest: Manifest, merged: dict[str, Entry]) -> None:
    rows = []
    for path, e in merged.items():
        seen = manifest.get(path)
        if seen is not None:
            rows.append(replace(seen, entry=replace(seen.entry, version=e.version)))
    manifest.record(rows)


def _work(plans: list[Plan]) -> tuple[int, int]:
    """Files and bytes a set of plans will move (for progress)."""
    files = size = 0
    for p in plans:
        files += len(p.small) + len(p.large) + len(p.copies)
        size += sum(e.size for e, _ in p.small)
        size += sum(t.entry.size - len(t.done) * t.segment_size for t in p.large)
    return files, max(size, 0)


async def session(folder: Folder, target: str, mode: str = "push", delete: bool = False, dry_run: bool = False,
                  excludes: list[str] | None = None, bwlimit: float | None = None,
                  progress: Quiet | None = None, compress: bool = False, keep_signatures: bool = False,
                  update: bool = False) -> Report:
    """One session with the peer at `target` (HOST:PORT or a peer name)."""
    progress = progress or Quiet()
    started = time.monotonic()
    cfg = folder.config()
    address, expect = cfg.resolve(target)
    manifest = Manifest(folder.db)
    receiver = Receiver(folder, manifest)
    if not dry_run:
        receiver.clean_stale(float(cfg.setting("partial_max_age_hours")) * 3600)  # orphans of a killed run
    # our scan runs while we connect and the peer scans: the two overlap
    scanning = asyncio.ensure_future(asyncio.to_thread(local_index, folder, manifest, excludes, not dry_run))
    try:
        conn = await connect(folder, address, expect, idle_timeout=float(cfg.setting("idle_timeout")))
        conn.bwlimit = bwlimit
        report = Report()
        try:
            await client_hello(conn, folder.peer_id, compress)
            await conn.send(encode("request_file_list", dry_run=dry_run))
            scanned = await scanning
            refuse_nesting(scanned.nested, conn.peer.id, "the peer's")
            for path, why in scanned.errors:
                report.fail(path, why)
            local = scanned.entries
            if not dry_run:  # cache our versions' signatures while the network works (see Pusher._signature)
                for e in manifest.missing_signatures(local.values(), DELTA_MIN):
                    receiver.precompute_signature(e)
            remote, rpartials = await read_index(conn, int(cfg.setting("max_index_entries")))
            ignore = Ignore.for_folder(folder.root, excludes)
            remote = {p: e for p, e in remote.items() if not ignore(p, e.kind == "dir")}
            if mode == "push":
                push_plan: Plan | None = make_plan(local, remote, rpartials, delete=delete, me=folder.short_id,
                                                   update=update)
                sp = None
            else:
                lpartials = {p.path: PartialInfo(p.path, p.target_blake3, p.replaces, p.segment_size, p.done)
                             for p in manifest.partials()}
                sp = plan_sync(local, remote, folder.short_id, conn.peer.id[:12], lpartials,
                               rpartials, pull=True, push=mode == "sync")
                push_plan = sp.push if mode == "sync" else None
                report.conflicts = [{"path": c.path, "copy": c.copy, "loser": c.loser} for c in sp.conflicts]
            for p in ([push_plan] if push_plan else []) + ([sp.pull] if sp else []):
                report.files_total += p.files_total
                report.files_unchanged += p.unchanged
                report.files_skipped += len(p.skipped)
                for path, why in p.blocked:
                    report.fail(path, why)
            if dry_run:
                report.plan = ([dict(i, direction="pull") for i in sp.pull.items()] if sp else []) + \
                              ([dict(i, direction="push") for i in push_plan.items()] if push_plan else [])
                await conn.send(encode("bye"))
                await conn.recv()
            else:
                progress.start(*_work(([sp.pull] if sp else []) + ([push_plan] if push_plan else [])))
                if sp is not None:
                    for c in sp.conflicts:
                        log.warning("conflict on %s: the %s version is kept as %s", c.path, c.loser, c.copy)
                    await Puller(receiver, conn, report, progress).run(sp)
                    _record_merged(manifest, sp.merged)
                    if push_plan is not None:  # plan the push half on what we hold now (conflict copies too)
                        local = (await asyncio.to_thread(local_index, folder, manifest, excludes)).entries
                        push_plan = plan_sync(local, remote, folder.short_id, conn.peer.id[:12], None, rpartials,
                                              pull=False).push
                if push_plan is not None:
                    await Pusher(folder, conn, report, manifest, progress).run(push_plan)
                else:
                    await conn.send(encode("bye"))
                    while (f := await conn.recv()) is not None and f.action != "bye":
                        pass
                manifest.mark_synced(conn.peer.id, mode)
        finally:
            progress.close()
            report.bytes_sent = conn.bytes_sent
            report.bytes_received = conn.bytes_received
            await conn.close()
        # our new versions' signatures make the next delta cheaper (no signature on the wire): worth
        # waiting for when the session moved nothing or the caller lives on (watch), else not at all
        moved = report.literal_bytes or report.files_received
        await asyncio.to_thread(receiver.close, math.inf if keep_signatures or not moved else 0.0)
        report.seconds = time.monotonic() - started
        return report
    finally:
        if not scanning.done():  # never close the manifest under a running scan
            await asyncio.wait([scanning])
        if not scanning.cancelled():
            scanning.exception()  # retrieved: a failed scan was already raised, or the session failed first
        receiver.close()
        manifest.close()


async def push(folder: Folder, target: str, delete: bool = False, dry_run: bool = False,
               excludes: list[str] | None = None, bwlimit: float | None = None) -> Report:
    """Make the peer at `target` hold what this folder holds."""
    return await session(folder, target, "push", delete, dry_run, excludes, bwlimit)


def check(report: Report, force: bool = False) -> None:
    """Raise PartialSuccess (exit 3) when some files did not make it or conflicted,
    or (unless `force`) when a push replaced versions edited on the peer."""
    if report.files_failed:
        first = report.failures[0]
        raise PartialSuccess(f"{report.files_failed} file(s) failed; first: {first['path']}: {first['error']}")
    if report.conflicts:
        c = report.conflicts[0]
        raise PartialSuccess(f"{len(report.conflicts)} conflict(s); first: {c['path']} (other version kept as "
                             f"{c['copy']})")
    if report.overwritten and not force:
        o = report.overwritten[0]
        raise PartialSuccess(f"overwrote {len(report.overwritten)} newer version(s) on the peer; first: {o['path']}, "
                             f"{'kept there as ' + str(o['kept']) if o['kept'] else 'not kept (versioning is off there)'}"
                             f" (--force: exit 0 for this; -u: skip files newer there)")
