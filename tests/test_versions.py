"""File versions: what a peer's session replaces or deletes is kept first,
listed, restorable, pruned by policy, and never lost to a crash mid-replace."""
import os
import time

import pytest

from conftest import wire
from deltasync import hashing
from deltasync.store.claims import Ticket
from deltasync.wire.messages import Op
from deltasync.errors import UsageError
from deltasync.fs.scan import scan
from deltasync.store.versions import Versions, choose, parse_when, restore


def send_small(rx, path, data, replaces=None, peer="PEERAAAAAAAA"):
    w = Ticket(peer)
    staged = []
    meta = {"path": path, "size": len(data), "mtime_ns": 1_000_000_000, "mode": 0o644,
            "blake3": hashing.of_bytes(data), "replaces": replaces}
    assert rx.stage_small(wire("send_file", data, files=[meta]), staged, w) == []
    (res,) = rx.commit_small(staged, w)
    assert res.ok, res
    return res


def test_replace_keeps_the_old_version_by_hard_link(rx):
    root = rx.folder.root
    (root / "f").write_bytes(b"edited here")
    scan(root, rx.manifest, me="HERE")
    ino = os.stat(root / "f").st_ino
    res = send_small(rx, "f", b"from the peer", hashing.of_bytes(b"edited here"))
    assert (root / "f").read_bytes() == b"from the peer"
    (k,) = rx.versions.list("f")
    assert res.kept == k.name and k.peer == "PEERAAAAAAAA" and k.reason == "replaced"
    kept_file = root / ".deltasync" / "versions" / k.name
    assert kept_file.read_bytes() == b"edited here" and os.stat(kept_file).st_ino == ino  # a link, not a copy
    assert k.blake3 == hashing.of_bytes(b"edited here") and k.version == (("HERE", 1),)


def test_delete_moves_the_file_into_versions(rx):
    root = rx.folder.root
    (root / "gone").write_bytes(b"keep me")
    scan(root, rx.manifest, me="HERE")
    e = rx.manifest.get("gone").entry
    res = rx.apply_op(Op.from_wire({"op": "delete", "path": "gone", "kind": "file", "size": e.size,
                                    "blake3": e.blake3, "mtime_ns": e.mtime_ns, "mode": e.mode}), Ticket("PEER"))
    assert res.ok and not (root / "gone").exists()
    (k,) = rx.versions.list("gone")
    assert k.reason == "deleted" and (root / ".deltasync" / "versions" / k.name).read_bytes() == b"keep me"


def test_restore_puts_a_version_back_as_a_local_change(rx):
    root = rx.folder.root
    (root / "doc").write_bytes(b"v1")
    scan(root, rx.manifest, me="HERE")
    send_small(rx, "doc", b"v2", hashing.of_bytes(b"v1"))
    time.sleep(0.01)
    send_small(rx, "doc", b"v3", hashing.of_bytes(b"v2"))
    kept = rx.versions.list("doc")
    assert [open(root / ".deltasync/versions" / k.name, "rb").read() for k in kept] == [b"v2", b"v1"]
    restore(rx.folder, "doc", number=2)
    assert (root / "doc").read_bytes() == b"v1"
    assert [k.reason for k in rx.versions.list("doc")][0] == "restored"  # what it replaced is kept too
    changed = scan(root, rx.manifest, me="HERE").changed
    assert "doc" in changed  # a new local change: it syncs
    with pytest.raises(UsageError):
        restore(rx.folder, "doc", number=9)
    with pytest.raises(UsageError):
        restore(rx.folder, "never-there")


def test_choose_by_time():
    from deltasync.store.versions import Kept

    ks = [Kept(i, "p", f"n{i}", 1, None, 0, 0o644, (), t, "", "replaced") for i, t in ((3, 300.0), (2, 200.0),
                                                                                         (1, 100.0))]
    assert choose(ks, "p", at=150).kept == 200.0  # the version in place at 150 was replaced at 200
    assert choose(ks, "p", at=50).kept == 100.0
    assert choose(ks, "p").kept == 300.0
    with pytest.raises(UsageError):
        choose(ks, "p", at=400)
    assert parse_when("1700000000") == 1700000000.0 and parse_when("2026-01-02T03:04:05+00:00") > 0
    with pytest.raises(UsageError):
        parse_when("yesterday-ish")


def test_retention_by_age_count_and_size(rx):
    root = rx.folder.root
    store = Versions(root, rx.manifest, {"versions_keep_days": 1, "versions_per_path": 2, "versions_max_mb": 0})
    prev = None
    for i in range(4):
        data = bytes([i]) * 1000
        send_small(rx, "f", data, prev)
        prev = hashing.of_bytes(data)
    assert len(store.list("f")) == 3
    assert store.prune() == 1 and len(store.list("f")) == 2  # per path
    assert store.prune(now=time.time() + 2 * 86400) == 2 and store.list() == []  # by age
    assert os.listdir(root / ".deltasync" / "versions") == []
    capped = Versions(root, rx.manifest, {"versions_max_mb": 0.0015})  # ~1.5 KB: one 1000-byte version fits
    for i in range(4, 7):
        data = bytes([i]) * 1000
        send_small(rx, "f", data, prev)
        prev = hashing.of_bytes(data)
    capped.prune()
    assert [k.size for k in capped.list()] == [1000]  # the newest stays


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("cap_mb", [0, 0.004, 0.02])
def test_prune_in_sql_keeps_what_the_policy_keeps(rx, seed, cap_mb):
    """The policy, by its words (newest first: past the age or the per-path count is doomed; of
    the rest, the oldest go until the total fits), against the query that carries it out."""
    import random

    rng = random.Random(seed)
    now = 1_000_000.0
    policy = {"versions_keep_days": rng.choice([1, 3]), "versions_per_path": rng.randint(1, 4),
              "versions_max_mb": cap_mb}
    store = Versions(rx.folder.root, rx.manifest, policy)
    vdir = rx.folder.root / ".deltasync" / "versions"
    vdir.mkdir(exist_ok=True)
    rows = []
    for i in range(60):
        kept = now - rng.uniform(0, 5 * 86400) if rng.random() < 0.8 else now - 86400 * 2  # ties too
        path, size = f"p{rng.randint(0, 7)}", rng.randint(1, 900)
        rx.manifest.add_version(path, f"v{i}", size, None, 1, 0o644, "{}", kept, "PEER", "replaced")
        (vdir / f"v{i}").write_bytes(b"")
    rows = sorted(rx.manifest.versions(), key=lambda r: (-r[8], -r[0]))  # newest first, as listed
    count: dict[str, int] = {}
    left, doomed = [], set()
    for r in rows:
        count[r[1]] = count.get(r[1], 0) + 1
        old = now - r[8] > policy["versions_keep_days"] * 86400 or count[r[1]] > policy["versions_per_path"]
        (doomed.add(r[2]) if old else left.append(r))
    cap = int(policy["versions_max_mb"] * 1024 * 1024)
    total = sum(r[3] for r in left)
    while cap and left and total > cap:
        r = left.pop()
        doomed.add(r[2])
        total -= r[3]
    assert store.prune(now=now) == len(doomed)
    assert {k.name for k in store.list()} == {r[2] for r in left}
    assert set(os.listdir(vdir)) == {r[2] for r in left}


def test_crash_between_link_and_rename_loses_nothing(rx, monkeypatch):
    root = rx.folder.root
    (root / "f").write_bytes(b"precious")
    scan(root, rx.manifest, me="HERE")
    real_rename = os.rename

    def crash(src, dst, *a, **kw):
        if kw.get("dst_dir_fd") is not None and dst == "f":
            raise OSError(5, "simulated crash")
        return real_rename(src, dst, *a, **kw)

    monkeypatch.setattr(os, "rename", crash)
    w = Ticket("PEER")
    staged = []
    data = b"incoming"
    rx.stage_small(wire("send_file", data, files=[{"path": "f", "size": len(data), "mtime_ns": 1, "mode": 0o644,
                                                    "blake3": hashing.of_bytes(data),
                                                    "replaces": hashing.of_bytes(b"precious")}]), staged, w)
    (res,) = rx.commit_small(staged, w)
    assert not res.ok
    assert (root / "f").read_bytes() == b"precious"  # the old file is where it was
    monkeypatch.undo()
    # the version made just before the failed rename is a spare copy, harmless, and listed
    assert [open(root / ".deltasync/versions" / k.name, "rb").read() for k in rx.versions.list("f")] == [b"precious"]
    # an orphan link (a crash before its row was written) is removed at the next start
    os.link(root / "f", root / ".deltasync" / "versions" / "orphan")
    rx.clean_stale(3600)
    assert "orphan" not in os.listdir(root / ".deltasync" / "versions")


def test_versioning_off_and_cross_device_refusal(rx, tmp_path):
    root = rx.folder.root
    rx.versions = Versions(root, rx.manifest, {"versioning": "off"})
    (root / "f").write_bytes(b"old")
    scan(root, rx.manifest, me="HERE")
    res = send_small(rx, "f", b"new", hashing.of_bytes(b"old"))
    assert res.kept is None and rx.versions.list() == []
    with pytest.raises(UsageError):
        Versions(root, rx.manifest, {"versioning": "sometimes"})


def test_a_link_that_fails_refuses_the_replace(rx, monkeypatch):
    root = rx.folder.root
    (root / "f").write_bytes(b"old")
    scan(root, rx.manifest, me="HERE")

    def no_link(*a, **kw):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    w = Ticket("PEER")
    staged = []
    rx.stage_small(wire("send_file", b"new", files=[{"path": "f", "size": 3, "mtime_ns": 1, "mode": 0o644,
                                                      "blake3": hashing.of_bytes(b"new"),
                                                      "replaces": hashing.of_bytes(b"old")}]), staged, w)
    (res,) = rx.commit_small(staged, w)
    assert not res.ok and "cannot keep" in res.error
    assert (root / "f").read_bytes() == b"old"
