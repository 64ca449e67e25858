#!/usr/bin/env python3
"""deltasync watch vs Syncthing, side by side on the same veth link.

    sudo python bench/syncthing.py [--scale 1.0] [--rate 100mbit] [--runs 1]

Needs root (network namespaces) and `syncthing` (apt-get install syncthing).
Both tools run as a pair of continuously syncing peers, one per namespace.
Cases: the seed tree dropped into A's folder (until every file is on B), then
10% of File_2 rewritten on A (`regions`, until B has it). Reported: seconds
(until size and mtime agree on B; md5 checked after), bytes on the link, ratio
deltasync / Syncthing. Syncthing runs with discovery, relays, NAT, usage
reporting, crash reporting and upgrades off; the namespaces have no route
anywhere but each other.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

IP = {"a": "10.77.0.1", "b": "10.77.0.2"}


def tree_stats(d: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(d)), p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*")
                  if p.is_file() and ".deltasync" not in p.parts and ".stfolder" not in p.parts
                  and not p.name.startswith(".syncthing."))


def wait_same(a: Path, b: Path, timeout: float = 1800) -> float:
    start = time.monotonic()
    while True:
        try:
            if tree_stats(a) == tree_stats(b):
                return time.monotonic() - start
        except FileNotFoundError:
            pass
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out waiting for {b} to match {a}")
        time.sleep(0.1)


def md5_equal(a: Path, b: Path) -> bool:
    d = lambda x: bench.sh([sys.executable, str(bench.FIXTURE), "digest", str(x)]).stdout  # noqa: E731
    strip = lambda t: "\n".join(ln for ln in t.splitlines() if ".stfolder" not in ln)  # noqa: E731
    return strip(d(a)) == strip(d(b))


class Syncthing:
    def __init__(self, hosts: bench.Hosts, work: Path) -> None:
        self.hosts, self.work = hosts, work
        self.homes = {s: work / f"st-home-{s}" for s in "ab"}
        self.dirs = {s: work / f"st-{s}" for s in "ab"}
        ids = {}
        for s in "ab":
            shutil.rmtree(self.homes[s], ignore_errors=True)
            shutil.rmtree(self.dirs[s], ignore_errors=True)
            self.dirs[s].mkdir(parents=True)
            p = bench.sh(["syncthing", "generate", f"--home={self.homes[s]}", "--no-default-folder"])
            ids[s] = next(ln.split()[-1] for ln in (p.stdout + p.stderr).splitlines() if "Device ID" in ln)
        for s in "ab":
            self._configure(s, ids)
        self.procs: list[subprocess.Popen] = []

    def _configure(self, side: str, ids: dict[str, str]) -> None:
        path = self.homes[side] / "config.xml"
        tree = ET.parse(path)
        root = tree.getroot()
        for dev in root.findall("device"):
            root.remove(dev)
        for s in "ab":
            dev = ET.SubElement(root, "device", id=ids[s], name=s, compression="never", introducer="false")
            ET.SubElement(dev, "address").text = f"tcp://{IP[s]}:22000"
        opts = root.find("options")
        assert opts is not None
        settings = {"listenAddress": f"tcp://{IP[side]}:22000", "globalAnnounceEnabled": "false",
                    "localAnnounceEnabled": "false", "relaysEnabled": "false", "natEnabled": "false",
                    "urAccepted": "-1", "crashReportingEnabled": "false", "autoUpgradeIntervalH": "0",
                    "startBrowser": "false", "stunKeepaliveStartS": "0", "stunKeepaliveMinS": "0",
                    "setLowPriority": "false"}
        for k, v in settings.items():
            el = opts.find(k)
            if el is None:
                el = ET.SubElement(opts, k)
            el.text = v
        for gs in opts.findall("globalAnnounceServer"):
            opts.remove(gs)
        folder = ET.SubElement(root, "folder", id="bench", label="bench", path=str(self.dirs[side]),
                               type="sendreceive", rescanIntervalS="3600", fsWatcherEnabled="true",
                               fsWatcherDelayS="1", ignorePerms="false")
        for s in "ab":
            ET.SubElement(folder, "device", id=ids[s])
        tree.write(path)

    def start(self) -> None:
        for s in "ab":
            log = open(self.work / f"st-{s}.log", "w")
            self.procs.append(subprocess.Popen(self.hosts.on(s, ["syncthing", "serve", f"--home={self.homes[s]}",
                                                                 "--no-browser", "--no-restart", "--no-upgrade"]),
                                               stdout=log, stderr=log))
        time.sleep(8)  # start-up, first scan of empty folders, connection

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            p.wait(30)


class Deltasync:
    def __init__(self, hosts: bench.Hosts, work: Path) -> None:
        self.hosts, self.work = hosts, work
        self.dirs = {s: work / f"ds-{s}" for s in "ab"}
        ids = {}
        for s in "ab":
            shutil.rmtree(self.dirs[s], ignore_errors=True)
            ids[s] = bench.sh([*bench.DS, "init", str(self.dirs[s])]).stdout.strip()
        for s, o in (("a", "b"), ("b", "a")):
            bench.sh([*bench.DS, "trust", str(self.dirs[s]), ids[o], "--name", o, "--address", f"{IP[o]}:8730"])
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        for s in "ab":
            log = open(self.work / f"ds-{s}.log", "w")
            self.procs.append(subprocess.Popen(self.hosts.on(s, [*bench.DS, "watch", str(self.dirs[s]), "--listen",
                                                                 f"{IP[s]}:8730", "-q"]), stdout=log, stderr=log))
        time.sleep(3)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            p.wait(30)


def measure(tool, pristine: Path, stage: Path) -> dict:
    a, b = tool.dirs["a"], tool.dirs["b"]
    shutil.rmtree(stage, ignore_errors=True)
    bench.sh(["cp", "-a", str(pristine), str(stage)])
    tool.start()
    try:
        link0 = tool.hosts.link_bytes()
        for item in sorted(stage.iterdir()):  # dropped in by rename: instant, like a finished download
            item.rename(a / item.name)
        full_s = wait_same(a, b)
        link1 = tool.hosts.link_bytes()
        time.sleep(3)  # let both sides settle before the next change
        link2 = tool.hosts.link_bytes()
        bench.sh([sys.executable, str(bench.FIXTURE), "mutate", str(a / "File_2"), "regions", "--seed", "77"])
        regions_s = wait_same(a, b)
        link3 = tool.hosts.link_bytes()
        ok = md5_equal(a, b)
    finally:
        tool.stop()
    return {"full_seconds": full_s, "full_bytes": link1 - link0, "regions_seconds": regions_s,
            "regions_bytes": link3 - link2, "md5_equal": ok}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--rate", default="100mbit")
    ap.add_argument("--work", type=Path, default=Path("/tmp/deltasync-vs-syncthing"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "syncthing.json")
    a = ap.parse_args(argv)
    if not shutil.which("syncthing"):
        raise SystemExit("syncthing is not installed: apt-get install syncthing")
    hosts = bench.Hosts("dsst", a.rate if a.rate != "none" else None, loopback=False)
    if not hosts.netns:
        raise SystemExit("needs root and iproute2: both tools run in their own network namespaces")
    a.work.mkdir(parents=True, exist_ok=True)
    pristine = a.work / "pristine"
    if not pristine.exists():
        bench.sh([sys.executable, str(bench.FIXTURE), "seed", str(pristine), "--scale", str(a.scale)])
    out = {}
    try:
        out["syncthing"] = measure(Syncthing(hosts, a.work), pristine, a.work / "stage")
        print("syncthing", json.dumps(out["syncthing"]), flush=True)
        out["deltasync"] = measure(Deltasync(hosts, a.work), pristine, a.work / "stage")
        print("deltasync", json.dumps(out["deltasync"]), flush=True)
    finally:
        hosts.down()
    for k in ("full_seconds", "full_bytes", "regions_seconds", "regions_bytes"):
        out[f"ratio_{k}"] = out["deltasync"][k] / out["syncthing"][k]
    print(json.dumps(out, indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(dict(out, rate=a.rate, scale=a.scale), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
