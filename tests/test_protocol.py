import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltasync.errors import ProtocolError
from deltasync.wire.framing import inflate, MAX_BODY, MAX_HEADER, FrameDecoder, encode, negotiate


def raw_frame(header: object, body: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack(">I", len(h)) + h + body


def test_round_trip_byte_by_byte():
    data = encode("send_delta", b"xyz" * 100, path="a/b", index=1, offset=4, length=300, blake3="0" * 64,
                  literal=True) + encode("bye")
    d = FrameDecoder()
    frames = []
    for i in range(len(data)):
        frames += d.feed(data[i : i + 1])
    assert [f.action for f in frames] == ["send_delta", "bye"]
    assert frames[0].body == b"xyz" * 100 and frames[0]["path"] == "a/b"


def test_oversized_header_length_refused_before_buffering():
    d = FrameDecoder()
    with pytest.raises(ProtocolError, match="header length"):
        d.feed(struct.pack(">I", 0xFFFFFFFF))
    assert d.buffered == 0
    with pytest.raises(ProtocolError):
        d.feed(b"more")  # poisoned after an error


def test_oversized_body_len_refused_before_body():
    d = FrameDecoder()
    with pytest.raises(ProtocolError, match="body_len"):
        d.feed(raw_frame({"action": "bye", "body_len": 2**40}))
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(raw_frame({"action": "bye", "body_len": MAX_BODY + 1}))


@pytest.mark.parametrize("header, match", [
    ([1, 2], "not a JSON object"),
    ({"body_len": 0}, "no action"),
    ({"action": "nope", "body_len": 0}, "unknown action"),
    ({"action": "hello", "body_len": 0}, "missing"),
    ({"action": "ack", "body_len": 0, "path": 3, "ok": True}, "wrong type"),
    ({"action": "ack", "body_len": True, "path": "x", "ok": True}, "body_len"),
    ({"action": "send_delta", "body_len": 0, "path": "x", "index": -1, "offset": 0, "length": 0,
      "blake3": "", "literal": True}, "negative"),
])
def test_bad_headers(header, match):
    with pytest.raises(ProtocolError, match=match):
        FrameDecoder().feed(raw_frame(header))


def test_bad_json_and_zero_length():
    with pytest.raises(ProtocolError, match="JSON"):
        FrameDecoder().feed(struct.pack(">I", 3) + b"{x}")
    with pytest.raises(ProtocolError, match="JSON"):
        FrameDecoder().feed(struct.pack(">I", 2) + b"\xff\xfe")
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack(">I", 0))
    deep = b"[" * 100000
    with pytest.raises(ProtocolError):
        FrameDecoder(max_header=200000).feed(struct.pack(">I", len(deep)) + deep)


def test_encode_refuses_what_a_peer_must_refuse():
    with pytest.raises(ProtocolError):
        encode("bye", b"x" * (MAX_BODY + 1))
    with pytest.raises(ProtocolError):
        encode("error", message="x" * MAX_HEADER)
    with pytest.raises(ProtocolError):
        encode("not_an_action")


def test_negotiate():
    assert negotiate((1, 2), [2, 1, 7]) == 2
    with pytest.raises(ProtocolError, match="no common"):
        negotiate((1,), [5, "1"])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_give_frames_or_protocol_error(data):
    d = FrameDecoder()
    try:
        for i in range(0, len(data), 7):
            d.feed(data[i : i + 7])
    except ProtocolError:
        pass
    assert d.buffered <= 4 + MAX_HEADER + MAX_BODY


VALID = encode("hello", versions=[1], peer_id="X", features=[]) + encode(
    "send_file", b"abcdef", files=[{"path": "a", "size": 6}]) + encode("bye")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8),
       st.integers(0, len(VALID)))
def test_mutated_valid_streams(flips, cut):
    data = bytearray(VALID)
    for pos, val in flips:
        data[pos] = val
    try:
        frames = FrameDecoder().feed(bytes(data[:cut]))
    except ProtocolError:
        return
    for f in frames:
        assert isinstance(f.header, dict) and isinstance(f.body, (bytes, bytearray))


def test_compressed_bodies_round_trip_and_bombs_are_refused():
    import zstandard

    body = b"compressible " * 10000
    data = encode("send_file", body, compress=True, files=[])
    assert len(data) < len(body) // 5
    (f,) = FrameDecoder().feed(data)
    assert inflate(f).body == body
    noise = __import__("os").urandom(8192)
    assert b'"z"' not in encode("send_file", noise, compress=True, files=[])  # random data goes as it is
    bomb = zstandard.ZstdCompressor(level=1).compress(b"\0" * (MAX_BODY + 1))
    with pytest.raises(ProtocolError, match="body limit"):
        inflate(FrameDecoder().feed(raw_frame({"action": "send_file", "body_len": len(bomb), "files": [], "z": True},
                                              bomb))[0])
    with pytest.raises(ProtocolError, match="compressed"):
        inflate(FrameDecoder().feed(raw_frame({"action": "send_file", "body_len": 5, "files": [], "z": True},
                                              b"12345"))[0])


def test_a_burst_of_compressed_frames_is_not_expanded_at_once():
    """Thousands of tiny frames that each expand to 16 MiB arrive in one read:
    decoding them costs their compressed size; only the frame at hand is expanded."""
    import resource

    import zstandard

    small_bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (MAX_BODY - 1))
    one = raw_frame({"action": "send_file", "body_len": len(small_bomb), "files": [], "z": True}, small_bomb)
    burst = one * 2000  # 32 GiB once expanded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    frames = FrameDecoder().feed(burst)
    assert len(frames) == 2000
    for f in frames[:3]:
        assert len(inflate(f).body) == MAX_BODY - 1
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200


@pytest.mark.parametrize("header", [{"index_id": 7, "sequence": 1}, {"index_id": "x" * 65, "sequence": 1},
                                    {"index_id": "ab", "sequence": -1}, {"index_id": "ab", "sequence": 1 << 63},
                                    {"index_id": "ab", "sequence": "3"}, {"index_id": "é", "sequence": 1}])
def test_an_index_mark_out_of_range_is_refused(header):
    from conftest import wire

    with pytest.raises(ProtocolError):
        wire("request_file_list", **header)


def test_an_index_part_is_checked_and_read():
    from conftest import wire

    body = json.dumps({"index": {"id": "ab12", "sequence": 9, "full": False}}).encode()
    part = wire("send_file_list", body, more=True)
    assert part.mark is not None and (part.mark.index_id, part.mark.sequence, part.full) == ("ab12", 9, False)
    for bad in ({"id": "ab", "sequence": 9}, {"id": "ab", "sequence": 2 ** 62 + 1, "full": True}, []):
        with pytest.raises(ProtocolError):
            wire("send_file_list", json.dumps({"index": bad}).encode(), more=True)
    held = wire("request_file_list", index_id="", sequence=0)
    assert held.held is not None and held.held.index_id == "" and not held.dry_run
    assert wire("request_file_list").held is None


_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(_text, st.integers(0, 2**63 - 1), st.integers(-(2**63), 2**63 - 1), st.integers(0, 0o7777),
       st.sampled_from([None, "ab" * 32]), st.sampled_from([None, "cd" * 32]),
       st.dictionaries(_text, st.integers(0, 2**63 - 1), max_size=4), st.booleans())
def test_a_small_file_and_an_ack_are_measured_as_they_are_encoded(path, size, mtime, mode, b3, replaces, version, attrs):
    """`send_file` batches by the header bytes each file takes: worked out, it must be what
    encoding gives, whatever the path, vector or attributes hold."""
    from deltasync.core.entry import FILE, Entry
    from deltasync.wire.framing import json_body
    from deltasync.wire.messages import Ack, SmallFile

    xattrs = (("user.a", b"\x00\x01"),) if attrs else ()
    f = SmallFile(Entry(path, FILE, size, mtime, mode, b3, version=tuple(sorted(version.items())),
                        xattrs=xattrs), replaces)
    assert f.wire_size() == len(json_body(f.to_wire()))
    ack = Ack(path, b3 is None, error=path * 30 if replaces else None, kept="ab12" if attrs else None)
    assert ack.wire_bound() >= len(json_body(ack.to_wire()))  # acks are grouped by it


def test_small_files_are_batched_under_every_frame_limit():
    """Long paths, big bodies and many files each close a frame before a limit is passed."""
    from deltasync.core import limits
    from deltasync.core.entry import FILE, Entry
    from deltasync.wire.messages import SendFile, SmallFile

    def entry(i: int, path_len: int, size: int) -> Entry:
        return Entry(f"{i:06d}" + "é" * path_len, FILE, size, 1, 0o644, "ab" * 32, version=(("K" * 12, i),))

    for files in ([entry(i, 3000, 10) for i in range(100)],  # the header closes frames
                  [entry(i, 1, limits.BATCH_BYTES // 3) for i in range(10)],  # the bytes do
                  [entry(i, 1, 0) for i in range(2 * limits.BATCH_FILES + 1)]):  # the count does
        batches = list(SendFile.batches([(e, None) for e in files]))
        assert [e for b in batches for e, _ in b] == files and len(batches) > 1
        for b in batches:
            assert len(b) <= limits.BATCH_FILES and sum(e.size for e, _ in b) <= limits.BATCH_BYTES
            sf = SendFile(tuple(SmallFile(e, None) for e, _ in b), b"\0" * sum(e.size for e, _ in b))
            assert len(sf.parts()[0]) <= MAX_HEADER
