"""`deltasync rdiff`: rdiff's command line over `rdiff.py` -- its options
before or after the action (`rdiff -b 512 signature …`), `-s` statistics, and
rdiff's exit codes (librsync's rs_result: 100 I/O, 101 usage, 104 bad magic,
106 corrupt …), so scripts written for rdiff keep working."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import typer

from .engines import RS_RESULTS, DeltaError
from .errors import DeltasyncError, UsageError

EXIT_IO, EXIT_SYNTAX, EXIT_CORRUPT = RS_RESULTS["RS_IO_ERROR"], RS_RESULTS["RS_SYNTAX_ERROR"], RS_RESULTS["RS_CORRUPT"]

rdiff_app = typer.Typer(help="librsync's rdiff: signature, delta, patch (same arguments, file formats and exit "
                             "codes).", no_args_is_help=True)


@dataclass(frozen=True)
class Options:
    block_size: int = 0
    sum_size: int = 0
    hash_alg: str = "blake2"
    rollsum: str = "rabinkarp"
    force: bool = False
    statistics: bool = False


DEFAULTS = Options()
BlockOpt = typer.Option(0, "--block-size", "-b", help="Signature block size; 0: recommended.")
SumOpt = typer.Option(0, "--sum-size", "-S", help="Strong sum length; 0: the maximum.")
HashOpt = typer.Option("blake2", "--hash", "-H", help="blake2 or md4.")
RollOpt = typer.Option("rabinkarp", "--rollsum", "-R", help="rabinkarp or rollsum.")
ForceOpt = typer.Option(False, "--force", "-f", help="Overwrite an existing output file.")
StatsOpt = typer.Option(False, "--statistics", "-s", help="Bytes in and out, and the time, on stderr.")


@rdiff_app.callback()
def _options(ctx: typer.Context, block_size: int = BlockOpt, sum_size: int = SumOpt, hash_alg: str = HashOpt,
             rollsum: str = RollOpt, force: bool = ForceOpt, statistics: bool = StatsOpt,
             verbose: bool = typer.Option(False, "--verbose", "-v", help="Accepted; no trace is printed."),
             input_size: int = typer.Option(0, "--input-size", "-I", help="Accepted for rdiff's sake."),
             output_size: int = typer.Option(0, "--output-size", "-O", help="Accepted for rdiff's sake.")) -> None:
    """rdiff's options may come before the action, as rdiff takes them."""
    ctx.obj = Options(block_size, sum_size, hash_alg, rollsum, force, statistics)


def _merged(ctx: typer.Context, **after: Any) -> Options:
    """The options given before the action, overridden by those given after it."""
    base = ctx.obj if isinstance(ctx.obj, Options) else DEFAULTS
    return replace(base, **{k: v for k, v in after.items() if v != getattr(DEFAULTS, k)})


def _run(action: str, opts: Options, fn: Callable[[], tuple[int | None, int | None]]) -> None:
    """Run one action; its failure as one line and rdiff's exit code."""
    started = time.monotonic()
    try:
        moved_in, moved_out = fn()
    except DeltaError as e:
        _fail(str(e), e.code or EXIT_CORRUPT)
    except UsageError as e:
        _fail(str(e), EXIT_SYNTAX)
    except OSError as e:
        _fail(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "), EXIT_IO)
    except DeltasyncError as e:  # no librsync to be had: deltasync's own code
        _fail(str(e), e.exit_code)
    if opts.statistics:
        shown = [f"{n:,} bytes {what}" if n is not None else f"? bytes {what}"
                 for n, what in ((moved_in, "in"), (moved_out, "out"))]
        typer.echo(f"deltasync rdiff: {action} statistics: {', '.join(shown)}, "
                   f"{time.monotonic() - started:.3f} s", err=True)


def _fail(message: str, code: int) -> None:
    typer.echo(f"deltasync rdiff: {message}", err=True)
    raise typer.Exit(code)


@rdiff_app.command("signature")
def signature(ctx: typer.Context,
              basis: Optional[str] = typer.Argument(None, help="Old file ('-' or absent: stdin)."),
              sig: Optional[str] = typer.Argument(None, help="Signature out ('-' or absent: stdout)."),
              block_size: int = BlockOpt, sum_size: int = SumOpt, hash_alg: str = HashOpt, rollsum: str = RollOpt,
              force: bool = ForceOpt, statistics: bool = StatsOpt) -> None:
    """Write the signature of BASIS.  Example: deltasync rdiff -b 2048 signature old.bin old.sig"""
    from . import rdiff

    o = _merged(ctx, block_size=block_size, sum_size=sum_size, hash_alg=hash_alg, rollsum=rollsum, force=force,
                statistics=statistics)
    _run("signature", o, lambda: rdiff.signature(basis, sig, o.block_size, o.sum_size, o.hash_alg, o.rollsum,
                                                 o.force))


@rdiff_app.command("delta")
def delta(ctx: typer.Context, sig: str = typer.Argument(..., help="Signature of the old file."),
          new: Optional[str] = typer.Argument(None, help="New file ('-' or absent: stdin)."),
          out: Optional[str] = typer.Argument(None, help="Delta out ('-' or absent: stdout)."),
          force: bool = ForceOpt, statistics: bool = StatsOpt) -> None:
    """Write the delta turning the old file into NEW.  Example: deltasync rdiff delta old.sig new.bin d.delta"""
    from . import rdiff

    o = _merged(ctx, force=force, statistics=statistics)
    _run("delta", o, lambda: rdiff.delta(sig, new, out, o.force))


@rdiff_app.command("patch")
def patch(ctx: typer.Context, basis: str = typer.Argument(..., help="The old file."),
          delta_in: Optional[str] = typer.Argument(None, metavar="DELTA", help="Delta ('-' or absent: stdin)."),
          new: Optional[str] = typer.Argument(None, help="New file out ('-' or absent: stdout)."),
          force: bool = ForceOpt, statistics: bool = StatsOpt) -> None:
    """Apply DELTA to BASIS.  Example: deltasync rdiff patch old.bin d.delta new.bin"""
    from . import rdiff

    o = _merged(ctx, force=force, statistics=statistics)
    _run("patch", o, lambda: rdiff.patch(basis, delta_in, new, o.force))


def main(app: typer.Typer) -> None:
    """`deltasync rdiff …` with rdiff's exit code for a usage mistake (101): the
    parser's own is 2, which nothing else under `rdiff` exits with."""
    try:
        app()
    except SystemExit as e:
        if e.code == 2:
            sys.exit(EXIT_SYNTAX)
        raise
