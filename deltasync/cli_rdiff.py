"""`deltasync rdiff`: rdiff's command line over `rdiff.py` -- its options
before or after the action (`rdiff -b 512 signature …`), `-s` statistics, and
rdiff's exit codes (librsync's rs_result: 100 I/O, 101 usage, 104 bad magic,
106 corrupt …), so scripts written for rdiff keep working."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable, NoReturn

from .engines import RS_RESULTS, DeltaError
from .errors import DeltasyncError, UsageError

EXIT_IO, EXIT_SYNTAX, EXIT_CORRUPT = RS_RESULTS["RS_IO_ERROR"], RS_RESULTS["RS_SYNTAX_ERROR"], RS_RESULTS["RS_CORRUPT"]
ABOUT = "librsync's rdiff: signature, delta, patch (same arguments, file formats and exit codes)."


@dataclass(frozen=True)
class Options:
    block_size: int = 0
    sum_size: int = 0
    hash_alg: str = "blake2"
    rollsum: str = "rabinkarp"
    force: bool = False
    statistics: bool = False


DEFAULTS = Options()


class _Parser(argparse.ArgumentParser):
    """rdiff's exit code for a usage mistake (101), not argparse's 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"deltasync rdiff: {message}", file=sys.stderr)
        sys.exit(EXIT_SYNTAX)


def _options(p: argparse.ArgumentParser, signature: bool = True) -> None:
    """rdiff's options; given before the action and after it, the later wins (no defaults here:
    what was not given is filled in from `DEFAULTS`)."""
    keep = argparse.SUPPRESS
    if signature:
        p.add_argument("--block-size", "-b", type=int, default=keep, help="Signature block size; 0: recommended.")
        p.add_argument("--sum-size", "-S", type=int, default=keep, help="Strong sum length; 0: the maximum.")
        p.add_argument("--hash", "-H", dest="hash_alg", default=keep, help="blake2 or md4.")
        p.add_argument("--rollsum", "-R", default=keep, help="rabinkarp or rollsum.")
    p.add_argument("--force", "-f", action="store_true", default=keep, help="Overwrite an existing output file.")
    p.add_argument("--statistics", "-s", action="store_true", default=keep,
                   help="Bytes in and out, and the time, on stderr.")


def _given(a: argparse.Namespace) -> Options:
    return Options(**{k: getattr(a, k, getattr(DEFAULTS, k)) for k in DEFAULTS.__dataclass_fields__})


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="deltasync rdiff", description=ABOUT)
    _options(top)
    top.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                     help="Accepted; no trace is printed.")
    top.add_argument("--input-size", "-I", type=int, default=argparse.SUPPRESS, help="Accepted for rdiff's sake.")
    top.add_argument("--output-size", "-O", type=int, default=argparse.SUPPRESS, help="Accepted for rdiff's sake.")
    sub = top.add_subparsers(title="actions", metavar="ACTION", parser_class=_Parser)
    p = sub.add_parser("signature", help="Write the signature of BASIS.",
                       description="Write the signature of BASIS.  Example: deltasync rdiff -b 2048 signature "
                                   "old.bin old.sig")
    p.add_argument("basis", nargs="?", help="Old file ('-' or absent: stdin).")
    p.add_argument("sig", nargs="?", help="Signature out ('-' or absent: stdout).")
    _options(p)
    p.set_defaults(run=signature)
    p = sub.add_parser("delta", help="Write the delta turning the old file into NEW.",
                       description="Write the delta turning the old file into NEW.  Example: deltasync rdiff delta "
                                   "old.sig new.bin d.delta")
    p.add_argument("sig", help="Signature of the old file.")
    p.add_argument("new", nargs="?", help="New file ('-' or absent: stdin).")
    p.add_argument("out", nargs="?", help="Delta out ('-' or absent: stdout).")
    _options(p, signature=False)
    p.set_defaults(run=delta)
    p = sub.add_parser("patch", help="Apply DELTA to BASIS.",
                       description="Apply DELTA to BASIS.  Example: deltasync rdiff patch old.bin d.delta new.bin")
    p.add_argument("basis", help="The old file.")
    p.add_argument("delta_in", metavar="DELTA", nargs="?", help="Delta ('-' or absent: stdin).")
    p.add_argument("new", nargs="?", help="New file out ('-' or absent: stdout).")
    _options(p, signature=False)
    p.set_defaults(run=patch)
    return top


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
        print(f"deltasync rdiff: {action} statistics: {', '.join(shown)}, "
              f"{time.monotonic() - started:.3f} s", file=sys.stderr)


def _fail(message: str, code: int) -> NoReturn:
    print(f"deltasync rdiff: {message}", file=sys.stderr)
    sys.exit(code)


def signature(a: argparse.Namespace, o: Options) -> None:
    from . import rdiff

    _run("signature", o, lambda: rdiff.signature(a.basis, a.sig, o.block_size, o.sum_size, o.hash_alg, o.rollsum,
                                                 o.force))


def delta(a: argparse.Namespace, o: Options) -> None:
    from . import rdiff

    _run("delta", o, lambda: rdiff.delta(a.sig, a.new, a.out, o.force))


def patch(a: argparse.Namespace, o: Options) -> None:
    from . import rdiff

    _run("patch", o, lambda: rdiff.patch(a.basis, a.delta_in, a.new, o.force))


def main(argv: list[str]) -> None:
    """`deltasync rdiff …`."""
    top = parser()
    if not argv:
        top.print_help()
        sys.exit(0)
    a = top.parse_args(argv)
    if not hasattr(a, "run"):
        top.print_help()
        sys.exit(EXIT_SYNTAX)
    a.run(a, _given(a))
