"""`serve` and `push` as separate real processes over loopback."""
import json
import os
import sqlite3
import stat


from conftest import Serve, digest, ds, fixture, no_leftovers, push_json


def test_seed_tree_then_every_mutation_kind(served):
    a, b, s = served
    fixture("seed", str(a), "--scale", "0.05")
    r = push_json(a, s.address)
    assert r["files_total"] == 52 and r["files_sent_whole"] == 52 and r["files_failed"] == 0
    assert digest(a) == digest(b)

    again = push_json(a, s.address)
    assert again["files_unchanged"] == 52
    assert again["literal_bytes"] == 0 and again["bytes_sent"] < 64 * 1024

    size = (a / "File_2").stat().st_size
    for n, kind in enumerate(["regions", "scattered", "shift", "append", "truncate"]):
        fixture("mutate", str(a / "File_2"), kind, "--seed", str(100 + n))
        r = push_json(a, s.address)
        assert r["files_sent_delta"] == 1 and r["files_unchanged"] == 51, (kind, r)
        # a delta, not the file: well under the file's size
        assert r["bytes_sent"] < size * 0.3, (kind, r)
        assert digest(a) == digest(b), kind
    assert no_leftovers(b) == []


def test_metadata_symlinks_empty_dirs_and_delete(served):
    a, b, s = served
    (a / "empty" / "nested").mkdir(parents=True)
    (a / "script.sh").write_text("#!/bin/sh\n")
    os.chmod(a / "script.sh", 0o751)
    os.utime(a / "script.sh", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.symlink("script.sh", a / "link")
    os.symlink("../../outside", a / "escaping-link")
    (a / "big").write_bytes(os.urandom(3_000_000))
    push_json(a, s.address)
    assert (b / "empty" / "nested").is_dir()
    st = os.stat(b / "script.sh")
    assert stat.S_IMODE(st.st_mode) == 0o751 and st.st_mtime_ns == 1_600_000_000_123_456_789
    assert os.readlink(b / "link") == "script.sh" and os.readlink(b / "escaping-link") == "../../outside"
    assert (b / "big").read_bytes() == (a / "big").read_bytes()

    (b / "extra").write_text("only on B")
    (a / "big").unlink()
    r = push_json(a, s.address)
    assert (b / "big").exists() and (b / "extra").exists()  # no --delete: nothing removed
    r = push_json(a, s.address, "--delete")
    assert not (b / "big").exists() and not (b / "extra").exists() and r["files_deleted"] == 2
    assert digest(a) == digest(b)


def test_metadata_only_change_sends_no_data(served):
    a, b, s = served
    (a / "f").write_bytes(os.urandom(500_000))
    push_json(a, s.address)
    os.chmod(a / "f", 0o600)
    r = push_json(a, s.address)
    assert r["literal_bytes"] == 0 and r["files_failed"] == 0
    assert stat.S_IMODE(os.stat(b / "f").st_mode) == 0o600


def manifest_rows(folder):
    import sqlite3

    db = sqlite3.connect(folder / ".deltasync" / "manifest.db")
    try:
        return [db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("files", "peers_seen", "partials")]
    finally:
        db.close()


def test_dry_run_changes_nothing(served):
    a, b, s = served
    (b / "old").write_text("on B only")
    push_json(a, s.address)  # both manifests have seen their trees
    fixture("seed", str(a), "--scale", "0.01")
    before = digest(a), digest(b), manifest_rows(a), manifest_rows(b)
    for cmd in ("push", "sync", "pull"):
        assert "plan" in json.loads(ds(cmd, a, s.address, "--dry-run", "--json", "--delete" if cmd == "push" else "-q").stdout)
        assert (digest(a), digest(b), manifest_rows(a), manifest_rows(b)) == before, cmd
    ops = {i["op"] for i in json.loads(ds("push", a, s.address, "--dry-run", "--json", "--delete").stdout)["plan"]}
    assert {"send_whole", "mkdir", "delete"} <= ops


def test_untrusted_peer_is_refused_and_nothing_written(tmp_path, served):
    a, b, s = served
    stranger = tmp_path / "C"
    ds("init", stranger)
    ds("trust", stranger, ds("id", b).stdout.strip())  # C trusts B, but B does not trust C
    (stranger / "evil").write_text("x")
    p = ds("push", stranger, s.address, check=False)
    assert p.returncode == 4 and "does not trust" in p.stderr and "Traceback" not in p.stderr
    assert not (b / "evil").exists()
    # and the other way: A pushing to a server it does not trust
    ds("init", tmp_path / "D")
    ds("trust", tmp_path / "D", ds("id", a).stdout.strip())  # D trusts A; A does not trust D
    s2 = Serve(tmp_path / "D")
    try:
        p = ds("push", a, s2.address, check=False)
        assert p.returncode == 4 and "not trusted" in p.stderr
    finally:
        s2.stop()


def test_exit_codes_for_user_errors(tmp_path):
    p = ds("push", tmp_path / "nothing", "127.0.0.1:1", check=False)
    assert p.returncode == 1 and "not a deltasync folder" in p.stderr and "Traceback" not in p.stderr
    ds("init", tmp_path / "A")
    p = ds("push", tmp_path / "A", "127.0.0.1:1", check=False)
    assert p.returncode == 4 and "cannot reach" in p.stderr
    p = ds("push", tmp_path / "A", "127.0.0.1:1", "--json", check=False)
    assert p.returncode == 4 and json.loads(p.stdout) == {"error": p.stderr.split("error: ", 1)[1].strip(),
                                                          "exit_code": 4}
    p = ds("push", tmp_path / "A", check=False)
    assert p.returncode == 2


def test_status_json_lists_peers(pair):
    a, b = pair
    info = json.loads(ds("status", a, "--json").stdout)
    assert info["peer_id"] == ds("id", a).stdout.strip()
    assert [p["name"] for p in info["peers"]] == ["b"] and info["partials"] == []


def test_portable_fallbacks_and_the_ctypes_engine_end_to_end(pair, monkeypatch):
    """Both peers without the Linux-only calls (copy_file_range, fdatasync, syncfs) and on the
    system librsync through ctypes, as on macOS or CPython 3.13+: same bytes, same trees."""
    from conftest import Serve

    monkeypatch.setenv("DELTASYNC_PORTABLE", "1")
    monkeypatch.setenv("DELTASYNC_ENGINE", "librsync")
    a, b = pair
    s = Serve(b)
    try:
        fixture("seed", str(a), "--scale", "0.02")
        assert push_json(a, s.address)["files_failed"] == 0
        fixture("mutate", str(a / "File_2"), "regions", "--seed", "7")
        r = push_json(a, s.address)
        assert r["files_sent_delta"] == 1 and r["bytes_sent"] < (a / "File_2").stat().st_size * 0.3
        assert digest(a) == digest(b) and no_leftovers(b) == []
    finally:
        s.stop()


def test_a_one_shot_push_caches_its_new_versions_signatures_only_when_it_moves_nothing(served):
    """A push that moves data ends without waiting for its new versions' signatures, so it does
    not start them (they only took CPU from the transfer); one that moves nothing waits for them."""
    a, b, s = served

    def cached(folder, name):
        with sqlite3.connect(folder / ".deltasync" / "manifest.db") as db:
            return db.execute("SELECT COUNT(*) FROM signatures WHERE path=?", (name,)).fetchone()[0]

    data = os.urandom(3 * 2**20)
    (a / "big").write_bytes(data)
    assert push_json(a, s.address)["files_sent_whole"] == 1
    assert cached(a, "big") == 0  # sent: never started
    (a / "twin").write_bytes(data)  # new here; the peer holds its content already: nothing moves but a copy
    (b / "twin").write_bytes(data)
    r = push_json(a, s.address)
    assert r["files_sent_whole"] == 0 and r["files_sent_delta"] == 0, r
    assert cached(a, "twin") == 1
