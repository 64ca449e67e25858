"""The receiving side of files: partial file, journal, per-segment verify,
final verify, atomic replace.

Every change first checks that what is on disk here is still what our index
told the sender (``replaces``): a file edited here meanwhile is never
overwritten or deleted, so nothing is lost. A segment is journaled only after
its bytes are verified and fsynced, so after a crash a transfer resumes at the
first missing segment and never trusts unverified bytes.
"""
from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from . import engine, hashing
from .core import limits
from .core import version as vv
from .config import Folder
from .core.entry import DIR, FILE, SYMLINK, Entry
from .errors import AlreadyPresent, ProtocolError, TransferFailed, UnsafePath
from .fs import native, safe
from .fs.scan import hash_fd
from .store.manifest import Manifest, Partial, Seen
from .wire.framing import Buffer
from .store.signatures import Signatures
from .store.versions import Versions

log = logging.getLogger(__name__)


@dataclass
class Result:
    path: str
    ok: bool
    error: str | None = None
    whole: bool = False
    kept: str | None = None  # the version this replaced or deleted, kept under .deltasync/versions/


class Writer:
    """One session writing into the folder: the owner of its path claims (all
    released when it ends, whatever happened) and the peer its versions name."""

    def __init__(self, peer: str = "") -> None:
        self.peer = peer
        self.partials_created = 0


def _tmp_name(suffix: str = "") -> str:
    """Temp and partial files carry their writer's PID: one whose writer is gone
    (killed mid-write) is an orphan and is cleaned, whatever its age."""
    return f"{os.getpid()}-{uuid.uuid4().hex}{suffix}"


def _writer_alive(name: str) -> bool:
    pid = name.split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Written segments are fsynced and journaled together, every SYNC_BYTES or SYNC_SECONDS:
# one fdatasync per 4 MiB segment cost 1.56 s per 500 MB here, one per 32 MiB about a
# third of that. A crash loses at most the unjournaled group (a quarter second of a slow
# link, 16 MiB of a fast one), which a resume resends.
SYNC_BYTES = 16 * 1024 * 1024
SYNC_SECONDS = 0.25


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    if native.copy_range(src, dst, offset, length) != length:
        raise ProtocolError("the basis is shorter than the segment it should hold")


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _why(path: str, err: Exception) -> str:
    if isinstance(err, OSError):  # a full disk fails this file; the old version stays
        return f"{path}: {err.strerror or err}"
    return str(err)


class Incoming:
    """One file being received in segments."""

    def __init__(self, partial: Partial, fd: int, basis: BinaryIO | None,
                 basis_segments: list[bytes] | None = None, writer: "Writer | None" = None) -> None:
        self.partial = partial
        self.writer = writer
        self.fd = fd
        self.basis = basis
        self.basis_segments = basis_segments  # our own per-segment blake3 of the basis, when recorded
        self.done = set(partial.done)
        self.unsynced: list[int] = []  # written, not yet fsynced nor journaled
        self.unsynced_bytes = 0
        self.synced_at = time.monotonic()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.basis is not None:
            self.basis.close()


# Paths being written, process-wide, and the session writing each: a watch process
# receives in its server and in its own pulls, and two sessions must never write one
# path at once. A session's claims all go when it ends (`release_all`).
_BUSY: dict[tuple[str, str], "Writer | None"] = {}
_BUSY_LOCK = threading.Lock()


class Receiver:
    """Applies what peers send to one folder. Shared by all connections."""

    def __init__(self, folder: Folder, manifest: Manifest) -> None:
        self.folder = folder
        self.manifest = manifest
        cfg = folder.config()
        self.safe = safe.SafeRoot(folder.root, int(cfg.setting("max_path_length")))
        self.signatures = Signatures(self.safe, manifest, self.current)
        self.versions = Versions(folder.root, manifest, cfg.folder)
        self.max_file_size = min(int(cfg.setting("max_file_size")), limits.MAX_FILE_SIZE)

    def close(self, wait_signatures: float = 0.0) -> None:
        """Stop. Background signature jobs get up to `wait_signatures` seconds
        (inf: until done); the rest are abandoned mid-read, not waited for."""
        self.signatures.close(wait_signatures)

    # -- what is here now ---------------------------------------------------
    def current(self, path: str) -> Entry | None:
        """The entry at `path` as it is on disk now (hashing only if its stat moved)."""
        st = self.safe.lstat(path)
        if st is None:
            return None
        if stat.S_ISDIR(st.st_mode):
            return Entry(path, DIR, 0, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
        if stat.S_ISLNK(st.st_mode):
            with self.safe.parent(path) as (fd, name):
                return Entry(path, SYMLINK, target=os.readlink(name, dir_fd=fd))
        if not stat.S_ISREG(st.st_mode):
            return Entry(path, "other")
        seen = self.manifest.get(path)
        if (seen and seen.entry.kind == FILE and seen.entry.blake3 and
                (seen.entry.size, seen.entry.mtime_ns, seen.ino, seen.ctime_ns)
                == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)):
            digest: str | None = seen.entry.blake3
        else:
            with self.safe.open_read(path) as f:  # through the folder, never through a symlink
                hashed = hash_fd(f.fileno(), st)
            if hashed is None:
                raise TransferFailed(f"{path}: changing here right now")
            digest = hashed[0]
        return Entry(path, FILE, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), digest)

    def _expect(self, path: str, replaces: str | None, incoming: Entry | None = None) -> Entry | None:
        """Check that `path` still holds what the sender planned against. If it
        already holds exactly the incoming content, record its version and
        raise AlreadyPresent: two sessions crossed, and nothing is lost."""
        cur = self.current(path)
        if incoming is not None and cur is not None and cur.kind == FILE and cur.blake3 == incoming.blake3 \
                and replaces != cur.blake3:
            self._record(replace(incoming, mtime_ns=cur.mtime_ns, mode=cur.mode))
            raise AlreadyPresent(path)
        have = cur.blake3 if cur is not None and cur.kind == FILE else None
        if cur is not None and cur.kind != FILE:
            raise TransferFailed(f"{path}: is a {cur.kind} here, not a file")
        if have != replaces:
            raise TransferFailed(f"{path}: changed here since the index was sent; not overwritten")
        return cur

    def _record(self, entry: Entry) -> None:
        """Remember what we just wrote, with the version it came with, so the
        next scan neither rehashes it nor takes it for a local change."""
        row = self._seen_row(entry)
        if row is not None:
            self.manifest.record([row])

    def _seen_row(self, entry: Entry) -> Seen | None:
        st = self.safe.lstat(entry.path)
        if st is None:
            return None
        link = entry.kind == SYMLINK
        return Seen(replace(entry, size=st.st_size if entry.kind == FILE else 0,
                            mtime_ns=0 if link else st.st_mtime_ns, mode=0 if link else stat.S_IMODE(st.st_mode)),
                    st.st_ino, st.st_ctime_ns)

    def _claim(self, path: str, w: Writer | None) -> None:
        key = (str(self.folder.root), path)
        with _BUSY_LOCK:
            if key in _BUSY:
                raise TransferFailed(f"{path}: another session is writing it")
            _BUSY[key] = w

    def _release(self, path: str) -> None:
        with _BUSY_LOCK:
            _BUSY.pop((str(self.folder.root), path), None)

    def release_all(self, w: Writer) -> int:
        """Release every path `w` still claims (its session ended, cleanly or not)."""
        root = str(self.folder.root)
        with _BUSY_LOCK:
            mine = [k for k, owner in _BUSY.items() if owner is w and k[0] == root]
            for k in mine:
                del _BUSY[k]
        return len(mine)

    def _keeper(self, path: str, w: Writer | None, reason: str, move: bool = False) -> safe.Keeper:
        """Keep the version at `path` before a peer's session replaces or deletes it."""
        peer = w.peer if w is not None else ""
        return lambda fd, name: self.versions.keep(fd, name, path, peer, reason, move)

    # -- small files, many per frame ---------------------------------------
    def stage_small(self, files: list[Any], body: Buffer, staged: list[tuple[Entry, Path]],
                    w: Writer | None = None) -> list[Result]:
        """Verify one `send_file` frame's files and write them aside (not yet
        durable, not yet in place); return the ones that failed or were already here.

        Small files are staged across frames and committed together (see
        `commit_small`): one filesystem sync for thousands of files, not one
        fsync (a journal commit) each."""
        offset = 0
        parsed = []
        for meta in files:
            if not isinstance(meta, dict):
                raise ProtocolError("send_file: file entry is not an object")
            e = Entry.from_wire(dict(meta, kind=FILE))
            replaces = meta.get("replaces")
            if replaces is not None and not (isinstance(replaces, str) and len(replaces) == 64):
                raise ProtocolError("send_file: bad replaces")
            safe.check_relpath(e.path)
            parsed.append((e, replaces, offset))
            offset += e.size
        if offset != len(body):
            raise ProtocolError("send_file: sizes do not add up to the body length")
        results: list[Result] = []
        for e, replaces, start in parsed:
            data = memoryview(body)[start : start + e.size]
            try:
                self._claim(e.path, w)
            except TransferFailed as err:
                results.append(Result(e.path, False, str(err)))
                continue
            try:
                if hashing.of_bytes(data) != e.blake3:
                    raise TransferFailed(f"{e.path}: blake3 mismatch, not applied")
                self._expect(e.path, replaces, e)
                staged.append((e, safe.write_aside(self.folder.tmp, _tmp_name(), [data], e.mode, e.mtime_ns,
                                                   fsync=False)))
            except AlreadyPresent:
                results.append(Result(e.path, True))
                self._release(e.path)
            except (TransferFailed, OSError, ValueError, OverflowError) as err:
                results.append(Result(e.path, False, _why(e.path, err)))
                self._release(e.path)
            except BaseException:
                self._release(e.path)
                raise
        return results

    def commit_small(self, staged: list[tuple[Entry, Path]], w: Writer | None = None) -> list[Result]:
        """Make staged files durable with one sync, rename them into place, and
        record them in one transaction."""
        results: list[Result] = []
        try:
            if staged:
                safe.make_durable(self.folder.tmp, [tmp for _, tmp in staged])
            rows: list[Seen] = []
            for e, tmp in staged:
                try:
                    kept = self.safe.replace(tmp, e.path, durable=False, keep=self._keeper(e.path, w, "replaced"))
                    row = self._seen_row(e)
                    if row is not None:
                        rows.append(row)
                    results.append(Result(e.path, True, whole=True, kept=kept))
                except (TransferFailed, OSError) as err:
                    results.append(Result(e.path, False, _why(e.path, err)))
            self.manifest.record(rows)
            self._sync_dirs({os.path.dirname(r.path) for r in results if r.ok})
        finally:
            self.drop_small(staged)
        return results

    def drop_small(self, staged: list[tuple[Entry, Path]]) -> None:
        """Forget staged files (a session that ended before their commit)."""
        for e, tmp in staged:
            tmp.unlink(missing_ok=True)
            self._release(e.path)
        staged.clear()

    def _sync_dirs(self, dirs: set[str]) -> None:
        for d in dirs:
            fd = os.open(self.folder.root / d if d else self.folder.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- big files, in segments --------------------------------------------
    def begin(self, h: dict[str, Any], w: Writer | None = None) -> Incoming:
        path = h["path"]
        safe.check_relpath(path, self.safe.max_path)
        limits.check_segment_size(h["segment_size"], "begin_file: segment_size")
        limits.check_int(h["size"], 0, self.max_file_size, "begin_file: size")
        limits.check_mtime(h["mtime_ns"], "begin_file: mtime_ns")
        limits.check_int(h["mode"], 0, limits.MAX_MODE, "begin_file: mode")
        if len(h["blake3"]) != 64 or not all(x is None or (isinstance(x, str) and len(x) == 64)
                                             for x in (h["basis"], h["replaces"])):
            raise ProtocolError("begin_file: blake3, basis and replaces must be 64-character digests")
        if h["basis"] is not None and h["basis"] != h["replaces"]:
            raise ProtocolError("begin_file: the delta basis must be the version it replaces")
        if w is not None:
            w.partials_created += 1
            if w.partials_created > limits.MAX_PARTIALS_PER_SESSION:
                raise ProtocolError(f"begin_file: more than {limits.MAX_PARTIALS_PER_SESSION} files in one session")
        self._claim(path, w)
        try:
            self._expect(path, h["replaces"], Entry(path, FILE, h["size"], h["mtime_ns"], h["mode"], h["blake3"],
                                                    version=vv.from_wire(h.get("version"))))
            basis = self.safe.open_read(path) if h["basis"] is not None else None
            old = self.manifest.partial(path)
            keep = (old is not None and old.target_blake3 == h["blake3"] and old.replaces == h["replaces"]
                    and old.size == h["size"] and old.segment_size == h["segment_size"]
                    and (self.folder.partials / old.name).exists())
            if keep:
                assert old is not None
                part = old
            else:
                if old is not None:
                    self._discard(old)
                now = time.time()
                version = json.dumps(vv.to_wire(vv.from_wire(h.get("version"))))
                part = Partial(path, h["blake3"], h["replaces"], h["size"], h["mtime_ns"], h["mode"],
                               h["segment_size"], _tmp_name(".part"), now, now, version, frozenset())
            fd = os.open(self.folder.partials / part.name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if not keep:
                os.ftruncate(fd, 0)
                self.manifest.begin_partial(part)
            known = self.manifest.segments_of(h["basis"], h["segment_size"]) if basis is not None else None
            return Incoming(part, fd, basis, known, w)
        except BaseException:
            self._release(path)
            raise

    def segment(self, inc: Incoming, h: dict[str, Any], body: bytes) -> None:
        p = inc.partial
        idx, offset, length = h["index"], h["offset"], h["length"]
        if idx >= p.segments_total or offset != idx * p.segment_size or \
                length != min(p.segment_size, p.size - offset):
            raise ProtocolError(f"send_delta: segment {idx} of {p.path} is out of range")
        if idx in inc.done:
            return  # already verified and journaled; an idempotent resend
        if h.get("same") is True:  # unchanged: the basis holds these bytes at this very offset
            if inc.basis is None:
                raise ProtocolError(f"send_delta: {p.path} segment {idx} copies from a missing basis")
            known = inc.basis_segments
            if known is not None and idx < len(known) and known[idx] == bytes.fromhex(h["blake3"]):
                _copy_range(inc.basis.fileno(), inc.fd, offset, length)  # in the kernel; we know its hash
            else:
                data = os.pread(inc.basis.fileno(), length, offset)
                if len(data) != length or hashing.of_bytes(data) != h["blake3"]:
                    raise ProtocolError(f"{p.path}: segment {idx} is not what the basis holds there")
                _pwrite_all(inc.fd, data, offset)
            self._written(inc, idx, length)
            return
        elif h["literal"]:
            if len(body) != length or hashing.of_bytes(body) != h["blake3"]:
                # the sender hashed exactly these bytes: a mismatch is never innocent
                raise ProtocolError(f"{p.path}: segment {idx} failed verification")
            _pwrite_all(inc.fd, body, offset)
        else:
            if inc.basis is None:
                raise ProtocolError(f"send_delta: delta for {p.path} without a basis")
            out = os.fdopen(os.dup(inc.fd), "wb", buffering=1024 * 1024)
            try:
                out.seek(offset)
                w = hashing.HashingWriter(out, length)
                try:
                    engine.patch(inc.basis, body, w)
                except engine.DeltaError as e:
                    raise ProtocolError(f"{p.path}: segment {idx}: {e}") from None
                out.flush()
            finally:
                out.close()
            if w.written != length or w.hexdigest() != h["blake3"]:
                raise ProtocolError(f"{p.path}: segment {idx} failed verification")
        self._written(inc, idx, length)

    def _written(self, inc: Incoming, idx: int, length: int) -> None:
        inc.unsynced.append(idx)
        inc.unsynced_bytes += length
        if inc.unsynced_bytes >= SYNC_BYTES or time.monotonic() - inc.synced_at >= SYNC_SECONDS:
            self._sync_segments(inc)

    def _sync_segments(self, inc: Incoming) -> None:
        """Make written segments durable, then journal them: never the other way round."""
        if inc.unsynced:
            native.datasync(inc.fd)
            self.manifest.segments_done(inc.partial.path, inc.unsynced)
            inc.done.update(inc.unsynced)
            inc.unsynced.clear()
        inc.unsynced_bytes = 0
        inc.synced_at = time.monotonic()

    def finish(self, inc: Incoming) -> Result:
        """Verify the whole file and put it in place. The partial is dropped
        when it can never become right; kept when only a resend is missing."""
        p = inc.partial
        try:
            self._sync_segments(inc)
            missing = p.segments_total - len(inc.done)  # `done` holds only indexes below the total
            if missing:
                raise TransferFailed(f"{p.path}: {missing} segments missing at file_done")
            os.ftruncate(inc.fd, p.size)
            digest, segments = hashing.of_fd(inc.fd, p.segment_size)
            if digest != p.target_blake3:
                self._discard(p)
                raise TransferFailed(f"{p.path}: whole-file blake3 mismatch; partial dropped")
            self.manifest.store_segments([(digest, p.segment_size, segments)])
            self._expect(p.path, p.replaces)
            safe.finish(inc.fd, p.mode, p.mtime_ns)
            kept = self.safe.replace(self.folder.partials / p.name, p.path,
                                     keep=self._keeper(p.path, inc.writer, "replaced"))
            entry = Entry(p.path, FILE, p.size, p.mtime_ns, p.mode, p.target_blake3,
                          version=vv.from_stored(json.loads(p.version)))
            self._record(entry)
            self.manifest.drop_partial(p.path)
            self.signatures.precompute(entry)
            return Result(p.path, True, whole=inc.basis is None, kept=kept)
        finally:
            inc.close()
            self._release(p.path)

    def abandon(self, inc: Incoming, drop: bool = False) -> None:
        """The session ended mid-file: keep the verified segments for a resume
        (or drop them, when the disk is full and the space is worth more)."""
        if not drop and inc.fd >= 0:
            try:
                self._sync_segments(inc)  # what was written and verified is kept for the resume
            except OSError:
                pass
        inc.close()
        if drop:
            self._discard(inc.partial)
        self._release(inc.partial.path)

    def _discard(self, p: Partial) -> None:
        safe.unlink_state(self.folder.root, "partial", p.name)
        self.manifest.drop_partial(p.path)

    def clean_stale(self, max_age_s: float) -> int:
        """Drop partials untouched for longer than `max_age_s`, orphan temp files,
        and versions past their policy. The state folders are opened without
        following links: a symlink planted there never leads a delete outside."""
        now = time.time()
        dropped = 0
        for p in self.manifest.partials():
            if now - p.updated > max_age_s and (str(self.folder.root), p.path) not in _BUSY:
                self._discard(p)
                dropped += 1
        known = {p.name for p in self.manifest.partials()}
        for sub in ("partial", "tmp"):
            try:
                dfd = safe.state_dir(self.folder.root, sub)
            except OSError as e:
                log.warning("%s/%s: not cleaned (%s)", safe.META, sub, e.strerror)
                continue
            try:
                for name in os.listdir(dfd):
                    if name not in known and not _writer_alive(name):
                        try:
                            os.unlink(name, dir_fd=dfd)
                        except OSError:
                            pass  # a directory someone made there: not ours to remove
            finally:
                os.close(dfd)
        self.versions.clean_orphans()
        self.versions.prune()
        return dropped

    # -- signatures ----------------------------------------------------------
    def signature_for(self, path: str, blake3: str) -> tuple[int, bytes] | None:
        """Our signature of `path` if it still has content `blake3`; None if not."""
        safe.check_relpath(path)
        cur = self.current(path)
        if cur is None or cur.kind != FILE or cur.blake3 != blake3:
            return None
        return self.signatures.get(cur)

    def precompute_signature(self, entry: Entry) -> None:
        self.signatures.precompute(entry)

    def copy_local(self, e: Entry, origin: str, replaces: str | None, w: Writer | None = None) -> Result:
        """Make `e` from content we already hold at `origin` (a rename or a copy
        on the peer): read, verified and written aside like any received file."""
        safe.check_relpath(origin)
        self._claim(e.path, w)
        try:
            self._expect(e.path, replaces)
            with self.safe.open_read(origin) as f:
                chunks = iter(lambda: f.read(hashing.READ_SIZE), b"")
                h = hashing.blake3(max_threads=hashing.blake3.AUTO)

                def hashed() -> Iterator[bytes]:
                    for c in chunks:
                        h.update(c)
                        yield c

                tmp = safe.write_aside(self.folder.tmp, _tmp_name(), hashed(), e.mode, e.mtime_ns)
            try:
                if h.hexdigest() != e.blake3:
                    raise TransferFailed(f"{e.path}: {origin} no longer holds that content")
                kept = self.safe.replace(tmp, e.path, keep=self._keeper(e.path, w, "replaced"))
            finally:
                tmp.unlink(missing_ok=True)
            self._record(e)
            return Result(e.path, True, kept=kept)
        finally:
            self._release(e.path)

    def move_aside(self, path: str, new_path: str) -> None:
        """Keep our losing version of a conflict under its conflict name."""
        safe.check_relpath(new_path)
        with self.safe.parent(path) as (sfd, sname), self.safe.parent(new_path, create=True) as (dfd, dname):
            if os.path.lexists(os.path.join(f"/proc/self/fd/{dfd}", dname)):
                raise TransferFailed(f"{new_path}: exists already")
            os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
        self.manifest.record([], [path])

    # -- directories, symlinks, deletes, metadata ----------------------------
    def apply_op(self, op: Any, w: Writer | None = None) -> Result:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise ProtocolError("send_changes: op is not an object with an op name")
        kind = op["op"]
        e = Entry.from_wire({k: v for k, v in op.items() if k != "op"})
        safe.check_relpath(e.path)
        try:
            if kind == "mkdir":
                cur = self.current(e.path)
                if cur is not None and cur.kind != DIR:
                    raise TransferFailed(f"{e.path}: is a {cur.kind} here, not a directory")
                self.safe.mkdir(e.path, e.mode)
            elif kind == "symlink":
                cur = self.current(e.path)
                if cur is not None and cur.kind not in (SYMLINK,):
                    raise TransferFailed(f"{e.path}: is a {cur.kind} here, not a symlink")
                assert e.target is not None
                self.safe.symlink(e.target, e.path, f"{safe.TMP_PREFIX}{_tmp_name()}")
            elif kind == "copy":
                origin, replaces = op.get("from"), op.get("replaces")
                if not isinstance(origin, str) or not (replaces is None or isinstance(replaces, str)):
                    raise ProtocolError("send_changes: copy needs from and replaces")
                return self.copy_local(e, origin, replaces, w)
            elif kind == "meta":
                cur = self.current(e.path)
                if cur is None or not cur.same_content(e):
                    raise TransferFailed(f"{e.path}: changed here since the index was sent")
                self.safe.set_meta(e.path, e.mode, e.mtime_ns)
            elif kind == "delete":
                cur = self.current(e.path)
                if cur is None:
                    self.manifest.record([Seen(Entry(e.path, e.kind, version=e.version, deleted=True), 0, 0)])
                    return Result(e.path, True)
                if not cur.same_content(e):
                    raise TransferFailed(f"{e.path}: changed here since the index was sent; not deleted")
                try:
                    kept = self.safe.delete(e.path, keep=self._keeper(e.path, w, "deleted", move=True))
                except OSError as err:
                    raise TransferFailed(f"{e.path}: not deleted: {err.strerror}") from None
                self.manifest.record([Seen(Entry(e.path, e.kind, version=e.version, deleted=True), 0, 0)])
                return Result(e.path, True, kept=kept)
            else:
                raise ProtocolError(f"send_changes: unknown op {kind[:32]!r}")
            self._record(e)
            return Result(e.path, True)
        except (TransferFailed, UnsafePath) as err:
            if isinstance(err, UnsafePath):
                raise
            return Result(e.path, False, str(err))
