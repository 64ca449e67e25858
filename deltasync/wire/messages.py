"""Typed messages: one frozen dataclass per frame action, validated when it is
built -- from a peer's frame or by us -- so every check of a peer's paths,
sizes and ranges happens here, once, before any handler sees the message.

`parse(frame)` turns a (schema-checked, inflated) frame into its message;
`message.parts(compress)` turns a message into the frame's (head, body).
Nothing here does I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Iterable, Iterator, TypeVar

from ..core import limits, sparse
from ..core import version as vv
from ..core.entry import DIR, FILE, SYMLINK, Entry, Xattrs, xattrs_from_wire, xattrs_to_wire
from ..core.plan import PartialInfo
from ..core.record import Record, record
from ..errors import ProtocolError
from ..fs.safe import check_relpath
from .framing import (
    MAX_HEADER,
    PROTOCOL_VERSIONS,
    Buffer,
    Frame,
    body_json,
    encode_parts,
    json_array,
    json_body,
    json_chunks,
)

T = TypeVar("T")
INDEX_DELTA = "index-delta"  # a client keeps a copy of the server's index and asks only for what changed
# a client keeps what the server acknowledged, as it sent it, in its copy of the server's index: the
# server leaves the rows it recorded just so out of the index it sends that client next
NO_ECHO = "no-echo"
ACKS = "acks"  # a client reads many verdicts in one `acks` frame
FEATURES = ("zstd", "sparse", INDEX_DELTA, NO_ECHO, ACKS)  # we read zstd-compressed bodies and segments with holes
COMPRESS = "compress"  # the client asks the server to compress what it sends
OPS = {"mkdir": DIR, "symlink": SYMLINK, "copy": FILE, "hardlink": FILE, "meta": None,
       "delete": None}  # op -> the kind it makes
FROM_OPS = ("copy", "hardlink")  # ops made from a file the receiver holds at `from`


def _digest(value: Any, what: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not (isinstance(value, str) and len(value) == 64):
        raise ProtocolError(f"{what} must be a 64-character digest")
    return value


def _path(value: Any, what: str) -> str:
    check_relpath(value)
    assert isinstance(value, str)
    return value


def _text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


class Message(Record):
    """A message: its action, and how it becomes a frame and back."""

    ACTION: ClassVar[str]

    def parts(self, compress: bool = False) -> tuple[bytes, bytes]:
        header = {f.name: getattr(self, f.name) for f in fields(self)  # type: ignore[arg-type]
                  if f.name != "body" and not f.name.startswith("_")}
        return encode_parts(self.ACTION, getattr(self, "body", b""), compress, **header)

    @classmethod
    def from_frame(cls, f: Frame) -> "Message":
        return cls()


# -- the session ---------------------------------------------------------------
@record
class Hello(Message):
    ACTION: ClassVar[str] = "hello"
    versions: tuple[int, ...]
    peer_id: str
    features: tuple[str, ...]
    engine: str = "unknown"  # informational (the formats are librsync's, whatever the binding)

    @classmethod
    def ours(cls, peer_id: str, compress: bool = False) -> "Hello":
        from .. import engines

        return cls(PROTOCOL_VERSIONS, peer_id, FEATURES + ((COMPRESS,) if compress else ()),
                   engines.describe(load=False)[:100])

    def wants(self, feature: str) -> bool:
        return feature in self.features

    def parts(self, compress: bool = False) -> tuple[bytes, bytes]:
        return encode_parts("hello", versions=list(self.versions), peer_id=self.peer_id,
                            features=list(self.features), engine=self.engine)

    @classmethod
    def from_frame(cls, f: Frame) -> "Hello":
        return cls(tuple(v for v in f["versions"][:16] if type(v) is int), f["peer_id"][:128],
                   tuple(x for x in f["features"][:32] if isinstance(x, str) and len(x) <= 32),
                   _text(f.get("engine"), 100) or "unknown")


@record
class Error(Message):
    ACTION: ClassVar[str] = "error"
    message: str

    @classmethod
    def from_frame(cls, f: Frame) -> "Error":
        return cls(f["message"][:1000])


@record
class Bye(Message):
    ACTION: ClassVar[str] = "bye"


@record
class IndexMark(Record):
    """Where a copy of an index stands: the index's ID and its sequence number."""

    index_id: str
    sequence: int

    @classmethod
    def from_wire(cls, index_id: Any, sequence: Any, what: str) -> "IndexMark":
        if not (isinstance(index_id, str) and len(index_id) <= 64 and index_id.isascii()):
            raise ProtocolError(f"{what}: index_id must be a short ASCII string")
        return cls(index_id, limits.check_int(sequence, 0, limits.MAX_SEQUENCE, f"{what}: sequence"))


@record
class RequestFileList(Message):
    ACTION: ClassVar[str] = "request_file_list"
    dry_run: bool = False  # the client only looks: the server changes nothing, not even its manifest
    # the copy of the server's index the client keeps ('' and 0: none yet): the server then sends what
    # changed since (or all of it, marked full), with its own mark; without it, the whole index unmarked
    held: IndexMark | None = None
    # (`NO_ECHO`) the copy holds every verdict the server gave this client (its last session heard them
    # all): the server may leave out what it recorded just as this client sent it
    heard: bool = False

    def parts(self, compress: bool = False) -> tuple[bytes, bytes]:
        marks = {"index_id": self.held.index_id, "sequence": self.held.sequence} if self.held else {}
        return encode_parts(self.ACTION, dry_run=self.dry_run, **marks, **({"heard": True} if self.heard else {}))

    @classmethod
    def from_frame(cls, f: Frame) -> "RequestFileList":
        held = f.get("index_id")
        return cls(f.get("dry_run") is True,
                   None if held is None else IndexMark.from_wire(held, f.get("sequence"), "request_file_list"),
                   f.get("heard") is True)


@record
class FileList(Message):
    """One part of an index. Ours is cut by bytes (`chunked`), so no frame can
    break the body limit whatever the entries hold. An index asked for with a
    held mark begins with a part of its own giving the server's mark and
    whether the entries are all of it (`full`) or only what changed since."""

    ACTION: ClassVar[str] = "send_file_list"
    entries: tuple[Entry, ...] = ()
    partials: tuple[PartialInfo, ...] = ()
    more: bool = False
    size: int = 0  # the body's bytes as received (the index's total is bounded)
    ignore: tuple[str, ...] = ()  # (a part of its own) the server's ignore patterns: the client leaves those paths
    mark: IndexMark | None = None  # (a part of its own) the server's index ID and sequence
    full: bool = True  # with `mark`: the entries are the whole index, not what changed since the held mark
    _encoded: tuple[bytes, bytes] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def chunked(cls, entries: Iterable[Entry], partials: Iterable[PartialInfo], ignore: Iterable[str] = (),
                mark: IndexMark | None = None, full: bool = True) -> Iterator["FileList"]:
        """The parts, made as they are sent: entries may come from a generator (a whole index is never
        one list in memory)."""
        def parts() -> Iterator[tuple[bytes, bytes]]:
            if mark is not None:
                yield b"index", json_body({"id": mark.index_id, "sequence": mark.sequence, "full": full})
            for key, items in ((b"ignore", ignore), (b"entries", (e.to_wire() for e in entries)),
                               (b"partials", (p.to_wire() for p in partials))):
                for c in json_chunks(items, limits.INDEX_CHUNK_BYTES):
                    yield key, json_array(c)

        ahead = next(it := parts(), (b"entries", b"[]"))
        for following in it:
            yield cls(more=True, _encoded=ahead)
            ahead = following
        yield cls(more=False, _encoded=ahead)

    def parts(self, compress: bool = False) -> tuple[bytes, bytes]:
        if self._encoded is not None:
            key, array = self._encoded
            body = b'{"' + key + b'":' + array + b"}"
        else:
            body = json_body({"entries": [e.to_wire() for e in self.entries],
                              "partials": [p.to_wire() for p in self.partials], "ignore": list(self.ignore)})
        return encode_parts(self.ACTION, body, compress, more=self.more)

    @classmethod
    def from_frame(cls, f: Frame) -> "FileList":
        body = body_json(f)
        if not isinstance(body, dict) or not all(isinstance(body.get(k, []), list)
                                                 for k in ("entries", "partials", "ignore")):
            raise ProtocolError("send_file_list: body must be an object with entries, partials and ignore lists")
        ignore = body.get("ignore") or []
        if not all(isinstance(p, str) and len(p) <= limits.MAX_PATH_CHARS for p in ignore):
            raise ProtocolError("send_file_list: ignore patterns must be strings")
        mark, full = None, True
        if "index" in body:
            head = body["index"]
            if not isinstance(head, dict) or type(head.get("full")) is not bool:
                raise ProtocolError("send_file_list: index must be an object with id, sequence and full")
            mark, full = IndexMark.from_wire(head.get("id"), head.get("sequence"), "send_file_list"), head["full"]
        partials = (PartialInfo.from_wire(d) for d in body.get("partials") or [])
        return cls(tuple(Entry.from_wire(d) for d in body.get("entries", [])),
                   tuple(p for p in partials if p is not None), f["more"], len(f.body), tuple(ignore), mark, full)


# -- files, small and whole ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SmallFile:
    entry: Entry
    replaces: str | None  # the content the receiver must still hold there (None: nothing)

    def to_wire(self) -> dict[str, Any]:
        e = self.entry
        d = {"path": e.path, "size": e.size, "mtime_ns": e.mtime_ns, "mode": e.mode, "blake3": e.blake3,
             "replaces": self.replaces, "version": vv.to_wire(e.version)}
        if e.xattrs:
            d["xattrs"] = xattrs_to_wire(e.xattrs)
        return d

    def wire_size(self) -> int:
        """The length of `to_wire` in the header, worked out without encoding the whole of it
        (encoding each file once to measure it and again to send it was a tenth of a first
        push's CPU); extended attributes are measured by encoding."""
        e = self.entry
        if e.xattrs:
            return len(json_body(self.to_wire()))
        n = _FIXED + json_len(e.path) + len(str(e.size)) + len(str(e.mtime_ns)) + len(str(e.mode))
        n += len(e.blake3) + 2 if e.blake3 is not None else 4
        n += len(self.replaces) + 2 if self.replaces is not None else 4
        return n + sum(json_len(k) + len(str(c)) + 2 for k, c in e.version) + (1 if not e.version else 0)


_FIXED = len(json_body({"path": "", "size": "", "mtime_ns": "", "mode": "", "blake3": "", "replaces": "",
                        "version": {}})) - 4 * 2 - 2 * 2 - 1  # less the empty values of what is counted


def json_len(text: str) -> int:
    """The bytes JSON takes for the string `text`, quotes included: its UTF-8 when nothing in it
    is escaped (the common case, without encoding), else as encoded."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return len(text.encode()) + 2
    return len(json_body(text))


@record
class SendFile(Message):
    """Whole small files, many per frame; the body is their bytes in order."""

    ACTION: ClassVar[str] = "send_file"
    files: tuple[SmallFile, ...]
    body: Buffer = b""

    def __post_init__(self) -> None:
        if sum(f.entry.size for f in self.files) != len(self.body):
            raise ProtocolError("send_file: sizes do not add up to the body length")

    def parts(self, compress: bool = False) -> tuple[bytes, bytes]:
        return encode_parts(self.ACTION, self.body, compress, files=[f.to_wire() for f in self.files])

    @classmethod
    def from_frame(cls, f: Frame) -> "SendFile":
        files = []
        for meta in f["files"]:
            if not isinstance(meta, dict):
                raise ProtocolError("send_file: file entry is not an object")
            e = Entry.from_wire(dict(meta, kind=FILE))
            files.append(SmallFile(e, _digest(meta.get("replaces"), "send_file: replaces", True)))
            _path(e.path, "send_file")
        return cls(tuple(files), f.body)

    @staticmethod
    def batches(small: list[tuple[Entry, str | None]]) -> Iterator[list[tuple[Entry, str | None]]]:
        """Small files (entry, replaces) grouped so each frame stays well under
        the limits: the header is measured as it will be sent (long paths and big
        version vectors make fewer files per frame, never a frame over the limit)."""
        return grouped(small, lambda f: SmallFile(*f).wire_size() + 128,  # + room for a conflict copy's longer name
                       lambda f: f[0].size, limits.BATCH_FILES)


def grouped(items: Iterable[T], header: Callable[[T], int], body: Callable[[T], int] = lambda _: 0,
            max_items: int = 1 << 30) -> Iterator[list[T]]:
    """Items in the order given, grouped for one frame each: their header bytes (at least)
    under half the header limit, their body bytes under `BATCH_BYTES`, at most `max_items`."""
    cur: list[T] = []
    h = b = 0
    for item in items:
        dh, db = header(item), body(item)
        if cur and (b + db > limits.BATCH_BYTES or len(cur) >= max_items or h + dh > MAX_HEADER // 2):
            yield cur
            cur, h, b = [], 0, 0
        cur.append(item)
        h += dh
        b += db
    if cur:
        yield cur


@dataclass(frozen=True)
class FileRequest:
    """One file a pull asks for, as of the index the server sent."""

    path: str  # the server's path
    dest: str  # where it lands here (a conflict copy's name may differ)
    blake3: str
    replaces: str | None = None
    basis: str | None = None  # the version we hold, for a delta (its signature is the frame's body)
    segment_size: int = limits.SEGMENT_SIZE
    done: frozenset[int] = frozenset()  # segments we hold verified already (a resume)
    basis_size: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"path": self.path, "dest": self.dest, "blake3": self.blake3, "replaces": self.replaces,
                "basis": self.basis, "segment_size": self.segment_size, "done": sorted(self.done),
                "basis_size": self.basis_size}

    @classmethod
    def from_wire(cls, d: Any) -> "FileRequest":
        if not isinstance(d, dict):
            raise ProtocolError("request_file: entry is not an object")
        path = _path(d.get("path"), "request_file")
        done = d.get("done") or []
        most = limits.MAX_FILE_SIZE // limits.MIN_SEGMENT
        if not isinstance(done, list) or len(done) > most or not all(type(i) is int and 0 <= i < most for i in done):
            raise ProtocolError("request_file: done must list segment indexes")
        return cls(path, _path(d.get("dest", path), "request_file"),
                   str(_digest(d.get("blake3"), "request_file: blake3")),
                   _digest(d.get("replaces"), "request_file: replaces", True),
                   _digest(d.get("basis"), "request_file: basis", True),
                   limits.check_segment_size(d.get("segment_size", limits.SEGMENT_SIZE), "request_file: segment_size"),
                   frozenset(done),
                   limits.check_int(d.get("basis_size", 0), 0, limits.MAX_FILE_SIZE, "request_file: basis_size"))


@record
class RequestFile(Message):
    """A pull asks for files; a delta request is one file with our signature as the body."""

    ACTION: ClassVar[str] = "request_file"
    files: tuple[FileRequest, ...]
    body: Buffer = b""

    def __post_init__(self) -> None:
        if any(r.basis is not None for r in self.files) and (not self.body or len(self.files) != 1):
            raise ProtocolError("request_file: a delta request carries its signature, one per frame")

    def parts(self, compress: bool = False) -> tuple[bytes, bytes]:
        return encode_parts(self.ACTION, self.body, False, files=[r.to_wire() for r in self.files])

    @classmethod
    def from_frame(cls, f: Frame) -> "RequestFile":
        return cls(tuple(FileRequest.from_wire(d) for d in f["files"]), f.body)


@record
class RequestDone(Message):
    ACTION: ClassVar[str] = "request_done"


@record
class RequestSignature(Message):
    ACTION: ClassVar[str] = "request_signature"
    path: str
    blake3: str

    @classmethod
    def from_frame(cls, f: Frame) -> "RequestSignature":
        return cls(_path(f["path"], "request_signature"), str(_digest(f["blake3"], "request_signature: blake3")))


@record
class Signature(Message):
    """Our signature of `path` at `blake3`, or None: it holds something else now."""

    ACTION: ClassVar[str] = "signature"
    path: str
    blake3: str | None
    block_len: int = 0
    body: Buffer = b""

    @classmethod
    def from_frame(cls, f: Frame) -> "Signature":
        block = f.get("block_len", 0)
        return cls(f["path"], _digest(f["blake3"], "signature: blake3", True),
                   block if type(block) is int and 0 <= block <= limits.MAX_BLOCK_LEN else 0, f.body)


@record
class BeginFile(Message):
    """A file in segments begins: what it will be, and what it replaces."""

    ACTION: ClassVar[str] = "begin_file"
    path: str
    size: int
    mtime_ns: int
    mode: int
    blake3: str
    segment_size: int
    basis: str | None
    replaces: str | None
    version: dict[str, int] = field(default_factory=dict)
    xattrs: Xattrs = ()

    def __post_init__(self) -> None:
        _path(self.path, "begin_file")
        limits.check_segment_size(self.segment_size, "begin_file: segment_size")
        limits.check_int(self.size, 0, limits.MAX_FILE_SIZE, "begin_file: size")
        limits.check_mtime(self.mtime_ns, "begin_file: mtime_ns")
        limits.check_int(self.mode, 0, limits.MAX_MODE, "begin_file: mode")
        _digest(self.blake3, "begin_file: blake3")
        _digest(self.basis, "begin_file: basis", True)
        _digest(self.replaces, "begin_file: replaces", True)
        if self.basis is not None and self.basis != self.replaces:
            raise ProtocolError("begin_file: the delta basis must be the version it replaces")
        vv.from_wire(self.version)

    @property
    def entry(self) -> Entry:
        return Entry(self.path, FILE, self.size, self.mtime_ns, self.mode, self.blake3,
                     version=vv.from_wire(self.version), xattrs=self.xattrs)

    @property
    def segments(self) -> int:
        return limits.segments_of(self.size, self.segment_size)

    def parts(self, compress: bool = False) -> tuple[bytes, bytes]:
        header = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "xattrs"}
        if self.xattrs:
            header["xattrs"] = xattrs_to_wire(self.xattrs)
        return encode_parts(self.ACTION, b"", compress, **header)

    @classmethod
    def from_frame(cls, f: Frame) -> "BeginFile":
        return cls(f["path"], f["size"], f["mtime_ns"], f["mode"], f["blake3"], f["segment_size"], f["basis"],
                   f["replaces"], f.get("version") or {}, xattrs_from_wire(f.get("xattrs"), "begin_file"))


@record
class SendDelta(Message):
    """One segment: literal bytes, a librsync delta against the basis, or
    `same` (unchanged at its offset: only its hash travels)."""

    ACTION: ClassVar[str] = "send_delta"
    path: str
    index: int
    offset: int
    length: int
    blake3: str
    literal: bool
    same: bool = False
    body: Buffer = b""
    holes: sparse.Runs = ()  # zero runs: left out of a literal body; either way the receiver leaves them holes

    def parts(self, compress: bool = False) -> tuple[bytes, bytes]:
        extra: dict[str, Any] = {"same": True} if self.same else {}
        if self.holes:
            extra["holes"] = [list(r) for r in self.holes]
        return encode_parts(self.ACTION, self.body, compress, path=self.path, index=self.index, offset=self.offset,
                            length=self.length, blake3=self.blake3, literal=self.literal, **extra)

    @classmethod
    def from_frame(cls, f: Frame) -> "SendDelta":
        length = limits.check_int(f["length"], 0, limits.MAX_SEGMENT, "send_delta: length")
        literal = f["literal"]
        holes = sparse.from_wire(f.get("holes"), length, len(f.body) if literal else None, "send_delta")
        return cls(f["path"], f["index"], f["offset"], length, str(_digest(f["blake3"], "send_delta: blake3")),
                   literal, f.get("same") is True, f.body, holes)


@record
class FileDone(Message):
    ACTION: ClassVar[str] = "file_done"
    path: str

    @classmethod
    def from_frame(cls, f: Frame) -> "FileDone":
        return cls(f["path"])


@record
class AbortFile(Message):
    ACTION: ClassVar[str] = "abort_file"
    path: str
    reason: str

    @classmethod
    def from_frame(cls, f: Frame) -> "AbortFile":
        return cls(f["path"], f["reason"][:1000])


# -- the tree --------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """A change that carries no file content: mkdir, symlink, copy (from content
    the receiver holds at `origin`), hardlink (to `origin`), meta (mode, mtime,
    version) or delete."""

    kind: str
    entry: Entry
    origin: str | None = None  # copy and hardlink only
    replaces: str | None = None  # copy and hardlink only

    def to_wire(self) -> dict[str, Any]:
        d = dict(self.entry.to_wire(), op=self.kind)
        if self.kind in FROM_OPS:
            d.update({"from": self.origin, "replaces": self.replaces})
        return d

    @classmethod
    def from_wire(cls, d: Any) -> "Op":
        if not isinstance(d, dict) or not isinstance(d.get("op"), str):
            raise ProtocolError("send_changes: op is not an object with an op name")
        kind = d["op"]
        if kind not in OPS:
            raise ProtocolError(f"send_changes: unknown op {kind[:32]!r}")
        e = Entry.from_wire({k: v for k, v in d.items() if k not in ("op", "from", "replaces")})
        _path(e.path, "send_changes")
        if OPS[kind] not in (None, e.kind):
            raise ProtocolError(f"send_changes: {kind} of a {e.kind}")
        if kind == "meta" and e.deleted:
            raise ProtocolError("send_changes: meta of a deleted entry")
        if kind not in FROM_OPS:
            return cls(kind, e)
        origin, replaces = d.get("from"), d.get("replaces")
        if not isinstance(origin, str) or not (replaces is None or isinstance(replaces, str)):
            raise ProtocolError(f"send_changes: {kind} needs from and replaces")
        if kind == "hardlink" and origin != e.link:
            raise ProtocolError("send_changes: a hard link's from is the file it links to")
        return cls(kind, e, _path(origin, "send_changes: from"), replaces)


@record
class SendChanges(Message):
    ACTION: ClassVar[str] = "send_changes"
    ops: tuple[Op, ...]

    def parts(self, compress: bool = False) -> tuple[bytes, bytes]:
        return encode_parts(self.ACTION, json_array([json_body(o.to_wire()) for o in self.ops]))

    @classmethod
    def grouped(cls, ops: Iterable[Op]) -> Iterator["SendChanges"]:
        """Ops in frames cut by bytes and count."""
        group: list[Op] = []
        size = 0
        for op in ops:
            n = len(json_body(op.to_wire())) + 1
            if group and (size + n > limits.OPS_BYTES or len(group) >= limits.OPS_PER_FRAME):
                yield cls(tuple(group))
                group, size = [], 0
            group.append(op)
            size += n
        if group:
            yield cls(tuple(group))

    @classmethod
    def from_frame(cls, f: Frame) -> "SendChanges":
        ops = body_json(f)
        if not isinstance(ops, list):
            raise ProtocolError("send_changes: body must be a list")
        return cls(tuple(Op.from_wire(d) for d in ops))


@dataclass(frozen=True)
class Ack(Message):
    """A file's verdict, for the client: the server received it (a push), or
    could not send it (a pull)."""

    ACTION: ClassVar[str] = "ack"
    path: str
    ok: bool
    whole: bool = False
    kept: str | None = None  # the replaced version's name under .deltasync/versions/ on the receiver
    error: str | None = None

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "ok": self.ok, "whole": self.whole}
        if self.kept:
            d["kept"] = self.kept
        if self.error:
            d["error"] = self.error[:1000]
        return d

    def parts(self, compress: bool = False) -> tuple[bytes, bytes]:
        return encode_parts(self.ACTION, **self.to_wire())

    def wire_bound(self) -> int:
        """At least the bytes `to_wire` takes in a header."""
        return 40 + json_len(self.path) + (len(self.kept) + 10 if self.kept else 0) + \
            (json_len(self.error[:1000]) + 10 if self.error else 0)

    @classmethod
    def from_frame(cls, f: Frame | dict[str, Any]) -> "Ack":
        path, ok, kept = f.get("path"), f.get("ok"), f.get("kept")
        if not isinstance(path, str) or type(ok) is not bool:
            raise ProtocolError("ack: a verdict needs a path and ok")
        return cls(path[:4096], ok, f.get("whole") is True,
                   kept if isinstance(kept, str) and kept.isalnum() and len(kept) <= 128 else None,
                   _text(f.get("error"), 1000) or None)


@record
class Acks(Message):
    """Many files' verdicts in one frame, to a client whose hello says `acks`: a commit of a
    thousand small files is answered in a few frames, not a thousand (each a header to encode,
    frame, decrypt and parse on both ends)."""

    ACTION: ClassVar[str] = "acks"
    acks: tuple[Ack, ...]

    def parts(self, compress: bool = False) -> tuple[bytes, bytes]:
        return encode_parts(self.ACTION, files=[a.to_wire() for a in self.acks])

    @classmethod
    def from_frame(cls, f: Frame) -> "Acks":
        files = f["files"]
        if not all(isinstance(d, dict) for d in files):
            raise ProtocolError("acks: a verdict is not an object")
        return cls(tuple(Ack.from_frame(d) for d in files))


MESSAGES: dict[str, type[Message]] = {m.ACTION: m for m in (
    Hello, Error, Bye, RequestFileList, FileList, SendFile, RequestFile, RequestDone, RequestSignature, Signature,
    BeginFile, SendDelta, FileDone, AbortFile, SendChanges, Ack, Acks)}


def parse(frame: Frame) -> Message:
    """A peer's frame as its message; anything out of range is a ProtocolError."""
    kind = MESSAGES.get(frame.action)
    if kind is None:
        raise ProtocolError(f"unknown action {frame.action[:64]!r}")
    return kind.from_frame(frame)
