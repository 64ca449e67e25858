"""A live `serve` against a trusted-but-hostile client built from our own
protocol module, and against untrusted ones. After every case the server still
answers a normal push, and nothing inside the folder or beside it changed."""
import asyncio
import io
import json
import os
import socket
import struct

import pytest

from conftest import Serve, attack, digest, push_json
from deltasync import engine, hashing, identity
from deltasync.config import Folder
from deltasync.wire.framing import encode
from deltasync.transports.tls import MAGIC


def raw(header, body=b""):
    h = json.dumps(header).encode()
    return struct.pack(">I", len(h)) + h + body


BASE = os.urandom(100_000)
FAKE_OLD = BASE + os.urandom(1_000_000)  # a basis the receiver does not have: COPYs past its end
NEW_SEG = FAKE_OLD[200_000:300_000]
BAD_DELTA = engine.delta(NEW_SEG, engine.signature(io.BytesIO(FAKE_OLD), 8192))
B3 = hashing.of_bytes(BASE)


def begin(path, size=10, basis=None, replaces=None, b3="0" * 64):
    return encode("begin_file", path=path, size=size, mtime_ns=1, mode=0o644, blake3=b3, segment_size=4 << 20,
                  basis=basis, replaces=replaces)


def small(path, data=b"evil"):
    return encode("send_file", data, files=[{"path": path, "size": len(data), "mtime_ns": 1, "mode": 0o644,
                                            "blake3": hashing.of_bytes(data), "replaces": None}])


CASES = {
    "invalid json": [struct.pack(">I", 5) + b"{nope"],
    "header not an object": [raw([1, 2, 3])],
    "missing field": [raw({"action": "send_delta", "body_len": 0, "path": "x"})],
    "wrong type": [raw({"action": "begin_file", "body_len": 0, "path": 7})],
    "unknown action": [raw({"action": "format_disk", "body_len": 0})],
    "header length 4 GiB": [struct.pack(">I", 0xFFFFFFFF)],
    "body_len 2^40": [raw({"action": "bye", "body_len": 2**40})],
    "absolute path": [small("/tmp/evil")],
    "dot-dot path": [begin("../canary/evil")],
    "NUL in path": [small("a\x00b")],
    ".deltasync path": [small(".deltasync/config.toml")],
    "through a symlink": [small("link/evil")],
    "segment never begun": [encode("send_delta", b"x", path="x", index=0, offset=0, length=1, blake3="0" * 64,
                                   literal=True)],
    "segment with a wrong blake3": [begin("f", 4), encode("send_delta", b"abcd", path="f", index=0, offset=0,
                                                          length=4, blake3="0" * 64, literal=True)],
    "delta past the basis": [begin("base", len(NEW_SEG), B3, B3, hashing.of_bytes(NEW_SEG)),
                             encode("send_delta", BAD_DELTA, path="base", index=0, offset=0, length=len(NEW_SEG),
                                    blake3=hashing.of_bytes(NEW_SEG), literal=False)],
    "out-of-order ack": [encode("ack", path="x", ok=True)],
}


@pytest.fixture
def arena(served, canary):
    a, b, s = served
    os.symlink(canary, b / "link")
    (b / "base").write_bytes(BASE)
    (b / "d").mkdir()
    return a, b, s, canary


def test_every_hostile_case_gets_an_error_and_changes_nothing(arena):
    a, b, s, canary = arena
    (a / "ok.txt").write_text("normal data")
    before_b, before_canary = digest(b), digest(canary)
    client = Folder.open(a)
    for name, frames in CASES.items():
        got = asyncio.run(attack(client, s.address, frames))
        errors = [f for f in got if getattr(f, "action", None) == "error"]
        assert errors, f"{name}: no error frame, got {got}"
        assert digest(b) == before_b, name
        assert digest(canary) == before_canary and os.listdir(canary) == ["keep"], name
        assert s.proc.poll() is None, f"server died on {name}"
    got = asyncio.run(attack(client, s.address, [encode("request_file_list")], say_hello=False))
    assert any(getattr(f, "action", None) == "error" for f in got), "message before hello accepted"
    # a directory where a file is expected fails that file; the folder is unchanged
    got = asyncio.run(attack(client, s.address, [small("d"), encode("bye")]))
    acks = [f for f in got if getattr(f, "action", None) == "ack"]
    assert acks and acks[0]["ok"] is False and (b / "d").is_dir()
    # and the server still serves a normal push, without touching what it should not
    r = push_json(a, s.address)
    assert r["files_failed"] == 0 and (b / "ok.txt").read_text() == "normal data"
    assert digest(canary) == before_canary
    assert "protocol error" in (b.parent / "serve-B.log").read_text()


def test_untrusted_client_learns_nothing(tmp_path, served):
    a, b, s = served
    (b / "secret-name.txt").write_text("secret data")
    stranger, _, _ = Folder.init(tmp_path / "stranger")
    host, port = s.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        der = identity.cert_der(stranger.cert)
        sock.sendall(MAGIC + struct.pack(">H", len(der)) + der)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received == MAGIC + b"\x01"  # one refusal byte: no certificate, no index, no names


def test_untrusted_server_gets_nothing_from_the_client(tmp_path, pair):
    """The client pins the server: a server it does not trust is never sent a frame."""
    a, b = pair
    (a / "secret-name.txt").write_text("secret data")
    impostor, _, _ = Folder.init(tmp_path / "impostor")
    impostor.trust(Folder.open(a).peer_id)  # the impostor would accept A
    s = Serve(impostor.root)
    try:
        from conftest import ds

        p = ds("push", a, s.address, check=False)
        assert p.returncode == 4 and "not trusted" in p.stderr
    finally:
        s.stop()
    assert not (impostor.root / "secret-name.txt").exists()
    assert "secret" not in (impostor.root.parent / "serve-impostor.log").read_text()


def test_a_trickling_peer_does_not_block_others(tmp_path, served):
    """A peer that sends its preamble a byte at a time holds one slot, not the server."""
    a, b, s = served
    host, port = s.address.rsplit(":", 1)
    slow = socket.create_connection((host, int(port)), timeout=10)
    try:
        slow.sendall(MAGIC[:3])  # and then nothing, for now
        (a / "f").write_text("still served")
        r = push_json(a, s.address)
        assert r["files_failed"] == 0 and (b / "f").read_text() == "still served"
        slow.sendall(MAGIC[3:] + b"\xff\xff")  # then an oversized certificate length
        slow.settimeout(15)
        assert slow.recv(100) == b""  # closed on us, nothing sent
    finally:
        slow.close()
    assert s.proc.poll() is None
