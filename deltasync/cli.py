"""The `deltasync` command. Parses, calls one library function, renders.

Every DeltasyncError reaches the user as one line on stderr with the exit
code the README documents (0 ok, 1 error, 2 usage, 3 partial, 4 peer).
"""
from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from .errors import EXIT_ERROR, DeltasyncError, PartialSuccess
from .fs import native

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Keep folders in sync between peers by rolling-signature deltas, verified end to end.")

DirArg = typer.Argument(..., help="The shared folder.", file_okay=False)
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout.")
VerboseOpt = typer.Option(0, "--verbose", "-v", count=True, help="More log lines on stderr.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="Only errors on stderr.")


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
        typer.echo(f"deltasync: {'' if isinstance(e, PartialSuccess) else 'error: '}{e}", err=True)
        if as_json:  # scripts still get one object on stdout
            _print_json({"error": str(e), "exit_code": e.exit_code})
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("deltasync: interrupted", err=True)
        raise typer.Exit(130) from None
    except OSError as e:
        typer.echo(f"deltasync: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
        raise typer.Exit(EXIT_ERROR) from None
    except sqlite3.Error as e:  # the manifest: most often a full disk or a read-only folder
        hint = " (is the disk full or read-only?)" if isinstance(e, sqlite3.OperationalError) else ""
        typer.echo(f"deltasync: error: manifest database: {e}{hint}", err=True)
        if as_json:
            _print_json({"error": f"manifest database: {e}", "exit_code": EXIT_ERROR})
        raise typer.Exit(EXIT_ERROR) from None


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        from . import engines

        try:
            ours = metadata.version("deltasync")
        except metadata.PackageNotFoundError:
            ours = "unknown"
        engine = _run(engines.describe)
        typer.echo(f"deltasync {ours}; engine {engine}; Python {sys.version.split()[0]}")
        raise typer.Exit(0)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version, the librsync engine and its version.")) -> None:
    """Keep folders in sync between peers by rolling-signature deltas, verified end to end."""


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, sort_keys=True) + "\n")
    sys.stdout.flush()


@app.command()
def init(directory: Path = DirArg, as_json: bool = JsonOpt) -> None:
    """Make DIR a shared folder (key, certificate, manifest) and print its peer ID.

    Example: deltasync init ./A
    """
    from . import identity
    from .config import Folder

    folder, peer_id, created = _run(lambda: Folder.init(directory))
    if as_json:
        _print_json({"peer_id": identity.format_id(peer_id), "folder": str(folder.root), "created": created})
    else:
        typer.echo(identity.format_id(peer_id))


@app.command("id")
def id_(directory: Path = DirArg) -> None:
    """Print this folder's peer ID alone on one line.

    Example: deltasync id ./A
    """
    from . import identity
    from .config import Folder

    typer.echo(identity.format_id(_run(lambda: Folder.open(directory).peer_id)))


@app.command()
def trust(directory: Path = DirArg, peer_id: str = typer.Argument(..., help="The peer's ID (from `deltasync id`)."),
          name: Optional[str] = typer.Option(None, "--name", help="A name to use instead of an address."),
          address: Optional[str] = typer.Option(None, "--address", help="HOST:PORT where this peer listens."),
          as_json: bool = JsonOpt) -> None:
    """Trust a peer: it may connect to us, and we accept it when we connect.

    Example: deltasync trust ./A ABCDEFG-... --name laptop --address 10.0.0.2:8730
    """
    from . import identity
    from .config import Folder

    peer = _run(lambda: Folder.open(directory).trust(peer_id, name, address), as_json)
    if as_json:
        _print_json({"name": peer.name, "peer_id": identity.format_id(peer.id), "address": peer.address})
    else:
        typer.echo(f"trusted {peer.name} = {identity.format_id(peer.id)}")


@app.command()
def untrust(directory: Path = DirArg, peer: str = typer.Argument(..., help="The peer's name or ID."),
            as_json: bool = JsonOpt) -> None:
    """Stop trusting a peer: its next connection is refused, both ways.

    Example: deltasync untrust ./A laptop
    """
    from . import identity
    from .config import Folder

    gone = _run(lambda: Folder.open(directory).untrust(peer), as_json)
    if as_json:
        _print_json({"name": gone.name, "peer_id": identity.format_id(gone.id), "address": gone.address})
    else:
        typer.echo(f"untrusted {gone.name} = {identity.format_id(gone.id)}")


@app.command()
def serve(directory: Path = DirArg,
          listen: Optional[str] = typer.Option(None, "--listen", help="HOST:PORT (port 0 picks a free one)."),
          verbose: int = VerboseOpt, quiet: bool = QuietOpt) -> None:
    """Receive from trusted peers until SIGINT/SIGTERM.

    Prints `listening on HOST:PORT` once it accepts connections.
    Example: deltasync serve ./B --listen 127.0.0.1:8730
    """
    from .config import Folder
    from .run.server import run

    _logging(verbose, quiet, daemon=True)

    def go() -> None:
        folder = Folder.open(directory)
        addr = listen or str(folder.config().setting("listen"))

        def announce(actual: str) -> None:
            print(f"listening on {actual}", flush=True)

        asyncio.run(run(folder, addr, announce))

    _run(go)


PeerArg = typer.Argument(..., help="HOST:PORT, or a peer name from config.toml.")
DryRunOpt = typer.Option(False, "--dry-run", "-n", help="Print the plan; change nothing on either side.")
ExcludeOpt = typer.Option([], "--exclude", help="Gitignore-style pattern (repeatable).")
BwOpt = typer.Option(None, "--bwlimit", help="At most RATE each way: KiB/s, or 10M, 500K; 0: no limit.")
HumanOpt = typer.Option(False, "--human-readable", "-h", help="Sizes in KiB, MiB, GiB.")
MaxDeleteOpt = typer.Option(None, "--max-delete", min=0, help="Delete at most N entries here or on the peer; the "
                                                                "rest are left (exit 3).")
CompressOpt = typer.Option(False, "--compress/--no-compress", "-z",
                           help="zstd on file data and indexes, both ways, where it saves a tenth or more.")


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


ItemizeOpt = typer.Option(False, "--itemize-changes", "-i", help="One line per change as it is done, in rsync's "
                                                                 "letters (<f+++++++++ new, >f.st...... received).")
StatsOpt = typer.Option(False, "--stats", help="rsync-like totals: literal and matched data, speedup.")


def _session(mode: str, directory: Path, peer: str, *, delete: bool = False, dry_run: bool, exclude: List[str],
             bwlimit: Optional[str], compress: bool, max_delete: Optional[int], human: bool, itemize: bool,
             stats: bool, as_json: bool, verbose: int, quiet: bool, force: bool = False, update: bool = False) -> None:
    """push, pull and sync are one flow with a different plan."""
    from . import progress
    from .config import Folder
    from .core import itemize as items
    from .errors import UsageError
    from .run import client, report as reports
    from .run.channel import parse_rate

    _logging(verbose, quiet)
    if itemize and as_json:
        def refuse() -> None:
            raise UsageError("-i prints lines, --json one object: choose one (--json --dry-run lists the plan)")

        _run(refuse)
    rate = _run(lambda: parse_rate(bwlimit)) if bwlimit is not None else None
    shown = progress.choose(quiet or dry_run)
    said = (lambda text: print(text, flush=True)) if itemize and not dry_run else None
    report = _run(lambda: asyncio.run(client.session(Folder.open(directory), peer, mode, delete, dry_run, exclude,
                                                     rate, shown, compress, update=update, max_delete=max_delete,
                                                     itemized=said)), as_json)
    if as_json:
        _print_json(report.to_json())
    elif not quiet:
        for item in report.plan or []:
            pulled = item.get("direction") == "pull"
            typer.echo(items.line(item, pulled) if itemize else
                       f"{item.get('direction', ''):<5} {item['op']:<11} {item['path']}")
        if stats:
            for text in reports.stats(report, lambda n: size_text(n, human)):
                typer.echo(text, err=True)
        typer.echo(summary(report, human, dry_run), err=True)
    _run(lambda: reports.check(report, force))


@app.command()
def push(directory: Path = DirArg, peer: str = PeerArg,
         delete: bool = typer.Option(False, "--delete", help="Remove on the peer what is absent here."),
         dry_run: bool = DryRunOpt, exclude: List[str] = ExcludeOpt, bwlimit: Optional[str] = BwOpt,
         compress: bool = CompressOpt,
         force: bool = typer.Option(False, "--force", help="Exit 0 even when files edited on the peer were "
                                                           "replaced (they are kept there as versions)."),
         update: bool = typer.Option(False, "--update", "-u", help="Skip files whose mtime is newer on the peer."),
         max_delete: Optional[int] = MaxDeleteOpt, human: bool = HumanOpt, itemize: bool = ItemizeOpt,
         stats: bool = StatsOpt, as_json: bool = JsonOpt, verbose: int = VerboseOpt, quiet: bool = QuietOpt) -> None:
    """Make the peer hold this folder's tree (like rsync); exit 0 only when all is verified there.

    A file edited on the peer (a version this folder never saw) is replaced, kept there
    under .deltasync/versions/, reported, and makes the exit code 3 unless --force.
    Example: deltasync push ./A 127.0.0.1:8730 --delete --json
    """
    _session("push", directory, peer, delete=delete, dry_run=dry_run, exclude=exclude, bwlimit=bwlimit,
             compress=compress, max_delete=max_delete, human=human, itemize=itemize, stats=stats, as_json=as_json,
             verbose=verbose, quiet=quiet, force=force, update=update)


@app.command()
def pull(directory: Path = DirArg, peer: str = PeerArg, dry_run: bool = DryRunOpt,
         exclude: List[str] = ExcludeOpt, bwlimit: Optional[str] = BwOpt, compress: bool = CompressOpt,
         max_delete: Optional[int] = MaxDeleteOpt, human: bool = HumanOpt, itemize: bool = ItemizeOpt,
         stats: bool = StatsOpt, as_json: bool = JsonOpt, verbose: int = VerboseOpt, quiet: bool = QuietOpt) -> None:
    """Fetch what the peer has newer (by version vectors): edits, new files, deletes; conflicts kept aside.

    Example: deltasync pull ./A 10.0.0.2:8730
    """
    _session("pull", directory, peer, dry_run=dry_run, exclude=exclude, bwlimit=bwlimit, compress=compress,
             max_delete=max_delete, human=human, itemize=itemize, stats=stats, as_json=as_json, verbose=verbose,
             quiet=quiet)


@app.command()
def sync(directory: Path = DirArg, peer: str = PeerArg, dry_run: bool = DryRunOpt,
         exclude: List[str] = ExcludeOpt, bwlimit: Optional[str] = BwOpt, compress: bool = CompressOpt,
         max_delete: Optional[int] = MaxDeleteOpt, human: bool = HumanOpt, itemize: bool = ItemizeOpt,
         stats: bool = StatsOpt, as_json: bool = JsonOpt, verbose: int = VerboseOpt, quiet: bool = QuietOpt) -> None:
    """Pull and push in one session: both folders converge; concurrent edits keep both versions.

    Example: deltasync sync ./A laptop --json
    """
    _session("sync", directory, peer, dry_run=dry_run, exclude=exclude, bwlimit=bwlimit, compress=compress,
             max_delete=max_delete, human=human, itemize=itemize, stats=stats, as_json=as_json, verbose=verbose,
             quiet=quiet)


@app.command()
def watch(directory: Path = DirArg,
          listen: Optional[str] = typer.Option(None, "--listen", help="HOST:PORT to serve on."),
          peer: List[str] = typer.Option([], "--peer", help="HOST:PORT or name to sync with (repeatable); "
                                                            "default: every peer in config.toml with an address."),
          bwlimit: Optional[str] = BwOpt, exclude: List[str] = ExcludeOpt,
          as_json: bool = typer.Option(False, "--json", help="Events as JSON lines on stdout."),
          verbose: int = VerboseOpt, quiet: bool = QuietOpt) -> None:
    """Serve, watch the folder, and keep it in sync with peers in both directions until SIGINT/SIGTERM.

    Example: deltasync watch ./A --listen 10.0.0.1:8730 --peer 10.0.0.2:8730
    """
    from .config import Folder
    from .run.channel import parse_rate
    from .run.watch import Watcher

    _logging(verbose, quiet, daemon=True)  # JSON events on stdout, log lines on stderr

    def go() -> None:
        folder = Folder.open(directory)
        cfg = folder.config()
        peers = list(peer) or [p.name for p in cfg.peers.values() if p.address]
        rate = parse_rate(bwlimit) if bwlimit is not None else None
        asyncio.run(Watcher(folder, peers, as_json, rate, list(exclude)).run(listen or str(cfg.setting("listen"))))

    _run(go)


@app.command()
def status(directory: Path = DirArg, as_json: bool = JsonOpt) -> None:
    """This peer's ID, trusted peers and their last sync, partial transfers.

    Example: deltasync status ./A --json
    """
    from .status import collect

    info = _run(lambda: collect(directory))
    if as_json:
        _print_json(info)
        return
    typer.echo(f"peer ID: {info['peer_id']}")
    for p in info["peers"]:
        typer.echo(f"peer {p['name']}: {p['id']} {p.get('address') or ''} last sync: {p['last_sync'] or 'never'}")
    for c in info["conflicts"]:
        typer.echo(f"conflict copy: {c}")
    for c in info["pending"]:
        typer.echo(f"pending: {c}")
    for p in info["partials"]:
        typer.echo(f"partial {p['path']}: {p['segments_done']}/{p['segments_total']} segments, "
                   f"{p['bytes_done']}/{p['size']} bytes")


@app.command()
def versions(directory: Path = DirArg, path: Optional[str] = typer.Argument(None, help="Only this path."),
             as_json: bool = JsonOpt) -> None:
    """List the versions kept when peers replaced or deleted files here, newest first.

    Example: deltasync versions ./A docs/report.txt
    """
    from .config import Folder
    from .store.manifest import Manifest
    from .store.versions import Versions

    def collect() -> list[Any]:
        folder = Folder.open(directory)
        m = Manifest(folder.db)
        try:
            return Versions(folder.root, m, folder.config().folder).list(path)
        finally:
            m.close()

    kept = _run(collect, as_json)
    numbered: dict[str, int] = {}
    rows = []
    for k in kept:
        numbered[k.path] = numbered.get(k.path, 0) + 1
        rows.append(k.to_json(numbered[k.path]))
    if as_json:
        _print_json({"versions": rows})
        return
    import datetime as dt

    for r in rows:
        when = dt.datetime.fromtimestamp(r["kept"]).isoformat(timespec="seconds")
        who = f" by {r['peer'][:7]}" if r["peer"] else ""
        typer.echo(f"{r['number']:>3}  {when}  {r['size']:>12,}  {r['reason']}{who}  {r['path']}")
    if not rows:
        typer.echo("no kept versions", err=True)


@app.command()
def restore(directory: Path = DirArg, path: str = typer.Argument(..., help="The path to put back."),
            at: Optional[str] = typer.Option(None, "--at", help="The version in place at this time "
                                                                   "(ISO 8601 or epoch seconds)."),
            version: Optional[int] = typer.Option(None, "--version", help="Number N as `versions` lists it "
                                                                             "(1 = newest)."),
            as_json: bool = JsonOpt) -> None:
    """Put a kept version back (the current file is kept too); it syncs as a new local change.

    Example: deltasync restore ./A docs/report.txt --version 2
    """
    from .config import Folder
    from .store.versions import parse_when
    from .store.versions import restore as do_restore

    def go() -> Any:
        if at is not None and version is not None:
            from .errors import UsageError

            raise UsageError("give --at or --version, not both")
        return do_restore(Folder.open(directory), path, parse_when(at) if at else None, version)

    k = _run(go, as_json)
    if as_json:
        _print_json({"restored": path, "size": k.size, "kept": k.kept, "reason": k.reason})
    else:
        typer.echo(f"restored {path} ({k.size:,} bytes, the version {k.reason} at "
                   f"{__import__('datetime').datetime.fromtimestamp(k.kept).isoformat(timespec='seconds')})")


@app.command()
def demo(scale: float = typer.Option(0.2, "--scale", help="Size factor: 1.0 is the full seed plan (File_2 = 500 MB)."),
         keep: Optional[Path] = typer.Option(None, "--keep", help="Keep the two peers' folders here."),
         as_json: bool = JsonOpt) -> None:
    """Two peers on this machine run the seed test plan and print its table; exit 0 only if every md5 matches.

    Example: deltasync demo --scale 0.05
    """
    from dataclasses import asdict

    from . import demo as demo_mod

    steps = _run(lambda: demo_mod.run(scale, keep))
    ok = all(s.md5_match is not False for s in steps)
    if as_json:
        _print_json({"ok": ok, "steps": [asdict(s) for s in steps]})
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"deltasync demo: the seed test plan at scale {scale}")
        for col in ("step", "files", "bytes sent", "time (s)", "md5 match"):
            table.add_column(col, justify="left" if col == "step" else "right")
        for s in steps:
            match = "-" if s.md5_match is None else "yes" if s.md5_match else "NO"
            table.add_row(s.name, str(s.files), f"{s.bytes_sent:,}", f"{s.seconds:.2f}", match)
        Console().print(table)
    if not ok:
        raise typer.Exit(1)


from .cli_rdiff import rdiff_app  # noqa: E402  (its own module: rdiff's options and exit codes)

app.add_typer(rdiff_app, name="rdiff")


def main() -> None:
    native.tune_malloc()
    if sys.argv[1:2] == ["rdiff"]:
        from .cli_rdiff import main as rdiff_main

        rdiff_main(app)
    app()


if __name__ == "__main__":
    main()
