"""Sans-IO framing and messages: bytes in, typed frames out; frames out, bytes in.

A frame is the seed design made robust:
``u32 header_len (big-endian) · header (UTF-8 JSON object) · body``.
The header always holds ``action`` and ``body_len``. Every length is checked
against its limit *before* anything is buffered, so a hostile length costs
nothing. No sockets here: `run/channel.py` receives bytes into the decoder's space and
writes bytes out.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ..errors import ProtocolError

PROTOCOL_VERSIONS = (1,)
MAX_HEADER = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
_LEN = struct.Struct(">I")

# action -> {field: type}. `body_len` and `action` are implied. Extra fields are
# allowed (newer peers may add some); missing or wrongly typed ones are not.
_NUM = (int,)
_STR = (str,)
_OPT_STR = (str, type(None))
_LIST = (list,)
_BOOL = (bool,)
SCHEMAS: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"versions": _LIST, "peer_id": _STR, "features": _LIST},
    "error": {"message": _STR},
    "bye": {},
    # index exchange (seed: send_file_list)
    "request_file_list": {},
    "send_file_list": {"more": _BOOL},
    # whole small files, many per frame (seed: send_file)
    "send_file": {"files": _LIST},
    # pull (seed: request_file): the peer sends what was asked, then request_done
    "request_file": {"files": _LIST},
    "request_done": {},
    # big files: signature, then segments
    "request_signature": {"path": _STR, "blake3": _STR},
    "signature": {"path": _STR, "blake3": _OPT_STR},
    "begin_file": {"path": _STR, "size": _NUM, "mtime_ns": _NUM, "mode": _NUM, "blake3": _STR,
                   "segment_size": _NUM, "basis": _OPT_STR, "replaces": _OPT_STR},
    "send_delta": {"path": _STR, "index": _NUM, "offset": _NUM, "length": _NUM, "blake3": _STR,
                   "literal": _BOOL},
    "file_done": {"path": _STR},
    "abort_file": {"path": _STR, "reason": _STR},
    # directories, symlinks, deletes, metadata-only changes
    "send_changes": {},  # body: JSON list of ops
    "ack": {"path": _STR, "ok": _BOOL},
    "acks": {"files": _LIST},  # many acks, to a client whose hello says `acks`
}


Buffer = bytes | bytearray  # a received body is filled in place, so it may be a bytearray


@dataclass
class Frame:
    action: str
    header: dict[str, Any] = field(default_factory=dict)
    body: Buffer = b""

    def __getitem__(self, key: str) -> Any:
        return self.header[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.header.get(key, default)


def encode(action: str, body: bytes = b"", **fields: Any) -> bytes:
    """One frame as bytes. Raises ProtocolError if it would break a limit,
    so we never send what a correct peer must refuse."""
    return b"".join(encode_parts(action, body, **fields))


def encode_parts(action: str, body: bytes = b"", compress: bool = False, **fields: Any) -> tuple[bytes, bytes]:
    """A frame as (length and header, body): big bodies go out without a copy.
    With `compress`, a body of 4 KiB or more travels zstd-compressed (header
    field `z`) when that saves at least a tenth; random data goes as it is."""
    if compress and len(body) >= 4096:
        packed = _zstd().compress(body)
        if len(packed) < len(body) * 0.9:
            body, fields = packed, dict(fields, z=True)
    if action not in SCHEMAS:
        raise ProtocolError(f"unknown action {action!r}")
    if len(body) > MAX_BODY:
        raise ProtocolError(f"{action}: body of {len(body)} bytes exceeds {MAX_BODY}")
    header = dict(fields, action=action, body_len=len(body))
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(raw) > MAX_HEADER:
        raise ProtocolError(f"{action}: header of {len(raw)} bytes exceeds {MAX_HEADER}")
    return _LEN.pack(len(raw)) + raw, body


def validate(header: Any) -> None:
    """Check a decoded header against its action's schema."""
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    action = header.get("action")
    if not isinstance(action, str):
        raise ProtocolError("frame header has no action")
    schema = SCHEMAS.get(action)
    if schema is None:
        raise ProtocolError(f"unknown action {action[:64]!r}")
    body_len = header.get("body_len")
    if type(body_len) is not int or not 0 <= body_len <= MAX_BODY:
        raise ProtocolError(f"{action}: bad body_len")
    for name, types in schema.items():
        value = header.get(name)
        if name not in header or type(value) not in types:
            raise ProtocolError(f"{action}: field {name!r} missing or of the wrong type")
        if types is _NUM and isinstance(value, int) and value < 0:
            raise ProtocolError(f"{action}: field {name!r} is negative")


class FrameDecoder:
    """Incremental decoder. Bytes arrive either by `feed`, or -- with no copy of
    a big body -- straight into `space()`, followed by `filled(n)`: while a body
    is pending, `space()` is the rest of that body, so a 4 MiB segment is
    decrypted into its own buffer; between bodies it is a scratch buffer that
    headers and small frames share. Complete frames come out of both.

    Any malformed input raises ProtocolError and nothing else; after that the
    decoder is poisoned (the connection is to be closed).
    """

    SCRATCH = 256 * 1024

    def __init__(self, max_header: int = MAX_HEADER, max_body: int = MAX_BODY) -> None:
        self._max_header = max_header
        self._max_body = max_body
        self._scratch = bytearray(max(self.SCRATCH, max_header + 4))  # a whole header always fits
        self._view = memoryview(self._scratch)
        self._start = self._end = 0  # scratch[_start:_end] is received, not yet decoded
        self._pending: dict[str, Any] | None = None
        self._body = bytearray()  # the pending frame's body, filled in place
        self._filled = 0
        self._broken = False

    @property
    def buffered(self) -> int:
        return self._end - self._start + self._filled

    @property
    def in_body(self) -> bool:
        """`space()` is the rest of a body: all of it is wanted before anything can be decoded."""
        return self._pending is not None and self._start == self._end

    def space(self) -> memoryview:
        """Where the next received bytes go (never past the pending body's end)."""
        if self._broken:
            raise ProtocolError("decoder used after a protocol error")
        if self.in_body:
            return memoryview(self._body)[self._filled :]
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._scratch) - self._end < 4096:
            n = self._end - self._start  # move the undecoded tail to the front
            self._view[:n] = self._view[self._start : self._end]
            self._start, self._end = 0, n
        return self._view[self._end :]

    def filled(self, n: int) -> list[Frame]:
        """`n` bytes were written at the start of the last `space()`."""
        if self.in_body:
            self._filled += n
        else:
            self._end += n
        return self._decoded()

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        view = memoryview(data)
        while view:
            room = self.space()
            n = min(len(room), len(view))
            room[:n] = view[:n]
            frames += self.filled(n)
            view = view[n:]
        return frames

    def _decoded(self) -> list[Frame]:
        frames = []
        try:
            while (frame := self._next()) is not None:
                frames.append(frame)
        except ProtocolError:
            self._broken = True
            self._start = self._end = 0
            self._body = bytearray()
            raise
        return frames

    def _next(self) -> Frame | None:
        buf, start, end = self._scratch, self._start, self._end
        if self._pending is None:
            if end - start < 4:
                return None
            (hlen,) = _LEN.unpack_from(buf, start)
            if hlen == 0 or hlen > self._max_header:
                raise ProtocolError(f"header length {hlen} outside 1..{self._max_header}")
            if end - start < 4 + hlen:
                return None
            try:
                header = json.loads(self._view[start + 4 : start + 4 + hlen].tobytes().decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                raise ProtocolError(f"frame header is not valid UTF-8 JSON ({type(e).__name__})") from None
            validate(header)
            if header["body_len"] > self._max_body:
                raise ProtocolError(f"body length {header['body_len']} exceeds {self._max_body}")
            start = self._start = start + 4 + hlen
            self._pending = header
            self._body, self._filled = bytearray(header["body_len"]), 0
        need = self._pending["body_len"]
        take = min(need - self._filled, end - start)
        if take:
            self._body[self._filled : self._filled + take] = self._view[start : start + take]
            self._start = start + take
            self._filled += take
        if self._filled < need:
            return None
        body, self._body, self._filled = self._body, bytearray(), 0
        header, self._pending = self._pending, None
        return Frame(header["action"], header, body)  # a compressed body stays so until `inflate`


def inflate(frame: Frame, limit: int = MAX_BODY) -> Frame:
    """The frame with its body decompressed, if it came compressed.

    Called once per frame as it is handled, never for a whole read's worth of
    frames at once: a burst of tiny compressed frames in one read costs their
    compressed size, and only the frame at hand is ever expanded."""
    if frame.header.get("z") is not True:
        return frame
    header = {k: v for k, v in frame.header.items() if k != "z"}
    return Frame(frame.action, header, _unzstd(frame.body, limit))


def _zstd() -> Any:
    import zstandard

    return zstandard.ZstdCompressor(level=1, write_content_size=True)


def _unzstd(body: Buffer, limit: int) -> bytes:
    """Decompress a body, never past the body limit (a zstd bomb is a protocol error)."""
    import io

    import zstandard

    try:  # a bounded read: the frame's own size claim is not trusted
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)) as r:
            out = r.read(limit + 1)
    except zstandard.ZstdError as e:
        raise ProtocolError(f"compressed body is invalid or too large: {e}") from None
    if len(out) > limit:
        raise ProtocolError("compressed body expands past the body limit")
    return out


def negotiate(ours: tuple[int, ...], theirs: list[Any]) -> int:
    """The highest protocol version both sides speak."""
    common = set(ours) & {v for v in theirs if type(v) is int}
    if not common:
        raise ProtocolError(f"no common protocol version (we speak {list(ours)}, peer speaks {theirs[:8]})")
    return max(common)


def body_json(frame: Frame) -> Any:
    """A frame body that carries JSON (indexes, op lists)."""
    try:
        return json.loads(frame.body.decode("utf-8")) if frame.body else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError(f"{frame.action}: body is not valid UTF-8 JSON") from None


def json_body(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def json_chunks(items: Iterable[Any], limit: int, max_items: int = 1 << 30) -> Iterator[list[bytes]]:
    """Items JSON-encoded one by one and grouped so each group's bytes stay
    under `limit` (one item alone may reach it): whatever the items hold -- long
    paths, big version vectors -- no frame built from a group breaks a limit."""
    group: list[bytes] = []
    size = 0
    for item in items:
        raw = json_body(item)
        if group and (size + len(raw) + 1 > limit or len(group) >= max_items):
            yield group
            group, size = [], 0
        group.append(raw)
        size += len(raw) + 1
    if group:
        yield group


def json_array(encoded: list[bytes]) -> bytes:
    """A JSON array from items `json_chunks` encoded."""
    return b"[" + b",".join(encoded) + b"]"
