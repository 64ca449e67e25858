#!/usr/bin/env python3
"""Send N random and mutated frames to a live `deltasync serve` and report
server crashes and writes outside (or unexpected changes inside) the folder.

    python bench/fuzz.py --frames 10000 [--seed 1]
    python bench/fuzz.py --frames 100000 --inmemory   # the same frames, no server process

With `--inmemory` the frames go to the server's conversation machine and
store in this process, over the in-memory transport (`run/loopback.py`):
thousands of frames a second instead of one TLS handshake per connection.

Not part of CI (it runs for minutes). It makes two trusted peers in a temp
directory, starts a real server, and sends frames over real TLS connections
from a trusted client: each connection gets a valid hello, then a run of
frames drawn from valid ones (mutated byte-wise, truncated, re-typed) and
random bytes. The server may close a connection at any time; it must never
exit, and a canary directory beside the folder must never change.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deltasync.config import Folder  # noqa: E402
from deltasync.run.channel import Channel  # noqa: E402
from deltasync.run.loopback import Loopback  # noqa: E402
from deltasync.run.server import Server  # noqa: E402
from deltasync.run.workers import INLINE  # noqa: E402
from deltasync.transports.tls import connect  # noqa: E402
from deltasync.wire.framing import encode  # noqa: E402
from deltasync.wire.messages import Hello  # noqa: E402

B3 = "ab" * 32


def valid_frames(rng: random.Random) -> list[bytes]:
    p = rng.choice(["f", "dir/f", "../x", "/abs", "link/x", ".deltasync/x", "d"])
    data = rng.randbytes(rng.randrange(0, 64))
    return [
        encode("request_file_list"),
        encode("send_file", data, files=[{"path": p, "size": len(data), "mtime_ns": 1, "mode": 0o644,
                                          "blake3": B3, "replaces": None}]),
        encode("begin_file", path=p, size=rng.randrange(0, 10_000_000), mtime_ns=1, mode=0o644, blake3=B3,
               segment_size=rng.choice([1, 4096, 4 << 20]), basis=None, replaces=None),
        encode("send_delta", data, path=p, index=rng.randrange(0, 4), offset=0, length=len(data), blake3=B3,
               literal=rng.random() < 0.5),
        encode("file_done", path=p),
        encode("request_signature", path=p, blake3=B3),
        encode("send_changes", json.dumps([{"op": rng.choice(["mkdir", "delete", "meta", "symlink", "x"]),
                                            "path": p, "kind": rng.choice(["file", "dir", "symlink"]),
                                            "target": "/etc", "blake3": B3}]).encode()),
        encode("ack", path=p, ok=True),
        encode("bye"),
    ]


def mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    kind = rng.randrange(4)
    if kind == 0 and b:
        for _ in range(rng.randrange(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:
        b = b[: rng.randrange(len(b) + 1)]
    elif kind == 2:
        return rng.randbytes(rng.randrange(1, 200))
    return bytes(b)


def hello_frame(peer_id: str) -> bytes:
    return b"".join(Hello.ours(peer_id).parts())


async def session(client: Folder, address: str, frames: list[bytes]) -> None:
    conn = Channel(await connect(client, address, timeout=10))
    try:
        await conn.send(hello_frame(client.peer_id))
        await conn.recv()
        for f in frames:
            await conn.send(f)
        await conn.send(encode("bye"))
        while await asyncio.wait_for(conn.recv(), 0.3) is not None:
            pass
    except Exception:
        pass  # the server closing on us is normal here
    finally:
        await conn.close()


def tree(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(d.rglob("*"))
            if ".deltasync" not in p.parts}


def batches(rng: random.Random, total: int):
    """Runs of 1-7 frames, each drawn from valid ones and mostly mutated: one connection each."""
    sent = 0
    while sent < total:
        n = min(rng.randrange(1, 8), total - sent)
        yield [mutate(rng, f) if rng.random() < 0.7 else f for f in (rng.choice(valid_frames(rng)) for _ in range(n))]
        sent += n


def live(client: Folder, server: Folder, rng: random.Random, total: int) -> tuple[int, int, bool]:
    proc = subprocess.Popen([sys.executable, "-m", "deltasync", "serve", str(server.root), "--listen",
                             "127.0.0.1:0", "-q"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    address = proc.stdout.readline().split()[-1]
    sent = connections = 0
    try:
        for frames in batches(rng, total):
            asyncio.run(session(client, address, frames))
            sent, connections = sent + len(frames), connections + 1
            if proc.poll() is not None:
                break
        return sent, connections, proc.poll() is not None
    finally:
        proc.terminate()
        proc.wait(20)


async def in_memory(client: Folder, server: Folder, rng: random.Random, total: int) -> tuple[int, int, bool]:
    """The server's whole session handling, in this process: a crash is an exception out of it."""
    srv = Server(server, workers=INLINE)
    lb = Loopback(srv)
    sent = connections = 0
    try:
        for frames in batches(rng, total):
            got = await lb.exchange(client, [hello_frame(client.peer_id), *frames, encode("bye")], read_for=0.02)
            sent, connections = sent + len(frames), connections + 1
            bugs = [f["message"] for f in got if getattr(f, "action", "") == "error"
                    and f["message"].startswith("internal error")]
            if bugs:  # the session survived it, but it is a bug of ours, not the peer's
                raise AssertionError(f"{bugs[0]} after frames {[bytes(x[:80]) for x in frames]}")
        return sent, connections, False
    except Exception as e:  # Server.handle swallows what a peer can cause; anything else is a crash
        print(f"crash: {type(e).__name__}: {e}", file=sys.stderr)
        return sent, connections, True
    finally:
        srv.close()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--inmemory", action="store_true", help="drive the server in this process (no socket)")
    a = ap.parse_args(argv)
    logging.disable(logging.CRITICAL)  # every refused frame is logged; the verdict is the summary line
    rng = random.Random(a.seed)
    base = Path(tempfile.mkdtemp(prefix="deltasync-fuzz-"))
    client, cid, _ = Folder.init(base / "A")
    server, sid, _ = Folder.init(base / "B")
    client.trust(sid)
    server.trust(cid)
    canary = base / "canary"
    canary.mkdir()
    (canary / "keep").write_text("canary")
    os.symlink(canary, server.root / "link")
    (server.root / "d").mkdir()
    (server.root / "f").write_bytes(b"original")
    canary_before = tree(canary)
    started = time.monotonic()
    if a.inmemory:
        sent, connections, crashed = asyncio.run(in_memory(client, server, rng, a.frames))
    else:
        sent, connections, crashed = live(client, server, rng, a.frames)
    outside = tree(canary) != canary_before or sorted(os.listdir(base)) != ["A", "B", "canary"]
    print(json.dumps({"frames": sent, "connections": connections, "seconds": round(time.monotonic() - started, 1),
                      "server_crashes": int(crashed), "writes_outside_folder": int(outside)}))
    return 1 if crashed or outside else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
