"""What a session did, for the CLI's summary and `--json`, and the exit
status it earns (`check`)."""
from __future__ import annotations

import logging
from dataclasses import asdict, field
from typing import Any, Callable

from ..core import itemize
from ..core.entry import FILE
from ..core.plan import Plan
from ..core.record import Mutable, record
from ..core.result import FileResult
from ..errors import PartialSuccess
from ..fs.safe import META

log = logging.getLogger(__name__)
MAX_LISTED = 10_000  # failures kept in a report (all are counted)


# what became of a regular file in a session: each file the session compared has exactly one
# (files_total is their sum); directories and symlinks are not counted
OUTCOMES = ("sent_whole", "sent_delta", "received", "copied", "linked", "meta", "unchanged", "deleted", "skipped",
            "failed")


@record
class Report(Mutable):
    files_total: int = 0
    files_sent_whole: int = 0
    files_sent_delta: int = 0
    files_received: int = 0
    files_copied: int = 0  # content the receiver held under another name (a rename, a copy): copied there
    files_linked: int = 0  # a second name of a file, made a hard link (rsync -H)
    files_meta: int = 0  # only mode, mtime or version changed
    files_unchanged: int = 0
    files_deleted: int = 0
    files_skipped: int = 0  # left alone on purpose: newer on the peer (--update), or past --max-delete
    files_failed: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    literal_bytes: int = 0
    literal_bytes_received: int = 0  # file data and delta bodies that came in
    file_bytes: int = 0  # the size of the files that moved (sent or received, whole or by delta)
    tree_bytes: int = 0  # the size of every file compared (moved or not): --stats' speedup is this over the wire
    deletes_held: int = 0  # entries (files, directories, links) --max-delete left in place
    index_entries: int = 0  # entries of the peer's index that came in: all of it once, then only what changed
    paths_compared: int | None = None  # paths the plan looked at (None: every path, as the first time)
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)
    conflicts: list[dict[str, str]] = field(default_factory=list)
    # a push replaced a version on the peer that ours does not descend from (edited there)
    overwritten: list[dict[str, str | None]] = field(default_factory=list)
    plan: list[dict[str, Any]] | None = None
    _outcome: dict[str, str] = field(default_factory=dict, repr=False)  # planned paths: what became of each
    _say: Callable[[str], None] | None = field(default=None, repr=False)  # -i: one line per item as it is done
    _items: dict[str, list[tuple[dict[str, Any], bool]]] = field(default_factory=dict, repr=False)  # by path, in order
    _overwrites: set[str] = field(default_factory=set, repr=False)
    _unsettled: set[str] = field(default_factory=set, repr=False)  # failed, blocked, skipped or held: look again
    # a session in ranges lets a file's outcome go once its verdict is in: a million planned paths
    # are not held to the end (each path is planned once; only a sync's conflict copy, fetched and
    # then pushed, is counted twice)
    _forget_done: bool = field(default=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        if d["plan"] is None:
            del d["plan"]
        d["seconds"] = round(self.seconds, 3)
        return d

    def _set(self, path: str, outcome: str) -> None:
        """`path` ends as `outcome`: moved there from what it was planned as, or counted anew."""
        was = self._outcome.get(path)
        if was is None:
            self.files_total += 1
        else:
            setattr(self, f"files_{was}", getattr(self, f"files_{was}") - 1)
        self._outcome[path] = outcome
        setattr(self, f"files_{outcome}", getattr(self, f"files_{outcome}") + 1)

    def fail(self, path: str, why: str) -> None:
        """A file failed (once per file, whatever it was planned as); listed up to a bound."""
        self._unsettled.add(path)
        if self._outcome.get(path) == "failed":
            return
        self._set(path, "failed")
        if len(self.failures) < MAX_LISTED:  # counted always, listed up to a bound (a peer can send many)
            self.failures.append({"path": path[:4096], "error": why[:1000]})
        log.warning("%s", said(path, why))

    def count(self, plan: Plan, pulled: bool = False) -> None:
        """A plan's files, each counted as what it will become (a dry run stops here);
        verdicts move the ones that fail. `pulled`: the plan is carried out here."""
        self.files_total += plan.unchanged
        self.files_unchanged += plan.unchanged
        moved = sum(e.size for e, _ in plan.small) + sum(t.entry.size for t in plan.large)
        self.file_bytes += moved
        self.tree_bytes += moved + plan.unchanged_bytes + sum(e.size for e in plan.meta if e.kind == FILE) + \
            sum(e.size for e, _, _ in plan.copies) + sum(e.size for e, _ in plan.hardlinks)
        fetched = "received" if pulled else None
        for e, _ in plan.small:
            self._set(e.path, fetched or "sent_whole")
        for t in plan.large:
            self._set(t.entry.path, fetched or ("sent_delta" if t.basis is not None else "sent_whole"))
        for e, _, _ in plan.copies:
            self._set(e.path, "copied")
        for e, _ in plan.hardlinks:
            self._set(e.path, "linked")
        for outcome, entries in (("meta", plan.meta), ("deleted", plan.deletes)):
            for e in entries:
                if e.kind == FILE:
                    self._set(e.path, outcome)
        for path in plan.skipped:
            self._set(path, "skipped")
            self._unsettled.add(path)
        for e in plan.held:
            self.deletes_held += 1
            self._unsettled.add(e.path)
            if e.kind == FILE:
                self._set(e.path, "skipped")
        for path, why in plan.blocked:
            self.fail(path, why)
        self._unsettled.update(plan.left)
        if not pulled:
            self._overwrites |= set(plan.overwrites)
        if self._say is not None:
            for i in plan.items():
                self._items.setdefault(i["path"], []).append((i, pulled))

    @property
    def unsettled(self) -> set[str]:
        """The paths this session left as they were though they differ: the next one looks at them again."""
        return self._unsettled

    def result(self, r: FileResult, remote: bool) -> None:
        """A file's verdict: ours (received here, or could not be sent), or the peer's on what we pushed."""
        waiting = self._items.get(r.path)
        if waiting and self._say is not None:  # a path's items are done in the order planned (mkdir, then meta)
            item, pulled = waiting.pop(0)
            self._say(itemize.line(item, pulled, error=None if r.ok else r.error or "failed"))
        if not r.ok:
            self.fail(r.path, r.error or "failed")
            return
        if r.whole and self._outcome.get(r.path) == "sent_delta":  # the peer had no basis after all
            self._set(r.path, "sent_whole")
        if remote and r.path in self._overwrites and len(self.overwritten) < MAX_LISTED:
            kept = f"{META}/versions/{r.kept}" if r.kept else None
            self.overwritten.append({"path": r.path, "kept": kept})
            log.warning("%s: overwrote a newer version on the peer, %s", r.path,
                        f"kept there as {kept}" if kept else "not kept (versioning is off there)")
        if self._forget_done:
            self._outcome.pop(r.path, None)
            self._overwrites.discard(r.path)

    def forget_done(self) -> None:
        """From now on, a file's outcome is let go once its verdict is in (see `_forget_done`)."""
        self._forget_done = True


def said(path: str, why: str) -> str:
    """`path: why`, without saying the path twice when `why` already begins with it."""
    return why if why.startswith(f"{path}:") else f"{path}: {why}"


def stats(r: Report, size: Callable[[int], str]) -> list[str]:
    """rsync's `--stats` block, in its words where it has them."""
    matched = max(0, r.file_bytes - r.literal_bytes - r.literal_bytes_received)
    wire = r.bytes_sent + r.bytes_received
    return [f"Number of files: {r.files_total:,}",
            f"Number of files transferred: {r.files_sent_whole + r.files_sent_delta + r.files_received:,}",
            f"Total file size: {size(r.tree_bytes)}",
            f"Total transferred file size: {size(r.file_bytes)}",
            f"Literal data: {size(r.literal_bytes + r.literal_bytes_received)}",
            f"Matched data: {size(matched)}",
            f"Total bytes sent: {size(r.bytes_sent)}",
            f"Total bytes received: {size(r.bytes_received)}",
            f"speedup is {r.tree_bytes / wire if wire else 0:.2f}"]


def check(report: Report, force: bool = False) -> None:
    """Raise PartialSuccess (exit 3) when some files did not make it or conflicted,
    or (unless `force`) when a push replaced versions edited on the peer."""
    if report.files_failed:
        first = report.failures[0]
        raise PartialSuccess(f"{report.files_failed} file(s) failed; first: {said(first['path'], first['error'])}")
    if report.conflicts:
        c = report.conflicts[0]
        raise PartialSuccess(f"{len(report.conflicts)} conflict(s); first: {c['path']} (other version kept as "
                             f"{c['copy']})")
    if report.deletes_held:
        raise PartialSuccess(f"--max-delete: {report.deletes_held} deletion(s) not done (the rest were)")
    if report.overwritten and not force:
        o = report.overwritten[0]
        raise PartialSuccess(f"overwrote {len(report.overwritten)} newer version(s) on the peer; first: {o['path']}, "
                             f"{'kept there as ' + str(o['kept']) if o['kept'] else 'not kept (versioning is off there)'}"
                             f" (--force: exit 0 for this; -u: skip files newer there)")
