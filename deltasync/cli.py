"""The `deltasync` command. Parses (argparse: the standard library, and nothing
imported that the command does not use), calls one library function, renders.

Every DeltasyncError reaches the user as one line on stderr with the exit
code the README documents (0 ok, 1 error, 2 usage, 3 partial, 4 peer).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sqlite3
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Callable, NoReturn

from .errors import EXIT_ERROR, EXIT_USAGE, DeltasyncError, PartialSuccess
from .fs import native

ABOUT = "Keep folders in sync between peers by rolling-signature deltas, verified end to end."


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _logging(verbose: int, quiet: bool, daemon: bool = False) -> None:
    """One-shot commands say warnings (-v: a line per file); `serve` and `watch` also log a
    timestamped line per session (-v: and per file)."""
    level = logging.ERROR if quiet else logging.DEBUG if verbose > 1 else \
        logging.INFO if verbose or daemon else logging.WARNING
    fmt = "%(asctime)s deltasync: %(message)s" if daemon else "deltasync: %(message)s"
    logging.basicConfig(level=level, stream=sys.stderr, format=fmt, datefmt="%Y-%m-%d %H:%M:%S")
    logging.getLogger("deltasync.files").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _run(fn: Callable[[], Any], as_json: bool = False) -> Any:
    try:
        return fn()
    except DeltasyncError as e:
        # a partial success (some files failed, conflicts kept) is a result, not an error of the command
        _err(f"deltasync: {'' if isinstance(e, PartialSuccess) else 'error: '}{e}")
        if as_json:  # scripts still get one object on stdout
            _print_json({"error": str(e), "exit_code": e.exit_code})
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _err("deltasync: interrupted")
        sys.exit(130)
    except OSError as e:
        _err(f"deltasync: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "))
        sys.exit(EXIT_ERROR)
    except sqlite3.Error as e:  # the manifest: most often a full disk or a read-only folder
        hint = " (is the disk full or read-only?)" if isinstance(e, sqlite3.OperationalError) else ""
        _err(f"deltasync: error: manifest database: {e}{hint}")
        if as_json:
            _print_json({"error": f"manifest database: {e}", "exit_code": EXIT_ERROR})
        sys.exit(EXIT_ERROR)


def _version() -> None:
    from importlib import metadata

    from . import engines

    try:
        ours = metadata.version("deltasync")
    except metadata.PackageNotFoundError:
        ours = "unknown"
    engine = _run(engines.describe)
    print(f"deltasync {ours}; engine {engine}; Python {sys.version.split()[0]}")


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, sort_keys=True) + "\n")
    sys.stdout.flush()


def init(a: argparse.Namespace) -> None:
    """Make DIR a shared folder (key, certificate, manifest) and print its peer ID.

    Example: deltasync init ./A
    """
    from . import identity
    from .config import Folder

    folder, peer_id, created = _run(lambda: Folder.init(a.directory))
    if a.json:
        _print_json({"peer_id": identity.format_id(peer_id), "folder": str(folder.root), "created": created})
    else:
        print(identity.format_id(peer_id))


def id_(a: argparse.Namespace) -> None:
    """Print this folder's peer ID alone on one line.

    Example: deltasync id ./A
    """
    from . import identity
    from .config import Folder

    print(identity.format_id(_run(lambda: Folder.open(a.directory).peer_id)))


def trust(a: argparse.Namespace) -> None:
    """Trust a peer: it may connect to us, and we accept it when we connect.

    Example: deltasync trust ./A ABCDEFG-... --name laptop --address 10.0.0.2:8730
    """
    from . import identity
    from .config import Folder

    peer = _run(lambda: Folder.open(a.directory).trust(a.peer_id, a.name, a.address), a.json)
    if a.json:
        _print_json({"name": peer.name, "peer_id": identity.format_id(peer.id), "address": peer.address})
    else:
        print(f"trusted {peer.name} = {identity.format_id(peer.id)}")


def untrust(a: argparse.Namespace) -> None:
    """Stop trusting a peer: its next connection is refused, both ways.

    Example: deltasync untrust ./A laptop
    """
    from . import identity
    from .config import Folder

    gone = _run(lambda: Folder.open(a.directory).untrust(a.peer), a.json)
    if a.json:
        _print_json({"name": gone.name, "peer_id": identity.format_id(gone.id), "address": gone.address})
    else:
        print(f"untrusted {gone.name} = {identity.format_id(gone.id)}")


def serve(a: argparse.Namespace) -> None:
    """Receive from trusted peers until SIGINT/SIGTERM.

    Prints `listening on HOST:PORT` once it accepts connections.
    Example: deltasync serve ./B --listen 127.0.0.1:8730
    """
    from .config import Folder
    from .run.server import run

    _logging(a.verbose, a.quiet, daemon=True)

    def go() -> None:
        folder = Folder.open(a.directory)
        addr = a.listen or str(folder.config().setting("listen"))

        def announce(actual: str) -> None:
            print(f"listening on {actual}", flush=True)

        asyncio.run(run(folder, addr, announce))

    _run(go)


# how the summary names each outcome (run/report.OUTCOMES), in its order
SAID = {"sent_whole": "sent whole", "sent_delta": "sent by delta", "received": "received", "copied": "copied here",
        "linked": "hard-linked", "meta": "metadata only", "unchanged": "unchanged", "deleted": "deleted", "skipped": "skipped (newer there)",
        "failed": "failed"}


def size_text(n: int, human: bool) -> str:
    """Bytes as a number, or with -h in binary units (1.5 MiB)."""
    if not human:
        return f"{n:,} bytes"
    value, unit = float(n), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def summary(report: Any, human: bool = False, dry_run: bool = False) -> str:
    """One line: the files by outcome (those that add up to the total), conflicts, bytes, time."""
    from .run.report import OUTCOMES

    parts = [f"{getattr(report, 'files_' + o)} {SAID[o]}" for o in OUTCOMES if getattr(report, "files_" + o)]
    files = f"{report.files_total} file{'s' if report.files_total != 1 else ''}"
    line = f"{files}: {', '.join(parts)}" if parts else files
    if report.conflicts:
        line += f"; {len(report.conflicts)} conflict{'s' if len(report.conflicts) != 1 else ''} kept"
    if dry_run:
        return f"dry run, nothing changed: {line}"
    return (f"{line}; {size_text(report.bytes_sent, human)} sent, {size_text(report.bytes_received, human)} "
            f"received in {report.seconds:.2f} s")


def _session(mode: str, a: argparse.Namespace) -> None:
    """push, pull and sync are one flow with a different plan."""
    from . import progress
    from .config import Folder
    from .core import itemize as items
    from .errors import UsageError
    from .run import client, report as reports
    from .run.channel import parse_rate

    _logging(a.verbose, a.quiet)
    if a.itemize and a.json:
        def refuse() -> None:
            raise UsageError("-i prints lines, --json one object: choose one (--json --dry-run lists the plan)")

        _run(refuse)
    rate = _run(lambda: parse_rate(a.bwlimit)) if a.bwlimit is not None else None
    shown = progress.choose(a.quiet or a.dry_run)
    said = (lambda text: print(text, flush=True)) if a.itemize and not a.dry_run else None
    delete, update, force = (getattr(a, k, False) for k in ("delete", "update", "force"))
    report = _run(lambda: asyncio.run(client.session(Folder.open(a.directory), a.peer, mode, delete, a.dry_run,
                                                     a.exclude, rate, shown, a.compress, update=update,
                                                     max_delete=a.max_delete, itemized=said)), a.json)
    if a.json:
        _print_json(report.to_json())
    elif not a.quiet:
        for item in report.plan or []:
            pulled = item.get("direction") == "pull"
            print(items.line(item, pulled) if a.itemize else
                  f"{item.get('direction', ''):<5} {item['op']:<11} {item['path']}")
        if a.stats:
            for text in reports.stats(report, lambda n: size_text(n, a.human)):
                _err(text)
        _err(summary(report, a.human, a.dry_run))
    _run(lambda: reports.check(report, force))


def push(a: argparse.Namespace) -> None:
    """Make the peer hold this folder's tree (like rsync); exit 0 only when all is verified there.

    A file edited on the peer (a version this folder never saw) is replaced, kept there
    under .deltasync/versions/, reported, and makes the exit code 3 unless --force.
    Example: deltasync push ./A 127.0.0.1:8730 --delete --json
    """
    _session("push", a)


def pull(a: argparse.Namespace) -> None:
    """Fetch what the peer has newer (by version vectors): edits, new files, deletes; conflicts kept aside.

    Example: deltasync pull ./A 10.0.0.2:8730
    """
    _session("pull", a)


def sync(a: argparse.Namespace) -> None:
    """Pull and push in one session: both folders converge; concurrent edits keep both versions.

    Example: deltasync sync ./A laptop --json
    """
    _session("sync", a)


def watch(a: argparse.Namespace) -> None:
    """Serve, watch the folder, and keep it in sync with peers in both directions until SIGINT/SIGTERM.

    Example: deltasync watch ./A --listen 10.0.0.1:8730 --peer 10.0.0.2:8730
    """
    from .config import Folder
    from .run.channel import parse_rate
    from .run.watch import Watcher

    _logging(a.verbose, a.quiet, daemon=True)  # JSON events on stdout, log lines on stderr

    def go() -> None:
        folder = Folder.open(a.directory)
        cfg = folder.config()
        peers = list(a.peer) or [p.name for p in cfg.peers.values() if p.address]
        rate = parse_rate(a.bwlimit) if a.bwlimit is not None else None
        asyncio.run(Watcher(folder, peers, a.json, rate, list(a.exclude)).run(a.listen or str(cfg.setting("listen"))))

    _run(go)


def status(a: argparse.Namespace) -> None:
    """This peer's ID, trusted peers and their last sync, partial transfers.

    Example: deltasync status ./A --json
    """
    from .status import collect

    info = _run(lambda: collect(a.directory))
    if a.json:
        _print_json(info)
        return
    print(f"peer ID: {info['peer_id']}")
    for p in info["peers"]:
        print(f"peer {p['name']}: {p['id']} {p.get('address') or ''} last sync: {p['last_sync'] or 'never'}")
    for c in info["conflicts"]:
        print(f"conflict copy: {c}")
    for c in info["pending"]:
        print(f"pending: {c}")
    for p in info["partials"]:
        print(f"partial {p['path']}: {p['segments_done']}/{p['segments_total']} segments, "
              f"{p['bytes_done']}/{p['size']} bytes")


def versions(a: argparse.Namespace) -> None:
    """List the versions kept when peers replaced or deleted files here, newest first.

    Example: deltasync versions ./A docs/report.txt
    """
    from .config import Folder
    from .store.manifest import Manifest
    from .store.versions import Versions

    def collect() -> list[Any]:
        folder = Folder.open(a.directory)
        m = Manifest(folder.db)
        try:
            return Versions(folder.root, m, folder.config().folder).list(a.path)
        finally:
            m.close()

    kept = _run(collect, a.json)
    numbered: dict[str, int] = {}
    rows = []
    for k in kept:
        numbered[k.path] = numbered.get(k.path, 0) + 1
        rows.append(k.to_json(numbered[k.path]))
    if a.json:
        _print_json({"versions": rows})
        return
    import datetime as dt

    for r in rows:
        when = dt.datetime.fromtimestamp(r["kept"]).isoformat(timespec="seconds")
        who = f" by {r['peer'][:7]}" if r["peer"] else ""
        print(f"{r['number']:>3}  {when}  {r['size']:>12,}  {r['reason']}{who}  {r['path']}")
    if not rows:
        _err("no kept versions")


def restore(a: argparse.Namespace) -> None:
    """Put a kept version back (the current file is kept too); it syncs as a new local change.

    Example: deltasync restore ./A docs/report.txt --version 2
    """
    from .config import Folder
    from .store.versions import parse_when
    from .store.versions import restore as do_restore

    def go() -> Any:
        if a.at is not None and a.version is not None:
            from .errors import UsageError

            raise UsageError("give --at or --version, not both")
        return do_restore(Folder.open(a.directory), a.path, parse_when(a.at) if a.at else None, a.version)

    k = _run(go, a.json)
    if a.json:
        _print_json({"restored": a.path, "size": k.size, "kept": k.kept, "reason": k.reason})
    else:
        print(f"restored {a.path} ({k.size:,} bytes, the version {k.reason} at "
              f"{__import__('datetime').datetime.fromtimestamp(k.kept).isoformat(timespec='seconds')})")


def demo(a: argparse.Namespace) -> None:
    """Two peers on this machine run the seed test plan and print its table; exit 0 only if every md5 matches.

    Example: deltasync demo --scale 0.05
    """
    from dataclasses import asdict

    from . import demo as demo_mod

    steps = _run(lambda: demo_mod.run(a.scale, a.keep))
    ok = all(s.md5_match is not False for s in steps)
    if a.json:
        _print_json({"ok": ok, "steps": [asdict(s) for s in steps]})
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"deltasync demo: the seed test plan at scale {a.scale}")
        for col in ("step", "files", "bytes sent", "time (s)", "md5 match"):
            table.add_column(col, justify="left" if col == "step" else "right")
        for s in steps:
            match = "-" if s.md5_match is None else "yes" if s.md5_match else "NO"
            table.add_row(s.name, str(s.files), f"{s.bytes_sent:,}", f"{s.seconds:.2f}", match)
        Console().print(table)
    if not ok:
        sys.exit(1)


# -- the parser -------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse with the exit code the README gives a usage mistake."""

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse's own finds the terminal's width with shutil, whose imports (bz2, lzma) cost ~3 ms
        # of every start: argparse asks for a formatter at each add_argument, not only for help
        return self.formatter_class(prog=self.prog, width=_columns() - 2)  # type: ignore[call-arg]

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        _err(f"deltasync: error: {message}")
        sys.exit(EXIT_USAGE)


def _folder(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    return path


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a count of 0 or more: {text!r}")
    return int(text)


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size finds it ($COLUMNS, then stdout's, else 80)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _command(sub: Any, fn: Callable[[argparse.Namespace], None], name: str, folder: bool) -> argparse.ArgumentParser:
    doc = textwrap.dedent(fn.__doc__ or "").strip()
    first, _, rest = doc.partition("\n")
    p = sub.add_parser(name, help=first, description=first + "\n" + textwrap.dedent(rest),
                       formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    p.add_argument("--help", action="help", help="Show this message and exit.")
    if folder:
        p.add_argument("directory", metavar="DIRECTORY", type=_folder, help="The shared folder.")
    p.set_defaults(run=fn)
    return p


def _json(p: argparse.ArgumentParser, text: str = "Print one JSON object on stdout.") -> None:
    p.add_argument("--json", action="store_true", help=text)


def _chatter(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", "-v", action="count", default=0, help="More log lines on stderr.")
    p.add_argument("--quiet", "-q", action="store_true", help="Only errors on stderr.")


def _session_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("peer", metavar="PEER", help="HOST:PORT, or a peer name from config.toml.")
    p.add_argument("--dry-run", "-n", action="store_true", help="Print the plan; change nothing on either side.")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="Gitignore-style pattern (repeatable).")
    p.add_argument("--bwlimit", metavar="RATE", help="At most RATE each way: KiB/s, or 10M, 500K; 0: no limit.")
    p.add_argument("--compress", "-z", action="store_true", dest="compress",
                   help="zstd on file data and indexes, both ways, where it saves a tenth or more.")
    p.add_argument("--no-compress", action="store_false", dest="compress", help="No compression (the default).")
    p.add_argument("--max-delete", type=_count, metavar="N",
                   help="Delete at most N entries here or on the peer; the rest are left (exit 3).")
    p.add_argument("--human-readable", "-h", action="store_true", dest="human", help="Sizes in KiB, MiB, GiB.")
    p.add_argument("--itemize-changes", "-i", action="store_true", dest="itemize",
                   help="One line per change as it is done, in rsync's letters (<f+++++++++ new, >f.st...... "
                        "received).")
    p.add_argument("--stats", action="store_true", help="rsync-like totals: literal and matched data, speedup.")
    _json(p)
    _chatter(p)


def _trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("peer_id", metavar="PEER_ID", help="The peer's ID (from `deltasync id`).")
    p.add_argument("--name", help="A name to use instead of an address.")
    p.add_argument("--address", help="HOST:PORT where this peer listens.")
    _json(p)


def _untrust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("peer", metavar="PEER", help="The peer's name or ID.")
    _json(p)


def _serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", help="HOST:PORT (port 0 picks a free one).")
    _chatter(p)


def _push_options(p: argparse.ArgumentParser) -> None:
    _session_options(p)
    p.add_argument("--delete", action="store_true", help="Remove on the peer what is absent here.")
    p.add_argument("--force", action="store_true",
                   help="Exit 0 even when files edited on the peer were replaced (they are kept there as versions).")
    p.add_argument("--update", "-u", action="store_true", help="Skip files whose mtime is newer on the peer.")


def _watch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", help="HOST:PORT to serve on.")
    p.add_argument("--peer", action="append", default=[],
                   help="HOST:PORT or name to sync with (repeatable); default: every peer in config.toml with an "
                        "address.")
    p.add_argument("--bwlimit", metavar="RATE", help="At most RATE each way: KiB/s, or 10M, 500K; 0: no limit.")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="Gitignore-style pattern (repeatable).")
    _json(p, "Events as JSON lines on stdout.")
    _chatter(p)


def _versions_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", nargs="?", help="Only this path.")
    _json(p)


def _restore_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="The path to put back.")
    p.add_argument("--at", help="The version in place at this time (ISO 8601 or epoch seconds).")
    p.add_argument("--version", type=int, help="Number N as `versions` lists it (1 = newest).")
    _json(p)


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", type=float, default=0.2,
                   help="Size factor: 1.0 is the full seed plan (File_2 = 500 MB).")
    p.add_argument("--keep", type=Path, help="Keep the two peers' folders here.")
    _json(p)


def _nothing(p: argparse.ArgumentParser) -> None:
    pass


# (name, command, its options, whether its first argument is the folder), in the order help lists them
_COMMANDS: list[tuple[str, Callable[[argparse.Namespace], None], Callable[[argparse.ArgumentParser], None], bool]] = [
    ("init", init, _json, True), ("id", id_, _nothing, True), ("trust", trust, _trust_options, True),
    ("untrust", untrust, _untrust_options, True), ("serve", serve, _serve_options, True),
    ("push", push, _push_options, True), ("pull", pull, _session_options, True),
    ("sync", sync, _session_options, True), ("watch", watch, _watch_options, True), ("status", status, _json, True),
    ("versions", versions, _versions_options, True), ("restore", restore, _restore_options, True),
    ("demo", demo, _demo_options, False),
]


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (`command` named) only what parsing that command needs: the dozen
    subparsers cost ~5 ms of every start, and a `push` with nothing to do takes ~0.15 s in all."""
    top = Parser(prog="deltasync", description=ABOUT, add_help=False)
    top.add_argument("--help", action="help", help="Show this message and exit.")
    top.add_argument("--version", action="store_true", dest="show_version",
                     help="Print the version, the librsync engine and its version.")
    sub = top.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    for name, fn, options, folder in [c for c in _COMMANDS if c[0] == command] or _COMMANDS:
        options(_command(sub, fn, name, folder))
    if command not in {c[0] for c in _COMMANDS}:
        sub.add_parser("rdiff", help="librsync's rdiff: signature, delta, patch (same arguments, file formats "
                                     "and exit codes).", add_help=False)
    return top


def main(argv: list[str] | None = None) -> None:
    native.tune_malloc()
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["rdiff"]:
        from .cli_rdiff import main as rdiff_main

        rdiff_main(args[1:])
        return
    top = parser(args[0] if args else None)
    a = top.parse_args(args)
    if a.show_version:
        _version()
        return
    if not hasattr(a, "run"):
        top.print_help()
        sys.exit(0)
    a.run(a)


def run() -> NoReturn:
    """The command's entry (`deltasync`, `python -m deltasync`): `main`, then out at once. By then a
    command has closed what it opened (its manifest, its peer, its threads); the interpreter's own
    teardown of the ~300 modules loaded would cost ~20 ms more of every command, a tenth of a push
    with nothing to do. Where another thread still runs, or output cannot be flushed, the usual exit."""
    try:
        main()
        code: object = 0
    except SystemExit as e:
        code = e.code
    if code is None:
        code = 0
    if type(code) is not int or threading.active_count() > 1:
        sys.exit(code)
    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)  # (a closed pipe: Python's own exit says so as usual)
    os._exit(code)


if __name__ == "__main__":
    run()
