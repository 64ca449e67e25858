"""The Linux-only calls and their portable stand-ins give the same results;
the stand-ins are what macOS and other systems run."""
import errno
import os
import subprocess
from pathlib import Path

import pytest

from deltasync.fs import native, safe


@pytest.fixture(params=[False, True], ids=["linux", "portable"])
def impl(request):
    native.use(request.param)
    yield request.param
    native.use(os.environ.get("DELTASYNC_PORTABLE", "") not in ("", "0"))


def test_copy_range_datasync_and_writeback(tmp_path, impl):
    src, dst = tmp_path / "src", tmp_path / "dst"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    dst.write_bytes(b"\0" * len(data))
    s, d = os.open(src, os.O_RDONLY), os.open(dst, os.O_RDWR)
    try:
        assert native.copy_range(s, d, 1000, 2 * 1024 * 1024) == 2 * 1024 * 1024
        assert native.copy_range(s, d, len(data) - 10, 100) == 10  # short: the end of the source
        native.datasync(d)
    finally:
        os.close(s)
        os.close(d)
    got = dst.read_bytes()
    assert got[1000 : 1000 + 2 * 1024 * 1024] == data[1000 : 1000 + 2 * 1024 * 1024]
    assert got[:1000] == b"\0" * 1000 and got[-10:] == data[-10:]
    fs_type = subprocess.run(["stat", "-f", "-c", "%t", str(tmp_path)], capture_output=True, text=True,
                             check=True).stdout.strip()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:  # the portable build knows no journal: callers fdatasync each file
        assert native.ordered_journal(fd) is (not impl and int(fs_type, 16) in (0xEF53, 0x58465342))
    finally:
        os.close(fd)
    files = [safe.write_aside(tmp_path, f"f{i}", [b"x"], 0o644, 1, fsync=False) for i in range(300)]
    safe.make_durable(files)  # written back together, or an fdatasync each
    assert all(f.read_bytes() == b"x" for f in files)
    with pytest.raises(FileNotFoundError):
        safe.make_durable([tmp_path / "f0", tmp_path / "gone"])


@pytest.mark.parametrize("where", ["disk", "shm"])
def test_direct_writes_land_exactly_whatever_their_alignment(tmp_path, impl, where):
    """Whole aligned blocks go past the page cache, the rest (a tail, an odd offset) through the
    ordinary descriptor; a filesystem that refuses O_DIRECT gets every write the ordinary way."""
    from deltasync.fs.direct import ALIGN, DirectWriter

    base = tmp_path if where == "disk" else Path("/dev/shm")
    if not base.is_dir():
        pytest.skip("no /dev/shm here")
    path = base / f"direct-{os.getpid()}-{where}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        w = DirectWriter(path, fd)
        fs_type = subprocess.run(["stat", "-f", "-c", "%t", str(base)], capture_output=True, text=True,
                                 check=True).stdout.strip()
        if int(fs_type, 16) == 0xEF53:  # ext4 takes O_DIRECT; the stand-ins never use it
            assert w.direct is (not impl)
        want = bytearray(3 * ALIGN * 1024 + 777)
        writes = [(0, 2 * ALIGN * 1024), (2 * ALIGN * 1024, ALIGN * 1024 + 777),  # body, then body + tail
                  (ALIGN * 5 + 3, 100), (ALIGN * 7, ALIGN - 1), (ALIGN * 9, 5 * ALIGN)]  # odd offset, short, over
        for offset, n in writes:
            data = os.urandom(n)
            w.pwrite(memoryview(data), offset)
            want[offset : offset + n] = data
        w.close()
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        assert path.read_bytes() == bytes(want)
    finally:
        path.unlink()


def test_a_direct_write_the_filesystem_refuses_goes_through_the_cache(tmp_path, monkeypatch):
    from deltasync.fs import direct

    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    real = os.pwrite
    refused = []

    def pwrite(f, data, offset):
        if f != fd:  # the direct descriptor
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(f, data, offset)

    try:
        w = direct.DirectWriter(path, fd)
        if not w.direct:
            pytest.skip("no O_DIRECT here")
        monkeypatch.setattr(direct.os, "pwrite", pwrite)
        first, second = os.urandom(direct.ALIGN * 4), os.urandom(direct.ALIGN * 4)
        w.pwrite(first, 0)
        w.pwrite(second, len(first))
        assert refused == [0] and not w.direct  # refused once, then never asked again
        w.close()
    finally:
        os.close(fd)
    assert path.read_bytes() == first + second
