"""`deltasync watch`: the seed test plan with two real watch processes, and a
chain of three peers converging after concurrent edits, deletes and a rename."""
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import NETPAIR, Watch, digest, ds, fixture, free_port, make_pair, md5, netns_available, wait_for


def same_file(x, y) -> bool:
    """The new version is in place: size and mtime are synced, and a file is
    renamed into place whole, so these agree only once it has arrived (md5 is
    checked after timing, so its cost is not counted as sync time)."""
    try:
        sx, sy = x.stat(), y.stat()
    except FileNotFoundError:
        return False
    return (sx.st_size, sx.st_mtime_ns) == (sy.st_size, sy.st_mtime_ns)


def same_tree(x, y) -> bool:
    def stats(d):
        return sorted((str(p.relative_to(d)), p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*")
                      if p.is_file() and ".deltasync" not in p.parts)
    try:
        return stats(x) == stats(y)
    except FileNotFoundError:
        return False


@pytest.fixture
def hosts():
    """Addresses (and namespaces) for two peers: the netpair.sh namespaces as root, else loopback."""
    if netns_available():
        prefix = f"dsw{os.getpid() % 10000}"
        subprocess.run(["bash", str(NETPAIR), "down", prefix], capture_output=True)
        rate = [os.environ["DELTASYNC_NETPAIR_RATE"]] if os.environ.get("DELTASYNC_NETPAIR_RATE") else []
        up = subprocess.run(["bash", str(NETPAIR), "up", prefix, *rate], capture_output=True, text=True)
        if up.returncode == 0:
            yield {"a": ("10.77.0.1:8730", f"{prefix}_a"), "b": ("10.77.0.2:8730", f"{prefix}_b"), "netns": True}
            subprocess.run(["bash", str(NETPAIR), "down", prefix], capture_output=True)
            return
    yield {"a": (f"127.0.0.1:{free_port()}", None), "b": (f"127.0.0.1:{free_port()}", None), "netns": False}


def test_seed_test_plan_with_two_watchers(tmp_path, hosts):
    """The seed's acceptance test. Full size, for the record:
    DELTASYNC_SEED_SCALE=1 DELTASYNC_NETPAIR_RATE=100mbit DELTASYNC_SEED_OUT=times.json pytest -k seed_test_plan"""
    scale = os.environ.get("DELTASYNC_SEED_SCALE", "0.1")
    timeout = 120 * max(1.0, float(scale) * 10)
    a, b = make_pair(tmp_path)
    (addr_a, ns_a), (addr_b, ns_b) = hosts["a"], hosts["b"]
    ds("trust", a, ds("id", b).stdout.strip(), "--name", "b", "--address", addr_b)
    ds("trust", b, ds("id", a).stdout.strip(), "--name", "a", "--address", addr_a)
    stage = tmp_path / "stage"
    fixture("seed", str(stage), "--scale", scale)
    times = {"netns": hosts["netns"], "scale": float(scale), "rate": os.environ.get("DELTASYNC_NETPAIR_RATE")}
    shutil.move(stage / "File_1", a / "File_1")
    wa, wb = Watch(a, addr_a, ns_a), Watch(b, addr_b, ns_b)
    try:
        times["file1_on_b"] = wait_for(lambda: same_file(a / "File_1", b / "File_1"), timeout, "File_1 on B")
        assert md5(a / "File_1") == md5(b / "File_1")

        t0 = time.monotonic()
        shutil.move(stage / "folder", b / "folder")
        shutil.move(stage / "File_2", b / "File_2")
        time.sleep(0.5)
        wa.kill()  # A dies 0.5 s after they appear on B
        time.sleep(0.5)
        wa.start()
        wait_for(lambda: same_tree(a, b), timeout, "File_2 and the folder on A after A's restart")
        times["file2_and_folder_on_a_after_restart"] = time.monotonic() - t0
        assert digest(a) == digest(b)
        assert (a / "folder" / "small_49.bin").exists()

        fixture("mutate", str(a / "File_2"), "regions")
        times["ten_percent_update_on_b"] = wait_for(lambda: same_file(a / "File_2", b / "File_2"), timeout,
                                                    "10% update on B")
        assert md5(a / "File_2") == md5(b / "File_2")
        wait_for(lambda: same_tree(a, b), timeout, "md5 of every file equal")
    finally:
        wa.stop()
        wb.stop()
    times["md5_equal"] = digest(a) == digest(b)
    (tmp_path / "seed_plan_times.json").write_text(json.dumps(times, indent=1))
    if os.environ.get("DELTASYNC_SEED_OUT"):
        with open(os.environ["DELTASYNC_SEED_OUT"], "w") as out:
            json.dump(times, out, indent=1)
    print("seed plan times:", json.dumps(times))
    assert times["md5_equal"]


def test_chain_of_three_converges_with_conflict_copies(tmp_path):
    root = tmp_path
    peers = {}
    for name in "ABC":
        peers[name] = root / name
        ds("init", peers[name])
    ids = {n: ds("id", p).stdout.strip() for n, p in peers.items()}
    addr = {n: f"127.0.0.1:{free_port()}" for n in "ABC"}
    for x, y in (("A", "B"), ("B", "A"), ("B", "C"), ("C", "B")):  # A and C never connect
        ds("trust", peers[x], ids[y], "--name", y, "--address", addr[y])
    w = {n: Watch(peers[n], addr[n]) for n in "ABC"}
    a, b, c = peers["A"], peers["B"], peers["C"]
    try:
        (a / "docs").mkdir()
        (a / "docs" / "note.txt").write_text("v1")
        (a / "big.bin").write_bytes(os.urandom(2_000_000))
        wait_for(lambda: (c / "docs" / "note.txt").exists() and md5(c / "big.bin") == md5(a / "big.bin"),
                 what="A's files relayed to C")
        (c / "docs" / "note.txt").unlink()  # a delete on C reaches A
        wait_for(lambda: not (a / "docs" / "note.txt").exists(), what="C's delete on A")
        os.rename(a / "big.bin", a / "docs" / "big-renamed.bin")  # a rename on A reaches C
        wait_for(lambda: (c / "docs" / "big-renamed.bin").exists() and not (c / "big.bin").exists(),
                 what="A's rename on C")
        (a / "shared.txt").write_text("base")
        wait_for(lambda: (c / "shared.txt").exists(), what="shared.txt on C")
        w["B"].kill()  # cut the chain, then edit on both ends
        (a / "shared.txt").write_text("A's edit")
        time.sleep(0.05)
        (c / "shared.txt").write_text("C's edit, newer")
        w["B"].start()

        def converged():
            d = [digest(p) for p in (a, b, c)]
            return d[0] == d[1] == d[2] and any("sync-conflict" in n for n in os.listdir(a))
        wait_for(converged, what="three peers converged with a conflict copy")
    finally:
        for x in w.values():
            x.stop()
    copies = [n for n in os.listdir(a) if "sync-conflict" in n]
    assert len(copies) == 1
    contents = {(a / "shared.txt").read_text(), (a / copies[0]).read_text()}
    assert contents == {"A's edit", "C's edit, newer"}  # nothing lost
    assert (a / "shared.txt").read_text() == "C's edit, newer"  # the newer edit wins
    assert not (a / "docs" / "note.txt").exists() and (a / "docs" / "big-renamed.bin").exists()


def test_watch_passes_on_mtime_only_changes_keeps_excludes_and_logs_sessions(tmp_path):
    a, b = make_pair(tmp_path)
    addr_a, addr_b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    ds("trust", a, ds("id", b).stdout.strip(), "--name", "b", "--address", addr_b)
    ds("trust", b, ds("id", a).stdout.strip(), "--name", "a", "--address", addr_a)
    (a / "f.txt").write_text("same content")
    (a / "a.tmp").write_text("A's scratch, excluded by A")
    (b / "b.tmp").write_text("B's scratch: A excludes *.tmp, so B leaves A's alone and keeps its own")
    wa, wb = Watch(a, addr_a, None, "--exclude", "*.tmp"), Watch(b, addr_b)
    try:
        wait_for(lambda: same_file(a / "f.txt", b / "f.txt"), what="f.txt on B")
        os.utime(a / "f.txt", ns=(1_577_836_800 * 10**9,) * 2)  # touch -d 2020-01-01: content unchanged
        wait_for(lambda: (b / "f.txt").stat().st_mtime_ns == 1_577_836_800 * 10**9, what="the mtime on B")
        (b / "g.txt").write_text("a change after the excludes were exchanged")
        wait_for(lambda: (a / "g.txt").exists(), what="g.txt on A")
    finally:
        wa.stop()
        wb.stop()
    assert not (b / "a.tmp").exists() and not (a / "b.tmp").exists(), "excluded both ways"
    logs = "".join(p.read_text() for p in tmp_path.glob("watch-*.log"))
    assert "session with " in logs and "\"event\": \"synced\"" in logs, logs[-2000:]


INOTIFY_INSTANCES = "/proc/sys/fs/inotify/max_user_instances"


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(INOTIFY_INSTANCES),
                    reason="needs root to lower Linux's inotify limit (CI has it)")
def test_a_watcher_that_cannot_start_says_so_and_its_server_walks_everything(tmp_path):
    """Past the inotify limits (a desktop with many watching programs) the file watcher
    cannot start: `watch` says so in one line and its server's scans walk the whole
    folder, so a peer still gets every change -- none looked only at what a dead
    watcher reported (nothing)."""
    a, b = make_pair(tmp_path)
    (a / "f.txt").write_text("one")
    addr = f"127.0.0.1:{free_port()}"
    ds("trust", b, ds("id", a).stdout.strip(), "--name", "a", "--address", addr)
    limit = open(INOTIFY_INSTANCES).read()
    w = None
    try:
        with open(INOTIFY_INSTANCES, "w") as f:
            f.write("0")
        w = Watch(a, addr)
        wait_for(lambda: '"watch_failed"' in (tmp_path / "watch-A.log").read_text(), 30, "the watch_failed event", [w])
        with open(INOTIFY_INSTANCES, "w") as f:  # back at once: the next try is only at the next rescan
            f.write(limit)
        line = next(json.loads(x) for x in (tmp_path / "watch-A.log").read_text().splitlines() if "watch_failed" in x)
        assert "cannot watch the folder for changes" in line["error"] and "max_user_watches" in line["error"]
        ds("pull", b, "a")
        assert (b / "f.txt").read_text() == "one"
        (a / "f.txt").write_text("two, unseen by any watcher")
        ds("pull", b, "a")
        assert (b / "f.txt").read_text() == "two, unseen by any watcher"
    finally:
        with open(INOTIFY_INSTANCES, "w") as f:
            f.write(limit)
        if w is not None:
            w.stop()
