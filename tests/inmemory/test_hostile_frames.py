"""The hostile-frame cases of the live-server tests, driven into the server's
conversation machine and store in memory: the same verdicts, thousands of
frames a second, no server process."""
import asyncio
import os
import socket
import time

import pytest

from conftest import folder_pair, hello_frame, tree_digest
from deltasync.run.loopback import Loopback
from deltasync.run.server import Server
from deltasync.run.workers import INLINE
from deltasync.wire.framing import encode
from e2e.test_hostile import BASE, CASES
from e2e.test_hostile_limits import ATTACKS

pytestmark = pytest.mark.inmemory


@pytest.fixture
def arena(tmp_path):
    a, b = folder_pair(tmp_path)
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("canary")
    os.symlink(canary, b.root / "link")
    (b.root / "base").write_bytes(BASE)
    (b.root / "d").mkdir()
    return a, b, canary


def errors(got):
    return [f["message"] for f in got if getattr(f, "action", None) == "error"]


def test_every_hostile_case_is_refused_in_memory(arena):
    a, b, canary = arena
    before_b, before_canary = tree_digest(b.root), tree_digest(canary)
    server = Server(b, workers=INLINE)
    lb = Loopback(server)

    async def go():
        for name, frames in {**CASES, **ATTACKS}.items():
            got = await lb.exchange(a, [hello_frame(a.peer_id), *frames], read_for=2)
            assert errors(got), f"{name}: no error, got {got}"
            assert not any(m.startswith("internal error") for m in errors(got)), name
            assert tree_digest(b.root) == before_b, name
            assert tree_digest(canary) == before_canary, name
            assert not server.receiver.registry.busy_with(a.peer_id), f"{name}: a session outlived its connection"
        got = await lb.exchange(a, [encode("request_file_list")])  # nothing before hello
        assert errors(got) and "out of order" in errors(got)[0]
        got = await lb.exchange(a, [hello_frame(a.peer_id), encode("ack", path="x", ok=True)])
        assert "out of order" in errors(got)[0]

    try:
        asyncio.run(go())
    finally:
        server.close()


def test_thousands_of_frames_a_second(arena):
    """Not a timing target: a count, printed, to show what the fuzzer gets in memory."""
    a, b, _ = arena
    server = Server(b, workers=INLINE)
    lb = Loopback(server)
    frames = [encode("send_changes", b'[{"op":"mkdir","path":"d","kind":"dir","mode":493}]')] * 200

    async def go():
        for _ in range(10):
            got = await lb.exchange(a, [hello_frame(a.peer_id), *frames, encode("bye")])
            assert [f.action for f in got][-1] == "bye" and len([f for f in got if f.action == "ack"]) == 200

    start = time.monotonic()
    try:
        asyncio.run(go())
    finally:
        server.close()
    print(f"{2000 / (time.monotonic() - start):.0f} frames/s through the machine and store")


def test_the_guard_refuses_the_network_and_thread_pools():
    """The `inmemory` marker really takes sockets, subprocesses and thread pools away."""
    import concurrent.futures
    import subprocess

    with pytest.raises(AssertionError, match="in-memory"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    with pytest.raises(AssertionError, match="in-memory"):
        subprocess.run(["true"])
    with pytest.raises(AssertionError, match="in-memory"):
        concurrent.futures.ThreadPoolExecutor(1).submit(print)
