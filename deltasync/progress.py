"""How a long transfer shows itself: a rich progress bar (files, bytes, rate,
ETA, current file) when stderr is a terminal, plain log lines otherwise, or
nothing. The library calls these hooks; only the CLI chooses which."""
from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("deltasync")


class Progress:
    """The hooks the transfer code calls; this one shows nothing."""

    def start(self, files: int, size: int) -> None:
        pass

    def advance(self, path: str, nbytes: int) -> None:
        pass

    def file_done(self, path: str, ok: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


class Lines(Progress):
    """One log line per file (shown with -v), for logs and pipes."""

    def start(self, files: int, size: int) -> None:
        log.info("to transfer: %d files, %d bytes", files, size)

    def file_done(self, path: str, ok: bool = True) -> None:
        log.info("%s %s", "done" if ok else "FAILED", path)


class Bar(Progress):
    """A rich progress bar on stderr: files, bytes, rate, ETA, current file."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._p = Progress(TextColumn("{task.fields[files]}"), BarColumn(), DownloadColumn(),
                           TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[current]}"),
                           console=Console(stderr=True), transient=True)
        self._task: Any = None
        self._files = self._done = 0

    def start(self, files: int, size: int) -> None:
        self._files = files
        self._p.start()
        self._task = self._p.add_task("sync", total=max(size, 1), files=f"0/{files} files", current="")

    def advance(self, path: str, nbytes: int) -> None:
        if self._task is not None:
            self._p.update(self._task, advance=nbytes, current=path[-40:])

    def file_done(self, path: str, ok: bool = True) -> None:
        self._done += 1
        if self._task is not None:
            self._p.update(self._task, files=f"{self._done}/{self._files} files")

    def close(self) -> None:
        if self._task is not None:
            self._p.stop()


def choose(quiet: bool) -> Progress:
    if quiet:
        return Progress()
    return Bar() if sys.stderr.isatty() else Lines()
