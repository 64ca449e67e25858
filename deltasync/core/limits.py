"""Every bound on what a peer can make us spend, and the sizes the transfer is
cut into, in one place.

A number that arrives from the wire is a claim, not a fact: it is checked
against these ranges *before* any loop, allocation or file scales with it.
Per-folder overrides live in `config.toml` (`[folder]`, see `config.DEFAULTS`);
the values here are the ones no setting can lift.
"""
from __future__ import annotations

from ..errors import ProtocolError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# how a transfer is cut
SEGMENT_SIZE = 4 * 1024 * 1024  # a big file travels in segments, each verified and journaled on arrival
# Files below this travel whole, many per frame: for them a signature round
# trip and per-file bookkeeping cost more than the bytes a delta could save
# (at most 128 KiB per file, 10 ms at 100 Mbit/s).
DELTA_MIN = 128 * 1024
# ... unless the receiver holds a version to patch: from this size on, a changed file travels as a
# delta (a one-line edit of a 30 KiB source file sends about the line). Below it, what a delta adds
# -- the file's begin, segment and done headers (~700 bytes of JSON), a signature of at least one
# block, the partial's journal rows -- is a fair share of the file itself, and a 16 KiB file
# crosses 100 Mbit/s in 1.3 ms.
SMALL_DELTA_MIN = 16 * 1024
BATCH_BYTES = 4 * 1024 * 1024  # small files' bytes in one `send_file` frame
BATCH_FILES = 1000  # small files in one `send_file` frame
OPS_BYTES = 4 * 1024 * 1024  # a `send_changes` body
OPS_PER_FRAME = 500
REQUEST_BATCH = 200  # small files asked for in one `request_file`
# small files received are written aside and made durable together, every so many
MAX_STAGED_FILES = 5000
MAX_STAGED_BYTES = 64 * 1024 * 1024  # on disk, in .deltasync/tmp; not in memory

# files and segments
MIN_SEGMENT = 64 * 1024
MAX_SEGMENT = 64 * 1024 * 1024
MAX_FILE_SIZE = 16 * 1024**4  # 16 TiB: a default; config.toml max_file_size may lower it
MAX_MODE = 0o177777  # st_mode fits in 16 bits; we keep the low 12 (0o7777)
# mtimes are signed 64-bit nanoseconds (SQLite INTEGER, struct timespec on 64-bit Linux):
# files older than 1970 are legal, values past 2262 cannot be stored
MIN_MTIME_NS, MAX_MTIME_NS = INT64_MIN, INT64_MAX

MAX_PATH_CHARS = 4096  # a path or symlink target (bytes are checked again where it is used)
MAX_SEQUENCE = 1 << 62  # an index sequence number (SQLite integers are 64-bit)

# version vectors: a mesh of more than a few hundred devices is not a folder we serve
MAX_VECTOR_KEYS = 256
MAX_VECTOR_KEY_LEN = 64

# one session
MAX_FILES_IN_FLIGHT = 64  # begun, not finished: each holds a partial's fd and the basis's
MAX_PARTIALS_PER_SESSION = 4096  # partial files a session may create (each lingers until resumed or stale)
MAX_INDEX_BYTES = 1024 * 1024 * 1024  # decompressed index JSON a peer may send in one session
MAX_PARTIALS_LISTED = 100_000  # a peer's advertised partial transfers
INDEX_CHUNK_BYTES = 2 * 1024 * 1024  # an index frame is cut here, far under the 16 MiB body limit

# librsync signatures a peer sends (its version of a file, for our delta)
MIN_BLOCK_LEN = 256
MAX_BLOCK_LEN = 16 * 1024 * 1024
MAX_SIG_BLOCKS = 65536 + 1  # our engine keeps a file at 65536 blocks or fewer
MAX_WEAK_COLLISIONS = 16  # distinct strong sums under one weak sum: more is an attack on the search

# ignore patterns (a `.deltasyncignore` arrives from peers like any file)
# extended attributes a peer may give one file or directory (user namespace and POSIX ACLs)
MAX_XATTRS = 64
MAX_XATTR_NAME = 255
MAX_XATTR_VALUE = 64 * 1024
MAX_XATTR_BYTES = 256 * 1024  # one entry's names and values together

MAX_IGNORE_BYTES = 1024 * 1024
MAX_IGNORE_PATTERNS = 10_000


def check_int(value: object, lo: int, hi: int, what: str) -> int:
    """`value` if it is an int (not a bool) within [lo, hi]; else a ProtocolError."""
    if type(value) is not int or not lo <= value <= hi:
        raise ProtocolError(f"{what} must be an integer in [{lo}, {hi}]")
    return value


def check_segment_size(value: object, what: str = "segment_size") -> int:
    return check_int(value, MIN_SEGMENT, MAX_SEGMENT, what)


def check_mtime(value: object, what: str = "mtime_ns") -> int:
    return check_int(value, MIN_MTIME_NS, MAX_MTIME_NS, what)


def segments_of(size: int, segment_size: int) -> int:
    return max(1, -(-size // segment_size))
