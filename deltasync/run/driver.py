"""One session's loop, for either end: frames from the channel go through the
conversation machine, and the machine's effects are performed here -- on the
store (this end's `Intake`) and the sender. Client and server differ only in
the few effects they answer through their `Host`.

Frames are read ahead into a small bounded queue, so the network keeps
flowing while a segment is patched and fsynced; when no frame is waiting, the
small files staged so far are committed. A commit runs in the background while
the next small files are staged (it mostly waits for the disk, without the
GIL); anything else waits for it first, so what follows a batch finds it in place.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import field
from typing import Awaitable, Callable, Iterable, Protocol, TypeVar

from ..core.entry import FILE, Entry
from ..core.limits import DELTA_MIN, segments_of
from ..core.plan import PartialInfo, Transfer
from ..core.record import Mutable, record
from ..core.result import FileResult
from ..errors import ProtocolError, redact
from ..fs.safe import SafeRoot
from ..progress import Progress
from ..store.claims import Ticket
from ..store.intake import Intake
from ..store.receiver import Receiver
from ..wire import machine as mc
from ..wire.framing import Buffer, Frame
from ..wire.messages import (Ack, Bye, Error, FileList, Hello, IndexMark, Message, RequestDone, RequestFile, SendFile,
                             Signature)
from .channel import Channel
from .sending import FileSender, peer_signature
from .workers import Workers

log = logging.getLogger(__name__)
READ_AHEAD = 1  # frames decoded ahead of the one being applied (each up to 16 MiB)
T = TypeVar("T")


@record
class Offer(Mutable):
    """The index a server sends: `entries` may be a generator (sent as it is read)."""

    entries: Iterable[Entry]
    partials: list[PartialInfo]
    ignore: list[str]
    mark: IndexMark | None = None  # our index's ID and sequence, for a client that keeps a copy
    full: bool = True  # the entries are the whole index (else only what changed since the client's mark)
    ignored: Callable[[str], bool] = lambda path: False  # a path we ignore: never served, whatever is asked


@record
class Listing(Mutable):
    """(client) The index the server sent, as the `listed` future gives it. With a `spool` (our
    copy of the peer's index) and the server's mark, its entries are stored there as they arrive,
    not here: of a whole index nothing is kept, of what changed since our mark only the paths, up
    to `MAX_CHANGED_PATHS` (past that, `paths` is None: compare everything)."""

    entries: dict[str, Entry]
    partials: dict[str, PartialInfo]
    ignore: list[str]
    mark: IndexMark | None
    full: bool
    spool: "IndexSpool | None" = None
    paths: set[str] | None = field(default_factory=set)


class IndexSpool(Protocol):
    """Where a client stores the peer's index as it arrives (`store.peer_index.PeerIndex`)."""

    def start(self, full: bool) -> None: ...

    def add(self, entries: Iterable[Entry]) -> None: ...

    def heard(self, all_of_it: bool) -> None: ...


MAX_CHANGED_PATHS = 20_000  # past this many changed paths a comparison of everything, a range at a time, is cheaper
HEARD_BATCH = 4096  # acknowledged entries put into our copy of the peer's index at once


class Host(Protocol):
    """What only one end answers: the server greets and lists its folder, the client keeps the report."""

    async def greet(self, hello: Hello) -> str | None:
        """(server) Why this peer cannot have a session now, or None."""

    async def index(self, dry_run: bool, held: IndexMark | None, heard: bool) -> Offer:
        """(server) Our index, scanned now (what changed since `held`, if it is of our index), and the
        ignore patterns it followed."""

    def closing(self) -> None:
        """(server) The client said bye: the sync is complete."""

    def result(self, r: FileResult, remote: bool) -> None:
        """(client) A file's verdict: ours, or the peer's (`remote`)."""


class Driver:
    def __init__(self, conv: mc.Conversation, channel: Channel, receiver: Receiver, ticket: Ticket | None,
                 host: Host, workers: Workers, progress: Progress | None = None) -> None:
        self.conv = conv
        self.channel = channel
        self.receiver = receiver
        self.ticket = ticket
        self.host = host
        self.workers = workers
        self.progress = progress or Progress()
        self.intake = Intake(receiver, ticket)
        self.root = receiver.folder.root
        self.sender = FileSender(SafeRoot(self.root), self.say, self.verdict, self.progress, workers,
                                 receiver.manifest.segments_of, holes=lambda: conv.holes,
                                 digests_of=receiver.manifest.digests_of)
        # (client) what the peer's answers resolve
        loop = asyncio.get_running_loop()
        self.greeted: asyncio.Future[Hello] = loop.create_future()
        self.listed: asyncio.Future[Listing] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.signatures: asyncio.Queue[Signature] = asyncio.Queue()
        self.answered = asyncio.Condition()
        self.requests_answered = 0
        self.listing = Listing({}, {}, [], None, True)  # (client) set its spool before asking for the index
        self.ignored: Callable[[str], bool] = lambda path: True  # (server) nothing is served before the index
        self.turned_away: str | None = None  # (server) why the peer was asked to retry, if it was
        # (client) what we sent as the peer will hold it, until it says it does (then `heard`: for our
        # copy of its index, which it will not send back: `NO_ECHO`)
        self.unheard: dict[str, Entry] = {}
        self.heard: list[Entry] = []
        self.pump_task: asyncio.Task[None] | None = None
        self.data_received = 0  # file data and delta bodies that came in (--stats' literal data, received)
        self.verdicts = {True: 0, False: 0}  # files this end took in (or could not send), by outcome
        self.committing: asyncio.Future[list[FileResult]] | None = None  # small files being put in place

    # -- sending ---------------------------------------------------------------
    async def say(self, m: Message) -> None:
        await self.channel.send(*self.conv.send(m))

    async def say_all(self, messages: list[Message]) -> None:
        """Several messages in one write (one TLS record and system call, not one each)."""
        if messages:
            await self.channel.send(b"".join(part for m in messages for part in self.conv.send(m)))

    def sent_as(self, entries: Iterable[Entry]) -> None:
        """(client) Entries we send as the peer will record them: once it acknowledges one, our copy
        of its index holds it (so a peer that leaves such rows out of its index loses nothing)."""
        if self.listing.spool is not None:
            self.unheard.update((e.path, e) for e in entries)

    async def hold_heard(self, done: bool = False) -> None:
        """(client) What the peer acknowledged, into our copy of its index; `done`: the session is
        over, and if every verdict came, the copy holds them all (the next session says so)."""
        batch, self.heard = self.heard, []
        spool = self.listing.spool
        if spool is not None and (batch or done):
            await self.workers.run(spool.add, batch)
            if done and not self.unheard:
                await self.workers.run(spool.heard, True)

    async def verdict(self, r: FileResult) -> None:
        await self.verdicts_of([r])

    async def verdicts_of(self, results: list[FileResult]) -> None:
        """Files' verdicts, decided here: to the client's report, or to it in `acks` (or `ack`s) --
        a batch's in one write, not a TLS record and a system call each."""
        acks: list[Ack] = []
        for r in results:
            self.progress.file_done(r.path, r.ok)
            self.verdicts[r.ok] += 1
            ack = self.conv.verdict(r.path, r.ok, r.whole, r.kept, redact(r.error, self.root) if r.error else None)
            if ack is not None:
                acks.append(ack)
            else:
                self.host.result(r, remote=False)
        await self.say_all(self.conv.said(acks))

    # -- receiving -------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        self.pump_task = asyncio.create_task(self.pump())
        return self.pump_task

    async def pump(self) -> None:
        """Read and handle frames until the session is over (or broken: raised)."""
        queue: asyncio.Queue[Frame | None | BaseException] = asyncio.Queue(READ_AHEAD)

        async def read_ahead() -> None:
            try:
                while True:
                    frame = await self.channel.recv()
                    await queue.put(frame)
                    if frame is None or frame.action in ("bye", "error"):
                        return
            except BaseException as e:  # delivered to the handling loop in order
                await queue.put(e)

        reader = asyncio.create_task(read_ahead())
        try:
            while not self.conv.finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    raise ProtocolError(f"peer closed the session ({self.conv.phase.value})")
                for effect in self.conv.receive_frame(item):
                    await self.perform(effect)
                if queue.empty():  # nothing waiting: commit what is staged now, not later
                    for effect in self.conv.idle():
                        await self.perform(effect)
        finally:
            reader.cancel()
            for fut in (self.greeted, self.listed, self.closed):
                if not fut.done():
                    fut.cancel()

    async def wait(self, what: Awaitable[T]) -> T:
        """`what`, unless the pump ends first: then why it ended (a peer's error, a lost connection)."""
        assert self.pump_task is not None
        task = asyncio.ensure_future(what)
        done, _ = await asyncio.wait({task, self.pump_task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done and not task.cancelled():
            return task.result()
        task.cancel()
        if self.pump_task.done() and not self.pump_task.cancelled():
            self.pump_task.result()  # raises why it ended
        raise ProtocolError(f"peer ended the session early ({self.conv.phase.value})")

    def failure(self) -> BaseException | None:
        """Why the pump ended, if it failed (the peer's own account beats our broken pipe)."""
        t = self.pump_task
        return t.exception() if t is not None and t.done() and not t.cancelled() else None

    async def committed(self) -> None:
        """The commit in the background done, and its verdicts given."""
        pending, self.committing = self.committing, None
        if pending is not None:
            await self.verdicts_of(await pending)

    async def perform(self, e: mc.Effect) -> None:
        run, intake = self.workers.run, self.intake
        if isinstance(e, mc.Stage):
            self.data_received += len(e.message.body)
            for f in e.message.files:
                self.progress.advance(f.entry.path, f.entry.size)
            await self.verdicts_of(await run(intake.stage, e.message))
            return
        await self.committed()
        if isinstance(e, mc.Commit):  # (what is staged taken here, so a stage that follows adds to the next)
            self.committing = asyncio.ensure_future(run(intake.commit, intake.take()))
        elif isinstance(e, mc.Begin):
            r = await run(intake.begin, e.message)
            if r is not None:
                self.conv.gave_up(e.message.path)
                await self.verdict(r)
        elif isinstance(e, mc.Write):
            self.data_received += len(e.message.body)
            self.progress.advance(e.message.path, e.message.length)
            r = await run(intake.write, e.message)
            if r is not None:
                self.conv.gave_up(e.message.path)
                await self.verdict(r)
        elif isinstance(e, mc.Finish):
            await self.verdict(await run(intake.finish, e.path))
        elif isinstance(e, mc.Abandon):
            await run(intake.abandon, e.path)
        elif isinstance(e, mc.Apply):
            await self.verdicts_of(await run(intake.apply, e.message))
        elif isinstance(e, mc.Sign):
            await self.say(await run(intake.sign, e.message))
        else:
            await self._perform_role(e)

    async def _perform_role(self, e: mc.Effect) -> None:
        if isinstance(e, mc.Greet):
            why = await self.host.greet(e.hello)
            if why is not None:
                log.info("peer %s: %s; asked to retry", self.channel.peer.address, why)
                self.turned_away = why
                await self.say(Error(why))
            else:
                await self.say(Hello.ours(self.receiver.folder.peer_id))
        elif isinstance(e, mc.SendIndex):
            offer = await self.host.index(e.dry_run, e.held, e.heard)
            self.ignored = offer.ignored
            if offer.mark is not None and self.ticket is not None:
                self.ticket.planned_at = offer.mark.sequence
            for part in FileList.chunked(offer.entries, offer.partials, offer.ignore, offer.mark, offer.full):
                await self.say(part)
        elif isinstance(e, mc.Serve):
            await self.serve(e.message)
        elif isinstance(e, mc.Close):
            self.host.closing()
            await self.say(Bye())
        elif isinstance(e, mc.Greeted):
            self.greeted.set_result(e.hello)
        elif isinstance(e, mc.IndexPart):
            got, part = self.listing, e.part
            if part.mark is not None:
                got.mark, got.full = part.mark, part.full
                if got.spool is not None:
                    await self.workers.run(got.spool.start, part.full)
            if got.spool is not None and got.mark is not None:
                if part.entries:
                    await self.workers.run(got.spool.add, part.entries)
                if got.paths is not None and not got.full:
                    got.paths.update(x.path for x in part.entries)
                    if len(got.paths) > MAX_CHANGED_PATHS:
                        got.paths = None
            else:
                got.entries.update((x.path, x) for x in part.entries)
            got.partials.update((p.path, p) for p in part.partials)
            got.ignore.extend(part.ignore)
            if not part.more:
                self.listed.set_result(got)
        elif isinstance(e, mc.SignatureReady):
            await self.signatures.put(e.message)
        elif isinstance(e, mc.Answered):
            async with self.answered:
                self.requests_answered += 1
                self.answered.notify_all()
        elif isinstance(e, mc.Verdict):
            a: Ack = e.ack
            if (sent := self.unheard.pop(a.path, None)) is not None and a.ok:
                self.heard.append(sent)
                if len(self.heard) >= HEARD_BATCH:
                    await self.hold_heard()
            self.progress.file_done(a.path, a.ok)
            self.host.result(FileResult(a.path, a.ok, a.error, a.whole, a.kept), remote=True)
        elif isinstance(e, mc.Closed):
            self.closed.set_result(None)
        else:
            raise AssertionError(f"unhandled effect {e!r}")

    # -- a pull, answered (server) ----------------------------------------------
    async def serve(self, m: RequestFile) -> None:
        """Send the files asked for (as our manifest holds them: as of the index we sent,
        or newer), then `request_done`. A file that changed here since is refused with its verdict."""
        index = await self.workers.run(self.receiver.manifest.entries, [req.path for req in m.files])
        small: list[tuple[Entry, str | None]] = []
        dests: dict[str, str] = {}

        async def given_signature(t: Transfer) -> Buffer | None:
            return await peer_signature(self.workers, m.body, t) if m.body else None

        for req in m.files:
            e = index.get(req.path)
            if e is None or self.ignored(req.path) or e.deleted or e.kind != FILE or e.blake3 != req.blake3:
                await self.verdict(FileResult.failed(req.dest, f"{req.path}: changed on the peer; run again"))
                continue
            if any(i >= segments_of(e.size, req.segment_size) for i in req.done):
                raise ProtocolError("request_file: done must list segment indexes of that file")
            if req.basis is None and e.size < DELTA_MIN and not req.done:
                small.append((e, req.replaces))
                dests[e.path] = req.dest
                continue
            await self.sender.large(Transfer(e, req.basis, req.replaces, req.segment_size, req.done, req.basis_size),
                                    given_signature, req.dest)
        for batch in SendFile.batches(small):
            await self.sender.small(batch, dest=lambda p: dests[p])
        await self.say(RequestDone())

    async def close(self) -> None:
        """The session ended, however: open files stay resumable, claims are released."""
        try:
            if self.committing is not None:  # (its verdicts are moot now; its files are in place or dropped)
                await asyncio.gather(self.committing, return_exceptions=True)
            await self.workers.run(self.intake.close)
        finally:
            if self.ticket is not None:
                self.receiver.registry.close(self.ticket)

