"""Interrupted transfers: crash torture, exact resume, disk full, a source that changes."""
import json
import os
import random
import sqlite3
import subprocess
import time

import pytest

from conftest import DELTASYNC, Serve, digest, ds, fixture, no_leftovers, push_json, requires_root

SEGMENT = 4 * 1024 * 1024


def md5s(folder):
    return dict(line.split("  ", 1)[::-1] for line in digest(folder).splitlines())


def journaled(folder):
    """Segments the receiver has verified and journaled, read from its manifest."""
    db = sqlite3.connect(f"file:{folder / '.deltasync' / 'manifest.db'}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM partial_segments").fetchone()[0]
    finally:
        db.close()


def start_push(a, address, *extra):
    return subprocess.Popen([*DELTASYNC, "push", str(a), address, "--json", "-q", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("iterations", [int(os.environ.get("DELTASYNC_TORTURE", "20")),
                                        pytest.param(200, marks=pytest.mark.slow)])
def test_crash_torture(pair, iterations):
    """SIGKILL the receiver or the sender at a random moment; a file at its final
    path is always its old or its new version; after a restart everything arrives."""
    a, b = pair
    rng = random.Random(20261124)
    fixture("seed", str(a), "--scale", "0.05")
    server = Serve(b)
    kills = {"receiver": 0, "sender": 0}
    try:
        for it in range(iterations):
            old = md5s(b)
            if it:
                fixture("mutate", str(a / "File_2"), rng.choice(["regions", "scattered", "append"]),
                        "--seed", str(it))
                (a / "folder" / f"small_{it % 50:02d}.bin").write_bytes(os.urandom(1024))
            new = md5s(a)
            victim = rng.choice(["receiver", "sender"])
            push = start_push(a, server.address, "--bwlimit", "40M")
            time.sleep(rng.uniform(0.05, 0.5))
            if victim == "receiver":
                server.kill()
            else:
                push.kill()
            push.communicate()
            kills[victim] += 1
            now = md5s(b)
            for path, h in now.items():
                assert h in (old.get(path), new.get(path)), f"iteration {it}: {path} is torn"
            if victim == "receiver":
                server = Serve(b)
            r = push_json(a, server.address)
            assert r["files_failed"] == 0
            assert digest(a) == digest(b), f"iteration {it}"
            assert no_leftovers(b) == [], f"iteration {it}"
    finally:
        server.stop()
    assert kills["receiver"] and kills["sender"]


def test_resume_sends_only_the_remainder(served):
    """Kill the receiver when part of a big file is journaled: the resumed push
    sends at most one segment more than what was still missing."""
    a, b, s = served
    (a / "big").write_bytes(os.urandom(12 * SEGMENT))
    push = start_push(a, s.address, "--bwlimit", "24M")
    deadline = time.monotonic() + 30
    while journaled(b) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    s.kill()
    push.communicate()
    done = journaled(b)
    assert 0 < done < 12, done
    status = json.loads(ds("status", b, "--json").stdout)
    (p,) = status["partials"]
    assert p["path"] == "big" and p["segments_done"] == done and p["segments_total"] == 12
    s2 = Serve(b)
    try:
        r = push_json(a, s2.address)
    finally:
        s2.stop()
    assert r["files_failed"] == 0 and (b / "big").read_bytes() == (a / "big").read_bytes()
    assert r["literal_bytes"] <= (12 - done + 1) * SEGMENT
    assert no_leftovers(b) == []


def test_source_changing_while_sent_is_never_delivered_torn(served):
    a, b, s = served
    (a / "big").write_bytes(os.urandom(10 * SEGMENT))
    original = (a / "big").read_bytes()
    push = start_push(a, s.address, "--bwlimit", "20M")
    partials, end = b / ".deltasync" / "partial", time.monotonic() + 30
    while not any(partials.iterdir()) and push.poll() is None and time.monotonic() < end:
        time.sleep(0.02)  # until B has begun the file: the sender scanned it and is sending it (~2 s at 20M)
    with open(a / "big", "r+b") as f:  # rewrite a region the sender may have passed already
        f.seek(SEGMENT // 2)
        f.write(os.urandom(1000))
    out, err = push.communicate()
    assert push.returncode == 3, (out, err)
    assert "changed" in json.loads(out)["failures"][0]["error"]
    assert not (b / "big").exists()  # neither torn nor stale: nothing was put in place
    del original
    r = push_json(a, s.address)  # the next run delivers the file as it is now
    assert r["files_failed"] == 0 and (b / "big").read_bytes() == (a / "big").read_bytes()


@requires_root
def test_disk_full_keeps_the_old_version(pair, tmp_path):
    a, b = pair
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        small = mnt / "B"
        subprocess.run(["cp", "-a", str(b), str(small)], check=True)
        (a / "f").write_bytes(os.urandom(8 * 2**20))
        s = Serve(small)
        try:
            push_json(a, s.address)
            (a / "f").write_bytes(os.urandom(20 * 2**20))  # cannot fit beside the old version
            (a / "g").write_text("still delivered")
            p = ds("push", a, s.address, "--json", check=False)
            r = json.loads(p.stdout)
            assert p.returncode == 3 and r["failures"][0]["path"] == "f"
            assert "space" in r["failures"][0]["error"]
            assert (small / "g").read_text() == "still delivered"
            assert md5s(small)["f"] != md5s(a)["f"] and (small / "f").stat().st_size == 8 * 2**20
            os.unlink(a / "f")
            (a / "f").write_bytes(os.urandom(2 * 2**20))  # something that fits: the server still works
            assert push_json(a, s.address)["files_failed"] == 0
        finally:
            s.stop()
        assert (small / "f").read_bytes() == (a / "f").read_bytes()
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_pull_resumes_from_the_pullers_journal(served):
    """The same resume when we are the receiving side of a pull."""
    a, b, s = served
    (b / "big").write_bytes(os.urandom(40 * SEGMENT))
    pull = subprocess.Popen([*DELTASYNC, "pull", str(a), s.address, "--json", "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while journaled(a) < 8 and time.monotonic() < deadline and pull.poll() is None:
        time.sleep(0.005)
    pull.kill()
    pull.communicate()
    done = journaled(a)
    if not 0 < done < 40:
        pytest.skip(f"the pull was not caught mid-file ({done} of 40 segments journaled)")
    r = json.loads(ds("pull", a, s.address, "--json").stdout)
    assert r["files_failed"] == 0 and (a / "big").read_bytes() == (b / "big").read_bytes()
    assert r["bytes_received"] <= (40 - done + 1) * SEGMENT + 1_000_000
    assert no_leftovers(a) == []


def test_receiver_serves_signatures_from_its_cache(tmp_path, monkeypatch):
    from deltasync import engine, hashing
    from deltasync.store.receiver import Receiver
    from deltasync.config import Folder
    from deltasync.store.manifest import Manifest

    folder, _, _ = Folder.init(tmp_path / "B")
    (folder.root / "f").write_bytes(os.urandom(3 * SEGMENT))
    m = Manifest(folder.db)
    rx = Receiver(folder, m)
    calls = []
    real = engine.signature
    monkeypatch.setattr(engine, "signature", lambda *a, **k: calls.append(1) or real(*a, **k))
    b3 = hashing.of_bytes((folder.root / "f").read_bytes())
    first = rx.signature_for("f", b3)
    second = rx.signature_for("f", b3)
    assert first == second and first is not None and len(calls) == 1  # the basis was read once
    assert rx.signature_for("f", "0" * 64) is None  # another version: nothing to offer
    rx.close()
    m.close()
