#!/usr/bin/env python3
"""The sender's delta CPU per segment: `engine.segment_delta` against librsync's search alone.

    python bench/deltas.py [--size-mb 500] [--kinds regions,scattered,shift,append] [--runs 3]

A seeded random file of --size-mb, each mutation kind of `fixture.py` applied to a copy, the
old file's signature (and its blocks' blake3 digests) made once; then every 4 MiB segment of
the new file is delta'd both ways, and ours again with the digests (what a sender that signed
the old version in the background does; the deltas must be the same bytes), median of --runs
passes each, the order rotating, the output patched back and checked on every seventh segment.
Prints seconds and delta bytes for both, their ratios, and the seconds with digests.
"""
from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import fixture  # noqa: E402

from deltasync import engine  # noqa: E402

SEGMENT = 4 * 1024 * 1024


def one_pass(segments: list[tuple[int, bytes]], sig: bytes, fn) -> tuple[float, int, list[bytes]]:
    started = time.perf_counter()
    out = [fn(offset, seg) for offset, seg in segments]
    return time.perf_counter() - started, sum(min(len(d), len(s)) for d, (_, s) in zip(out, segments)), out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--kinds", default="regions,scattered,shift,append")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="deltasync-deltas-"))
    try:
        old = work / "old"
        fixture.write_random(str(old), a.size_mb * 1024 * 1024, seed=4)
        block = engine.block_len_for(old.stat().st_size)
        with open(old, "rb") as f:
            sig = engine.signature(f, block)
            f.seek(0)
            digests = engine.block_digests(f.read, block)
        print(f"{'kind':<10} {'ours s':>8} {'librsync s':>11} {'time ratio':>11} {'ours MB':>8} {'librsync MB':>12} "
              f"{'digests s':>10}")
        for kind in a.kinds.split(","):
            new = work / kind
            shutil.copyfile(old, new)
            fixture.mutate(str(new), kind, 1000, 0.10)
            data = new.read_bytes()
            segments = [(o, data[o : o + SEGMENT]) for o in range(0, len(data), SEGMENT)]
            ours = lambda o, s: engine.segment_delta(s, o, sig)  # noqa: E731
            theirs = lambda o, s: engine.delta(s, sig)  # noqa: E731
            digested = lambda o, s: engine.segment_delta(s, o, sig, digests)  # noqa: E731
            ways = {"ours": ours, "theirs": theirs, "digests": digested}
            times: dict[str, list[float]] = {name: [] for name in ways}
            sizes: dict[str, int] = {}
            made: dict[str, list[bytes]] = {}
            for run in range(a.runs):
                names = list(ways)
                for name in names[run % 3:] + names[:run % 3]:
                    secs, size, deltas = one_pass(segments, sig, ways[name])
                    times[name].append(secs)
                    sizes[name] = size
                    made[name] = deltas
                    with open(old, "rb") as basis:
                        for (_, seg), d in list(zip(segments, deltas))[::7]:
                            out = io.BytesIO()
                            engine.patch(basis, d, out)
                            if out.getvalue() != seg:
                                raise SystemExit(f"{kind}: a {name} delta does not patch back to its segment")
            if made["digests"] != made["ours"]:
                raise SystemExit(f"{kind}: the deltas found with the blocks' digests are not the same bytes")
            t_ours, t_theirs = statistics.median(times["ours"]), statistics.median(times["theirs"])
            print(f"{kind:<10} {t_ours:8.2f} {t_theirs:11.2f} {t_ours / t_theirs:11.2f} {sizes['ours'] / 1e6:8.2f} "
                  f"{sizes['theirs'] / 1e6:12.2f} {statistics.median(times['digests']):10.2f}")
            new.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
