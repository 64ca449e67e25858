"""How a long transfer shows itself: a rich progress bar (files, file data and
its effective rate, the rate on the wire, ETA, current file) when stderr is a
terminal, plain log lines otherwise, or nothing. The library calls these
hooks; only the CLI chooses which.

The two rates differ as rsync's speedup says: a delta moves a file's worth of
data for a fraction of it on the wire."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable

log = logging.getLogger("deltasync.files")  # per-file lines: shown with -v


Wire = Callable[[], int]  # bytes on the connection so far, both ways


class Progress:
    """The hooks the transfer code calls; this one shows nothing."""

    def start(self, files: int, size: int, wire: Wire | None = None) -> None:
        pass

    def advance(self, path: str, nbytes: int) -> None:
        pass

    def file_done(self, path: str, ok: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


class Lines(Progress):
    """One log line per file (shown with -v), for logs and pipes."""

    def start(self, files: int, size: int, wire: Wire | None = None) -> None:
        log.info("to transfer: %d files, %d bytes", files, size)

    def file_done(self, path: str, ok: bool = True) -> None:
        log.info("%s %s", "done" if ok else "FAILED", path)


class Ticker(Progress):
    """A long transfer inside `watch`: `say(bytes done, bytes to do, data rate)` every `every` seconds."""

    def __init__(self, say: Callable[[int, int, float], None], every: float = 5.0) -> None:
        self.say, self.every = say, every
        self.size = self.done = 0
        self.started = self.last = time.monotonic()

    def start(self, files: int, size: int, wire: Wire | None = None) -> None:
        self.size, self.done = size, 0
        self.started = self.last = time.monotonic()

    def advance(self, path: str, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.say(self.done, self.size, self.done / max(now - self.started, 1e-3))


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
                           TransferSpeedColumn(), TextColumn("{task.fields[wire]}"), TimeRemainingColumn(),
                           TextColumn("{task.fields[current]}"), console=Console(stderr=True), transient=True)
        self._task: Any = None
        self._files = self._done = 0
        self._wire: Wire | None = None
        self._since = time.monotonic()

    def start(self, files: int, size: int, wire: Wire | None = None) -> None:
        self._files = files
        self._wire, self._since = wire, time.monotonic()
        self._p.start()
        self._task = self._p.add_task("sync", total=max(size, 1), files=f"0/{files} files", current="", wire="")

    def advance(self, path: str, nbytes: int) -> None:
        if self._task is not None:
            wire = ""
            if self._wire is not None:  # what the link carries, beside the data rate rich shows
                rate = self._wire() / max(time.monotonic() - self._since, 1e-3)
                wire = f"wire {rate / 1e6:.1f} MB/s" if rate >= 1e5 else f"wire {rate / 1e3:.1f} kB/s"
            self._p.update(self._task, advance=nbytes, current=path[-40:], wire=wire)

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
