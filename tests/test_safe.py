import contextlib
import os

import pytest

from deltasync.errors import TransferFailed, UnsafePath
from deltasync.fs import safe


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a/", ".deltasync/key.pem",
                                  ".deltasync", "a\x00b", "x" * 5000, "y" * 300 + "/z",
                                  # the state folder at any depth, in any case or Unicode spelling
                                  "a/.deltasync", "a/.deltasync/key.pem", "docs/.DeltaSync/x", ".DELTASYNC",
                                  "x/\uff0edeltasync/manifest.db", "x/.deltaſync"])
def test_unsafe_paths_refused(path):
    with pytest.raises(UnsafePath):
        safe.check_relpath(path)


@pytest.mark.parametrize("path", ["a", "a/b/c", ".hidden", "a/.deltasyncignore", "a/deltasync", "..a", "sp ace/ü.txt"])
def test_ordinary_paths_accepted(path):
    assert safe.check_relpath(path) == tuple(path.split("/"))


@pytest.mark.parametrize("batched", [False, True], ids=["walk", "batch"])
def test_symlinked_parent_is_never_followed(tmp_path, batched):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    with safe.SafeRoot(root).batch() if batched else contextlib.nullcontext(safe.SafeRoot(root)) as s:
        tmp = safe.write_aside(tmp_path, "t", [b"evil"], 0o644, 1)
        with pytest.raises(UnsafePath):
            s.replace(tmp, "link/x")
        with pytest.raises(UnsafePath):
            s.mkdir("link/d", 0o755)
        with pytest.raises(UnsafePath):
            s.open_read("link")
        with pytest.raises(UnsafePath):
            with s.directory("link"):
                pass
    assert list(outside.iterdir()) == []


def test_a_batch_walks_to_each_directory_once_and_lets_its_fds_go(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setattr(safe._Batch, "MAX_FDS", 8)
    opened = []
    real_open = safe.open_dir
    monkeypatch.setattr(safe, "open_dir", lambda name, fd, mode=None: opened.append(name) or real_open(name, fd, mode))
    fds_before = len(os.listdir("/proc/self/fd"))
    with safe.SafeRoot(root).batch() as s:
        for i in range(40):
            s.replace(safe.write_aside(tmp_path, "t", [b"%d" % i], 0o644, 1), f"a/d{i % 20}/f{i}")
        assert len(s.fds) <= 8 + 1  # bounded: let go between walks, never inside one
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("f*")) == sorted(
        f"a/d{i % 20}/f{i}" for i in range(40))
    assert len(opened) < 40 * 2  # without the cache: two directories walked for every file
    # the files of a directory that is not there: looked for with one walk, and placed once it is made
    opened.clear()
    with safe.SafeRoot(root).batch() as s:
        assert all(s.lstat(f"new/d/f{i}") is None for i in range(10))
        assert len(opened) == 1
        s.replace(safe.write_aside(tmp_path, "t", [b"n"], 0o644, 1), "new/d/f0")
        assert s.lstat("new/d/f0") is not None and s.lstat("new/d/f1") is None
    # a directory replaced by a symlink after the batch walked to it is not followed either
    with safe.SafeRoot(root).batch() as s:
        s.lstat("a/d0/f0")
        os.rename(root / "a" / "d0", tmp_path / "moved")
        os.symlink(tmp_path / "elsewhere", root / "a" / "d0")
        s.replace(safe.write_aside(tmp_path, "t", [b"late"], 0o644, 1), "a/d0/late")
    assert (tmp_path / "moved" / "late").read_bytes() == b"late" and not (tmp_path / "elsewhere").exists()


def test_replace_is_atomic_and_keeps_metadata(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"old")
    s = safe.SafeRoot(root)
    tmp = safe.write_aside(tmp_path, "t", [b"new", b"er"], 0o600, 123_000_000_000)
    s.replace(tmp, "sub/f")
    s.replace(safe.write_aside(tmp_path, "t", [b"x"], 0o640, 5), "f")
    assert (root / "sub/f").read_bytes() == b"newer"
    st = os.stat(root / "sub/f")
    assert st.st_mtime_ns == 123_000_000_000 and st.st_mode & 0o777 == 0o600
    assert (root / "f").read_bytes() == b"x"


def test_file_over_directory_is_a_clear_failure(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "keep").write_bytes(b"k")
    with pytest.raises(TransferFailed, match="directory"):
        safe.SafeRoot(root).replace(safe.write_aside(tmp_path, "t", [b"x"], 0o644, 1), "d")
    assert (root / "d" / "keep").read_bytes() == b"k"


def test_configured_path_limit_is_enforced(tmp_path):
    s = safe.SafeRoot(tmp_path, max_path=16)
    with pytest.raises(UnsafePath, match="longer than 16"):
        s.mkdir("d" * 17, 0o755)
    s.mkdir("d" * 16, 0o755)
    assert (tmp_path / ("d" * 16)).is_dir()
