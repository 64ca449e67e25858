"""`deltasync rdiff` against the real `rdiff`, both ways."""
import os
import random
import subprocess

import pytest

from conftest import DELTASYNC, have_rdiff

pytestmark = pytest.mark.skipif(not have_rdiff, reason="rdiff (Debian package) not installed")


def run(*cmd, stdin=None):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, input=stdin)


@pytest.fixture
def files(tmp_path):
    rng = random.Random(9)
    old = rng.randbytes(700_000)
    new = old[:100_000] + rng.randbytes(20_000) + old[90_000:650_000] + rng.randbytes(999)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    return tmp_path, new


@pytest.mark.parametrize("opts", [[], ["-b", "4096", "-S", "8"], ["-H", "md4", "-R", "rollsum"]])
def test_signatures_identical(files, opts):
    d, _ = files
    run("rdiff", *opts, "signature", d / "old", d / "theirs.sig")
    run(*DELTASYNC, "rdiff", "signature", *opts, d / "old", d / "ours.sig")
    assert (d / "ours.sig").read_bytes() == (d / "theirs.sig").read_bytes()


def test_our_delta_their_patch_and_back(files):
    d, new = files
    run(*DELTASYNC, "rdiff", "signature", d / "old", d / "sig")
    run(*DELTASYNC, "rdiff", "delta", d / "sig", d / "new", d / "ours.delta")
    run("rdiff", "patch", d / "old", d / "ours.delta", d / "via_rdiff")
    assert (d / "via_rdiff").read_bytes() == new
    run("rdiff", "delta", d / "sig", d / "new", d / "theirs.delta")
    run(*DELTASYNC, "rdiff", "patch", d / "old", d / "theirs.delta", d / "via_us")
    assert (d / "via_us").read_bytes() == new


def test_stdin_stdout_and_no_clobber(files):
    d, new = files
    sig = run(*DELTASYNC, "rdiff", "signature", "-", stdin=(d / "old").read_bytes()).stdout
    (d / "sig").write_bytes(sig)
    delta = run(*DELTASYNC, "rdiff", "delta", d / "sig", "-", stdin=new).stdout
    out = run(*DELTASYNC, "rdiff", "patch", d / "old", "-", stdin=delta).stdout  # a pipe: spooled to seek
    assert out == new
    p = subprocess.run([*DELTASYNC, "rdiff", "patch", str(d / "old"), "-", str(d / "new")], input=delta,
                       capture_output=True)
    assert p.returncode == 100 and b"exists" in p.stderr  # rdiff's RS_IO_ERROR
    os.unlink(d / "sig")


@pytest.mark.parametrize("opts", [["-b", "4096", "-S", "8"], ["-H", "md4", "-R", "rollsum", "-f"]])
def test_options_before_the_action_as_rdiff_takes_them(files, opts):
    d, _ = files
    run("rdiff", *opts, "signature", d / "old", d / "theirs.sig")
    run(*DELTASYNC, "rdiff", *opts, "signature", d / "old", d / "ours.sig")
    assert (d / "ours.sig").read_bytes() == (d / "theirs.sig").read_bytes()
    p = run(*DELTASYNC, "rdiff", "-s", "signature", "-f", d / "old", d / "ours.sig")
    assert b"signature statistics: 700,000 bytes in" in p.stderr


def test_exit_codes_are_rdiffs(files):
    """The same mistakes give the same codes as the real rdiff (librsync's rs_result)."""
    d, _ = files
    (d / "not-a-delta").write_bytes(b"\x00" * 64)
    cases = [["bogus"],  # usage: 101
             ["signature", d / "missing", d / "x.sig"],  # cannot open: 100
             ["signature", d / "old", d / "new"],  # would overwrite: 100
             ["patch", d / "old", d / "not-a-delta", d / "out"],  # bad magic: 104
             ["-H", "sha1", "signature", d / "old", d / "y.sig"]]  # unknown hash: 101
    for args in cases:
        theirs = subprocess.run(["rdiff", *map(str, args)], capture_output=True)
        for f in ("out", "x.sig", "y.sig"):
            (d / f).unlink(missing_ok=True)
        ours = subprocess.run([*DELTASYNC, "rdiff", *map(str, args)], capture_output=True)
        assert ours.returncode == theirs.returncode != 0, (args, ours.returncode, theirs.returncode, ours.stderr)
        assert b"Traceback" not in ours.stderr
