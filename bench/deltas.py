#!/usr/bin/env python3
"""The sender's delta CPU per segment: `engine.segment_delta` against librsync's search alone.

    python bench/deltas.py [--size-mb 500] [--kinds regions,scattered,shift,append] [--runs 3]

A seeded random file of --size-mb, each mutation kind of `fixture.py` applied to a copy, the
old file's signature made once; then every 4 MiB segment of the new file is delta'd both ways
(median of --runs passes each, alternating which goes first), its output patched back and
checked on every seventh segment. Prints seconds and delta bytes for both, and their ratios.
"""
from __future__ import annotations

import argparse
import io
import os
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
        with open(old, "rb") as f:
            sig = engine.signature(f, engine.block_len_for(old.stat().st_size))
        print(f"{'kind':<10} {'ours s':>8} {'librsync s':>11} {'time ratio':>11} {'ours MB':>8} {'librsync MB':>12}")
        for kind in a.kinds.split(","):
            new = work / kind
            shutil.copyfile(old, new)
            fixture.mutate(str(new), kind, 1000, 0.10)
            data = new.read_bytes()
            segments = [(o, data[o : o + SEGMENT]) for o in range(0, len(data), SEGMENT)]
            ours = lambda o, s: engine.segment_delta(s, o, sig)  # noqa: E731
            theirs = lambda o, s: engine.delta(s, sig)  # noqa: E731
            times: dict[str, list[float]] = {"ours": [], "theirs": []}
            sizes: dict[str, int] = {}
            for run in range(a.runs):
                for name in (("ours", "theirs") if run % 2 == 0 else ("theirs", "ours")):
                    secs, size, deltas = one_pass(segments, sig, ours if name == "ours" else theirs)
                    times[name].append(secs)
                    sizes[name] = size
                    with open(old, "rb") as basis:
                        for (_, seg), d in list(zip(segments, deltas))[::7]:
                            out = io.BytesIO()
                            engine.patch(basis, d, out)
                            if out.getvalue() != seg:
                                raise SystemExit(f"{kind}: a {name} delta does not patch back to its segment")
            t_ours, t_theirs = statistics.median(times["ours"]), statistics.median(times["theirs"])
            print(f"{kind:<10} {t_ours:8.2f} {t_theirs:11.2f} {t_ours / t_theirs:11.2f} {sizes['ours'] / 1e6:8.2f} "
                  f"{sizes['theirs'] / 1e6:12.2f}")
            new.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
