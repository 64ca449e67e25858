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


def _user_xattrs(root):
    out = {}
    for p in sorted(root.rglob("*")):
        if ".deltasync" in p.parts or p.is_symlink():
            continue
        names = sorted(n for n in os.listxattr(p) if n.startswith("user."))
        if names:
            out[str(p.relative_to(root))] = {n: os.getxattr(p, n) for n in names}
    return out


def test_extended_attributes_arrive_like_rsync_X(served, tmp_path):
    a, b, s = served
    (a / "docs").mkdir()
    (a / "docs" / "note.txt").write_text("hello")
    (a / "blob").write_bytes(os.urandom(300_000))
    os.setxattr(a / "docs" / "note.txt", "user.mime_type", b"text/plain")
    os.setxattr(a / "blob", "user.checksum", os.urandom(32))
    os.setxattr(a / "docs", "user.project", b"deltasync")
    r = push_json(a, s.address)
    assert r["files_failed"] == 0 and digest(a) == digest(b)
    theirs = tmp_path / "rsync"
    rsync_copy(a, theirs, "-X")
    assert _user_xattrs(b) == _user_xattrs(theirs) == _user_xattrs(a) != {}


@pytest.mark.skipif(shutil.which("setfacl") is None, reason="setfacl (Debian package acl) not installed")
def test_posix_acls_arrive_like_rsync_A(served, tmp_path):
    a, b, s = served
    (a / "shared").mkdir()
    (a / "shared" / "f").write_text("acl'd")
    subprocess.run(["setfacl", "-m", "u:nobody:rw", str(a / "shared" / "f")], check=True)
    subprocess.run(["setfacl", "-d", "-m", "g:nogroup:rx", str(a / "shared")], check=True)
    assert push_json(a, s.address)["files_failed"] == 0
    theirs = tmp_path / "rsync"
    rsync_copy(a, theirs, "-A")

    def acl(root, name):
        return subprocess.run(["getfacl", "--omit-header", "-p", str(root / name)], capture_output=True, text=True,
                              check=True).stdout

    for name in ("shared/f", "shared"):
        assert acl(b, name) == acl(theirs, name) == acl(a, name), name
    assert "user:nobody:rw-" in acl(b, "shared/f") and "default:group:nogroup:r-x" in acl(b, "shared")
