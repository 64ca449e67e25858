"""What a session did, for the CLI's summary and `--json`, and the exit
status it earns (`check`)."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.plan import Plan
from ..core.result import FileResult
from ..errors import PartialSuccess
from ..fs.safe import META

log = logging.getLogger(__name__)
MAX_LISTED = 10_000  # failures kept in a report (all are counted)


@dataclass
class Report:
    files_total: int = 0
    files_sent_whole: int = 0
    files_sent_delta: int = 0
    files_received: int = 0
    files_unchanged: int = 0
    files_deleted: int = 0
    files_failed: int = 0
    files_skipped: int = 0  # newer on the peer, left alone (--update)
    bytes_sent: int = 0
    bytes_received: int = 0
    literal_bytes: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)
    conflicts: list[dict[str, str]] = field(default_factory=list)
    # a push replaced a version on the peer that ours does not descend from (edited there)
    overwritten: list[dict[str, str | None]] = field(default_factory=list)
    plan: list[dict[str, Any]] | None = None
    # what the pushed paths are, to tell the peer's verdicts apart
    _deletes: set[str] = field(default_factory=set, repr=False)
    _deltas: set[str] = field(default_factory=set, repr=False)
    _overwrites: set[str] = field(default_factory=set, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        if d["plan"] is None:
            del d["plan"]
        d["seconds"] = round(self.seconds, 3)
        return d

    def fail(self, path: str, why: str) -> None:
        self.files_failed += 1
        if len(self.failures) < MAX_LISTED:  # counted always, listed up to a bound (a peer can send many)
            self.failures.append({"path": path[:4096], "error": why[:1000]})
        log.warning("%s", why if path in why else f"{path}: {why}")

    def count(self, plan: Plan) -> None:
        """A plan's totals, before it runs."""
        self.files_total += plan.files_total
        self.files_unchanged += plan.unchanged
        self.files_skipped += len(plan.skipped)
        for path, why in plan.blocked:
            self.fail(path, why)

    def expect_push(self, plan: Plan) -> None:
        self._deletes |= {e.path for e in plan.deletes}
        self._deltas |= {t.entry.path for t in plan.large if t.basis is not None}
        self._overwrites |= set(plan.overwrites)

    def result(self, r: FileResult, remote: bool) -> None:
        """A file's verdict: ours (received here, or could not be sent), or the peer's on what we pushed."""
        if not r.ok:
            self.fail(r.path, r.error or "failed")
        elif not remote:
            self.files_received += 1
        else:
            self._pushed(r)

    def _pushed(self, r: FileResult) -> None:
        if r.path in self._overwrites and len(self.overwritten) < MAX_LISTED:
            kept = f"{META}/versions/{r.kept}" if r.kept else None
            self.overwritten.append({"path": r.path, "kept": kept})
            log.warning("%s: overwrote a newer version on the peer, %s", r.path,
                        f"kept there as {kept}" if kept else "not kept (versioning is off there)")
        if r.path in self._deletes:
            self.files_deleted += 1
        elif r.whole:
            self.files_sent_whole += 1
        elif r.path in self._deltas:
            self.files_sent_delta += 1


def check(report: Report, force: bool = False) -> None:
    """Raise PartialSuccess (exit 3) when some files did not make it or conflicted,
    or (unless `force`) when a push replaced versions edited on the peer."""
    if report.files_failed:
        first = report.failures[0]
        raise PartialSuccess(f"{report.files_failed} file(s) failed; first: {first['path']}: {first['error']}")
    if report.conflicts:
        c = report.conflicts[0]
        raise PartialSuccess(f"{len(report.conflicts)} conflict(s); first: {c['path']} (other version kept as "
                             f"{c['copy']})")
    if report.overwritten and not force:
        o = report.overwritten[0]
        raise PartialSuccess(f"overwrote {len(report.overwritten)} newer version(s) on the peer; first: {o['path']}, "
                             f"{'kept there as ' + str(o['kept']) if o['kept'] else 'not kept (versioning is off there)'}"
                             f" (--force: exit 0 for this; -u: skip files newer there)")
