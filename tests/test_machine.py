"""The conversation machine alone: no network, no disk -- two machines talk
through bytes, and each rule of the order table and its counters is checked
from both ends."""
from pathlib import Path

import pytest

from deltasync.core.entry import FILE, Entry
from deltasync.errors import PeerBusy, ProtocolError, RemoteError
from deltasync.wire import machine as mc
from deltasync.wire.framing import MAX_HEADER, FrameDecoder, encode_parts, inflate
from deltasync.wire.messages import (
    Ack, Acks, BeginFile, Bye, Error, FileDone, FileList, FileRequest, Hello, Op, RequestDone, RequestFile,
    RequestFileList, RequestSignature, SendChanges, SendDelta, SendFile, Signature, SmallFile, parse,
)

pytestmark = pytest.mark.inmemory
B3 = "ab" * 32


def hello(peer="P" * 56, compress=False):
    return Hello((1,), peer, ("zstd",) + (("compress",) if compress else ()), "test")


def over(sender: mc.Conversation, receiver: mc.Conversation, m):
    """`m` from one machine to the other through real bytes; the receiver's effects."""
    (frame,) = FrameDecoder().feed(b"".join(sender.send(m)))
    return receiver.receive(parse(inflate(frame)))


def opened():
    c, s = mc.Conversation(mc.CLIENT), mc.Conversation(mc.SERVER)
    over(c, s, hello())
    over(s, c, hello())
    return c, s


def listed():
    c, s = opened()
    over(c, s, RequestFileList())
    over(s, c, FileList(more=False))
    return c, s


def begin(path="f"):
    return BeginFile(path, 10, 1, 0o644, B3, 1 << 22, None, None)


def delta(path="f"):
    return SendDelta(path, 0, 0, 4, B3, True, False, b"abcd")


def test_the_docs_show_the_machines_table():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md").read_text()
    assert mc.order_table() in doc


def test_a_whole_session_through_two_machines():
    c, s = mc.Conversation(mc.CLIENT, compress=True), mc.Conversation(mc.SERVER)
    assert over(c, s, hello(compress=True)) == [mc.Greet(hello(compress=True))]
    assert s.compress and s.compress_index  # the client asked for compression and reads zstd
    assert isinstance(over(s, c, hello())[0], mc.Greeted) and c.compress
    assert over(c, s, RequestFileList(dry_run=True)) == [mc.SendIndex(True)]
    e = Entry("f", FILE, 3, 1, 0o644, B3)
    part = next(FileList.chunked([e], []))
    (got,) = over(s, c, part)
    assert isinstance(got, mc.IndexPart) and got.part.entries == (e,) and c.phase == mc.Phase.LISTED
    assert over(c, s, Bye()) == [mc.Close()] and s.phase == mc.Phase.CLOSING
    assert over(s, c, Bye()) == [mc.Closed()] and c.finished and s.finished


def test_push_effects_and_verdicts():
    c, s = listed()
    small = SendFile((SmallFile(Entry("a", FILE, 1, 1, 0o644, B3), None),), b"x")
    assert over(c, s, small) == [mc.Stage(small)]
    assert s.idle() == [mc.Commit()] and s.idle() == []  # committed once, when no frame waits
    over(c, s, small)
    assert over(c, s, begin()) == [mc.Commit(), mc.Begin(begin())]  # staged files first, then the next thing
    assert over(c, s, delta()) == [mc.Write(delta())]
    s.gave_up("f")  # the receiver could not take it: its remaining segments are skipped
    assert over(c, s, delta()) == [] and over(c, s, FileDone("f")) == []
    assert s.verdict("a", True) == Ack("a", True) and c.verdict("a", True) is None  # verdicts go to the client
    for path in ("a", "a", "f"):
        assert over(s, c, Ack(path, True)) == [mc.Verdict(Ack(path, True))]
    with pytest.raises(ProtocolError, match="verdict for more files"):
        over(s, c, Ack("extra", True))


def test_many_verdicts_go_in_one_acks_frame_to_a_client_that_reads_them():
    files = tuple(SmallFile(Entry(f"d/{i}", FILE, 1, 1, 0o644, B3), None) for i in range(5))
    for features, batched in ((("zstd", "acks"), True), (("zstd",), False)):  # (an older client: one each)
        c, s = mc.Conversation(mc.CLIENT), mc.Conversation(mc.SERVER)
        over(c, s, Hello((1,), "P" * 56, features, "test"))
        over(s, c, hello())
        over(c, s, SendFile(files, b"x" * 5))
        acks = [Ack(f.entry.path, i != 3, whole=True, error="full" if i == 3 else None)
                for i, f in enumerate(files)]
        said = s.said(acks)
        assert said == ([Acks(tuple(acks))] if batched else acks)
        effects = [e for m in said for e in over(s, c, m)]
        assert effects == [mc.Verdict(a) for a in acks]  # each verdict as it was, in order
        with pytest.raises(ProtocolError, match="verdict for more files"):  # each entry counts as one
            over(s, c, Acks((Ack("extra", True),)))


def test_acks_are_grouped_under_the_header_limit_and_checked():
    long = [Ack("p" * 4000 + str(i), False, error="\x01" * 1000) for i in range(40)]  # escaped: 6 bytes a char
    server = mc.Conversation(mc.SERVER)
    over(mc.Conversation(mc.CLIENT), server, Hello((1,), "P" * 56, ("acks",), "test"))
    said = server.said(long)
    assert len(said) > 1 and [a for m in said for a in m.acks] == long
    assert all(len(m.parts()[0]) <= MAX_HEADER for m in said)
    c, s = listed()
    over(c, s, SendFile((SmallFile(Entry("a", FILE, 1, 1, 0o644, B3), None),), b"x"))
    for bad in ([1], [{"path": 3, "ok": True}], [{"path": "a"}]):
        (frame,) = FrameDecoder().feed(b"".join(encode_parts("acks", files=bad)))
        with pytest.raises(ProtocolError):
            c.receive(parse(inflate(frame)))


def test_pull_answers_only_while_asked():
    c, s = listed()
    with pytest.raises(ProtocolError, match="no request asked for"):
        over(s, c, begin())
    req = RequestFile((FileRequest("f", "f", B3),))
    assert over(c, s, req) == [mc.Serve(req)]
    with pytest.raises(ProtocolError, match="while its requests"):
        c.send(SendChanges((Op("mkdir", Entry("d", "dir")),)))  # our own client may not push now either
    over(s, c, begin())
    with pytest.raises(ProtocolError, match="file still open"):
        s.send(RequestDone())
    over(s, c, FileDone("f"))
    assert over(s, c, Ack("f", False, error="gone")) == [mc.Verdict(Ack("f", False, error="gone"))]
    with pytest.raises(ProtocolError, match="refused more files"):
        over(s, c, Ack("g", False))
    c2, s2 = listed()
    over(c2, s2, req)
    assert over(s2, c2, RequestDone()) == [mc.Answered()]
    with pytest.raises(ProtocolError, match="no request open"):
        over(s2, c2, RequestDone())


def test_order_is_enforced_both_ways():
    c, s = mc.Conversation(mc.CLIENT), mc.Conversation(mc.SERVER)
    with pytest.raises(ProtocolError, match="out of order"):
        over(c, s, RequestFileList())  # before hello, refused by our own machine already
    c, s = opened()
    with pytest.raises(ProtocolError, match="out of order"):
        over(c, s, RequestFile((FileRequest("f", "f", B3),)))  # a pull asks as of an index
    with pytest.raises(ProtocolError, match="out of order"):
        over(c, s, Ack("x", True))
    with pytest.raises(ProtocolError, match="out of order"):
        over(s, c, RequestSignature("f", B3))  # only the client asks for signatures


def test_signatures_only_when_asked():
    c, s = opened()
    with pytest.raises(ProtocolError, match="not asked for"):
        over(s, c, Signature("f", None))
    assert over(c, s, RequestSignature("f", B3)) == [mc.Sign(RequestSignature("f", B3))]
    assert over(s, c, Signature("f", B3, 2048, b"sig")) == [mc.SignatureReady(Signature("f", B3, 2048, b"sig"))]


def test_file_streams_are_bounded():
    c, s = opened()
    over(c, s, begin())
    with pytest.raises(ProtocolError, match="already in flight"):
        over(c, s, begin())
    with pytest.raises(ProtocolError, match="was not begun"):
        over(c, s, delta("g"))
    with pytest.raises(ProtocolError, match="still open"):
        over(c, s, Bye())
    c, s = opened()
    for i in range(64):
        over(c, s, begin(f"f{i}"))
    with pytest.raises(ProtocolError, match="in flight at once"):
        over(c, s, begin("one-more"))


def test_errors_are_typed():
    c, s = opened()
    with pytest.raises(PeerBusy):
        over(s, c, Error("busy: a sync with you is already running; retry later"))
    c, s = opened()
    with pytest.raises(RemoteError, match="peer: disk full") as e:
        over(s, c, Error("disk full"))
    assert not isinstance(e.value, PeerBusy) and c.phase == mc.Phase.FAILED
