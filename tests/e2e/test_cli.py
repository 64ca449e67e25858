"""What scripts rely on: --json fields, exit codes, ignore rules both ways, progress on a terminal."""
import json
import os
import pty
import select
import subprocess
import time

from conftest import DELTASYNC, Serve, digest, ds, push_json

SESSION_FIELDS = {"files_total", "files_sent_whole", "files_sent_delta", "files_received", "files_unchanged",
                  "files_deleted", "files_failed", "bytes_sent", "bytes_received", "literal_bytes", "seconds",
                  "failures", "conflicts"}


def test_json_of_every_reporting_command(tmp_path, served):
    a, b, s = served
    assert set(json.loads(ds("init", tmp_path / "X", "--json").stdout)) == {"peer_id", "folder", "created"}
    t = json.loads(ds("trust", tmp_path / "X", ds("id", a).stdout.strip(), "--name", "a", "--json").stdout)
    assert t["name"] == "a" and t["peer_id"] == ds("id", a).stdout.strip()
    (a / "f").write_text("x")
    for cmd in ("push", "pull", "sync"):
        r = json.loads(ds(cmd, a, s.address, "--json").stdout)
        assert SESSION_FIELDS <= set(r), cmd
    st = json.loads(ds("status", a, "--json").stdout)
    assert {"peer_id", "peers", "partials", "conflicts", "pending"} <= set(st)
    (a / "new").write_text("pending")
    assert json.loads(ds("status", a, "--json").stdout)["pending"] == ["new"]


def test_exit_code_3_lists_the_failure(served):
    a, b, s = served
    (b / "p").mkdir()
    (a / "p").write_text("a file where B has a directory")
    p = ds("push", a, s.address, "--json", check=False)
    r = json.loads(p.stdout)
    assert p.returncode == 3 and r["failures"][0]["path"] == "p" and "--delete" in r["failures"][0]["error"]


def test_ignore_rules_in_both_directions(served):
    a, b, s = served
    for d in (a, b):
        (d / ".deltasyncignore").write_text("*.tmp\ncache/\n")
    (a / "keep.txt").write_text("k")
    (a / "scratch.tmp").write_text("never sent")
    (b / "cache").mkdir()
    (b / "cache" / "x").write_text("never fetched")
    (b / "local.tmp").write_text("never deleted")
    r = json.loads(ds("sync", a, s.address, "--json", "--exclude", "keep.txt").stdout)
    assert not (b / "scratch.tmp").exists() and not (a / "cache").exists() and not (b / "keep.txt").exists()
    push_json(a, s.address, "--delete")
    assert (b / "local.tmp").read_text() == "never deleted" and (b / "cache" / "x").exists()
    assert r["files_failed"] == 0


def test_compress_shrinks_compressible_data(served):
    a, b, s = served
    (a / "log.txt").write_bytes(b"the same line again and again\n" * 200_000)  # 6 MB
    r = json.loads(ds("push", a, s.address, "--compress", "--json").stdout)
    assert r["bytes_sent"] < 1_000_000 and digest(a) == digest(b)


def _run_in_pty(args) -> str:
    master, slave = pty.openpty()
    p = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    p.wait()
    os.close(master)
    return out.decode(errors="replace")


def test_progress_bar_on_a_terminal_only(tmp_path, pair):
    a, b = pair
    (a / "big").write_bytes(os.urandom(30_000_000))
    s = Serve(b)
    try:
        shown = _run_in_pty([*DELTASYNC, "push", str(a), s.address, "--bwlimit", "15M"])
        assert "files" in shown and "━" in shown  # rich's bar
        (a / "big2").write_bytes(os.urandom(3_000_000))
        piped = ds("push", a, s.address).stderr
        assert "━" not in piped
        (b / "from-b").write_bytes(os.urandom(30_000_000))
        pulled = _run_in_pty([*DELTASYNC, "pull", str(a), s.address, "--bwlimit", "15M", "-i"])
        assert "━" in pulled and "wire " in pulled, "a pull shows its progress and the rate on the wire"
        assert ">f+++++++++ from-b" in pulled and "1 received" in pulled and "30,0" in pulled
    finally:
        s.stop()
    log = (b.parent / "serve-B.log").read_text()
    sessions = [line for line in log.splitlines() if "session with " in line]
    assert len(sessions) == 3 and sessions[0].startswith("20"), log  # timestamped, one per session
    assert "push; 1 changes in, 0 files out" in sessions[0] and sessions[0].endswith("; ok")
    assert "pull; 0 changes in, 1 files out" in sessions[2], sessions
    assert "done big" in log, "-v: a line per file"


def test_trust_checks_what_it_is_given_and_untrust_refuses_at_once(served, tmp_path):
    a, b, s = served
    own = ds("id", a).stdout.strip()
    other = ds("id", b).stdout.strip()
    typo = other[:3] + ("A" if other[3] != "A" else "B") + other[4:]
    for args, words in ((["trust", a, typo], "typo"), (["trust", a, own], "own peer ID"),
                        (["trust", a, other, "--address", "127.0.0.1:99999"], "outside 0-65535"),
                        (["untrust", a, "nobody"], "no trusted peer")):
        p = ds(*args, check=False)
        assert p.returncode == 2 and words in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
    (a / "f").write_text("x")
    assert push_json(a, s.address)["files_failed"] == 0
    gone = json.loads(ds("untrust", b, "a", "--json").stdout)  # B forgets A: A's next push is refused
    assert gone["name"] == "a" and gone["peer_id"] == own
    p = ds("push", a, s.address, check=False)
    assert p.returncode == 4 and "does not trust this folder" in p.stderr


def test_the_summary_line_adds_up_and_names_what_moved(served):
    a, b, s = served
    (a / "one.txt").write_text("1")
    (a / "two.txt").write_text("22")
    p = ds("push", a, s.address)
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("2 files: 2 sent whole; ") and " sent, " in last and " received in " in last, last
    os.utime(a / "one.txt", ns=(10**18, 10**18))  # metadata only
    (b / "extra").write_text("only on B")
    p = ds("push", a, s.address, "--delete", "-n")
    assert p.stderr.strip().splitlines()[-1] == "dry run, nothing changed: 3 files: 1 metadata only, 1 unchanged, " \
                                                 "1 deleted", p.stderr
    p = ds("push", a, s.address, "--delete", "--max-delete", "0", "-h", check=False)
    last = p.stderr.strip().splitlines()
    assert p.returncode == 3 and "max-delete" in last[-1] and not last[-1].startswith("deltasync: error")
    assert "1 skipped" in last[-2] and "1 metadata only" in last[-2], last
    assert (b / "extra").exists()


def test_listen_addresses_take_the_default_port_and_say_when_taken(pair):
    import socket

    a, b = pair
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = ds("serve", b, "--listen", f"127.0.0.1:{port}", check=False, timeout=20)
        assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "in use" in p.stderr and "--listen HOST:PORT" in p.stderr
    from deltasync.transports.tls import DEFAULT_PORT, split_address

    assert split_address("127.0.0.1", DEFAULT_PORT) == ("127.0.0.1", 8730)
    assert split_address("[::1]", DEFAULT_PORT) == ("::1", 8730) and split_address("::1", DEFAULT_PORT)[1] == 8730
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", DEFAULT_PORT))
    except OSError:
        return  # the default port is someone else's here: the split above is what decides it
    s = Serve(b, listen="127.0.0.1")
    try:
        assert s.address == f"127.0.0.1:{DEFAULT_PORT}"
    finally:
        s.stop()


def test_a_listener_that_never_answers_is_named_as_such(pair):
    import socket

    a, _ = pair
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        started = time.monotonic()
        p = ds("push", a, f"127.0.0.1:{mute.getsockname()[1]}", check=False, timeout=30)
    assert p.returncode == 4 and "no deltasync handshake" in p.stderr and time.monotonic() - started < 20, p.stderr


def test_an_unknown_peer_name_is_a_usage_error_with_a_suggestion(pair):
    a, b = pair
    ds("trust", a, ds("id", b).stdout.strip(), "--name", "laptop", "--address", "127.0.0.1:9")
    p = ds("push", a, "laptp", check=False)
    assert p.returncode == 2 and "did you mean 'laptop'" in p.stderr and len(p.stderr.strip().splitlines()) == 1
