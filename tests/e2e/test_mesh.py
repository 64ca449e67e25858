"""Five real `deltasync watch` processes, each trusting the other four, each
editing, renaming and deleting at the same time: they converge to one tree,
every concurrent edit of one file is kept (the winner in place, the others as
conflict copies), and nothing deleted comes back.

Small in CI; bigger with DELTASYNC_MESH_FILES (files each peer makes, default 10)."""
import os
import time
from pathlib import Path

from conftest import Watch, ds, free_port, wait_for

N = 5


def _tree(root: Path) -> dict[str, str | None]:
    def text(p: Path) -> str | None:
        try:
            return p.read_text()
        except OSError:  # renamed or replaced under us: the next poll looks again
            return None
    return {p.relative_to(root).as_posix(): text(p) for p in sorted(root.rglob("*"))
            if p.is_file() and ".deltasync" not in p.parts}


def test_mesh_of_five_converges_keeping_every_edit(tmp_path):
    many = int(os.environ.get("DELTASYNC_MESH_FILES", "10"))
    peers = [tmp_path / f"P{k}" for k in range(N)]
    for p in peers:
        ds("init", p)
    ids = [ds("id", p).stdout.strip() for p in peers]
    addr = [f"127.0.0.1:{free_port()}" for _ in peers]
    for i, p in enumerate(peers):
        for j in range(N):
            if i != j:
                ds("trust", p, ids[j], "--name", f"p{j}", "--address", addr[j])
    first = peers[0]
    (first / "base").mkdir()
    for k in range(N):
        (first / "base" / f"edit{k}.txt").write_text(f"base {k}")
        (first / "base" / f"gone{k}.txt").write_text(f"to be deleted by {k}")
        (first / f"move{k}.txt").write_text(f"to be moved by {k}")
    (first / "shared.txt").write_text("base")
    watchers = [Watch(p, a) for p, a in zip(peers, addr)]
    try:
        # trees compared in this process: a digest subprocess per peer per poll took a core from the peers
        wait_for(lambda: all(_tree(p) == _tree(first) for p in peers), 180, "the base tree on all five", watchers)
        for k, p in enumerate(peers):  # all at once: no peer waits for another
            (p / "base" / f"edit{k}.txt").write_text(f"edited by {k}")
            (p / "base" / f"gone{k}.txt").unlink()
            (p / f"mine{k}").mkdir()
            (p / f"move{k}.txt").rename(p / f"mine{k}" / f"moved{k}.txt")
            for i in range(many):
                (p / f"mine{k}" / f"new{i}.txt").write_text(f"{k}:{i}")
            (p / "shared.txt").write_text(f"shared, as {k} wrote it")

        def converged() -> bool:
            trees = [_tree(p) for p in peers]
            if any(t != trees[0] for t in trees[1:]):
                return False
            shared = [v for n, v in trees[0].items() if n.startswith("shared")]
            return len(shared) == N  # the winner and four conflict copies
        wait_for(converged, 300, "five peers converged, every edit of shared.txt kept", watchers)
        time.sleep(3)  # a few more rounds of sessions: a deleted file must not come back
        assert converged()
    finally:
        for w in watchers:
            w.stop()
    tree = _tree(first)
    try:
        for k in range(N):
            assert tree[f"base/edit{k}.txt"] == f"edited by {k}"
            assert f"base/gone{k}.txt" not in tree, "a delete was undone"
            assert f"move{k}.txt" not in tree and tree[f"mine{k}/moved{k}.txt"] == f"to be moved by {k}"
            assert all(tree[f"mine{k}/new{i}.txt"] == f"{k}:{i}" for i in range(many))
        shared = sorted(v for n, v in tree.items() if n.startswith("shared"))
        assert shared == sorted(f"shared, as {k} wrote it" for k in range(N))  # nothing lost
    except AssertionError as e:  # which session did it: the peers' own accounts
        raise AssertionError("\n".join([str(e), *(w.tail(60) for w in watchers)])) from None
