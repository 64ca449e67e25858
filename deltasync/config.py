"""A shared folder's settings in ``DIR/.deltasync/config.toml``: where to listen,
which peers are trusted (name -> ID, optional address), and limits.

Read with stdlib `tomllib`; written by a small serializer for our own fixed
schema (strings, ints, floats, one level of tables), so no extra dependency.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import field
from pathlib import Path
from typing import Any

from . import identity
from .core.record import Mutable, record
from .errors import ConfigError, NotInitialised, UsageError

META = ".deltasync"

DEFAULTS: dict[str, Any] = {
    "listen": "127.0.0.1:8730",
    "partial_max_age_hours": 72.0,
    "idle_timeout": 300.0,
    "handshake_timeout": 10.0,
    "max_connections": 16,  # authenticated sessions at once
    "max_sessions_per_peer": 4,
    "max_pending_handshakes": 64,  # connections not yet authenticated, all addresses together
    "max_handshakes_per_address": 8,
    "max_file_size": 16 * 1024**4,
    "max_index_entries": 2_000_000,
    "max_path_length": 4096,
    "versioning": "trashcan",  # or "off": see store/versions.py
    "xattrs": True,  # keep extended attributes (user namespace, POSIX ACLs) like rsync -X; false: leave them
    "versions_keep_days": 30.0,
    "versions_max_mb": 0.0,  # 0: no size cap
    "versions_per_path": 10,
    "settle_seconds": 1.0,
    "rescan_seconds": 60.0,
}


@record
class Peer(Mutable):
    name: str
    id: str
    address: str | None = None


@record
class Config(Mutable):
    folder: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS))
    peers: dict[str, Peer] = field(default_factory=dict)

    def setting(self, key: str) -> Any:
        return self.folder.get(key, DEFAULTS[key])

    def trusted_ids(self) -> set[str]:
        return {p.id for p in self.peers.values()}

    def peer_by_id(self, peer_id: str) -> Peer | None:
        return next((p for p in self.peers.values() if p.id == peer_id), None)

    def resolve(self, target: str) -> tuple[str, str | None]:
        """A peer name or HOST:PORT -> (address, pinned ID or None)."""
        peer = self.peers.get(target)
        if peer is not None:
            if not peer.address:
                raise ConfigError(f"peer {target!r} has no address in config.toml")
            return peer.address, peer.id
        if ":" not in target:
            import difflib

            close = difflib.get_close_matches(target, list(self.peers), 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"no peer named {target!r}{hint}: give HOST:PORT or a peer name from config.toml")
        by_address = next((p for p in self.peers.values() if p.address == target), None)
        return target, by_address.id if by_address else None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    raise ConfigError(f"cannot write {type(v).__name__} to config.toml")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else _toml_value(k)


def dumps(cfg: Config) -> str:
    lines = ["# deltasync folder settings", "[folder]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in cfg.folder.items()]
    for name, p in sorted(cfg.peers.items()):
        lines += ["", f"[peers.{_toml_key(name)}]", f"id = {_toml_value(p.id)}"]
        if p.address:
            lines.append(f"address = {_toml_value(p.address)}")
    return "\n".join(lines) + "\n"


def loads(text: str) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config.toml: {e}") from None
    folder = dict(DEFAULTS)
    folder.update(data.get("folder", {}))
    peers = {}
    for name, p in data.get("peers", {}).items():
        if not isinstance(p, dict) or "id" not in p:
            raise ConfigError(f"config.toml: peer {name!r} needs an id")
        peers[name] = Peer(name, identity.normalise_id(p["id"]), p.get("address"))
    return Config(folder, peers)


class Folder:
    """Paths of one shared folder and its `.deltasync/` state."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.meta = self.root / META
        self.key = self.meta / "key.pem"
        self.cert = self.meta / "cert.pem"
        self.db = self.meta / "manifest.db"
        self.config_path = self.meta / "config.toml"
        self.partials = self.meta / "partial"
        self.tmp = self.meta / "tmp"

    @classmethod
    def open(cls, root: str | Path) -> "Folder":
        f = cls(Path(root))
        if not f.cert.is_file() or not f.key.is_file():
            raise NotInitialised(f"{root} is not a deltasync folder (run: deltasync init {root})")
        f._check_state()
        return f

    def _check_state(self) -> None:
        for d in (self.meta, self.partials, self.tmp):
            if d.is_symlink():
                raise ConfigError(f"{d} is a symlink; the state folder must be a real directory (remove the link, "
                                  f"then run: deltasync init {self.root})")

    @classmethod
    def init(cls, root: str | Path) -> tuple["Folder", str, bool]:
        """Create the folder's state if absent. Returns (folder, peer ID, created)."""
        f = cls(Path(root))
        f.root.mkdir(parents=True, exist_ok=True)
        f._check_state()
        created = not f.cert.exists()
        f.meta.mkdir(mode=0o700, exist_ok=True)
        for d in (f.partials, f.tmp):
            d.mkdir(mode=0o700, exist_ok=True)
        if created:
            identity.generate(f.key, f.cert, name=f.root.name or "deltasync")
        if not f.config_path.exists():
            f.save_config(Config())
        from .store.manifest import Manifest

        Manifest(f.db).close()
        return f, f.peer_id, created

    @property
    def peer_id(self) -> str:
        return identity.fingerprint(identity.cert_der(self.cert))

    @property
    def short_id(self) -> str:
        """Our key in version vectors: 12 base32 characters (60 bits) keep them short."""
        return self.peer_id[:12]

    def config(self) -> Config:
        try:
            return loads(self.config_path.read_text())
        except FileNotFoundError:
            return Config()

    def save_config(self, cfg: Config) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(dumps(cfg))
        os.replace(tmp, self.config_path)

    def trust(self, peer_id: str, name: str | None = None, address: str | None = None) -> Peer:
        try:
            pid = identity.normalise_id(peer_id)
        except ConfigError as e:  # a mistyped ID on the command line is a usage mistake
            raise UsageError(str(e)) from None
        if pid == self.peer_id:
            raise UsageError("that is this folder's own peer ID; trust the other folder's (run `deltasync id` there)")
        if address is not None:
            from .transports.tls import split_address

            split_address(address)  # a usage error, now rather than at the first sync
        cfg = self.config()
        existing = cfg.peer_by_id(pid)
        if existing is not None:
            del cfg.peers[existing.name]
        name = name or (existing.name if existing else pid[:7])
        peer = Peer(name, pid, address or (existing.address if existing else None))
        cfg.peers[name] = peer
        self.save_config(cfg)
        return peer

    def untrust(self, peer: str) -> Peer:
        """Forget a trusted peer (by name or ID): it is refused from its next connection on."""
        cfg = self.config()
        found = cfg.peers.get(peer)
        if found is None:
            try:
                found = cfg.peer_by_id(identity.normalise_id(peer))
            except ConfigError:
                found = None
        if found is None:
            known = ", ".join(sorted(cfg.peers)) or "none"
            raise UsageError(f"no trusted peer {peer!r} (trusted: {known})")
        del cfg.peers[found.name]
        self.save_config(cfg)
        return found
