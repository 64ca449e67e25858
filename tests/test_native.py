"""The Linux-only calls and their portable stand-ins give the same results;
the stand-ins are what macOS and other systems run."""
import os
import subprocess

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
