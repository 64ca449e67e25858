"""The python-rsync binding (wheels for CPython up to 3.12; it bundles librsync)."""
from __future__ import annotations

from typing import Any

import pyrsync


class PyrsyncEngine:
    name = "pyrsync"

    def __init__(self) -> None:
        # pyrsync's own attribute: importlib.metadata would cost ~30 ms of start-up per process
        self.version = f"bundled with python-rsync {getattr(pyrsync, '__version__', '?')}"

    def signature(self, src: Any, out: Any, block_len: int, strong_len: int, magic: int) -> None:
        pyrsync.signature(src, out, strong_len, magic, block_len)

    def delta(self, new: Any, sig: Any, out: Any) -> None:
        pyrsync.delta(new, sig, out)

    def patch(self, basis: Any, delta: Any, out: Any) -> None:
        pyrsync.patch(basis, delta, out)

    def sig_args(self, size: int, magic: int, block_len: int, strong_len: int) -> tuple[int, int, int]:
        m, b, s = pyrsync.get_signature_args(size, magic, block_len, strong_len)
        return int(m), int(b), int(s)
