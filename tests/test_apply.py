"""The receiver without a network: replaces-checks, segment verification, resume state."""
import os

import pytest

from dataclasses import replace

from conftest import wire
from deltasync import hashing
from deltasync.errors import ProtocolError, TransferFailed, UnsafePath
from deltasync.wire.messages import Op

SEG = 64 * 1024  # the smallest segment a peer may use


def begin(rx, path, data, replaces=None, basis=None):
    return rx.begin(wire("begin_file", path=path, size=len(data), mtime_ns=5, mode=0o644,
                         blake3=hashing.of_bytes(data), segment_size=SEG, basis=basis, replaces=replaces))


def seg(inc, data, i, digest=None):
    chunk = data[i * SEG:(i + 1) * SEG]
    return wire("send_delta", chunk, path=inc.partial.path, index=i, offset=i * SEG, length=len(chunk),
                blake3=digest or hashing.of_bytes(chunk), literal=True)


def test_literal_file_in_segments_then_resume_after_abandon(rx):
    data = os.urandom(3 * SEG + 100)
    inc = begin(rx, "f", data)
    rx.segment(inc, seg(inc, data, 0))
    rx.segment(inc, seg(inc, data, 2))
    rx.abandon(inc)  # the connection dropped
    (p,) = rx.manifest.partials()
    assert p.done == {0, 2}
    assert not (rx.folder.root / "f").exists()
    inc = begin(rx, "f", data)  # a new session resumes the same partial
    assert inc.done == {0, 2}
    rx.segment(inc, seg(inc, data, 1))
    rx.segment(inc, seg(inc, data, 3))
    assert rx.finish(inc).ok
    assert (rx.folder.root / "f").read_bytes() == data
    assert rx.manifest.partials() == [] and list(rx.folder.partials.iterdir()) == []


def test_bad_segment_hash_is_refused_and_not_journaled(rx):
    data = os.urandom(2 * SEG)
    inc = begin(rx, "f", data)
    h = seg(inc, data, 0)
    with pytest.raises(ProtocolError, match="verification"):
        rx.segment(inc, replace(h, body=h.body[:-1] + b"!"))
    assert rx.manifest.partials()[0].done == frozenset()
    with pytest.raises(ProtocolError, match="out of range"):
        rx.segment(inc, replace(h, index=9, offset=9 * SEG))
    rx.abandon(inc)


def test_file_changed_here_is_never_overwritten(rx):
    target = rx.folder.root / "f"
    target.write_bytes(b"local edit the sender never saw")
    with pytest.raises(TransferFailed, match="changed here"):
        begin(rx, "f", b"new", replaces=None)
    with pytest.raises(TransferFailed, match="changed here"):
        begin(rx, "f", b"new", replaces="0" * 64)
    staged = []
    results = rx.stage_small(wire("send_file", b"new", files=[{"path": "f", "size": 3, "mtime_ns": 1, "mode": 0o644,
                                                               "blake3": hashing.of_bytes(b"new"),
                                                               "replaces": None}]), staged)
    assert not results[0].ok and staged == []
    assert target.read_bytes() == b"local edit the sender never saw"


def test_edit_during_transfer_blocks_the_final_rename(rx):
    target = rx.folder.root / "f"
    target.write_bytes(b"v1")
    data = os.urandom(SEG)
    inc = begin(rx, "f", data, replaces=hashing.of_bytes(b"v1"))
    rx.segment(inc, seg(inc, data, 0))
    target.write_bytes(b"v1 edited here meanwhile")
    with pytest.raises(TransferFailed, match="changed here"):
        rx.finish(inc)
    assert target.read_bytes() == b"v1 edited here meanwhile"


def test_hostile_paths_and_ops(rx, tmp_path):
    os.symlink(tmp_path, rx.folder.root / "out")
    for path in ["../x", "/abs", ".deltasync/config.toml", "out/x"]:
        with pytest.raises((UnsafePath, TransferFailed)):
            begin(rx, path, b"x")
        with pytest.raises((UnsafePath, ProtocolError)):
            rx.apply_op(Op.from_wire({"op": "mkdir", "path": path, "kind": "dir", "mode": 0o755}))
        with pytest.raises((UnsafePath, ProtocolError)):
            rx.apply_op(Op.from_wire({"op": "meta", "path": path, "kind": "dir", "mode": 0o700}))
    with pytest.raises(ProtocolError):
        rx.apply_op(Op.from_wire({"op": "chmod-everything", "path": "a", "kind": "dir"}))
    with pytest.raises(ProtocolError, match="add up"):
        rx.stage_small(wire("send_file", b"short", files=[{"path": "a", "size": 10, "mtime_ns": 1, "mode": 0,
                                                             "blake3": "0" * 64}]), [])
    assert sorted(os.listdir(tmp_path)) == ["B"]


def test_partial_for_another_target_or_basis_starts_over(rx):
    data = os.urandom(3 * SEG)
    inc = begin(rx, "f", data)
    rx.segment(inc, seg(inc, data, 0))
    rx.abandon(inc)
    (old,) = rx.manifest.partials()
    other = os.urandom(3 * SEG)  # the source changed before the resume: a new target version
    inc = begin(rx, "f", other)
    assert inc.done == set()
    (new,) = rx.manifest.partials()
    assert new.name != old.name and not (rx.folder.partials / old.name).exists()
    rx.abandon(inc)


def test_stale_partials_are_cleaned(rx):
    data = os.urandom(2 * SEG)
    inc = begin(rx, "f", data)
    rx.segment(inc, seg(inc, data, 0))
    rx.abandon(inc)
    assert rx.clean_stale(3600) == 0 and len(rx.manifest.partials()) == 1
    assert rx.clean_stale(-1) == 1
    assert rx.manifest.partials() == [] and list(rx.folder.partials.iterdir()) == []


def test_unchanged_segments_are_copied_from_the_basis(rx):
    old = os.urandom(3 * SEG)
    (rx.folder.root / "f").write_bytes(old)
    new = old[:SEG] + os.urandom(SEG) + old[2 * SEG:]
    b3 = hashing.of_bytes(old)
    inc = begin(rx, "f", new, replaces=b3, basis=b3)
    h0 = seg(inc, new, 0)
    rx.segment(inc, replace(h0, literal=False, same=True, body=b""))
    rx.segment(inc, seg(inc, new, 1))
    h2 = seg(inc, new, 2)
    with pytest.raises(ProtocolError, match="not what the basis holds"):
        rx.segment(inc, replace(h2, literal=False, same=True, blake3=h0.blake3, body=b""))
    rx.segment(inc, replace(h2, literal=False, same=True, body=b""))
    assert rx.finish(inc).ok
    assert (rx.folder.root / "f").read_bytes() == new
    assert rx.manifest.segments_of(hashing.of_bytes(new), SEG) is not None


def test_a_begin_that_fails_late_closes_the_basis_it_opened(rx, monkeypatch):
    old = os.urandom(2 * SEG)
    (rx.folder.root / "f").write_bytes(old)
    b3 = hashing.of_bytes(old)
    opened = []
    real = rx.safe.open_read
    monkeypatch.setattr(rx.safe, "open_read", lambda path: opened.append(real(path)) or opened[-1])

    def broken(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rx.manifest, "begin_partial", broken)
    with pytest.raises(OSError):
        begin(rx, "f", os.urandom(2 * SEG), replaces=b3, basis=b3)
    assert opened and all(f.closed for f in opened)  # the hash of what is there, and the basis
    assert not rx.registry.claimed("f")


def test_a_file_whose_segments_pass_but_whole_does_not_is_dropped(rx):
    """Each segment verified against its own hash, and the file against the hash it was begun with."""
    data = os.urandom(2 * SEG)
    inc = rx.begin(wire("begin_file", path="f", size=len(data), mtime_ns=5, mode=0o644,
                        blake3=hashing.of_bytes(b"something else"), segment_size=SEG, basis=None, replaces=None))
    rx.segment(inc, seg(inc, data, 0))
    rx.segment(inc, seg(inc, data, 1))
    with pytest.raises(TransferFailed, match="whole-file blake3 mismatch"):
        rx.finish(inc)
    assert not (rx.folder.root / "f").exists() and rx.manifest.partials() == []


def test_a_false_hole_claim_in_a_delta_fails_the_file(rx):
    """A delta's output is hashed as it is written; the zero runs the sender claims are punched
    after. Claimed over bytes that are not zero, the punched file must fail its whole-file check."""
    from deltasync import engine

    old = os.urandom(2 * SEG)
    (rx.folder.root / "f").write_bytes(old)
    new = old[: SEG // 2] + os.urandom(SEG // 2) + old[SEG:]
    b3 = hashing.of_bytes(old)
    inc = begin(rx, "f", new, replaces=b3, basis=b3)
    block, sig = engine.block_len_for(len(old)), None
    with open(rx.folder.root / "f", "rb") as f:
        sig = engine.signature(f, block)
    for i in range(2):
        chunk = new[i * SEG:(i + 1) * SEG]
        rx.segment(inc, wire("send_delta", engine.delta(chunk, sig), path="f", index=i, offset=i * SEG,
                             length=len(chunk), blake3=hashing.of_bytes(chunk), literal=False,
                             holes=[[0, 4096]] if i == 0 else []))
    with pytest.raises(TransferFailed, match="whole-file blake3 mismatch"):
        rx.finish(inc)
    assert (rx.folder.root / "f").read_bytes() == old  # the old version stays in place


def test_a_small_file_changed_here_after_it_was_staged_is_not_overwritten(rx):
    """Checked again at the commit, as a big file is at file_done: an edit made here between
    staging and commit stays (and the staged copy is dropped)."""
    target = rx.folder.root / "f"
    target.write_bytes(b"v1")
    new = b"the peer's v2"
    staged = []
    meta = {"path": "f", "size": len(new), "mtime_ns": 7, "mode": 0o644, "blake3": hashing.of_bytes(new),
            "replaces": hashing.of_bytes(b"v1")}
    assert rx.stage_small(wire("send_file", new, files=[meta]), staged) == []
    target.write_bytes(b"v1 edited here meanwhile")
    (result,) = rx.commit_small(staged)
    assert not result.ok and "changed here" in result.error
    assert target.read_bytes() == b"v1 edited here meanwhile" and list(rx.folder.tmp.iterdir()) == []


def test_small_files_are_staged_then_committed_together(rx):
    staged = []
    files = {f"d/f{i}": os.urandom(100 + i) for i in range(5)}
    metas = [{"path": p, "size": len(d), "mtime_ns": 7, "mode": 0o600, "blake3": hashing.of_bytes(d),
              "replaces": None} for p, d in files.items()]
    assert rx.stage_small(wire("send_file", b"".join(list(files.values())[:2]), files=metas[:2]), staged) == []
    assert rx.stage_small(wire("send_file", b"".join(list(files.values())[2:]), files=metas[2:]), staged) == []
    assert len(staged) == 5 and not (rx.folder.root / "d").exists()  # nothing in place before the commit
    results = rx.commit_small(staged)
    assert all(r.ok for r in results) and staged == []
    for p, d in files.items():
        assert (rx.folder.root / p).read_bytes() == d
    assert list(rx.folder.tmp.iterdir()) == []


def test_a_commit_takes_what_was_staged_before_it_and_a_later_stage_waits_for_the_next(rx):
    """The driver takes the staged files on its loop when a commit starts (which then runs on a
    worker): a frame staged meanwhile is neither flushed late nor dropped by that commit."""
    from deltasync.store.intake import Intake

    intake = Intake(rx, None)

    def frame(path, data):
        return wire("send_file", data, files=[{"path": path, "size": len(data), "mtime_ns": 7, "mode": 0o600,
                                                "blake3": hashing.of_bytes(data), "replaces": None}])

    assert intake.stage(frame("a", b"first")) == []
    taken = intake.take()
    assert intake.stage(frame("b", b"second")) == []  # while the first commit would run
    assert [r.path for r in intake.commit(taken)] == ["a"]
    assert (rx.folder.root / "a").read_bytes() == b"first" and not (rx.folder.root / "b").exists()
    assert [r.path for r in intake.commit(intake.take())] == ["b"]
    assert (rx.folder.root / "b").read_bytes() == b"second" and list(rx.folder.tmp.iterdir()) == []


def test_a_file_deleted_here_after_the_peer_planned_is_not_brought_back(rx):
    """The mesh race: our index went to a peer without `f`; we then took `f` from a third
    peer and it was deleted here (a tombstone). The peer's plan says `f` is new here -- the
    disk agrees (nothing there) -- but the record is newer than the plan: refused."""
    from deltasync.core.entry import FILE, Entry
    from deltasync.store.manifest import Seen

    ticket = rx.registry.open("peer", "server")
    ticket.planned_at = rx.manifest.index_state()[1]  # the index the peer planned against
    rx.manifest.record([Seen(Entry("f", FILE, version=(("third", 2),), deleted=True), 0, 0)])
    data = b"the peer's copy of f"
    meta = {"path": "f", "size": len(data), "mtime_ns": 7, "mode": 0o644, "blake3": hashing.of_bytes(data),
            "replaces": None}
    staged = []
    results = rx.stage_small(wire("send_file", data, files=[meta]), staged, ticket)
    results += rx.commit_small(staged, ticket)
    assert len(results) == 1 and not results[0].ok and "changed here" in results[0].error
    assert not (rx.folder.root / "f").exists()
    ticket.planned_at = rx.manifest.index_state()[1]  # a plan made after the delete: it is the peer's to make
    results = rx.stage_small(wire("send_file", data, files=[meta]), staged, ticket) + rx.commit_small(staged, ticket)
    assert [r.ok for r in results] == [True] and (rx.folder.root / "f").read_bytes() == data


def test_meta_ops_in_one_batch_fail_one_by_one_and_are_recorded_together(rx):
    """A batch of meta ops: the path that changed here fails alone, a version-only one leaves its
    file as it was, a mode change lands; the rows of those that went are recorded at once."""
    from deltasync.core.entry import FILE, Entry
    from deltasync.store.manifest import Seen

    root, m = rx.folder.root, rx.manifest
    for name in "abc":
        (root / name).write_bytes(name.encode() * 100)
        os.chmod(root / name, 0o644)

    def entry(name, mode=0o644, version=(("PEER", 2),)):
        st = os.lstat(root / name)
        return Entry(name, FILE, st.st_size, st.st_mtime_ns, mode, hashing.of_bytes(name.encode() * 100),
                     version=version)

    m.record([Seen(entry(n, version=()), os.lstat(root / n).st_ino, os.lstat(root / n).st_ctime_ns) for n in "abc"])
    seq0, ctime_a = m.index_state()[1], os.lstat(root / "a").st_ctime_ns
    (root / "c").write_bytes(b"edited here")
    res = rx.apply_metas([entry("a"), entry("b", 0o600), replace(entry("c"), size=300)])
    assert [r.ok for r in res] == [True, True, False] and "changed here" in res[2].error
    assert os.lstat(root / "a").st_ctime_ns == ctime_a  # a new version only: the file is not touched
    assert os.stat(root / "b").st_mode & 0o777 == 0o600
    assert m.index_state()[1] == seq0 + 2  # two rows, in one record
    got = m.entries(["a", "b", "c"])
    assert got["a"].version == got["b"].version == (("PEER", 2),) and got["c"].version == ()
