"""`deltasync demo`: two peers on this machine run the seed test plan.

Real processes on loopback: each peer runs `deltasync serve`, and pushes go
through `deltasync push --json`. The plan: A has File_1, B gets it; B adds
File_2 and a folder of 50 small files, pushes them to A, A's server is killed
0.5 s after File_2 starts arriving (the push is paced to last a few seconds,
so the kill lands mid-transfer at any scale) and restarted, and the push
resumes; 10% of File_2 changes on
A and reaches B. Every step's files, bytes and time are recorded, and the md5
of every file is compared on both sides.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blake3 import blake3

MiB = 1 << 20
_CLI = [sys.executable, "-m", "deltasync"]
PUSH_SECONDS = 2.0  # how long the interrupted push of File_2 would take uninterrupted
FIRST_SEGMENT_PACE = 20 * MiB  # bytes/s: a 4 MiB segment in 0.2 s, kept 0.3 s before the kill


def _write_random(path: Path, size: int, seed: int) -> None:
    """Deterministic incompressible bytes: blake3's extendable output of the seed,
    a MiB at a time (the same seed gives the same file on any machine)."""
    stream = blake3(str(seed).encode())
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for offset in range(0, size, MiB):
            f.write(stream.digest(length=min(MiB, size - offset), seek=offset))


def _change_regions(path: Path, fraction: float, seed: int) -> None:
    """Overwrite 10 random regions totalling `fraction` of the file, in place."""
    rng = random.Random(seed)
    size = path.stat().st_size
    run = max(1, int(size * fraction) // 10)
    with open(path, "r+b") as f:
        for _ in range(10):
            f.seek(rng.randrange(0, max(1, size - run)))
            f.write(rng.randbytes(run))


def md5_tree(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".deltasync"]
        for name in files:
            p = Path(dirpath) / name
            h = hashlib.md5()
            with open(p, "rb") as f:
                while chunk := f.read(4 * MiB):
                    h.update(chunk)
            out[str(p.relative_to(root))] = h.hexdigest()
    return out


def _cli(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_CLI, *map(str, args)], capture_output=True, text=True)


class _Peer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""
        p = _cli("init", root)
        if p.returncode:
            raise RuntimeError(p.stderr)
        self.id = p.stdout.strip()

    def start(self) -> None:
        listen = self.address or "127.0.0.1:0"
        self.proc = subprocess.Popen([*_CLI, "serve", str(self.root), "--listen", listen, "-q"],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on"):
            raise RuntimeError(f"peer {self.root.name} did not start")
        self.address = line.split()[-1]

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None


@dataclass
class Step:
    name: str
    files: int
    bytes_sent: int
    seconds: float
    md5_match: bool | None  # None: not checked at this step (interrupted on purpose)


def _push(src: _Peer, dst: _Peer) -> dict[str, Any]:
    p = _cli("push", src.root, dst.address, "--json", "-q")
    try:
        return dict(json.loads(p.stdout), returncode=p.returncode)
    except ValueError:
        return {"returncode": p.returncode, "error": p.stderr.strip(), "bytes_sent": 0,
                "files_sent_whole": 0, "files_sent_delta": 0}


def _moved(r: dict[str, Any]) -> int:
    return int(r.get("files_sent_whole", 0)) + int(r.get("files_sent_delta", 0))


def _wait_for_partial(root: Path, pusher: "subprocess.Popen[str]", limit: float = 30.0) -> None:
    """Until a big file starts arriving at `root` (its partial appears), or the push ends."""
    partials = root / ".deltasync" / "partial"
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and pusher.poll() is None:
        if partials.is_dir() and any(partials.iterdir()):
            return
        time.sleep(0.02)


def _match(a: Path, b: Path, paths: list[str] | None = None) -> bool:
    da, db = md5_tree(a), md5_tree(b)
    if paths is None:
        return da == db
    return all(p in da and da.get(p) == db.get(p) for p in paths)


def run(scale: float = 0.2, keep: Path | None = None) -> list[Step]:
    base = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="deltasync-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    a, b = _Peer(base / "A"), _Peer(base / "B")
    for x, y in ((a, b), (b, a)):
        _cli("trust", x.root, y.id, "--name", y.root.name)
    steps: list[Step] = []
    try:
        a.start()
        b.start()
        _write_random(a.root / "File_1", int(10 * MiB * scale), seed=1)
        t = time.monotonic()
        r = _push(a, b)
        steps.append(Step("File_1 from A reaches B", _moved(r), r["bytes_sent"], time.monotonic() - t,
                          _match(a.root, b.root, ["File_1"])))

        _write_random(b.root / "File_2", int(500 * MiB * scale), seed=2)
        for i in range(50):
            _write_random(b.root / "folder" / f"small_{i:02d}.bin", 1024, seed=100 + i)
        t = time.monotonic()
        # paced so the kill 0.5 s into File_2 lands while it is moving, with verified segments
        # already kept: the first 4 MiB segment is in (and made durable) well before the kill,
        # and at any scale past 0.04 the file still has a way to go (at full size, this
        # machine's loopback takes about PUSH_SECONDS unpaced)
        pace = int(max(500 * MiB * scale / PUSH_SECONDS, FIRST_SEGMENT_PACE) / 1024)  # KiB/s
        pusher = subprocess.Popen([*_CLI, "push", str(b.root), a.address, "--json", "-q", "--bwlimit", str(pace)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        _wait_for_partial(a.root, pusher)
        time.sleep(0.5)
        a.kill()  # A dies 0.5 s into File_2's transfer
        out, _ = pusher.communicate()
        first = json.loads(out) if out.strip() else {}
        if "files_total" in first:  # it finished before the kill
            steps.append(Step("File_2 + 50 files to A; A killed at 0.5 s (after the push)", _moved(first),
                              first["bytes_sent"], time.monotonic() - t, None))
        else:  # what A kept: whole small files, and File_2's verified segments as a partial
            status = json.loads(_cli("status", a.root, "--json").stdout)
            kept = sum(p["bytes_done"] for p in status["partials"])
            arrived = sum(1 for i in range(50) if (a.root / "folder" / f"small_{i:02d}.bin").exists())
            steps.append(Step(f"File_2 + 50 files to A; A killed at 0.5 s: {arrived} files in place, "
                              f"{kept / MiB:.0f} MiB of File_2 kept to resume", arrived, kept,
                              time.monotonic() - t, None))
        a.start()
        t = time.monotonic()
        r = _push(b, a)
        steps.append(Step("A restarted; the rest arrives", _moved(r), r["bytes_sent"], time.monotonic() - t,
                          r["returncode"] == 0 and _match(a.root, b.root)))

        _change_regions(a.root / "File_2", 0.10, seed=7)
        t = time.monotonic()
        r = _push(a, b)
        steps.append(Step("10% of File_2 changed on A reaches B", _moved(r), r["bytes_sent"],
                          time.monotonic() - t, r["returncode"] == 0 and _match(a.root, b.root)))
        steps.append(Step("md5 of every file, both sides", len(md5_tree(a.root)), 0, 0.0, _match(a.root, b.root)))
    finally:
        a.stop()
        b.stop()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    return steps
