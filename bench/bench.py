#!/usr/bin/env python3
"""deltasync vs rsync, side by side in the same run, reported as ratios.

    sudo python bench/bench.py [--scale 1.0] [--rate 100mbit] [--runs 3] [--cases full,regions,...]

With root and iproute2 it builds two hosts with `bench/netpair.sh` (namespaces
PREFIX_a 10.77.0.1 and PREFIX_b 10.77.0.2, optionally rate-limited) and counts
bytes on the veth link; otherwise it falls back to loopback and reports the
tools' own byte counts. The receiver runs `rsync --daemon` and `deltasync
serve` on twin folders; the sender pushes to each, alternating which goes
first. Each figure is the median of --runs runs; the table gives the ratio
deltasync / rsync for time and bytes, and both sides' peak RSS.

Needs `rsync` (apt-get install rsync). Writes the table as JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixture.py"
NETPAIR = HERE / "netpair.sh"
DS = [sys.executable, "-m", "deltasync"]
MUTATIONS = ("regions", "scattered", "shift", "append")


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


class Hosts:
    """Where the sender and receiver run, and how bytes on the link are counted."""

    def __init__(self, prefix: str, rate: str | None, loopback: bool) -> None:
        self.prefix = prefix
        self.netns = not loopback and os.geteuid() == 0 and shutil.which("ip") is not None
        if self.netns:
            subprocess.run(["bash", str(NETPAIR), "down", prefix], capture_output=True)
            sh(["bash", str(NETPAIR), "up", prefix, *([rate] if rate else [])])
            self.receiver_ip = "10.77.0.2"
        else:
            self.receiver_ip = "127.0.0.1"

    def on(self, side: str, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", f"{self.prefix}_{side}", *cmd] if self.netns else cmd

    def link_bytes(self) -> int | None:
        if not self.netns:
            return None
        a, b = sh(["bash", str(NETPAIR), "bytes", self.prefix]).stdout.split()
        return int(a) + int(b)

    def down(self) -> None:
        if self.netns:
            subprocess.run(["bash", str(NETPAIR), "down", self.prefix], capture_output=True)


def max_rss_kib(time_v_stderr: str) -> int:
    for line in time_v_stderr.splitlines():
        if "Maximum resident set size" in line:
            return int(line.split(":")[1])
    return 0


class Receiver:
    """A receiving daemon run under /usr/bin/time -v, so its peak RSS is known."""

    def __init__(self, hosts: Hosts, cmd: list[str], ready: str | None, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(hosts.on("b", ["/usr/bin/time", "-v", *cmd]), stdout=subprocess.PIPE,
                                     stderr=open(log, "w"), text=True)
        if ready:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if ready not in line:
                raise SystemExit(f"receiver did not start: {line!r} {log.read_text()[-500:]}")
        else:
            time.sleep(0.5)

    def stop(self) -> int:
        # signal the daemon itself (time's child), then let time report
        for child in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
            os.kill(int(child), signal.SIGTERM)
        self.proc.wait(30)
        return max_rss_kib(self.log.read_text())


def timed(hosts: Hosts, cmd: list[str]) -> tuple[float, int, str]:
    before = time.monotonic()
    p = subprocess.run(hosts.on("a", ["/usr/bin/time", "-v", *cmd]), text=True, capture_output=True)
    secs = time.monotonic() - before
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stdout}\n{p.stderr[-2000:]}")
    return secs, max_rss_kib(p.stderr), p.stdout


def run_rsync(hosts: Hosts, work: Path, src: Path) -> dict:
    conf = work / "rsyncd.conf"
    conf.write_text(f"use chroot = no\nuid = root\ngid = root\n[dst]\npath = {work / 'rsync_dst'}\n"
                    "read only = false\n")
    rx = Receiver(hosts, ["rsync", "--daemon", "--no-detach", f"--config={conf}", "--port=8873"], None,
                  work / "rsyncd.log")
    try:
        link0 = hosts.link_bytes()
        secs, rss, out = timed(hosts, ["rsync", "-a", "--delete", "--exclude=.deltasync", "--stats",
                                       f"{src}/", f"rsync://{hosts.receiver_ip}:8873/dst/"])
        link1 = hosts.link_bytes()
    finally:
        rx_rss = rx.stop()
    own = sum(int(line.split(":")[1].split()[0].replace(",", "")) for line in out.splitlines()
              if line.startswith(("Total bytes sent", "Total bytes received")))
    return {"seconds": secs, "bytes": (link1 - link0) if link0 is not None else own,
            "rss_sender_kib": rss, "rss_receiver_kib": rx_rss}


def run_deltasync(hosts: Hosts, work: Path, src: Path) -> dict:
    rx = Receiver(hosts, [*DS, "serve", str(work / "ds_dst"), "--listen", f"{hosts.receiver_ip}:8730", "-q"],
                  "listening on", work / "serve.log")
    try:
        link0 = hosts.link_bytes()
        secs, rss, out = timed(hosts, [*DS, "push", str(src), f"{hosts.receiver_ip}:8730", "--delete",
                                       "--json", "-q"])
        link1 = hosts.link_bytes()
    finally:
        rx_rss = rx.stop()
    r = json.loads(out)
    own = r["bytes_sent"] + r["bytes_received"]
    return {"seconds": secs, "bytes": (link1 - link0) if link0 is not None else own,
            "rss_sender_kib": rss, "rss_receiver_kib": rx_rss}


def discard(path: Path, work: Path) -> None:
    """Move a tree out of the way, to be removed when the whole run is over: ext4 scans the inodes
    freed in the last minutes before it hands out a new one, so a tree removed just before a case
    would slow every file either tool creates in it (by more than the tools' own cost, 100k files)."""
    trash = work / "trash"
    trash.mkdir(exist_ok=True)
    path.rename(trash / f"{time.monotonic_ns()}-{path.name}")


def empty_trash(work: Path) -> None:
    for trash in work.glob("*/trash"):
        shutil.rmtree(trash, ignore_errors=True)


def mirror(pristine: Path, d: Path) -> None:
    """Make `d` hold exactly the pristine tree (its `.deltasync` kept), rewriting only what differs:
    a returning user's case removes and creates no more than it changed."""
    d.mkdir(exist_ok=True)
    sh(["rsync", "-a", "--delete", "--exclude=/.deltasync", f"{pristine}/", f"{d}/"])


def reset_targets(work: Path, pristine: Path, full: bool) -> None:
    """Both receivers start a case holding the pristine tree (or nothing, for `full`)."""
    for name in ("rsync_dst", "ds_dst"):
        d = work / name
        if not full:
            mirror(pristine, d)
            continue
        for child in d.iterdir() if d.exists() else []:
            if child.name != ".deltasync":
                discard(child, work)
        meta = d / ".deltasync"  # a receiver that has never seen anything: no manifest, no partials
        for f in [*meta.glob("manifest.db*"), *meta.glob("partial/*"), *meta.glob("tmp/*")]:
            f.unlink()


FILES = {"files10k": 10_000, "files100k": 100_000, "files1m": 1_000_000}  # trees of 1 KiB files, 100 a directory


def prepare(work: Path, scale: float, kind: str, full: bool) -> tuple[Path, Path]:
    """The pristine tree of a kind of case (seed plan, a tree of small files, one 4 GiB file) and the
    source: a fresh copy (`full`: a first-time user, no manifest), else the last one made pristine again."""
    pristine = work / "pristine"
    if not pristine.exists():
        if kind == "huge":
            pristine.mkdir(parents=True)
            sh([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import fixture; "
                "fixture.write_random(sys.argv[2], 4 << 30, seed=4)", str(HERE), str(pristine / "huge.bin")])
        elif kind in FILES:
            n = max(100, round(FILES[kind] * scale))  # --scale shrinks these trees too
            for i in range(n):
                p = pristine / f"d{i % (n // 100):04d}" / f"f{i:07d}.bin"
                if i < n // 100:
                    p.parent.mkdir(parents=True)
                p.write_bytes(os.urandom(1024))
        else:
            sh([sys.executable, str(FIXTURE), "seed", str(pristine), "--scale", str(scale)])
    src = work / "src"
    if full or not src.exists():
        if src.exists():
            discard(src, work)
        sh(["cp", "-a", str(pristine), str(src)])
    else:
        mirror(pristine, src)
    for name in ("src", "ds_dst"):
        if not (work / name / ".deltasync").exists():
            sh([*DS, "init", str(work / name)])
    (work / "rsync_dst").mkdir(exist_ok=True)
    sh([*DS, "trust", str(src), sh([*DS, "id", str(work / "ds_dst")]).stdout.strip()])
    sh([*DS, "trust", str(work / "ds_dst"), sh([*DS, "id", str(src)]).stdout.strip()])
    return pristine, src


def rewrite_some(src: Path, seed: int, count: int | None = None) -> None:
    """Rewrite 1% of a tree's small files (or `count` of them) with new bytes."""
    import random

    rng = random.Random(seed)
    files = sorted(src.glob("d*/f*.bin"))
    for p in rng.sample(files, count or len(files) // 100):
        p.write_bytes(rng.randbytes(1024))


def case(name: str, hosts: Hosts, work: Path, scale: float, runs: int) -> dict:
    kind = name.split("_")[0] if name.split("_")[0] in FILES else "huge" if name == "huge" else "seed"
    wdir = work / kind
    wdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {"rsync": [], "deltasync": []}
    for run in range(runs):
        full = name in ("full", "huge") or name.endswith("_initial")
        pristine, src = prepare(wdir, scale, kind, full)
        reset_targets(wdir, pristine, full)
        if not full:  # a returning user: both sides' manifests have seen the pristine tree, and the
            run_deltasync(hosts, wdir, src)  # client's copy of the server's index is up to date (what the
            run_deltasync(hosts, wdir, src)  # server recorded as the first push landed comes back once)
        if name in MUTATIONS:
            sh([sys.executable, str(FIXTURE), "mutate", str(src / "File_2"), name, "--seed", str(1000 + run)])
        elif name.endswith("_1pct"):
            rewrite_some(src, 1000 + run)
        elif name.endswith("_one"):
            rewrite_some(src, 1000 + run, 1)
        order = ["rsync", "deltasync"] if run % 2 == 0 else ["deltasync", "rsync"]
        for tool in order:
            fn = run_rsync if tool == "rsync" else run_deltasync
            target = wdir / ("rsync_dst" if tool == "rsync" else "ds_dst")
            results[tool].append(fn(hosts, wdir, src))
            check = sh([sys.executable, str(FIXTURE), "digest", str(target)]).stdout
            if check != sh([sys.executable, str(FIXTURE), "digest", str(src)]).stdout:
                raise SystemExit(f"{tool} left {target} different from the source in case {name}")
    med = {t: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for t, rs in results.items()}
    ratio = lambda k: (med["deltasync"][k] / med["rsync"][k]) if med["rsync"][k] else None  # noqa: E731
    return {"case": name, "rsync": med["rsync"], "deltasync": med["deltasync"],
            "time_ratio": ratio("seconds"), "bytes_ratio": ratio("bytes")}


def table(rows: list[dict], rate: str | None, netns: bool) -> str:
    out = [f"link: {rate or 'unlimited'} ({'veth between namespaces, bytes on the link' if netns else 'loopback, tools own byte counts'})",
           f"{'case':<14}{'rsync s':>9}{'ds s':>9}{'ratio':>7}{'rsync MiB':>11}{'ds MiB':>9}{'ratio':>7}"
           f"{'RSS rsync snd/rcv MiB':>23}{'RSS ds snd/rcv MiB':>20}"]
    for r in rows:
        rs, ds = r["rsync"], r["deltasync"]
        fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        out.append(f"{r['case']:<14}{rs['seconds']:>9.2f}{ds['seconds']:>9.2f}{fmt(r['time_ratio']):>7}"
                   f"{rs['bytes'] / 2**20:>11.2f}{ds['bytes'] / 2**20:>9.2f}{fmt(r['bytes_ratio']):>7}"
                   f"{rs['rss_sender_kib'] / 1024:>12.0f}/{rs['rss_receiver_kib'] / 1024:<10.0f}"
                   f"{ds['rss_sender_kib'] / 1024:>9.0f}/{ds['rss_receiver_kib'] / 1024:<10.0f}")
    return "\n".join(out)


def compiled() -> None:
    """deltasync's modules byte-compiled, as an installed copy is: a source tree run with
    PYTHONDONTWRITEBYTECODE=1 would otherwise compile each changed module at every start."""
    import importlib.util

    spec = importlib.util.find_spec("deltasync")
    if spec is not None and spec.submodule_search_locations:
        subprocess.run([sys.executable, "-m", "compileall", "-q", spec.submodule_search_locations[0]],
                       capture_output=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--rate", default=None, help="e.g. 100mbit; default unlimited")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cases", default="full,regions,scattered,shift,append,nochange," + ",".join(
                    f"{n}_{c}" for n in ("files10k", "files100k") for c in ("initial", "nochange", "1pct", "one")),
                    help="add `huge` (one 4 GiB file, full push; needs ~17 GB of disk) for the RSS check, and "
                    "files1m_initial,files1m_nochange,files1m_1pct,files1m_one (a million 1 KiB files; ~12 GB)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/deltasync-bench"))
    ap.add_argument("--prefix", default="dsb")
    ap.add_argument("--loopback", action="store_true", help="do not use network namespaces")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench.json")
    a = ap.parse_args(argv)
    if not shutil.which("rsync"):
        raise SystemExit("rsync is not installed: apt-get install rsync")
    compiled()
    hosts = Hosts(a.prefix, a.rate, a.loopback)
    rows = []
    try:
        for name in a.cases.split(","):
            rows.append(case(name, hosts, a.work, a.scale, a.runs))
            print(table(rows[-1:], a.rate, hosts.netns).splitlines()[-1], flush=True)
    finally:
        hosts.down()
        empty_trash(a.work)
    print(table(rows, a.rate, hosts.netns))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"rate": a.rate, "netns": hosts.netns, "scale": a.scale, "runs": a.runs,
                                 "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
