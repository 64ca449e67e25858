"""What `rsync -aHSX` keeps, kept the same: the same tree pushed by deltasync
and copied by rsync itself, compared file by file (content, allocation,
links, extended attributes)."""
import os
import random
import shutil
import subprocess

import pytest

from conftest import digest, push_json

MiB = 1024 * 1024
pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync (Debian package) not installed")


def rsync_copy(src, dst, *flags):
    subprocess.run(["rsync", "-a", *flags, "--exclude=.deltasync", f"{src}/", f"{dst}/"], check=True)


def blocks(p):
    return os.stat(p).st_blocks


def test_sparse_files_arrive_sparse_like_rsync_S(served, tmp_path):
    a, b, s = served
    rng = random.Random(2)
    with open(a / "disk.img", "wb") as f:  # 256 MiB with 12 KiB of data in three places
        f.truncate(256 * MiB)
        for offset in (0, 100 * MiB + 8192, 256 * MiB - 4096):
            f.seek(offset)
            f.write(rng.randbytes(4096))
    (a / "zeros").write_bytes(bytes(6 * MiB))
    r = push_json(a, s.address)
    assert r["files_failed"] == 0 and digest(a) == digest(b)
    assert r["bytes_sent"] < 256 * 1024, "holes cost nothing on the wire"
    theirs = tmp_path / "rsync"
    rsync_copy(a, theirs, "-S")
    for name in ("disk.img", "zeros"):
        assert abs(blocks(b / name) - blocks(theirs / name)) <= 8, (name, blocks(b / name), blocks(theirs / name))
