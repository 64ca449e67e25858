"""Ignore rules: gitignore semantics (checked against git itself), the state
folder at any depth and in any spelling, and matching that stays fast on
patterns built to make a backtracking matcher spin."""
import shutil
import subprocess
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from deltasync.fs.ignore import Ignore

have_git = shutil.which("git") is not None

PATTERNS = ["build/", "*.log", "!a/x.log", "/top.txt", "docs/**/*.md", "**/cache", "a/**", "[ab]?.c",
            "\\#lit", "x*y*z", "deep/**/leaf/", "*.tmp", "!keep.tmp", "**/n?/m"]
PATHS = ["build", "build/x.o", "build/sub/y", "x.log", "a/x.log", "b/x.log", "top.txt", "s/top.txt",
         "docs/a.md", "docs/q/r/a.md", "docs/a.txt", "cache", "z/cache", "z/cache/f", "a", "a/f", "a/b/c",
         "ab.c", "bc.c", "abc.c", "#lit", "xAAyBBz", "xy", "deep/leaf/f", "deep/1/2/leaf/g", "w.tmp",
         "keep.tmp", "n1/m", "q/nn/m", "q/n2/m"]
DIRS = {"build", "build/sub", "docs", "docs/q", "docs/q/r", "z", "z/cache", "a", "a/b", "deep", "deep/leaf",
        "deep/1", "deep/1/2", "deep/1/2/leaf", "s", "b", "n1", "q", "q/nn", "q/n2"}


def git_ignored(tmp_path, patterns, paths, dirs):
    repo = tmp_path / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for d in sorted(dirs):
        (repo / d).mkdir(parents=True, exist_ok=True)
    for p in paths:
        if p not in dirs:
            (repo / p).parent.mkdir(parents=True, exist_ok=True)
            (repo / p).touch()
    (repo / ".gitignore").write_text("\n".join(patterns) + "\n")
    out = subprocess.run(["git", "-C", str(repo), "check-ignore", "--no-index", "--stdin"],
                         input="\n".join(paths) + "\n", capture_output=True, text=True).stdout
    return set(out.splitlines())


@pytest.mark.skipif(not have_git, reason="git is not installed")
def test_same_decisions_as_git(tmp_path):
    ign = Ignore(PATTERNS)
    ours = {p for p in PATHS if ign(p, p in DIRS)}
    assert ours == git_ignored(tmp_path, PATTERNS, PATHS, DIRS)


glob_piece = st.sampled_from(["a", "b", "*", "?", "**", "[ab]", "[!a]", "/", "c"])


@pytest.mark.skipif(not have_git, reason="git is not installed")
@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(glob_piece, min_size=1, max_size=6).map("".join), min_size=1, max_size=4),
       st.booleans())
@example(["?**/a"], False)  # a wildcard before `**/`: git does not glue it to the next name
def test_random_patterns_agree_with_git(tmp_path_factory, pats, negate_last):
    pats = [p for p in pats if p.strip("/") and "***" not in p]
    if not pats:
        return
    if negate_last and len(pats) > 1:
        pats[-1] = "!" + pats[-1]
    paths = ["a", "b", "ab", "ba", "a/b", "a/b/c", "b/a/c", "c/c/a", "ab/ba/cc", "a/a/a/b"]
    dirs = {"a", "a/b", "b", "b/a", "c", "c/c", "ab", "ab/ba", "a/a", "a/a/a"}
    paths = [p for p in paths if not any(p == d for d in dirs)] + sorted(dirs)
    ign = Ignore(pats)
    ours = {p for p in paths if ign(p, p in dirs)}
    assert ours == git_ignored(tmp_path_factory.mktemp("g"), pats, paths, dirs), pats


# what git 2.39 answers (`git check-ignore --no-index`) for `**` glued to a name
GLUED = {
    "a**/b": {"ab", "ax/b", "ax/y/b", "a/b"},
    "a**b": {"ab", "axb", "x/ab"},
    "x/a**/b": {"x/ab", "x/a/b", "x/ax/y/b"},
    "a/**b": {"a/xb", "a/b"},
    "*/**b": {"ax/b", "a/xb", "a/b", "xa/b", "x/ab"},
}


@pytest.mark.parametrize("pattern", sorted(GLUED))
def test_double_star_glued_to_a_name_reads_as_git_does(pattern):
    paths = ["ab", "axb", "ax/b", "ax/y/b", "a/xb", "a/b", "xa/b", "x/ab", "x/a/b", "x/ax/y/b", "b", "xb"]
    ign = Ignore([pattern])
    assert {p for p in paths if ign(p, False)} == GLUED[pattern]


def test_many_glued_double_stars_are_refused_not_expanded():
    assert Ignore(["a**/" * 30 + "b"])("a" * 30 + "b", False) is False


@pytest.mark.parametrize("path", [".deltasync", "a/.deltasync", "a/b/.DeltaSync", ".DELTASYNC/key.pem",
                                  "x/\uff0edeltasync", "d/.deltasync-tmp-123-abc"])
def test_state_folders_are_always_ignored(path):
    assert Ignore()(path, True)
    assert Ignore(["!.deltasync", "!**/.deltasync"])(path, True)


def test_hostile_patterns_match_in_bounded_time():
    """pathspec (a backtracking regex) needs minutes for the first of these on a 200-char name."""
    evil = ["*a*a*a*a*a*a*a*a*a*a*a*a*b", "**/*a*a*a*a*a*a*a*a*a*b/**/x", "a/**/a/**/a/**/a/**/a/**/b",
            "[a]*[a]*[a]*[a]*[a]*[a]*[a]*[a]*c"]
    ign = Ignore(evil)
    long_name = "a" * 200
    deep = "/".join(["a"] * 1000)
    start = time.process_time()
    for _ in range(20):
        assert not ign(long_name)
        assert not ign(deep)
    assert time.process_time() - start < 5.0


def test_pattern_count_is_bounded(tmp_path):
    (tmp_path / ".deltasyncignore").write_text("x\n" * 20_000 + "late\n")
    ign = Ignore.for_folder(tmp_path)
    assert ign("x") and not ign("late")
