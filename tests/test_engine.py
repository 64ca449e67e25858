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
    assert engines.describe(load=False) == engines.describe()  # chosen: named either way


def test_a_hello_names_the_engine_without_choosing_one(monkeypatch):
    from deltasync.wire.messages import Hello

    monkeypatch.setattr(engines, "_chosen", None)
    assert Hello.ours("p" * 52).engine == "not loaded yet" and engines._chosen is None


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


def test_librsync_is_found_by_its_soname_before_ldconfig_is_asked(monkeypatch):
    import ctypes.util

    import deltasync.engines.librsync as lr
    asked: list[str] = []
    monkeypatch.delenv("DELTASYNC_LIBRSYNC", raising=False)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: asked.append(name))
    assert lr.LibrsyncEngine().version.startswith("2.")  # the soname the system library (librsync2) has
    assert asked == []
    monkeypatch.setenv("DELTASYNC_LIBRSYNC", "/nowhere/librsync.so")
    tried = lr._candidates()
    assert [next(tried), next(tried)] == ["/nowhere/librsync.so", "librsync.so.2"] and asked == []
    assert next(tried) == "/opt/homebrew/lib/librsync.dylib" and asked == ["rsync"]  # asked once its turn comes


SEG = 64 * 1024  # segments of 8 blocks of 8 KiB, as a file's 4 MiB segments are of its blocks


def _edited(rng: random.Random, old: bytes, kind: str) -> bytes:
    new = bytearray(old)
    if kind == "overwrite":  # in place, as a database page or a VM image changes
        for at in rng.sample(range(0, len(old) - 3000), 12):
            new[at : at + 3000] = rng.randbytes(3000)
    elif kind == "new":  # whole segments and more rewritten
        at = rng.randrange(0, len(old) - 3 * SEG)
        new[at : at + 2 * SEG + 5000] = rng.randbytes(2 * SEG + 5000)
    elif kind == "moved":  # an insertion and a deletion far apart: what lies between them shifts
        a, b = sorted(rng.sample(range(len(old)), 2))
        far = (engine.PINNED_BLOCKS + 2) * 8192  # closer: `test_a_short_changed_run_between_blocks_...`
        a, b = (a, b) if b - a > far else (a, a + far) if a + far < len(old) - 700 else (b - far, b)
        new[b : b + 700] = b""
        new[a:a] = rng.randbytes(700)
    else:  # both
        return _edited(rng, _edited(rng, old, "overwrite"), "moved")
    return bytes(new)


@pytest.mark.parametrize("kind", ["overwrite", "new", "moved", "both"])
@pytest.mark.parametrize("seed", range(4))
def test_a_delta_of_blocks_in_place_patches_exactly_and_costs_what_librsyncs_costs(kind, seed):
    rng = random.Random(seed)
    old = rng.randbytes(12 * SEG + 1234)
    new = _edited(rng, old, kind)
    sig = engine.signature(io.BytesIO(old), 8192)
    used = 0
    for offset in range(0, len(new), SEG):
        seg = new[offset : offset + SEG]
        d = engine.aligned_delta(seg, offset, sig)
        if d is None:
            continue
        used += 1
        out = io.BytesIO()
        engine.patch(io.BytesIO(old), d, out)
        assert out.getvalue() == seg
        theirs = len(engine.delta(seg, sig))
        assert len(d) <= theirs + 64, (offset, len(d), theirs)  # moved data is found as librsync finds it
    if kind in ("overwrite", "new"):
        assert used == 13  # every segment takes the cheap way


def test_a_short_changed_run_between_blocks_in_place_is_not_searched(monkeypatch):
    """Scattered overwrites: a run of at most `PINNED_BLOCKS` changed blocks, in place on both
    sides, goes literally without librsync's search (its cost, ~12 ns a byte, was most of such a
    delta). An insertion and a deletion both inside such a run then cost at most the run."""
    rng = random.Random(5)
    old = rng.randbytes(64 * 8192)
    sig = engine.signature(io.BytesIO(old), 8192)
    searched: list[int] = []
    real = engine.delta
    monkeypatch.setattr(engine, "delta", lambda new, s: searched.append(len(new)) or real(new, s))
    over = bytearray(old)
    over[20 * 8192 + 100 : 20 * 8192 + 100 + 50 * 1024] = rng.randbytes(50 * 1024)  # 7 blocks
    d = engine.aligned_delta(over, 0, sig)
    out = io.BytesIO()
    engine.patch(io.BytesIO(old), d, out)
    assert out.getvalue() == over and searched == []
    assert len(d) < 8 * 8192 + 200
    near = bytearray(old)  # 700 bytes in, 700 out, 14 KB apart: what lies between them is shifted
    del near[30 * 8192 + 5000 : 30 * 8192 + 5700]
    near[30 * 8192 - 9000 : 30 * 8192 - 9000] = rng.randbytes(700)
    d = engine.aligned_delta(near, 0, sig)
    out = io.BytesIO()
    engine.patch(io.BytesIO(old), d, out)
    assert out.getvalue() == near and searched == []
    assert len(d) <= len(real(bytes(near), sig)) + engine.PINNED_BLOCKS * 8192
    wide = bytearray(old)  # the same 30 blocks apart: that run is searched, and costs what librsync's does
    del wide[40 * 8192 + 5000 : 40 * 8192 + 5700]
    wide[10 * 8192 + 3000 : 10 * 8192 + 3000] = rng.randbytes(700)
    d = engine.segment_delta(wide, 0, sig)
    assert searched and len(d) <= len(real(bytes(wide), sig)) + 64


def test_moved_data_everywhere_goes_to_librsync_and_an_md4_signature_is_never_read_in_place():
    rng = random.Random(7)
    old = rng.randbytes(4 * SEG)
    shifted = b"x" * 100 + old
    assert engine.aligned_delta(shifted[:SEG], 0, engine.signature(io.BytesIO(old), 8192)) is None
    md4 = engine.signature(io.BytesIO(old), 8192, magic=engines.RS_RK_MD4_SIG_MAGIC)
    assert engine.aligned_delta(old[:SEG], 0, md4) is None
    assert engine.aligned_delta(old[8192:SEG], 8192 + 1, engine.signature(io.BytesIO(old), 8192)) is None


def test_the_commands_of_a_librsync_delta_read_back_to_its_output():
    """Every width librsync writes: short and long literals, copies of near and far offsets."""
    rng = random.Random(3)
    old = rng.randbytes(1 << 20)
    new = (rng.randbytes(10) + old[:5000] + rng.randbytes(300) + old[70_000:600_000] + rng.randbytes(70_000)
           + old[900_000:])
    d = engine.delta(new, engine.signature(io.BytesIO(old), 1024))
    out = bytearray()
    for copy, at, n in engine._commands(d):
        out += old[at : at + n] if copy else d[at : at + n]
    assert bytes(out) == new
    with pytest.raises(engine.DeltaError):
        list(engine._commands(d[:-3]))


@pytest.mark.parametrize("kind", ["overwrite", "new", "moved", "both"])
def test_a_segment_patched_here_is_librsyncs_patch(tmp_path, kind):
    """The receiver applies a segment's delta itself (one read per copy): the same bytes as
    librsync's patch, for librsync's own deltas (every command width) and for ours."""
    rng = random.Random(kind)
    old = rng.randbytes(12 * SEG + 99)
    new = _edited(rng, old, kind)
    (tmp_path / "old").write_bytes(old)
    sig = engine.signature(io.BytesIO(old), 8192)
    with open(tmp_path / "old", "rb") as basis:
        for offset in range(0, len(new), SEG):
            seg = new[offset : offset + SEG]
            for d in (engine.delta(seg, sig), engine.segment_delta(seg, offset, sig)):
                assert engine.patch_segment(basis.fileno(), memoryview(d), len(seg)) == seg


def test_a_hostile_delta_is_refused_before_it_is_applied(tmp_path):
    """What a segment's delta makes is bounded by the length declared for it, and it copies only
    from within the basis: else a DeltaError, as librsync's patch would give (or hang)."""
    (tmp_path / "old").write_bytes(bytes(range(256)) * 64)  # 16 KiB
    magic = engines.RS_DELTA_MAGIC.to_bytes(4, "big")
    copy = lambda at, n: bytes([0x53]) + at.to_bytes(8, "big") + n.to_bytes(4, "big")  # noqa: E731
    literal = lambda data: bytes([0x43]) + len(data).to_bytes(4, "big") + data  # noqa: E731
    with open(tmp_path / "old", "rb") as basis:
        fd = basis.fileno()
        assert engine.patch_segment(fd, magic + copy(256, 100) + literal(b"xy") + b"\0", 102) == \
            (bytes(range(256)) * 2)[256:356] + b"xy"
        for bad in (magic + copy(16 * 1024 - 10, 20) + b"\0",  # past the basis's end
                    magic + copy(0, 1 << 30) + b"\0",  # past the declared length, before any read
                    magic + literal(b"x" * 200) + b"\0",  # more than declared
                    magic + copy(0, 50) + b"\0",  # less than declared
                    magic + bytes([0x43]) + (50).to_bytes(4, "big") + b"short",  # a literal cut off
                    magic + copy(0, 10),  # no end
                    b"rs\x02\x37" + b"\0"):  # not a delta
            with pytest.raises(engine.DeltaError):
                engine.patch_segment(fd, bad, 100)


def test_a_background_signature_read_in_big_pieces_is_the_same_signature():
    import threading

    from deltasync.store.signatures import _Interruptible

    data = random.Random(5).randbytes(3_000_017)
    f = _Interruptible(io.BytesIO(data), threading.Event())
    assert engine.signature(f, 8192) == engine.signature(io.BytesIO(data), 8192)


@pytest.mark.parametrize("kind", ["overwrite", "new", "moved", "both", "far"])
def test_a_segments_delta_patches_exactly_at_librsyncs_cost_in_bytes(kind):
    """Blocks in place, then the search near the segment, then -- for data from far away -- the
    search in the whole old file: whichever way a segment goes, it costs what librsync's own costs."""
    rng = random.Random(11)
    old = rng.randbytes(12 * SEG + 99)
    if kind == "far":  # segments made of blocks from the other end of the file, a little shifted
        new = old[:4 * SEG] + old[10 * SEG + 333 : 12 * SEG] + old[4 * SEG :]
    else:
        new = _edited(rng, old, kind)
    sig = engine.signature(io.BytesIO(old), 8192)
    digests = engine.block_digests(io.BytesIO(old).read, 8192)
    for offset in range(0, len(new), SEG):
        seg = new[offset : offset + SEG]
        d = engine.segment_delta(seg, offset, sig)
        out = io.BytesIO()
        engine.patch(io.BytesIO(old), d, out)
        assert out.getvalue() == seg
        assert len(d) <= len(engine.delta(seg, sig)) + 64, (kind, offset)
        # the old blocks' blake3 digests, where we have them, find the very same delta; another
        # file's (of another length) are not used
        assert engine.segment_delta(seg, offset, sig, digests) == d
        assert engine.segment_delta(seg, offset, sig, digests[:-engine.DIGEST_LEN]) == d


@pytest.mark.parametrize("block", [8192, 6000, 64])
def test_block_digests_are_each_blocks_blake3_whatever_the_reads(block):
    """One digest per block as the signature cuts the file (the last one short), however the
    file's reads come: in pieces of any length, or in one."""
    data = random.Random(block).randbytes(3 * 65536 + 123)
    want = b"".join(engine.blake3(data[k : k + block]).digest(engine.DIGEST_LEN) for k in range(0, len(data), block))
    f = io.BytesIO(data)
    assert engine.block_digests(lambda _n: f.read(1000003), block) == want
    assert engine.block_digests(io.BytesIO(data).read, block) == want
    assert len(want) == engine.DIGEST_LEN * engine._blocks(engine.signature(io.BytesIO(data), block))
    assert engine.block_digests(io.BytesIO(b"").read, block) == b""


@pytest.mark.parametrize("size", [0, 1, 8192, 3 * 65536, 3 * 65536 + 1, 5 * 65536 - 3])
def test_a_signature_signed_in_parts_on_threads_is_the_one_pass_signature(each_engine, tmp_path, monkeypatch, size):
    """Parts of whole blocks (64 KiB here), signed apart and joined after their headers, give
    librsync's bytes for the whole file: a last part or block cut short, one part, none."""
    monkeypatch.setattr(engine, "SIG_PART", 65536)
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    with open(path, "rb") as f:
        for threads in (1, 3):
            assert engine.signature_of_fd(f.fileno(), size, 8192, threads) == engine.signature(io.BytesIO(data), 8192)


def test_a_moved_segment_is_walked_block_by_block_to_librsyncs_delta():
    """Data shifted twice inside one segment (an insertion, then a deletion): the walk finds
    both displacements with small searches and sends what librsync's whole search sends; new
    data past the budget (an eighth of the segment) is left to that search (None)."""
    rng = random.Random(9)
    old = rng.randbytes(64 * 8192 + 77)
    seg_at = 16 * 8192
    new = old[:seg_at + 5000] + rng.randbytes(1024) + old[seg_at + 5000 : seg_at + 200_000] + old[seg_at + 201_000 :]
    seg = new[seg_at : seg_at + 32 * 8192]
    sig = engine.signature(io.BytesIO(old), 8192)
    lo, near = engine._near(sig, seg_at // 8192, 32)
    d = engine.walked_delta(seg, sig, lo, near)
    assert d is not None
    out = io.BytesIO()
    engine.patch(io.BytesIO(old), d, out)
    assert out.getvalue() == seg
    literal = lambda d: sum(n for copy, _, n in engine._commands(d) if not copy)  # noqa: E731
    assert len(d) <= len(engine.delta(seg, sig)) + 64 and literal(d) <= literal(engine.delta(seg, sig))
    assert literal(d) < 4 * 8192  # the insert, and pieces short of a block where the data shifts
    fresh = seg[:100_000] + rng.randbytes(len(seg) - 100_000)
    assert engine.walked_delta(fresh, sig, lo, near) is None
