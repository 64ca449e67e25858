"""Which paths are not synced: `.deltasync/` always, plus `.deltasyncignore`
(gitignore syntax, via pathspec) and any `--exclude` patterns. Ignored paths
are neither sent nor deleted on the peer."""
from __future__ import annotations

from pathlib import Path

import pathspec

from .safe import META, TMP_PREFIX

IGNORE_FILE = ".deltasyncignore"


class Ignore:
    def __init__(self, patterns: list[str] | None = None) -> None:
        self._spec = pathspec.GitIgnoreSpec.from_lines(patterns or [])
        self._empty = not patterns

    @classmethod
    def for_folder(cls, root: Path, extra: list[str] | None = None) -> "Ignore":
        lines: list[str] = []
        try:
            lines = (root / IGNORE_FILE).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            pass
        return cls(lines + list(extra or []))

    def __call__(self, path: str, is_dir: bool = False) -> bool:
        if path == META or path.startswith(META + "/") or path.rpartition("/")[2].startswith(TMP_PREFIX):
            return True
        if self._empty:
            return False
        return self._spec.match_file(path + "/" if is_dir else path)
