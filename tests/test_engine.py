import io
import random
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltasync import engine, engines
from conftest import have_rdiff

ENGINES = engines.available()
assert ENGINES, "no librsync engine loads here"


@pytest.fixture(autouse=True, params=[e.name for e in ENGINES])
def each_engine(request):
    """Every engine test runs against every engine that loads here."""
    engines.use(next(e for e in ENGINES if e.name == request.param))
    yield request.param
    engines.use(None)


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
    from deltasync.core.limits import DELTA_MIN

    assert engine.block_len_for(0) == 512  # a small file edited: about sqrt(20 * size), in 64s, at least 512
    assert engine.block_len_for(30 * 1024) == 832 and engine.block_len_for(DELTA_MIN - 1) == 1664
    assert engine.block_len_for(DELTA_MIN) == 8192
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


@pytest.mark.skipif(len(ENGINES) < 2, reason="one engine loads here (python-rsync has no wheel for this Python)")
def test_engines_are_interchangeable():
    """A signature from one engine and a delta from the other patch to the same bytes, and
    every engine's signature and delta are byte-identical (the formats are librsync's)."""
    rng = random.Random(5)
    old = rng.randbytes(400_000)
    new = old[:100_000] + rng.randbytes(7000) + old[90_000:]
    sigs, deltas = [], []
    for e in ENGINES:
        sig, d = io.BytesIO(), io.BytesIO()
        e.signature(io.BytesIO(old), sig, 8192, 16, engines.RS_RK_BLAKE2_SIG_MAGIC)
        sigs.append(sig.getvalue())
        deltas.append(d)
    assert len(set(sigs)) == 1
    for maker in ENGINES:
        for patcher in ENGINES:
            d = io.BytesIO()
            maker.delta(io.BytesIO(new), io.BytesIO(sigs[0]), d)
            out = io.BytesIO()
            patcher.patch(io.BytesIO(old), io.BytesIO(d.getvalue()), out)
            assert out.getvalue() == new, (maker.name, patcher.name)


def test_every_magic_and_strong_length(each_engine):
    rng = random.Random(6)
    old = rng.randbytes(50_000)
    new = old[:20_000] + b"x" * 100 + old[20_000:]
    for magic in sorted(engines.SIG_MAGICS):
        for strong in (8, 16, 32 if magic in (engines.RS_BLAKE2_SIG_MAGIC, engines.RS_RK_BLAKE2_SIG_MAGIC) else 16):
            sig = engine.signature(io.BytesIO(old), 2048, strong, magic)
            out = io.BytesIO()
            engine.patch(io.BytesIO(old), engine.delta(new, sig), out)
            assert out.getvalue() == new, (hex(magic), strong)


def test_engine_named_in_describe(each_engine):
    assert engines.describe().startswith(each_engine + " (librsync ")


def test_forced_engine_and_a_missing_library(monkeypatch):
    monkeypatch.setenv("DELTASYNC_ENGINE", "nonsense")
    engines.use(None)
    with pytest.raises(engines.EngineMissing, match="pyrsync or librsync"):
        engines.get()
    monkeypatch.setenv("DELTASYNC_ENGINE", "librsync")
    monkeypatch.setenv("DELTASYNC_LIBRSYNC", "/nonexistent/librsync.so")
    monkeypatch.setattr("ctypes.util.find_library", lambda name: None)
    import deltasync.engines.librsync as lr
    monkeypatch.setattr(lr, "_candidates", lambda: ["/nonexistent/librsync.so"])
    engines.use(None)
    with pytest.raises(engines.EngineMissing, match="cannot load"):
        engines.get()
    engines.use(None)
