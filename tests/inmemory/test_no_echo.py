"""What a server records just as a client sent it is not sent back to that client (`no-echo`):
the client put it in its copy of the server's index when the server acknowledged it."""
import shutil

import pytest

from conftest import folder_pair
from deltasync.run import driver
from deltasync.wire import messages
from inmemory.test_conversations import converse, same

pytestmark = pytest.mark.inmemory


def _tree(root, n=30):
    for i in range(n):
        (root / f"d{i % 3}").mkdir(exist_ok=True)
        (root / f"d{i % 3}" / f"f{i}.txt").write_text(f"file {i}\n" * (i + 1))


@pytest.mark.parametrize("mode", ["push", "sync"])
def test_what_a_session_gave_the_server_does_not_come_back(tmp_path, mode):
    a, b = folder_pair(tmp_path)
    _tree(a.root)
    converse(a, b, mode)
    r = converse(a, b, mode)
    assert same(a, b) and r.index_entries == 0 and r.literal_bytes == 0, r.index_entries
    (a.root / "d0" / "f0.txt").write_text("edited on A\n")
    (b.root / "d1" / "new-on-b.txt").write_text("made on B\n")
    r = converse(a, b, mode)
    assert r.index_entries == 2  # B's own new file and its directory, not the edit A gave it
    # (a sync's push half sets no directory times: B's d0, whose time the edit's rename moved, is B's news)
    assert converse(a, b, mode).index_entries == (0 if mode == "push" else 1)


def test_a_first_sync_of_two_copies_of_a_tree_is_not_sent_back(tmp_path):
    a, b = folder_pair(tmp_path)
    _tree(a.root)
    shutil.copytree(a.root, b.root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".deltasync"),
                    copy_function=shutil.copy2)
    first = converse(a, b, "sync")
    assert first.files_meta == 30 and first.literal_bytes == 0  # a version-only update for every file
    r = converse(a, b, "sync")
    assert r.index_entries == 0 and r.files_meta == 0 and same(a, b)


def test_a_session_that_did_not_keep_every_verdict_is_sent_them_back(tmp_path, monkeypatch):
    """A client that stopped before it kept what the server acknowledged (its copy of the server's
    index is behind) does not say it heard everything: the next index brings those rows back, once,
    and nothing is sent again."""
    a, b = folder_pair(tmp_path)
    _tree(a.root)
    with monkeypatch.context() as m:
        m.setattr(driver.Driver, "hold_heard", lambda self, done=False: _nothing())
        converse(a, b)
    again = converse(a, b)
    assert again.index_entries == 33 and again.literal_bytes == 0 and again.files_sent_whole == 0
    last = converse(a, b)
    assert last.index_entries == 0 and last.literal_bytes == 0 and same(a, b)


async def _nothing():
    return None


def test_a_client_without_no_echo_is_sent_everything(tmp_path, monkeypatch):
    monkeypatch.setattr(messages, "FEATURES", tuple(f for f in messages.FEATURES if f != messages.NO_ECHO))
    a, b = folder_pair(tmp_path)
    _tree(a.root)
    converse(a, b)
    r = converse(a, b)
    assert r.index_entries == 33 and same(a, b)  # 30 files and 3 directories, as B recorded them
