import io
import random
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltasync import engine
from conftest import have_rdiff


def roundtrip(old: bytes, new: bytes, block: int = 1024) -> bytes:
    sig = engine.signature(io.BytesIO(old), block)
    d = engine.delta(new, sig)
    out = io.BytesIO()
    engine.patch(io.BytesIO(old), d, out)
    return out.getvalue()


def test_engine_imports_and_round_trips():
    """A broken python-rsync install (no compiled module) must fail here, loudly."""
    rng = random.Random(1)
    old = rng.randbytes(300_000)
    new = old[:1000] + b"inserted" + old[1000:200_000] + rng.randbytes(5000) + old[205_000:]
    assert roundtrip(old, new) == new
    d = engine.delta(new, engine.signature(io.BytesIO(old), 1024))
    assert len(d) < 20_000  # only the change travels


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=20000), st.binary(max_size=20000), st.sampled_from([256, 1024, 8192]))
def test_round_trip_property(old, new, block):
    assert roundtrip(old, new, block) == new


def test_block_len_scales_with_size():
    assert engine.block_len_for(0) == 8192
    assert engine.block_len_for(500 * 2**20) == 8192
    assert engine.block_len_for(4 * 2**30) == 65536
    assert (4 * 2**30) // engine.block_len_for(4 * 2**30) <= engine.MAX_BLOCKS


def test_corrupt_delta_is_a_typed_error():
    with pytest.raises(engine.DeltaError):
        engine.patch(io.BytesIO(b"basis"), b"not a delta at all", io.BytesIO())


@pytest.mark.skipif(not have_rdiff, reason="rdiff (Debian package) not installed")
def test_signature_byte_identical_to_rdiff(tmp_path):
    data = random.Random(2).randbytes(1_000_000)
    src = tmp_path / "f"
    src.write_bytes(data)
    subprocess.run(["rdiff", "signature", "-b", "8192", "-S", "16", "-H", "blake2", "-R", "rabinkarp",
                    str(src), str(tmp_path / "sig")], check=True)
    assert engine.signature(io.BytesIO(data), 8192) == (tmp_path / "sig").read_bytes()


@pytest.mark.skipif(not have_rdiff, reason="rdiff (Debian package) not installed")
def test_our_delta_patches_with_rdiff(tmp_path):
    rng = random.Random(3)
    old = rng.randbytes(200_000)
    new = old[:50_000] + rng.randbytes(3000) + old[50_000:]
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "delta").write_bytes(engine.delta(new, engine.signature(io.BytesIO(old), 8192)))
    subprocess.run(["rdiff", "patch", str(tmp_path / "old"), str(tmp_path / "delta"), str(tmp_path / "new")],
                   check=True)
    assert (tmp_path / "new").read_bytes() == new


def test_delta_reaching_past_the_basis_is_refused_not_looped():
    rng = random.Random(4)
    real = rng.randbytes(50_000)
    pretend = real + rng.randbytes(400_000)  # the sender claims a longer basis
    d = engine.delta(pretend[100_000:200_000], engine.signature(io.BytesIO(pretend), 8192))
    with pytest.raises(engine.DeltaError, match="basis"):
        engine.patch(io.BytesIO(real), d, io.BytesIO())
