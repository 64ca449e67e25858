"""Real processes: nothing private leaves the folder, nothing a peer does is
unrecoverable, nothing is skipped silently, and every mistake is one clear line."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import DELTASYNC, Serve, ds, push_json


def test_a_folder_initialised_inside_never_sends_its_state(served):
    a, b, s = served
    ds("init", a / "docs")
    (a / "docs" / "report.txt").write_text("shared")
    (a / "sub" / ".DeltaSync").mkdir(parents=True)  # the state folder's name on a case-folding disk
    (a / "sub" / ".DeltaSync" / "key.pem").write_text("private")
    r = push_json(a, s.address)
    assert r["files_failed"] == 0 and (b / "docs" / "report.txt").read_text() == "shared"
    assert not (b / "docs" / ".deltasync").exists() and not (b / "sub" / ".DeltaSync").exists()
    sent = [str(p.relative_to(b)) for p in b.rglob("*")]
    assert not any("key.pem" in p or "manifest.db" in p for p in sent if not p.startswith(".deltasync"))


def test_pushing_into_a_folder_nested_inside_is_refused(tmp_path):
    outer = tmp_path / "S"
    inner = outer / "inner"
    ido = ds("init", outer).stdout.strip()
    idi = ds("init", inner).stdout.strip()
    ds("trust", outer, idi, "--name", "inner")
    ds("trust", inner, ido, "--name", "outer")
    (outer / "f").write_text("x")
    s = Serve(inner)
    try:
        p = ds("push", outer, s.address, check=False)
        assert p.returncode == 2 and "inside this one (at inner/)" in p.stderr, p.stderr
        assert not (inner / "inner").exists() and not (inner / "f").exists()
    finally:
        s.stop()
    s = Serve(outer)  # and the other way round: the server refuses the folder inside it
    try:
        (inner / "g").write_text("y")
        p = ds("sync", inner, s.address, check=False)
        assert p.returncode == 1 and "inside this one" in p.stderr, p.stderr
        assert not (inner / "inner").exists()
    finally:
        s.stop()


def test_push_over_a_version_edited_on_the_peer_keeps_it_and_says_so(served):
    a, b, s = served
    (a / "doc.txt").write_text("v1")
    push_json(a, s.address)
    (b / "doc.txt").write_text("edited on B")  # a version A never saw
    (a / "doc.txt").write_text("v2 from A")
    p = ds("push", a, s.address, "--json", check=False)
    r = json.loads(p.stdout)
    assert p.returncode == 3 and r["overwritten"][0]["path"] == "doc.txt"
    assert "overwrote 1 newer version" in p.stderr
    assert (b / "doc.txt").read_text() == "v2 from A"
    kept = json.loads(ds("versions", b, "doc.txt", "--json").stdout)["versions"]
    assert kept[0]["reason"] == "replaced" and (b / kept[0]["file"]).read_text() == "edited on B"
    ds("restore", b, "doc.txt")
    assert (b / "doc.txt").read_text() == "edited on B"
    (b / "doc.txt").write_text("edited again on B")
    (a / "doc.txt").write_text("v3 from A")
    assert ds("push", a, s.address, "--force", check=False).returncode == 0  # --force: reported, exit 0


def test_update_skips_files_newer_on_the_peer(served):
    a, b, s = served
    (a / "f").write_text("old")
    push_json(a, s.address)
    (b / "f").write_text("newer on B")
    os.utime(b / "f", (time.time() + 100, time.time() + 100))
    (a / "f").write_text("changed on A")
    r = json.loads(ds("push", a, s.address, "-u", "--json").stdout)
    assert r["files_skipped"] == 1 and (b / "f").read_text() == "newer on B"


def test_a_peer_delete_is_kept_as_a_version(served):
    a, b, s = served
    (a / "gone.txt").write_text("precious")
    push_json(a, s.address)
    (a / "gone.txt").unlink()
    push_json(a, s.address, "--delete")
    assert not (b / "gone.txt").exists()
    kept = json.loads(ds("versions", b, "--json").stdout)["versions"]
    assert kept[0]["path"] == "gone.txt" and kept[0]["reason"] == "deleted"
    ds("restore", b, "gone.txt")
    assert (b / "gone.txt").read_text() == "precious"


def test_an_unreadable_file_is_a_failure_not_a_skip(served):
    a, b, s = served
    (a / "secret").write_text("x")
    (a / "secret").chmod(0)
    (a / "fine").write_text("y")
    cmd = [*DELTASYNC, "push", str(a), s.address, "--json"]
    if os.geteuid() == 0:  # root reads any file: the push runs without the capabilities that let it
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    r = json.loads(p.stdout)
    assert p.returncode == 3 and any(f["path"] == "secret" for f in r["failures"]), p.stderr
    assert (b / "fine").read_text() == "y"


def test_a_directory_swapped_for_a_symlink_is_never_followed(served, tmp_path):
    a, b, s = served
    (a / "d").mkdir()
    (a / "d" / "f").write_text("x")
    push_json(a, s.address)
    os.rename(a / "d", tmp_path / "moved-away")
    os.symlink(tmp_path / "moved-away", a / "d")  # now a symlink: synced as a link, never followed
    (tmp_path / "moved-away" / "outside").write_text("must not travel")
    r = push_json(a, s.address, "--delete", "--force")
    assert r["files_failed"] == 0 and (b / "d").is_symlink()
    assert not (tmp_path / "moved-away" / "f").read_text() != "x"
    assert "outside" not in json.dumps(r) and not any(p.name == "outside" for p in b.rglob("*") if not
                                                      p.is_symlink() and b / "d" not in p.parents)


@pytest.mark.parametrize("args", [["serve", "--listen", "127.0.0.1:99999"], ["push", "127.0.0.1:70000"],
                                  ["push", "./B"], ["serve", "--listen", "127.0.0.1:"]])
def test_usage_mistakes_exit_2_with_one_line(pair, args):
    a, b = pair
    cmd, *rest = args
    p = ds(cmd, a, *rest, check=False, timeout=20)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_sigterm_stops_the_server_within_seconds_even_mid_transfer(served):
    a, b, s = served
    (a / "big").write_bytes(os.urandom(64 << 20))
    push = subprocess.Popen([*DELTASYNC, "push", str(a), s.address, "--bwlimit", "2M", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(2.5)
        start = time.monotonic()
        s.proc.send_signal(signal.SIGINT)  # Ctrl-C during a receive
        rc = s.proc.wait(15)
        assert time.monotonic() - start < 12 and rc == 0
        log = (b.parent / "serve-B.log").read_text()
        assert "Traceback" not in log
    finally:
        push.kill()
        push.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_under_the_manifest_is_one_clear_line(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        a = mnt / "A"
        ds("init", a)
        with open(mnt / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        for i in range(50):
            (a / f"f{i}").write_bytes(b"")
        p = ds("status", a, check=False)
        if p.returncode == 0:
            pytest.skip("the manifest still had room on this tmpfs")
        assert p.returncode == 1 and "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
