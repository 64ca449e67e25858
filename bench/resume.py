#!/usr/bin/env python3
"""Kill the receiver mid-push, restart it, push again: what did the resume cost?

    sudo python bench/resume.py [--scale 1.0] [--rate 100mbit] [--kill-after 20]

For deltasync and for `rsync --partial` alike: a clean push of the seed tree
to an empty receiver (the reference), then the same push with the receiver
SIGKILLed after --kill-after seconds and restarted, followed by a second push.
Reports bytes on the link for kill + resume against the clean push, and the
resumed push's time against the line-rate time of the bytes still missing.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def rate_bytes_per_s(rate: str) -> float:
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for u, m in units.items():
        if rate.endswith(u):
            return float(rate[: -len(u)]) * m / 8
    raise SystemExit(f"unknown rate {rate}")


def killed_push(hosts: bench.Hosts, work: Path, src: Path, tool: str, kill_after: float) -> dict:
    def receiver() -> bench.Receiver:
        if tool == "rsync":
            conf = work / "rsyncd.conf"
            return bench.Receiver(hosts, ["rsync", "--daemon", "--no-detach", f"--config={conf}", "--port=8873"],
                                  None, work / "rx.log")
        return bench.Receiver(hosts, [*bench.DS, "serve", str(work / "ds_dst"), "--listen",
                                      f"{hosts.receiver_ip}:8730", "-q"], "listening on", work / "rx.log")

    def push_cmd() -> list[str]:
        if tool == "rsync":
            return ["rsync", "-a", "--partial", "--exclude=.deltasync", f"{src}/",
                    f"rsync://{hosts.receiver_ip}:8873/dst/"]
        return [*bench.DS, "push", str(src), f"{hosts.receiver_ip}:8730", "--json", "-q"]

    rx = receiver()
    link0 = hosts.link_bytes()
    push = subprocess.Popen(hosts.on("a", push_cmd()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after)
    # every process on the receiving host: the daemon and the children it forked per connection
    for pid in subprocess.run(["ip", "netns", "pids", f"{hosts.prefix}_b"], capture_output=True,
                              text=True).stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    rx.proc.wait()
    push.wait()
    link1 = hosts.link_bytes()
    rx = receiver()
    t = time.monotonic()
    subprocess.run(hosts.on("a", push_cmd()), check=True, capture_output=True)
    resumed_s = time.monotonic() - t
    link2 = hosts.link_bytes()
    rx.stop()
    assert link0 is not None and link1 is not None and link2 is not None
    return {"killed_bytes": link1 - link0, "resumed_bytes": link2 - link1, "resumed_seconds": resumed_s}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--rate", default="100mbit")
    ap.add_argument("--kill-after", type=float, default=20.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/deltasync-resume"))
    a = ap.parse_args(argv)
    hosts = bench.Hosts("dsr", a.rate, loopback=False)
    if not hosts.netns:
        raise SystemExit("needs root and iproute2 (network namespaces) to count bytes on the link")
    out = {}
    try:
        for tool in ("deltasync", "rsync"):
            pristine, src = bench.prepare(a.work, a.scale, "seed")
            (a.work / "rsyncd.conf").write_text(f"use chroot = no\nuid = root\ngid = root\n[dst]\npath = "
                                                f"{a.work / 'rsync_dst'}\nread only = false\n")
            bench.reset_targets(a.work, pristine, full=True)
            clean = (bench.run_rsync if tool == "rsync" else bench.run_deltasync)(hosts, a.work, src)
            bench.reset_targets(a.work, pristine, full=True)
            r = killed_push(hosts, a.work, src, tool, a.kill_after)
            target = a.work / ("rsync_dst" if tool == "rsync" else "ds_dst")
            same = bench.sh([sys.executable, str(bench.FIXTURE), "digest", str(target)]).stdout == \
                bench.sh([sys.executable, str(bench.FIXTURE), "digest", str(src)]).stdout
            missing = clean["bytes"] - r["killed_bytes"]
            line_rate_s = max(missing, 0) / rate_bytes_per_s(a.rate)
            out[tool] = dict(r, clean_bytes=clean["bytes"], clean_seconds=clean["seconds"], digest_equal=same,
                             total_over_clean=(r["killed_bytes"] + r["resumed_bytes"]) / clean["bytes"],
                             resumed_over_line_rate=r["resumed_seconds"] / line_rate_s if line_rate_s else None)
            print(tool, json.dumps(out[tool]), flush=True)
    finally:
        hosts.down()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
