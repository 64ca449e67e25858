"""Trusted-but-malicious peers, untrusted floods and a hostile server, each
against real processes. After every attack: the server is alive and serves a
legitimate push within a bound, its peak RSS is bounded, nothing outside the
folder changed, and nothing secret reached the attacker."""
import asyncio
import json
import os
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import DELTASYNC, Serve, attack, digest, ds, hello_frame, push_json, raw_channel
from deltasync import engines, hashing
from deltasync.config import Folder
from deltasync.run.channel import Channel
from deltasync.transports.tls import MAGIC, Admission, serve
from deltasync.wire.framing import encode, encode_parts, json_body

RSS_LIMIT_MIB = 256


def raw(header, body=b""):
    h = json.dumps(header).encode()
    return struct.pack(">I", len(h)) + h + body


def peak_rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def run_attack(client: Folder, address: str, frames: list[bytes]) -> tuple[list, bytes]:
    """The attack, and every byte of header and body that came back (to look for secrets in)."""
    got = asyncio.run(attack(client, address, frames))
    received = b"".join(json.dumps(f.header).encode() + bytes(f.body) for f in got if hasattr(f, "header"))
    return got, received


def errors_in(got: list) -> list[str]:
    return [f["message"] for f in got if getattr(f, "action", None) == "error"]


@pytest.fixture
def arena(served, canary):
    a, b, s = served
    (a / "ok.txt").write_text("legitimate")
    return a, b, s, canary


def assert_healthy(a, b, s, canary, before_canary):
    """Alive, bounded, serving a legitimate push in time, nothing outside touched."""
    assert s.proc.poll() is None, "server died"
    start = time.monotonic()
    (a / "ok.txt").write_text(f"legitimate {start}")
    r = push_json(a, s.address, "--force")
    assert r["files_failed"] == 0, r
    assert time.monotonic() - start < 15
    assert (b / "ok.txt").read_text() == f"legitimate {start}"
    assert digest(canary) == before_canary and os.listdir(canary) == ["keep"]
    rss = peak_rss_mib(s.proc.pid)
    print(f"server peak RSS {rss:.0f} MiB; legitimate push after the attack {time.monotonic() - start:.2f} s")
    assert rss < RSS_LIMIT_MIB


def no_secret(b, received: bytes):
    key = (b / ".deltasync" / "key.pem").read_bytes()
    body = b"".join(key.splitlines()[1:-1])
    assert body[:40] not in received
    assert str(b).encode() not in received  # our absolute location never leaves


def small(path, data=b"evil", **over):
    meta = {"path": path, "size": len(data), "mtime_ns": 1, "mode": 0o644, "blake3": hashing.of_bytes(data),
            "replaces": None}
    meta.update(over)
    return encode("send_file", data, files=[meta])


def begin(path, size=10, segment_size=4 << 20, mtime_ns=1, b3="0" * 64):
    return encode("begin_file", path=path, size=size, mtime_ns=mtime_ns, mode=0o644, blake3=b3,
                  segment_size=segment_size, basis=None, replaces=None)


BIG_VECTOR = {f"K{i:011d}": 1 for i in range(1000)}
ATTACKS = {
    "case-folded state folder": [small(".DeltaSync/key.pem"), small("d/.DELTASYNC/x")],
    "nested state folder": [small("docs/.deltasync/config.toml")],
    "huge size": [begin("huge", size=2**62)],
    "tiny segments": [begin("tiny", size=10**9, segment_size=1)],
    "out-of-range mtime": [small("when", mtime_ns=2**64)],
    "oversized version vector": [small("vec", version=BIG_VECTOR)],
    "files left open": [begin(f"open{i}", size=1 << 20) for i in range(200)],
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_trusted_peer_attacks_are_refused(arena, name):
    a, b, s, canary = arena
    before_b, before_canary = digest(b), digest(canary)
    got, received = run_attack(Folder.open(a), s.address, ATTACKS[name])
    assert errors_in(got), f"{name}: no error frame: {got}"
    assert digest(b) == before_b, name
    no_secret(b, received)
    assert open_fds(s.proc.pid) < 64
    assert_healthy(a, b, s, canary, before_canary)
    assert not list((b / ".deltasync" / "partial").iterdir()) or name == "files left open"


def test_a_refused_mtime_leaves_no_claim_behind(arena):
    """Today's bug: a bad mtime_ns left the path 'being written' until a restart."""
    a, b, s, canary = arena
    run_attack(Folder.open(a), s.address, [small("when", mtime_ns=2**63 - 1 + 1)])
    (a / "when").write_text("a normal file")
    r = push_json(a, s.address)
    assert r["files_failed"] == 0 and (b / "when").read_text() == "a normal file"


def test_zstd_burst_is_expanded_one_frame_at_a_time(arena):
    import zstandard

    a, b, s, canary = arena
    before_canary = digest(canary)
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (16 * 1024 * 1024 - 1))
    burst = [raw({"action": "send_file", "body_len": len(bomb), "files": [], "z": True}, bomb)] * 3000
    got, _ = run_attack(Folder.open(a), s.address, [b"".join(burst)])
    assert errors_in(got) or any(isinstance(f, Exception) for f in got)
    assert_healthy(a, b, s, canary, before_canary)


def test_hostile_signature_is_refused(arena):
    """A pull whose signature makes every block share one weak sum: refused before librsync loads it."""
    a, b, s, canary = arena
    before_canary = digest(canary)
    data = os.urandom(1 << 20)
    (b / "big").write_bytes(data)
    block, strong, blocks = 8192, 16, (len(data) + 8191) // 8192
    sig = struct.pack(">III", engines.RS_RK_BLAKE2_SIG_MAGIC, block, strong) + b"".join(
        struct.pack(">I", 7) + os.urandom(strong) for _ in range(blocks))  # every block: one weak sum

    async def go():
        conn = await raw_channel(Folder.open(a), s.address)
        try:
            await conn.send(hello_frame(Folder.open(a).peer_id))
            await conn.recv()
            await conn.send(encode("request_file_list"))
            while (f := await conn.recv()) is not None and f["more"]:
                pass
            req = {"path": "big", "dest": "big", "blake3": hashing.of_bytes(data), "replaces": "1" * 64,
                   "basis": "1" * 64, "segment_size": 4 << 20, "done": [], "basis_size": len(data)}
            await conn.send(encode("request_file", sig, files=[req]))
            out = []
            while (f := await asyncio.wait_for(conn.recv(), 10)) is not None:
                out.append(f)
            return out
        except Exception as e:
            return [e]
        finally:
            await conn.close()

    got = asyncio.run(go())
    assert any("weak sum" in m for m in errors_in(got)), got
    assert_healthy(a, b, s, canary, before_canary)


def test_backtracking_ignore_pattern_cannot_stall_a_scan(arena):
    """A `.deltasyncignore` arrives from peers like any file; a pattern built to make a
    backtracking matcher spin costs the server nothing."""
    a, b, s, canary = arena
    before_canary = digest(canary)
    (a / ".deltasyncignore").write_text("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b\n**/*a*a*a*a*a*a*a*a*a*a*c/**/x\n")
    (a / ("a" * 200)).write_text("long name")
    push_json(a, s.address)  # the pattern file is now the server's own
    start = time.monotonic()
    r = push_json(a, s.address)
    assert r["files_failed"] == 0 and time.monotonic() - start < 10
    assert_healthy(a, b, s, canary, before_canary)


def test_preauth_flood_does_not_lock_out_trusted_peers(arena):
    """Idle TCP connections that never finish the preamble hold no slot a trusted peer needs."""
    a, b, s, canary = arena
    before_canary = digest(canary)
    host, port = s.address.rsplit(":", 1)
    flood = []
    for _ in range(300):
        c = socket.socket()
        c.bind(("127.0.0.2", 0))  # another loopback address: one source among many
        c.settimeout(5)
        try:
            c.connect((host, int(port)))
        except OSError:
            c.close()
            continue
        flood.append(c)
    try:
        for c in flood[:10]:
            c.sendall(MAGIC[:2])  # and then nothing
        assert_healthy(a, b, s, canary, before_canary)
        evicted = 0
        for c in flood[:250]:
            c.settimeout(0.01)
            try:
                evicted += c.recv(1) == b""
            except (socket.timeout, OSError):
                pass
        assert evicted >= 200  # the flood evicted itself, not the trusted peer
    finally:
        for c in flood:
            c.close()


def test_admission_budget_unit():
    """The budget alone: per-address and overall caps evict the oldest of the busiest address."""
    class W:
        def __init__(self):
            self.transport = self
            self.aborted = False

        def abort(self):
            self.aborted = True

    adm = Admission(max_pending=10, per_address=3, max_sessions=2, per_peer=1)
    flood = [W() for _ in range(5)]
    for w in flood:
        adm.arrive(w, "10.9.9.9")
    assert [w.aborted for w in flood] == [True, True, False, False, False]
    legit = W()
    adm.arrive(legit, "10.1.1.1")
    assert not legit.aborted
    many = [W() for _ in range(12)]
    for i, w in enumerate(many):
        adm.arrive(w, f"10.2.0.{i}")
    assert not legit.aborted or sum(w.aborted for w in many) > 0
    assert adm.open_session("P") is None and adm.open_session("P") is not None  # per peer
    assert adm.open_session("Q") is None and adm.open_session("R") is not None  # overall
    adm.close_session("P")
    assert adm.open_session("R") is None


def test_unsendable_index_cannot_be_forced(arena):
    """Many directories with big version vectors once made every later index frame too large."""
    a, b, s, canary = arena
    vec = {f"K{i:011d}": 1 for i in range(256)}
    ops = [dict(op="mkdir", path=f"d{i}", kind="dir", mode=0o755, version=vec) for i in range(600)]
    frames = [encode_parts("send_changes", json_body(ops[i:i + 100])) for i in range(0, 600, 100)]
    run_attack(Folder.open(a), s.address, [b"".join(f) for f in frames] + [encode("bye")])
    assert len([p for p in b.iterdir() if p.name.startswith("d")]) == 600
    s.stop()
    s2 = Serve(b)  # and after a restart
    try:
        (a / "after").write_text("x")
        r = push_json(a, s2.address)
        assert r["files_failed"] == 0 and (b / "after").read_text() == "x"
        r = json.loads(ds("pull", a, s2.address, "--json").stdout)
        assert r["files_failed"] == 0
    finally:
        s2.stop()


class FakeServer:
    """A trusted peer's server that answers a pull with hostile frames."""

    def __init__(self, folder: Folder, script):
        self.folder, self.script = folder, script
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def handler(transport):
            conn = Channel(transport)
            await conn.recv()
            await conn.send(hello_frame(self.folder.peer_id))
            await conn.recv()
            try:
                for frame in self.script():
                    await conn.send(frame)
            except Exception:
                pass
            # read on until the client hangs up: closing with its frames unread would reset the
            # connection, and a reset can discard what a slow client has not read yet (the hostile frames)
            try:
                while await asyncio.wait_for(conn.recv(), 30) is not None:
                    pass
            except Exception:
                pass

        async def main():
            srv = await serve(self.folder, "127.0.0.1", 0, handler)
            self.address = "127.0.0.1:%d" % srv.sockets[0].getsockname()[1]
            self.ready.set()
            await asyncio.sleep(60)

        try:
            self.loop.run_until_complete(main())
        except Exception:
            pass


def partial_flood():
    parts = [{"path": f"p{i}", "target_blake3": "a" * 64, "replaces": None, "segment_size": 1 << 22, "done": [0]}
             for i in range(120_000)]
    for i in range(0, len(parts), 20_000):
        yield b"".join(encode_parts("send_file_list", json_body({"partials": parts[i:i + 20_000]}), more=True))


def bad_index():
    yield encode("send_file_list", json_body({"entries": [{"path": "x", "kind": "file", "size": 1,
                                                          "mtime_ns": 2**70, "mode": 0o644,
                                                          "blake3": "a" * 64}]}), more=False)


def zstd_flood():
    import zstandard

    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (16 * 1024 * 1024 - 1))
    yield b"".join([raw({"action": "send_file_list", "body_len": len(bomb), "more": True, "z": True}, bomb)] * 2000)


@pytest.mark.parametrize("script", [partial_flood, bad_index, zstd_flood])
def test_hostile_server_against_a_pulling_client(tmp_path, pair, script):
    a, b = pair
    (a / "mine").write_text("untouched")
    before = digest(a)
    fake = FakeServer(Folder.open(b), script)
    start = time.monotonic()
    p = subprocess.run(["/usr/bin/env", "time", "-f", "%M", *DELTASYNC, "pull", str(a), fake.address],
                       capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 30, p.stderr
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert "Traceback" not in p.stderr and lines[0].startswith("deltasync: error:"), p.stderr
    rss = int(lines[-1]) / 1024  # peak RSS of the client, from time(1)
    print(f"{script.__name__}: client exit {p.returncode} in {time.monotonic() - start:.2f} s, peak RSS {rss:.0f} MiB")
    assert rss < RSS_LIMIT_MIB, p.stderr
    assert digest(a) == before, p.stderr
