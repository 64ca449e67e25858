"""A plan carried out, the one order `plan.steps` gives: pushed (`Pusher`: sent
to the peer) or pulled (`Puller`: asked of it, or done here). The sender never
waits per file or per segment: verdicts arrive while frames keep flowing."""
from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Callable

from .. import engine
from ..core.entry import FILE
from ..core.limits import DELTA_MIN, OPS_PER_FRAME, REQUEST_BATCH
from ..core.plan import Kept, Plan, SyncPlan, Transfer, steps
from ..core.result import FileResult
from ..errors import DeltasyncError, ProtocolError
from ..store.manifest import Manifest
from ..store.receiver import Receiver
from ..wire.framing import Buffer
from ..wire.messages import FileRequest, Op, RequestFile, RequestSignature, SendFile
from .driver import Driver
from .report import Report
from .sending import peer_signature

SIGNATURES_AHEAD = 32  # small files' signatures asked for before their turn (the machine allows 64 at once)
OP_OF = {"delete": "delete", "mkdir": "mkdir", "symlink": "symlink", "meta": "meta", "dir_meta": "meta"}


class Pusher:
    """A plan carried out by sending it to the peer (push, and the second half of sync)."""

    def __init__(self, driver: Driver, manifest: Manifest) -> None:
        self.driver = driver
        self.manifest = manifest

    async def run(self, plan: Plan) -> None:
        s = self.driver.sender
        for step in steps(plan):
            if step.kind == "copy":
                await s.ops([Op("copy", e, origin, replaces) for e, origin, replaces in step.items])
            elif step.kind == "small":
                self.driver.sent_as(e if e.link is None else replace(e, link=None)  # (a whole file names no link)
                                    for e, _ in step.items)
                for batch in SendFile.batches(step.items):
                    await s.small(batch)
            elif step.kind == "large":
                await self._large(step.items)
            elif step.kind == "hardlink":
                await s.ops([Op("hardlink", e, e.link, replaces) for e, replaces in step.items])
            else:
                if step.kind != "delete":  # (mkdir, symlink, meta: their entries, as sent)
                    self.driver.sent_as(step.items)
                await s.ops([Op(OP_OF[step.kind], e) for e in step.items])

    async def _large(self, transfers: list[Transfer]) -> None:
        """Files in segments, each by delta when the peer holds a version. The small ones (under
        DELTA_MIN: changed files by delta) go first, their signatures asked for ahead, up to
        `SIGNATURES_AHEAD` at once in one write, so no file waits a round trip for its own; a
        big file's signature is asked for on its turn (it may be large), once none is on its way."""
        d = self.driver
        transfers = sorted(transfers, key=lambda t: t.entry.size >= DELTA_MIN)  # (stable: path order within)
        small = iter([t for t in transfers if t.basis is not None and t.entry.size < DELTA_MIN])
        asked: deque[str] = deque()  # paths whose signature is on its way, in the order asked
        cached: dict[str, Buffer] = {}

        async def ask_ahead() -> None:
            wanted: list[RequestSignature] = []
            while len(asked) + len(cached) < SIGNATURES_AHEAD and (t := next(small, None)) is not None:
                assert t.basis is not None
                have = await d.workers.run(self.manifest.signature_of_content, t.basis, engine.SIG_FORMAT)
                if have is not None:
                    cached[t.entry.path] = have[1]
                else:
                    wanted.append(RequestSignature(t.entry.path, t.basis))
                    asked.append(t.entry.path)
            await d.say_all(wanted)

        async def signature(t: Transfer) -> Buffer | None:
            if t.entry.path in cached:
                got = cached.pop(t.entry.path)
            elif asked and asked[0] == t.entry.path:
                asked.popleft()
                got = await self._answer(t)
            else:  # a big file
                return await self._signature(t)
            await ask_ahead()  # the window moves on by one
            return got

        await ask_ahead()
        for t in transfers:  # (`large` asks for a file's signature first thing, whenever it has a basis)
            await self.driver.sender.large(t, signature)

    async def _answer(self, t: Transfer) -> Buffer | None:
        """The peer's next signature, which must be of `t` (None: that version is gone there)."""
        d = self.driver
        sig = await d.wait(d.signatures.get())
        if sig.path != t.entry.path:
            raise ProtocolError("signature for the wrong file")
        return await peer_signature(d.workers, sig.body, t) if sig.blake3 == t.basis else None

    async def _signature(self, t: Transfer) -> Buffer | None:
        """The peer's signature of the version it holds: from our own cache when
        we held that content too (no round trip, no signature on the wire)."""
        assert t.basis is not None
        cached = self.manifest.signature_of_content(t.basis, engine.SIG_FORMAT)
        if cached is not None:
            return cached[1]
        await self.driver.say(RequestSignature(t.entry.path, t.basis))
        return await self._answer(t)


class Puller:
    """A plan carried out here (pull, and the first half of sync): tree changes
    applied locally, files asked of the peer and received by the driver."""

    def __init__(self, driver: Driver, receiver: Receiver, report: Report) -> None:
        self.driver = driver
        self.receiver = receiver
        self.report = report
        self.asked = 0  # request_file frames sent

    async def run(self, sp: SyncPlan, drain: bool = True) -> None:
        """Carry out the plan's pull half (with `drain`, until every file asked for has landed)."""
        run = self.driver.workers.run
        for c in sp.conflicts:
            if c.loser == "local":
                await run(self.receiver.move_aside, c.path, c.copy)
        for step in steps(sp.pull):
            if step.kind == "copy":
                for e, origin, replaces in step.items:
                    await self.driver.verdict(await self._local(
                        lambda: self.receiver.copy_local(e, origin, replaces, self.driver.ticket), e.path))
            elif step.kind == "small":
                for i in range(0, len(step.items), REQUEST_BATCH):
                    await self._ask([FileRequest(sp.fetch_as.get(e.path, e.path), e.path, str(e.blake3), r)
                                     for e, r in step.items[i : i + REQUEST_BATCH]])
            elif step.kind == "large":
                for t in step.items:
                    await self._ask_large(t, sp.fetch_as)
            elif step.kind == "hardlink":
                await self.answered()  # the files they name have landed
                for e, replaces in step.items:
                    self.report.result(await self._local(lambda: self.receiver.apply_op(
                        Op("hardlink", e, e.link, replaces), self.driver.ticket), e.path), remote=False)
            else:
                if step.kind == "dir_meta":  # after every file has landed in its directory
                    await self.answered()
                if OP_OF[step.kind] == "meta":  # (a batch at a time: one transaction records it)
                    for i in range(0, len(step.items), OPS_PER_FRAME):
                        for res in await run(self.receiver.apply_metas, step.items[i : i + OPS_PER_FRAME]):
                            self.report.result(res, remote=False)
                    continue
                for e in step.items:
                    res = await self._local(lambda: self.receiver.apply_op(Op(OP_OF[step.kind], e),
                                                                           self.driver.ticket), e.path)
                    self.report.result(res, remote=False)
        if drain:
            await self.answered()

    async def _local(self, fn: Callable[[], FileResult], path: str) -> FileResult:
        try:
            return await self.driver.workers.run(fn)
        except (OSError, DeltasyncError) as err:
            return FileResult.failed(path, str(err))

    async def _ask(self, files: list[FileRequest], sig: bytes = b"") -> None:
        await self.driver.say(RequestFile(tuple(files), sig))
        self.asked += 1

    async def _ask_large(self, t: Transfer, fetch_as: dict[str, str]) -> None:
        basis, sig = t.basis, b""
        if basis is not None:
            got = await self.driver.workers.run(self.receiver.signature_for, t.entry.path, basis)
            if got is None:
                basis = None  # our copy changed meanwhile: fetch it whole (replaces still guards it)
            else:
                sig = got[1]
        await self._ask([FileRequest(fetch_as.get(t.entry.path, t.entry.path), t.entry.path, str(t.entry.blake3),
                                     t.replaces, basis, t.segment_size, t.done, t.basis_size)], sig)

    async def answered(self) -> None:
        """Wait until every request so far has been answered in full."""
        d = self.driver

        async def all_answered() -> None:
            async with d.answered:
                await d.answered.wait_for(lambda: d.requests_answered >= self.asked)

        await d.wait(all_answered())


def kept_here(manifest: Manifest) -> Kept:
    """`plan_sync`'s `kept` from our manifest: what a rescan found, or a fetch wrote."""
    def kept(path: str, blake3: str) -> bool:
        seen = manifest.get(path)
        return seen is not None and seen.entry.kind == FILE and not seen.entry.deleted and seen.entry.blake3 == blake3
    return kept


def record_merged(manifest: Manifest, sp: SyncPlan) -> None:
    """The versions a sync merged (a local winner must dominate both sides), recorded before it
    pushes -- but not where the peer's losing version is not kept here (its copy failed, or is
    still on its way): that path stays concurrent, so no push replaces the peer's version before
    its copy is here (`plan_sync` without a pull leaves it for the next session)."""
    kept = kept_here(manifest)
    waiting = {c.path for c in sp.conflicts if c.loser == "remote" and not kept(c.copy, c.content)}
    known = manifest.seen_of(p for p in sp.merged if p not in waiting)
    manifest.record(replace(seen, entry=replace(seen.entry, version=sp.merged[path].version))
                    for path, seen in known.items())
