#!/usr/bin/env python3
"""One change in a big tree under `deltasync watch`: how long until it is on the peer, and how many bytes
crossed the link -- beside a one-shot rsync of the same change (rsync has no watch).

    sudo python bench/watch_latency.py [--files 100000] [--runs 3] [--loopback]

Two watchers (A in namespace PREFIX_a, B in PREFIX_b, as bench.py's hosts) hold the same tree of 1 KiB files
and have synced once. Each run rewrites one file on A and times until B holds it (md5), and counts the link's
bytes from the change until both watchers are quiet again. The settle time (`settle_seconds`, 1 s by default,
plus the watcher's 0.4 s debounce) is part of the latency; `after_settle` is the latency less settle_seconds.
Then rsync pushes the same change to its daemon on B's twin folder, timed and counted the same way.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import DS, Hosts, compiled, prepare, run_rsync, sh  # noqa: E402


def md5(p: Path) -> str | None:
    try:
        return hashlib.md5(p.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def quiet(log: Path, since: int, idle: float = 1.5, most: float = 120) -> None:
    """Wait until the watcher's JSON log has not grown for `idle` seconds."""
    end = time.monotonic() + most
    size, still = log.stat().st_size, time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.1)
        now = log.stat().st_size
        if now != size:
            size, still = now, time.monotonic()
        elif time.monotonic() - still >= idle and now > since:
            return


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/deltasync-watch-bench"))
    ap.add_argument("--prefix", default="dsl")
    ap.add_argument("--loopback", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "watch_latency.json")
    a = ap.parse_args(argv)
    import bench

    compiled()
    kind = f"watch{a.files}"
    bench.FILES[kind] = a.files
    hosts = Hosts(a.prefix, None, a.loopback)
    work = a.work / kind
    work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[str]] = []
    try:
        pristine, src = prepare(work, 1.0, kind, False)
        dst = work / "ds_dst"
        for d in (dst, work / "rsync_dst"):
            for child in d.iterdir() if d.exists() else []:
                if child.name != ".deltasync":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            sh(["cp", "-a", f"{pristine}/.", str(d)])
        a_addr = "10.77.0.1:8731" if hosts.netns else "127.0.0.1:18731"
        b_addr = f"{hosts.receiver_ip}:8731" if hosts.netns else "127.0.0.1:18732"
        sh([*DS, "trust", str(src), sh([*DS, "id", str(dst)]).stdout.strip(), "--name", "b", "--address", b_addr])
        sh([*DS, "trust", str(dst), sh([*DS, "id", str(src)]).stdout.strip(), "--name", "a", "--address", a_addr])
        logs = {side: work / f"watch-{side}.log" for side in "ab"}
        for side, folder, addr in (("b", dst, b_addr), ("a", src, a_addr)):
            logs[side].write_text("")
            procs.append(subprocess.Popen(hosts.on(side, [*DS, "watch", str(folder), "--listen", addr, "--json"]),
                                          stdout=open(logs[side], "a"), stderr=subprocess.STDOUT, text=True))
        t = time.monotonic()
        while time.monotonic() - t < 1800 and not any('"event": "synced"' in logs[s].read_text() for s in "ab"):
            time.sleep(0.5)  # the first sessions compare everything, once (two that cross retry)
        for side in "ab":
            quiet(logs[side], 0, idle=5)
        # the sessions after the first bring back, once each way, what the peer recorded in it (at a
        # million files that takes minutes): a probe change each way, not timed, waits them out
        for side, there in ((src, dst), (dst, src)):
            probe = side / f"probe-{side.name}.txt"
            probe.write_text("probe")
            while md5(there / probe.name) != md5(probe):
                if time.monotonic() - t > 3600:
                    raise SystemExit(f"the probe change {probe.name} did not arrive within an hour of the start")
                time.sleep(0.5)
            for s in "ab":
                quiet(logs[s], 0, idle=5)
        first = time.monotonic() - t
        rng = random.Random(7)
        files = sorted(src.glob("d*/f*.bin"))
        runs = []
        for run in range(a.runs):
            target = rng.choice(files)
            rel = target.relative_to(src)
            link0 = hosts.link_bytes()
            size_a = logs["a"].stat().st_size
            target.write_bytes(rng.randbytes(1024))
            t0 = time.monotonic()
            want = md5(target)
            while md5(dst / rel) != want:
                if time.monotonic() - t0 > 120:
                    raise SystemExit(f"{rel} did not reach B within 120 s")
                time.sleep(0.02)
            latency = time.monotonic() - t0
            quiet(logs["a"], size_a)
            link1 = hosts.link_bytes()
            r = run_rsync(hosts, work, src)  # the same change, one-shot, into rsync's twin folder
            runs.append({"path": str(rel), "latency": latency, "bytes": (link1 - link0) if link0 is not None else None,
                         "rsync_seconds": r["seconds"], "rsync_bytes": r["bytes"]})
            print(json.dumps(runs[-1]), flush=True)
        settle = 1.0
        med = {k: statistics.median(r[k] for r in runs) for k in ("latency", "rsync_seconds")}
        out = {"files": a.files, "netns": hosts.netns, "first_sync_seconds": first, "runs": runs,
               "median_latency": med["latency"], "median_after_settle": med["latency"] - settle,
               "median_bytes": statistics.median(r["bytes"] for r in runs) if runs[0]["bytes"] is not None else None,
               "median_rsync_seconds": med["rsync_seconds"],
               "median_rsync_bytes": statistics.median(r["rsync_bytes"] for r in runs)}
        print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=2))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        hosts.down()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
