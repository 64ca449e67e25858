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


def _links(root):
    """Each set of names sharing an inode (more than one), as sorted relative paths."""
    groups = {}
    for p in root.rglob("*"):
        if ".deltasync" in p.parts or not p.is_file() or p.is_symlink():
            continue
        st = p.stat()
        if st.st_nlink > 1:
            groups.setdefault(st.st_ino, []).append(str(p.relative_to(root)))
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def test_hard_links_arrive_as_links_like_rsync_H(served, tmp_path):
    a, b, s = served
    (a / "x").mkdir()
    (a / "x" / "data").write_bytes(os.urandom(200_000))
    os.link(a / "x" / "data", a / "alias")
    os.link(a / "x" / "data", a / "x" / "alias2")
    (a / "lone").write_text("not linked")
    r = push_json(a, s.address)
    assert r["files_failed"] == 0 and r["files_linked"] == 2 and digest(a) == digest(b)
    theirs = tmp_path / "rsync"
    rsync_copy(a, theirs, "-H")
    assert _links(b) == _links(theirs) == [["alias", "x/alias2", "x/data"]]
    assert r["literal_bytes"] < 250_000, "one transfer, then link()"
