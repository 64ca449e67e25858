"""The conversation of one session, as a machine both ends share.

It knows the legal order of messages in one table (`ORDER`) keyed by the
phase, *who* sends, and the action -- not by which end this is -- so the
client and the server run the same rules, on what they send and on what they
receive. Counters guard what the table cannot say alone: a signature only
when asked for, a file's segments only while it is open, pull answers only
while requests are outstanding, at most as many verdicts as files.

`receive(message)` returns the effects the message asks of this end (write a
segment, commit staged files, send our index, answer a signature...);
`send(message)` checks that we may send it now and returns its frame. No I/O:
the driver in `run/` moves the bytes and performs the effects.
"""
from __future__ import annotations

from enum import Enum
from typing import Iterable

from ..core import limits
from ..core.record import Record, record
from ..errors import PeerBusy, ProtocolError, RemoteError
from .framing import PROTOCOL_VERSIONS, Frame, negotiate
from .messages import (
    ACKS,
    COMPRESS,
    Ack,
    Acks,
    BeginFile,
    Bye,
    Error,
    FileList,
    Hello,
    IndexMark,
    Message,
    RequestFile,
    RequestFileList,
    RequestSignature,
    SendChanges,
    SendDelta,
    SendFile,
    Signature,
    grouped,
    parse,
)

CLIENT, SERVER = "client", "server"


class Phase(str, Enum):
    START = "start"  # nothing said yet
    GREETING = "greeting"  # the client said hello
    OPEN = "open"  # hellos exchanged
    LISTING = "listing"  # the client asked for the server's index
    LISTED = "listed"  # the index arrived: plans are made, files move
    CLOSING = "closing"  # the client said bye
    CLOSED = "closed"  # the server said bye
    FAILED = "failed"  # an error was said


# what carries a file or a change from the end that sends to the one that receives
CARRY = ("send_file", "begin_file", "send_delta", "file_done", "abort_file", "send_changes")
LAST_LIST = "send_file_list.last"  # the index's last part (more=false)

ORDER: dict[tuple[Phase, str, str], Phase] = {}


def _allow(phases: Iterable[Phase], who: str, actions: Iterable[str], to: Phase | None = None) -> None:
    for phase in phases:
        for action in actions:
            ORDER[(phase, who, action)] = to or phase


_allow([Phase.START], CLIENT, ["hello"], Phase.GREETING)
_allow([Phase.GREETING], SERVER, ["hello"], Phase.OPEN)
_allow([Phase.OPEN], CLIENT, ["request_file_list"], Phase.LISTING)
_allow([Phase.LISTING], SERVER, ["send_file_list"])
_allow([Phase.LISTING], SERVER, [LAST_LIST], Phase.LISTED)
_allow([Phase.OPEN, Phase.LISTED], CLIENT, [*CARRY, "request_signature"])  # a push (a blind one needs no index)
_allow([Phase.OPEN, Phase.LISTED], SERVER, ["signature"])
_allow([Phase.LISTED], CLIENT, ["request_file"])  # a pull asks as of the index it was sent
_allow([Phase.LISTED], SERVER, [*CARRY, "request_done"])  # ... and is answered
_allow([Phase.OPEN, Phase.LISTED, Phase.CLOSING], SERVER, ["ack", "acks"])
_allow([Phase.OPEN, Phase.LISTED], CLIENT, ["bye"], Phase.CLOSING)
_allow([Phase.CLOSING], SERVER, ["bye"], Phase.CLOSED)


# -- effects: what a received message asks of this end ---------------------------
@record
class Effect(Record):
    pass


@record
class Greet(Effect):
    """(server) The client said hello: answer with ours, or say we are busy."""

    hello: Hello


@record
class Greeted(Effect):
    """(client) The server answered our hello."""

    hello: Hello


@record
class SendIndex(Effect):
    dry_run: bool
    held: IndexMark | None = None  # the client's copy of our index: send what changed since (see FileList)
    heard: bool = False  # ...which holds every verdict we gave it (see RequestFileList)


@record
class IndexPart(Effect):
    part: FileList


@record
class Stage(Effect):
    """Verify small files and write them aside (committed later, together)."""

    message: SendFile


@record
class Commit(Effect):
    """Make the staged small files durable and put them in place."""


@record
class Begin(Effect):
    message: BeginFile


@record
class Write(Effect):
    message: SendDelta


@record
class Finish(Effect):
    path: str


@record
class Abandon(Effect):
    """The sender gave up on a file: keep its verified segments for a resume."""

    path: str


@record
class Apply(Effect):
    message: SendChanges


@record
class Sign(Effect):
    """Answer with our signature of a file we hold."""

    message: RequestSignature


@record
class SignatureReady(Effect):
    message: Signature


@record
class Serve(Effect):
    """(server) Send the files a pull asks for, then `request_done`."""

    message: RequestFile


@record
class Answered(Effect):
    """(client) One `request_file` has been answered in full."""


@record
class Verdict(Effect):
    """(client) A file's verdict from the server."""

    ack: Ack


@record
class Close(Effect):
    """(server) The client said bye: record the sync, say bye."""


@record
class Closed(Effect):
    """(client) The server said bye: the session is over."""


def remote_error(message: str) -> RemoteError:
    """The peer's own `error`, as ours to raise: busy is its own type (retry later)."""
    text = message[:500]
    return PeerBusy(f"peer: {text}") if text.startswith(("busy", "server busy")) else RemoteError(f"peer: {text}")


class Conversation:
    """One session's rules and state, from one end (`role`)."""

    def __init__(self, role: str, compress: bool = False, max_index_entries: int = 10_000_000) -> None:
        assert role in (CLIENT, SERVER)
        self.role = role
        self.peer_role = SERVER if role == CLIENT else CLIENT
        self.phase = Phase.START
        self.version = 0
        self.want_compress = compress  # (client) we asked the server to compress what it sends
        self.compress = False  # zstd on big bodies we send (negotiated in hello)
        self.compress_index = False  # (server) the index compresses well: whenever the client reads zstd
        self.holes = False  # the peer reads segments with holes (sparse files)
        self.batch_acks = False  # (server) the client reads many verdicts in one `acks` frame
        self.max_index_entries = max_index_entries
        # files in flight, by the end that sends them; the receiver's own failures among them
        self.open_files: dict[str, set[str]] = {CLIENT: set(), SERVER: set()}
        self.left_partial: dict[str, int] = {CLIENT: 0, SERVER: 0}  # aborted: a partial stays behind
        self.skipping: set[str] = set()  # incoming files we gave up on: their segments are ignored
        self.signatures_asked = 0
        self.requests_open = 0  # request_file frames not yet answered with request_done
        self.files_requested = 0
        self.refused = 0
        self.files_pushed = 0  # paths the client sent (each gets one verdict)
        self.verdicts = 0
        self.index_bytes = self.index_entries = self.index_partials = self.index_patterns = 0
        self.staged_files = self.staged_bytes = 0  # small files we wrote aside, not yet committed

    # -- the two directions -------------------------------------------------
    def send(self, message: Message) -> tuple[bytes, bytes]:
        """The frame for `message`, if we may send it now (a bug of ours otherwise)."""
        self._advance(self.role, message)
        compress = self.compress_index if isinstance(message, FileList) else self.compress
        return message.parts(compress)

    def receive(self, message: Message) -> list[Effect]:
        """What the peer's message asks of us; a ProtocolError if it may not come now."""
        self._advance(self.peer_role, message)
        return self._effects(message)

    def receive_frame(self, frame: Frame) -> list[Effect]:
        return self.receive(parse(frame))

    def idle(self) -> list[Effect]:
        """Nothing is waiting to be read: commit what is staged now, not later."""
        return self._commit()

    def gave_up(self, path: str) -> None:
        """We could not take an incoming file (it failed, or is here already): skip its segments."""
        self.skipping.add(path)

    def verdict(self, path: str, ok: bool, whole: bool = False, kept: str | None = None,
                error: str | None = None) -> Ack | None:
        """A file's verdict goes to the client, which keeps the session's report:
        the server says it in an `ack`; the client keeps its own."""
        return Ack(path, ok, whole, kept, error) if self.role == SERVER else None

    def said(self, acks: list[Ack]) -> list[Message]:
        """(server) How verdicts go to the client: in `acks` frames when it reads them, else one
        `ack` each."""
        if self.batch_acks and len(acks) > 1:
            return [Acks(tuple(group)) for group in grouped(acks, Ack.wire_bound)]
        return list(acks)

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.CLOSED, Phase.FAILED)

    # -- the rules ----------------------------------------------------------
    def _advance(self, who: str, m: Message) -> None:
        action = m.ACTION
        if isinstance(m, Error):
            self.phase = Phase.FAILED
            return
        key = LAST_LIST if isinstance(m, FileList) and not m.more else action
        nxt = ORDER.get((self.phase, who, key))
        if nxt is None:
            raise ProtocolError(f"{action} from the {who} is out of order ({self.phase.value})")
        self._guard(who, m)
        self.phase = nxt

    def _guard(self, who: str, m: Message) -> None:
        """The counters' part of the rules, for either end's messages."""
        if isinstance(m, Hello):
            self.version = negotiate(PROTOCOL_VERSIONS, list(m.versions))
            if who != self.role:  # the peer's hello says what it reads and what it asks of us
                self.compress = m.wants(COMPRESS) if self.role == SERVER else self.want_compress and m.wants("zstd")
                self.compress_index = self.role == SERVER and m.wants("zstd")
                self.holes = m.wants("sparse")
                self.batch_acks = self.role == SERVER and m.wants(ACKS)
        elif isinstance(m, FileList):
            self.index_bytes += m.size
            self.index_entries += len(m.entries)
            self.index_partials += len(m.partials)
            self.index_patterns += len(m.ignore)
            if self.index_patterns > limits.MAX_IGNORE_PATTERNS:
                raise ProtocolError(f"peer lists more than {limits.MAX_IGNORE_PATTERNS} ignore patterns")
            if self.index_bytes > limits.MAX_INDEX_BYTES:
                raise ProtocolError(f"peer index is larger than {limits.MAX_INDEX_BYTES} bytes")
            if self.index_entries > self.max_index_entries:
                raise ProtocolError(f"peer index has more than {self.max_index_entries} entries")
            if self.index_partials > limits.MAX_PARTIALS_LISTED:
                raise ProtocolError(f"peer lists more than {limits.MAX_PARTIALS_LISTED} partial transfers")
        elif m.ACTION in CARRY:
            if who == SERVER and self.requests_open <= 0:
                raise ProtocolError(f"{m.ACTION} from the server that no request asked for")
            if who == CLIENT and self.requests_open > 0:
                raise ProtocolError(f"{m.ACTION} from the client while its requests are being answered")
            self._stream(who, m)
            if who == CLIENT:
                self.files_pushed += len(m.files) if isinstance(m, SendFile) else \
                    len(m.ops) if isinstance(m, SendChanges) else 1 if isinstance(m, BeginFile) else 0
        elif isinstance(m, RequestSignature):
            if self.signatures_asked >= limits.MAX_FILES_IN_FLIGHT:
                raise ProtocolError("too many signatures asked for at once")
            self.signatures_asked += 1
        elif isinstance(m, Signature):
            if self.signatures_asked <= 0:
                raise ProtocolError("peer sent a signature that was not asked for")
            self.signatures_asked -= 1
        elif isinstance(m, RequestFile):
            self.requests_open += 1
            self.files_requested += len(m.files)
        elif m.ACTION == "request_done":
            if self.requests_open <= 0 or self.open_files[SERVER]:
                raise ProtocolError("request_done with no request open, or with a file still open")
            self.requests_open -= 1
        elif isinstance(m, (Ack, Acks)):
            n = len(m.acks) if isinstance(m, Acks) else 1
            if self.requests_open > 0:  # the server could not send files we asked for
                self.refused += n
                if self.refused > self.files_requested:
                    raise ProtocolError("peer refused more files than were asked for")
            else:
                self.verdicts += n
                if self.verdicts > self.files_pushed:
                    raise ProtocolError("peer sent a verdict for more files than were sent")
        elif isinstance(m, Bye):
            if self.requests_open or self.signatures_asked or self.open_files[CLIENT] or self.open_files[SERVER]:
                raise ProtocolError("bye with requests, signatures or files still open")

    def _stream(self, who: str, m: Message) -> None:
        """A file in segments: begun once, its segments while open, then done or aborted."""
        open_ = self.open_files[who]
        if isinstance(m, BeginFile):
            if m.path in open_:
                raise ProtocolError(f"begin_file: {m.path[:200]!r} is already in flight")
            if len(open_) >= limits.MAX_FILES_IN_FLIGHT:
                raise ProtocolError(f"begin_file: more than {limits.MAX_FILES_IN_FLIGHT} files in flight at once")
            if self.left_partial[who] + len(open_) >= limits.MAX_PARTIALS_PER_SESSION:
                raise ProtocolError(f"begin_file: more than {limits.MAX_PARTIALS_PER_SESSION} files left partial "
                                    f"in one session")
            open_.add(m.path)
        elif m.ACTION in ("send_delta", "file_done", "abort_file"):
            path = getattr(m, "path")
            if path not in open_:
                raise ProtocolError(f"{m.ACTION}: {path[:200]!r} was not begun")
            if m.ACTION != "send_delta":
                open_.discard(path)
                if m.ACTION == "abort_file":
                    self.left_partial[who] += 1

    # -- effects ------------------------------------------------------------
    def _commit(self) -> list[Effect]:
        if not self.staged_files:
            return []
        self.staged_files = self.staged_bytes = 0
        return [Commit()]

    def _effects(self, m: Message) -> list[Effect]:
        if isinstance(m, Error):
            raise remote_error(m.message)
        if isinstance(m, SendFile):
            self.staged_files += len(m.files)
            self.staged_bytes += len(m.body)
            full = self.staged_files >= limits.MAX_STAGED_FILES or self.staged_bytes >= limits.MAX_STAGED_BYTES
            return [Stage(m), *(self._commit() if full else [])]
        out = self._commit()  # anything else first makes the staged small files durable
        if isinstance(m, SendDelta):
            if m.path not in self.skipping:
                out.append(Write(m))
        elif isinstance(m, BeginFile):
            self.skipping.discard(m.path)
            out.append(Begin(m))
        elif m.ACTION in ("file_done", "abort_file"):
            path = getattr(m, "path")
            if path in self.skipping:
                self.skipping.discard(path)
            else:
                out.append(Finish(path) if m.ACTION == "file_done" else Abandon(path))
        elif isinstance(m, SendChanges):
            out.append(Apply(m))
        elif isinstance(m, Hello):
            out.append(Greet(m) if self.role == SERVER else Greeted(m))
        elif isinstance(m, RequestFileList):
            out.append(SendIndex(m.dry_run, m.held, m.heard))
        elif isinstance(m, FileList):
            out.append(IndexPart(m))
        elif isinstance(m, RequestSignature):
            out.append(Sign(m))
        elif isinstance(m, Signature):
            out.append(SignatureReady(m))
        elif isinstance(m, RequestFile):
            out.append(Serve(m))
        elif m.ACTION == "request_done":
            out.append(Answered())
        elif isinstance(m, Ack):
            out.append(Verdict(m))
        elif isinstance(m, Acks):
            out.extend(Verdict(a) for a in m.acks)
        elif isinstance(m, Bye):
            out.append(Close() if self.role == SERVER else Closed())
        return out


def order_table() -> str:
    """`ORDER` as the Markdown table docs/PROTOCOL.md shows (a test keeps the two equal)."""
    by_action: dict[tuple[str, str], tuple[list[str], str]] = {}
    for (phase, who, action), nxt in ORDER.items():
        name = "send_file_list` (last part)" if action == LAST_LIST else action + "`"
        phases, _ = by_action.setdefault((who, name), ([], "same" if nxt == phase else nxt.value))
        phases.append(phase.value)
    rows: dict[tuple[str, str, str], list[str]] = {}
    for (who, name), (phases, nxt) in by_action.items():
        rows.setdefault((", ".join(phases), who, nxt), []).append("`" + name)
    out = ["| in phase | sent by | actions | then |", "| --- | --- | --- | --- |"]
    out += [f"| {phases} | {who} | {', '.join(names)} | {nxt} |" for (phases, who, nxt), names in rows.items()]
    out.append("| any | either | `error` | failed |")
    return "\n".join(out)
