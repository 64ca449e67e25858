"""What both ends of a session share: the `hello` exchange with version
negotiation, and reading the peer's index."""
from __future__ import annotations

from typing import Any

from .entry import Entry
from .errors import ProtocolError
from .plan import PartialInfo
from .protocol import (
    PROTOCOL_VERSIONS,
    Frame,
    body_json,
    encode,
    encode_parts,
    negotiate,
)
from .transport import Connection

FEATURES = ["zstd"]  # we can read zstd-compressed bodies
COMPRESS = "compress"  # the client asks the server to compress what it sends
INDEX_CHUNK = 5000


def hello_frame(peer_id: str, compress: bool = False) -> bytes:
    return encode("hello", versions=list(PROTOCOL_VERSIONS), peer_id=peer_id,
                  features=FEATURES + ([COMPRESS] if compress else []))


def wants(frame: Frame, feature: str) -> bool:
    return feature in frame["features"]


def peer_error(frame: Frame) -> ProtocolError:
    """The peer's own `error` frame, as ours to raise."""
    return ProtocolError(f"peer: {str(frame.get('message', ''))[:500]}")


def expect(frame: Frame | None, action: str, when: str) -> Frame:
    """`frame` if it is `action`; an early close, the peer's error or anything else is a ProtocolError."""
    if frame is None:
        raise ProtocolError(f"peer closed the connection {when}")
    if frame.action == "error":
        raise peer_error(frame)
    if frame.action != action:
        raise ProtocolError(f"expected {action}, got {frame.action}")
    return frame


def check_hello(frame: Frame | None) -> int:
    return negotiate(PROTOCOL_VERSIONS, expect(frame, "hello", "before hello")["versions"])


async def client_hello(conn: Connection, own_id: str, compress: bool = False) -> int:
    """Say hello; compress what we send when asked to and the server reads zstd."""
    await conn.send(hello_frame(own_id, compress))
    reply = await conn.recv()
    version = check_hello(reply)
    assert reply is not None
    conn.compress = compress and wants(reply, "zstd")
    return version


def index_frames(entries: list[Entry], partials: list[dict[str, Any]], compress: bool = False) -> list[bytes]:
    """An index as `send_file_list` frames, chunked to stay under the body limit."""
    from .protocol import json_body

    frames = []
    wire = [e.to_wire() for e in entries]
    for i in range(0, max(1, len(wire)), INDEX_CHUNK):
        last = i + INDEX_CHUNK >= len(wire)
        body = {"entries": wire[i : i + INDEX_CHUNK], "partials": partials if last else []}
        frames.append(b"".join(encode_parts("send_file_list", json_body(body), compress, more=not last)))
    return frames


async def read_index(conn: Connection, max_entries: int) -> tuple[dict[str, Entry], dict[str, PartialInfo]]:
    """Collect the peer's `send_file_list` frames into entries and partials."""
    entries: dict[str, Entry] = {}
    partials: dict[str, PartialInfo] = {}
    while True:
        frame = expect(await conn.recv(), "send_file_list", "while sending its index")
        body = body_json(frame)
        if not isinstance(body, dict) or not isinstance(body.get("entries"), list):
            raise ProtocolError("send_file_list: body must be an object with entries")
        for d in body["entries"]:
            e = Entry.from_wire(d)
            entries[e.path] = e
        if len(entries) > max_entries:
            raise ProtocolError(f"peer index has more than {max_entries} entries")
        for d in body.get("partials") or []:
            p = PartialInfo.from_wire(d)
            if p is not None:
                partials[p.path] = p
        if not frame["more"]:
            return entries, partials


def partials_wire(partials: list[Any]) -> list[dict[str, Any]]:
    return [{"path": p.path, "target_blake3": p.target_blake3, "replaces": p.replaces,
             "segment_size": p.segment_size, "done": sorted(p.done)} for p in partials]
