"""Shared helpers: real peer processes, the seed fixture, digests."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "bench" / "fixture.py"  # an identical copy of ../shared/scenario/fixture.py (tested)
DELTASYNC = [sys.executable, "-m", "deltasync"]


def pytest_report_header() -> str:
    from deltasync import engines

    return f"deltasync engine: {engines.describe()}; available: {[e.name for e in engines.available()]}"


def fixture(*args: str) -> str:
    return subprocess.run([sys.executable, str(FIXTURE), *args], check=True, capture_output=True,
                          text=True).stdout


def digest(d: Path) -> str:
    return fixture("digest", str(d))


def ds(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([*DELTASYNC, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"deltasync {' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def push_json(src: Path, addr: str, *extra: str) -> dict:
    return json.loads(ds("push", src, addr, "--json", *extra).stdout)


class Proc:
    """A real deltasync process we can kill (SIGKILL) or stop (SIGTERM)."""

    proc: subprocess.Popen
    log: "object"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def stop(self) -> int:
        self.proc.terminate()
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log.close()
        return rc

    def tail(self, lines: int = 25) -> str:
        """The end of its log, for a failure message (stopped or not)."""
        if not self.log.closed:
            self.log.flush()
        try:
            text = Path(self.log.name).read_text(errors="replace").splitlines()[-lines:]
        except OSError as e:
            text = [f"(no log: {e})"]
        head = f"--- {Path(self.log.name).name} ({'running' if self.proc.poll() is None else f'exited {self.proc.returncode}'})"
        return "\n".join([head, *text])


class Serve(Proc):
    """A real `deltasync serve` process on loopback."""

    def __init__(self, folder: Path, listen: str = "127.0.0.1:0") -> None:
        cmd = [*DELTASYNC, "serve", str(folder), "--listen", listen, "-v"]
        self.log = open(folder.parent / f"serve-{folder.name}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise AssertionError(f"serve did not start: {line!r} {(folder.parent / f'serve-{folder.name}.log').read_text()}")
        self.address = line.split()[-1]


def make_pair(tmp: Path) -> tuple[Path, Path]:
    a, b = tmp / "A", tmp / "B"
    ida = ds("init", a).stdout.strip()
    idb = ds("init", b).stdout.strip()
    ds("trust", a, idb, "--name", "b")
    ds("trust", b, ida, "--name", "a")
    return a, b


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return make_pair(tmp_path)


@pytest.fixture
def served(pair: tuple[Path, Path]) -> Iterator[tuple[Path, Path, Serve]]:
    a, b = pair
    s = Serve(b)
    yield a, b, s
    s.stop()


def no_leftovers(folder: Path) -> list[str]:
    """Temp or partial files left in a folder's state directory."""
    meta = folder / ".deltasync"
    return [str(p) for d in ("partial", "tmp") if (meta / d).exists() for p in (meta / d).iterdir()]


requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
have_rdiff = shutil.which("rdiff") is not None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Watch(Proc):
    """A real `deltasync watch` process (optionally inside a network namespace)."""

    def __init__(self, folder: Path, listen: str, netns: str | None = None, *extra: str) -> None:
        self.folder, self.listen, self.netns, self.extra = folder, listen, netns, extra
        self.start()

    def start(self) -> None:
        cmd = [*DELTASYNC, "watch", str(self.folder), "--listen", self.listen, "--json", *self.extra]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.log = open(self.folder.parent / f"watch-{self.folder.name}.log", "a")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, text=True)


def wait_for(cond, timeout: float = 120, what: str = "condition", procs: "list[Proc] | tuple[()]" = ()) -> float:
    """Poll until cond() is true; return the seconds it took. A process of
    `procs` that exits meanwhile fails at once; a timeout shows their logs."""
    import time

    start = time.monotonic()
    while not cond():
        dead = [p for p in procs if p.proc.poll() is not None]
        late = time.monotonic() - start > timeout
        if dead or late:
            why = f"exited while waiting for {what}" if dead else f"timed out after {timeout} s waiting for {what}"
            raise AssertionError("\n".join([why, *(p.tail() for p in (dead or procs))]))
        time.sleep(0.05)
    return time.monotonic() - start


def md5(path: Path) -> str | None:
    import hashlib

    try:
        h = hashlib.md5()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def netns_available() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    r = subprocess.run(["ip", "netns", "list"], capture_output=True)
    return r.returncode == 0


NETPAIR = ROOT / "bench" / "netpair.sh"


@pytest.fixture
def rx(tmp_path):
    """A receiver on a fresh folder B, without a network."""
    from deltasync.store.receiver import Receiver
    from deltasync.config import Folder
    from deltasync.store.manifest import Manifest

    folder, _, _ = Folder.init(tmp_path / "B")
    m = Manifest(folder.db)
    r = Receiver(folder, m)
    yield r
    r.close()
    m.close()


def wire(action: str, body: bytes = b"", **header):
    """A message as a peer's frame would arrive: encoded, decoded, inflated, parsed (and so validated)."""
    from deltasync.wire.framing import FrameDecoder, encode, inflate
    from deltasync.wire.messages import parse

    (frame,) = FrameDecoder().feed(encode(action, body, **header))
    return parse(inflate(frame))


def hello_frame(peer_id: str) -> bytes:
    from deltasync.wire.messages import Hello

    return b"".join(Hello.ours(peer_id).parts())


async def raw_channel(client, address: str):
    """Frames to a live server with no conversation machine on our side: a hostile client's tool."""
    from deltasync.run.channel import Channel
    from deltasync.transports.tls import connect

    return Channel(await connect(client, address))


async def attack(client, address: str, frames: list[bytes], say_hello: bool = True, read_for: float = 10.0) -> list:
    """A trusted client that sends `frames` after a hello; what came back (frames, or the exception that ended it)."""
    from deltasync.run.channel import exchange

    hello = [hello_frame(client.peer_id)] if say_hello else []
    return await exchange(await raw_channel(client, address), [*hello, *frames], read_for)


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A directory beside the folders that no attack may change."""
    c = tmp_path / "canary"
    c.mkdir()
    (c / "keep").write_text("canary")
    return c


@pytest.fixture(autouse=True)
def _inmemory_means_no_network(request, monkeypatch):
    """An `inmemory` test runs with every network socket, every subprocess and
    every thread pool refused: the whole conversation needs none of them."""
    if request.node.get_closest_marker("inmemory") is None:
        return
    import concurrent.futures
    import socket

    def refuse(what):
        def no(*_a, **_k):
            raise AssertionError(f"{what} in an in-memory test")
        return no

    for name in ("connect", "connect_ex", "bind"):
        real = getattr(socket.socket, name)

        def guarded(self, *args, _real=real, _name=name):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                raise AssertionError(f"socket {_name} in an in-memory test")
            return _real(self, *args)

        monkeypatch.setattr(socket.socket, name, guarded)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("a subprocess"))
    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit", refuse("a thread pool"))


def folder_pair(tmp: Path):
    """Two folders that trust each other, made in this process (no CLI, no subprocess)."""
    from deltasync.config import Folder

    a, ida, _ = Folder.init(tmp / "A")
    b, idb, _ = Folder.init(tmp / "B")
    a.trust(idb, name="b")
    b.trust(ida, name="a")
    return Folder.open(tmp / "A"), Folder.open(tmp / "B")


def tree_digest(root: Path) -> dict[str, str]:
    """Every file's and symlink's content under `root` (outside the state folder), in this process."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.split("/")[0] == ".deltasync":
            continue
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.md5(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[rel] = "dir"
    return out
