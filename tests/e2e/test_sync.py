"""pull and sync between real processes: version vectors, tombstones, conflicts, renames."""
import json
import os
import time

from conftest import digest, ds


def sync(a, addr, *extra, check=True):
    p = ds("sync", a, addr, "--json", *extra, check=False)
    if check:
        assert p.returncode in (0, 3), p.stderr
    return json.loads(p.stdout), p.returncode


def test_two_way_sync_deletes_and_no_resurrection(served):
    a, b, s = served
    (a / "from_a.txt").write_text("A's")
    (b / "from_b.txt").write_text("B's")
    (b / "sub").mkdir()
    (b / "sub" / "deep.bin").write_bytes(os.urandom(300_000))
    r, rc = sync(a, s.address)
    assert rc == 0 and r["files_received"] == 2 and r["files_sent_whole"] == 1
    assert digest(a) == digest(b)

    (b / "from_a.txt").unlink()  # deleted on B while A is "offline"
    r, rc = sync(a, s.address)
    assert rc == 0 and not (a / "from_a.txt").exists() and r["files_deleted"] == 1
    r, rc = sync(a, s.address)  # and it does not come back from A
    assert not (b / "from_a.txt").exists() and not (a / "from_a.txt").exists()

    (a / "sub" / "deep.bin").write_bytes(os.urandom(300_000))
    r, rc = ds("pull", b, ds("id", a).stdout.strip(), check=False).returncode, None  # unnamed peer: refused
    assert r != 0
    r, rc = sync(a, s.address)
    assert rc == 0 and digest(a) == digest(b)


def test_concurrent_edits_keep_both_versions(served):
    a, b, s = served
    (a / "doc.txt").write_text("base")
    sync(a, s.address)
    (a / "doc.txt").write_text("edit on A")
    time.sleep(0.05)
    (b / "doc.txt").write_text("edit on B, newer")
    r, rc = sync(a, s.address)
    assert rc == 3 and len(r["conflicts"]) == 1
    copy = r["conflicts"][0]["copy"]
    assert copy.startswith("doc.sync-conflict-") and copy.endswith(".txt")
    assert (a / "doc.txt").read_text() == "edit on B, newer" == (b / "doc.txt").read_text()
    assert (a / copy).read_text() == "edit on A" == (b / copy).read_text()
    r, rc = sync(a, s.address)
    assert rc == 0 and r["conflicts"] == [] and digest(a) == digest(b)
    assert json.loads(ds("status", a, "--json").stdout)["conflicts"] == [copy]


def test_rename_is_applied_locally_not_resent(served):
    a, b, s = served
    (a / "big.bin").write_bytes(os.urandom(3_000_000))
    sync(a, s.address)
    (a / "moved").mkdir()
    os.rename(a / "big.bin", a / "moved" / "big.bin")
    r, rc = sync(a, s.address)
    assert rc == 0 and r["literal_bytes"] == 0
    assert not (b / "big.bin").exists() and (b / "moved" / "big.bin").read_bytes() == (a / "moved" / "big.bin").read_bytes()


def test_pull_dry_run_changes_nothing(served):
    a, b, s = served
    (b / "x").write_text("x")
    before_a, before_b = digest(a), digest(b)
    r = json.loads(ds("pull", a, s.address, "--dry-run", "--json").stdout)
    assert [(i["direction"], i["op"], i["path"]) for i in r["plan"]] == [("pull", "send_whole", "x")]
    assert digest(a) == before_a and digest(b) == before_b


def test_a_servers_own_change_made_just_before_a_session_is_in_its_index(served):
    """`serve` looks only at what inotify reported since its last scan: each change made on
    its side the moment before a peer's session -- a new file, an edit, a directory made and
    filled, one renamed, a chmod, a delete -- is in the index that session is planned from."""
    a, b, s = served
    (b / "d" / "e").mkdir(parents=True)
    (b / "d" / "e" / "x").write_text("1")
    (b / "y").write_text("y")
    ds("pull", a, s.address)
    steps = [lambda: (b / "d" / "e" / "x").write_text("2"),
             lambda: ((b / "n" / "m").mkdir(parents=True), (b / "n" / "m" / "z").write_text("deep")),
             lambda: os.rename(b / "d", b / "renamed"),
             lambda: (b / "renamed" / "e" / "x").write_text("3, in the renamed directory"),
             lambda: os.chmod(b / "renamed" / "e", 0o700),
             lambda: (b / "y").unlink()]
    for step in steps:
        step()
        ds("pull", a, s.address)
        assert digest(a) == digest(b)
