"""Which paths are not synced: a state folder (`.deltasync`, in any case, at
any depth) always, plus `.deltasyncignore` (gitignore syntax) and `--exclude`.
Ignored paths are neither scanned, sent, fetched nor deleted on either side.

`.deltasyncignore` is synced like any file, so its patterns come from peers:
matching must stay fast whatever they say. A regex engine that backtracks
(pathspec, fnmatch before 3.9) takes exponential time on patterns such as
`*a*a*a*a*a*b`. Here a path is matched component by component; inside a
component every `*` but the last is an atomic lazy group (the leftmost
occurrence of the fixed-length chunk that follows it is always the best
choice), and runs of components between `**` are placed leftmost the same way.
That keeps every match polynomial -- O(path length x pattern length) component
checks, each linear -- and the pattern file is bounded in size and count.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from ..core.limits import MAX_IGNORE_BYTES, MAX_IGNORE_PATTERNS
from ..core.record import Record, record
from .safe import TMP_PREFIX, is_reserved

log = logging.getLogger(__name__)

IGNORE_FILE = ".deltasyncignore"
_STAR = None  # a `**` component


def _chunk(glob: str) -> str:
    """A star-free piece of a component glob as a regex (`?`, `[...]`, `\\x`, literals)."""
    out, i, n = [], 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "\\" and i + 1 < n:
            out.append(re.escape(glob[i + 1]))
            i += 2
            continue
        if c == "?":
            out.append(".")
        elif c == "[":
            j = i + 1
            if j < n and glob[j] in "!^":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal '['
                out.append(re.escape(c))
            else:
                body = glob[i + 1 : j]
                neg = body[:1] in ("!", "^")
                body = body[1:] if neg else body
                body = body.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
                out.append(f"[{'^' if neg else ''}{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _split_stars(glob: str) -> list[str]:
    """Split a component glob at unescaped `*` (runs of stars count as one)."""
    parts, cur, i = [], [], 0
    while i < len(glob):
        c = glob[i]
        if c == "\\" and i + 1 < len(glob):
            cur.append(glob[i : i + 2])
            i += 2
            continue
        if c == "*":
            parts.append("".join(cur))
            cur = []
            while i < len(glob) and glob[i] == "*":
                i += 1
            continue
        cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def component_regex(glob: str) -> re.Pattern[str]:
    """One path component's glob as a regex that cannot backtrack catastrophically."""
    pieces = [_chunk(p) for p in _split_stars(glob)]
    if len(pieces) == 1:
        return re.compile(f"(?s:{pieces[0]})\\Z")
    head, *middle, tail = pieces
    body = head + "".join(f"(?>.*?{m})" for m in middle) + f".*{tail}"
    return re.compile(f"(?s:{body})\\Z")


_WILD = re.compile(r"(?<!\\)[?*\[]")  # a wildcard, not escaped
MAX_GLUED = 4  # `x**/` components in one pattern (each doubles the alternatives to match)


def _glued(comps: list[str]) -> list[list[str]]:
    """git reads `x**/rest` as `x` then zero or more directories then `rest`: either
    `x` and the next component are one name (`a**/b` matches `ab`), or `x*/**/rest`.
    The component lists that together mean the same."""
    for i, c in enumerate(comps[:-1]):
        head = c.rstrip("*")
        stars = len(c) - len(head)
        if head.endswith("\\"):  # the first star is a literal one
            head, stars = head + "*", stars - 1
        if head and stars >= 2 and not _WILD.search(head.replace("\\*", "")):  # (git glues literal heads only)
            rest = comps[i + 1 :]
            return _glued(comps[:i] + [head + rest[0]] + rest[1:]) + _glued(comps[:i] + [head + "*", "**"] + rest)
    return [comps]


@record
class Rule(Record):
    alternatives: tuple[tuple[re.Pattern[str] | None, ...], ...]  # regexes, and _STAR for `**`; any may match
    negate: bool
    dir_only: bool
    anchored: bool

    @classmethod
    def parse(cls, line: str) -> "Rule | None":
        line = line.rstrip("\n\r")
        while line.endswith(" ") and not line.endswith("\\ "):
            line = line[:-1]
        if not line or line.startswith("#"):
            return None
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        elif line.startswith("\\!") or line.startswith("\\#"):
            line = line[1:]
        if "//" in line:  # an empty component: git matches nothing with it
            return None
        dir_only = line.endswith("/")
        line = line[:-1] if dir_only else line
        if not line:
            return None
        anchored = "/" in line
        line = line.lstrip("/")
        comps = [c for c in line.split("/") if c]
        if not comps:
            return None
        if sum(c != "**" and c.endswith("**") for c in comps[:-1]) > MAX_GLUED:
            log.warning("ignore pattern with more than %d `x**/` components not used: %s", MAX_GLUED, line[:80])
            return None
        alternatives = []
        for option in _glued(comps):
            parts: list[re.Pattern[str] | None] = []
            for c in option:
                if c == "**":
                    if not parts or parts[-1] is not _STAR:
                        parts.append(_STAR)
                else:
                    parts.append(component_regex(c))
            alternatives.append(tuple(parts))
        return cls(tuple(alternatives), negate, dir_only, anchored)

    def matches(self, comps: list[str], is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        if not self.anchored:  # a pattern without a slash matches the name at any depth
            rx = self.alternatives[0][0]
            return rx is _STAR or bool(rx.match(comps[-1]))
        return any(_match_parts(parts, comps) for parts in self.alternatives)


def _fixed(group: tuple[re.Pattern[str], ...], comps: list[str], at: int) -> bool:
    return all(rx.match(comps[at + k]) for k, rx in enumerate(group))


def _match_parts(parts: tuple[re.Pattern[str] | None, ...], comps: list[str]) -> bool:
    """Components against parts with `**` (zero or more components; a trailing one, one or more)."""
    groups: list[tuple[re.Pattern[str], ...]] = [()]
    for p in parts:
        if p is None:
            groups.append(())
        else:
            groups[-1] = groups[-1] + (p,)
    if len(groups) == 1:
        return len(comps) == len(groups[0]) and _fixed(groups[0], comps, 0)
    first, *middle, last = groups
    lo, hi = len(first), len(comps) - len(last)
    if parts[-1] is _STAR:
        hi -= 1  # `dir/**` matches what is inside dir, not dir itself
    if lo > hi or not _fixed(first, comps, 0) or not _fixed(last, comps, len(comps) - len(last)):
        return False
    for g in middle:  # leftmost placement leaves the most room for the rest
        at = next((i for i in range(lo, hi - len(g) + 1) if _fixed(g, comps, i)), None)
        if at is None:
            return False
        lo = at + len(g)
    return True


class Ignore:
    def __init__(self, patterns: list[str] | None = None) -> None:
        lines = list(patterns or [])
        if len(lines) > MAX_IGNORE_PATTERNS:
            log.warning("only the first %d ignore patterns are used", MAX_IGNORE_PATTERNS)
            lines = lines[:MAX_IGNORE_PATTERNS]
        self.lines = lines  # as given: a server tells its client these, so neither touches what the other ignores
        self._rules = [r for r in map(Rule.parse, lines) if r is not None]
        self._dirs: dict[str, bool] = {}  # decisions for directories, reused by their contents

    @classmethod
    def for_folder(cls, root: Path, extra: list[str] | None = None) -> "Ignore":
        lines: list[str] = []
        try:
            with open(root / IGNORE_FILE, "rb") as f:
                raw = f.read(MAX_IGNORE_BYTES + 1)
            if len(raw) > MAX_IGNORE_BYTES:
                log.warning("%s is larger than %d bytes; the rest is not read", IGNORE_FILE, MAX_IGNORE_BYTES)
            lines = raw[:MAX_IGNORE_BYTES].decode("utf-8", "replace").splitlines()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
        return cls(lines + list(extra or []))

    def _decide(self, comps: list[str], is_dir: bool) -> bool:
        ignored = False
        for rule in self._rules:  # the last matching rule wins, as in git
            if rule.negate == ignored and rule.matches(comps, is_dir):
                ignored = not rule.negate
        return ignored

    def own(self, path: str, is_dir: bool = False, name: str | None = None) -> bool:
        """This path alone, its parents assumed not ignored (a walk that does not enter ignored folders;
        it gives the `name`, which it has checked is not our state folder's)."""
        if name is None:
            name = path.rpartition("/")[2]
            if is_reserved(name):
                return True
        if name.startswith(TMP_PREFIX):
            return True
        return bool(self._rules) and self._decide(path.split("/"), is_dir)

    def __call__(self, path: str, is_dir: bool = False) -> bool:
        """This path, or any folder it is in (a peer's index lists paths whose parents we never walked)."""
        comps = path.split("/")
        for i in range(1, len(comps)):
            parent = "/".join(comps[:i])
            hit = self._dirs.get(parent)
            if hit is None:
                hit = self.own(parent, True)
                if len(self._dirs) < 100_000:
                    self._dirs[parent] = hit
            if hit:
                return True
        return self.own(path, is_dir)
