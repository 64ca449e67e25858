"""What both ends of a session share: the `hello` exchange with version
negotiation, and reading the peer's index."""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from .core.entry import Entry
from .errors import ProtocolError, UsageError
from .core.limits import INDEX_CHUNK_BYTES, MAX_INDEX_BYTES, MAX_PARTIALS_LISTED
from .core.plan import PartialInfo
from .wire.framing import (
    PROTOCOL_VERSIONS,
    Frame,
    body_json,
    encode,
    encode_parts,
    json_array,
    json_chunks,
    negotiate,
)
from .transport import Connection

FEATURES = ["zstd"]  # we can read zstd-compressed bodies
COMPRESS = "compress"  # the client asks the server to compress what it sends


def hello_frame(peer_id: str, compress: bool = False) -> bytes:
    """Our hello; `engine` (informational: the formats are librsync's whatever binding) helps a bug report."""
    from . import engines

    return encode("hello", versions=list(PROTOCOL_VERSIONS), peer_id=peer_id,
                  features=FEATURES + ([COMPRESS] if compress else []), engine=engines.describe()[:100])


def peer_engine(frame: Frame) -> str:
    value = frame.get("engine")
    return value[:100] if isinstance(value, str) else "unknown"


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


def index_frames(entries: Iterable[Entry], partials: list[dict[str, Any]], compress: bool = False
                 ) -> Iterator[bytes]:
    """An index as `send_file_list` frames, cut by bytes, so no frame can break
    the body limit whatever the entries hold (a long path, a big version vector)."""
    chunks = [(b"entries", c) for c in json_chunks((e.to_wire() for e in entries), INDEX_CHUNK_BYTES)]
    chunks += [(b"partials", c) for c in json_chunks(partials, INDEX_CHUNK_BYTES)]
    if not chunks:
        chunks = [(b"entries", [])]
    for i, (key, items) in enumerate(chunks):
        body = b'{"' + key + b'":' + json_array(items) + b"}"
        yield b"".join(encode_parts("send_file_list", body, compress, more=i + 1 < len(chunks)))


async def read_index(conn: Connection, max_entries: int) -> tuple[dict[str, Entry], dict[str, PartialInfo]]:
    """Collect the peer's `send_file_list` frames into entries and partials,
    within bounds on entries, partials and bytes."""
    entries: dict[str, Entry] = {}
    partials: dict[str, PartialInfo] = {}
    total = 0
    while True:
        frame = expect(await conn.recv(), "send_file_list", "while sending its index")
        total += len(frame.body)
        if total > MAX_INDEX_BYTES:
            raise ProtocolError(f"peer index is larger than {MAX_INDEX_BYTES} bytes")
        body = body_json(frame)
        if not isinstance(body, dict) or not isinstance(body.get("entries", []), list) \
                or not isinstance(body.get("partials", []), list):
            raise ProtocolError("send_file_list: body must be an object with entries and partials lists")
        for d in body.get("entries", []):
            e = Entry.from_wire(d)
            entries[e.path] = e
        if len(entries) > max_entries:
            raise ProtocolError(f"peer index has more than {max_entries} entries")
        for d in body.get("partials") or []:
            p = PartialInfo.from_wire(d)
            if p is not None:
                partials[p.path] = p
        if len(partials) > MAX_PARTIALS_LISTED:
            raise ProtocolError(f"peer lists more than {MAX_PARTIALS_LISTED} partial transfers")
        if not frame["more"]:
            return entries, partials


def partials_wire(partials: list[Any]) -> list[dict[str, Any]]:
    return [{"path": p.path, "target_blake3": p.target_blake3, "replaces": p.replaces,
             "segment_size": p.segment_size, "done": sorted(p.done)} for p in partials]


def refuse_nesting(nested: dict[str, str], peer_id: str, whose: str) -> None:
    """A peer whose folder lies inside ours would receive our tree into itself, again
    and again (`S/inner/inner/...`): refuse before anything moves."""
    inside = next((path for path, pid in nested.items() if pid == peer_id), None)
    if inside is not None:
        raise UsageError(f"{whose} folder is inside this one (at {inside}/): syncing them would copy the folder "
                         f"into itself; exclude {inside}/ or sync a folder that does not contain the other")
