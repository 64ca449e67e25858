"""The benchmark must not rot: a tiny run of bench/bench.py (no timing assertion)."""
import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, netns_available


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync not installed (apt-get install rsync)")
def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    args = [sys.executable, str(ROOT / "bench" / "bench.py"), "--scale", "0.01", "--runs", "1",
            "--cases", "full,regions,nochange,files10k_one", "--work", str(tmp_path / "work"), "--out", str(out),
            "--prefix", "dss"]
    if not netns_available():
        args.append("--loopback")
    p = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["case"] for r in rows] == ["full", "regions", "nochange", "files10k_one"]
    for r in rows:
        for tool in ("rsync", "deltasync"):
            assert r[tool]["seconds"] > 0 and r[tool]["rss_sender_kib"] > 0
    # a change of 10% crosses as a delta, for both tools: far less than the full push
    assert rows[1]["deltasync"]["bytes"] < rows[0]["deltasync"]["bytes"] / 2
    assert "ratio" in p.stdout
    # one file of a returning user's tree changed: about that file crosses, not the tree's index
    assert rows[3]["deltasync"]["bytes"] < 32 * 1024, rows[3]


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync not installed (apt-get install rsync)")
def test_watch_latency_smoke(tmp_path):
    """bench/watch_latency.py, tiny and on loopback: one change under two real watchers reaches the peer."""
    out = tmp_path / "watch.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "watch_latency.py"), "--files", "200", "--runs", "1",
                        "--loopback", "--work", str(tmp_path / "work"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(out.read_text())
    assert result["files"] == 200 and len(result["runs"]) == 1 and result["median_latency"] > 0


def test_deltas_bench_smoke():
    """bench/deltas.py, tiny: both ways patch back (the script checks), and ours is never bigger on the wire."""
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "deltas.py"), "--size-mb", "24", "--runs", "1"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = [line.split() for line in p.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["regions", "scattered", "shift", "append"]
    for r in rows:
        assert float(r[4]) <= float(r[5]) * 1.01 + 0.01, r  # our delta bytes vs librsync's
