"""Typed errors. Each carries the process exit code the README documents,
so the CLI can turn any of them into one clear line and the right status."""
from __future__ import annotations

import os

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_PEER = 4


class DeltasyncError(Exception):
    """Base of every error we raise on purpose."""

    exit_code = EXIT_ERROR


class UsageError(DeltasyncError):
    exit_code = EXIT_USAGE


class NotInitialised(DeltasyncError):
    """The folder has no `.deltasync/` (run `deltasync init DIR`)."""


class ConfigError(DeltasyncError):
    pass


class ProtocolError(DeltasyncError):
    """A peer sent bytes that are not a valid frame or message here."""


class RemoteError(DeltasyncError):
    """The peer ended the session with its own `error` message."""


class PeerBusy(RemoteError):
    """The peer is syncing with us already, or is full: retry later."""


class UnsafePath(ProtocolError):
    """A peer's path would leave the folder or touch something we never let it touch."""


class PeerUnreachable(DeltasyncError):
    exit_code = EXIT_PEER


class PeerRefused(DeltasyncError):
    """The peer is not trusted by us, or we are not trusted by it."""

    exit_code = EXIT_PEER


class TransferFailed(DeltasyncError):
    """One file could not be delivered; the session goes on with the others."""


class AlreadyPresent(DeltasyncError):
    """The receiver already holds exactly that content (two sessions crossed): nothing to write."""


class DiskFull(TransferFailed):
    """The receiving disk is full: the file fails, its partial is dropped to give the space back."""


class SourceChanged(TransferFailed):
    """A file changed while it was being sent; it is retried or reported, never delivered torn."""


class PartialSuccess(DeltasyncError):
    """Some files failed; the rest were delivered and verified."""

    exit_code = EXIT_PARTIAL


def redact(text: str, root: "os.PathLike[str] | str") -> str:
    """Text that leaves for a peer: our folder's absolute location becomes `<folder>`."""
    base = os.fspath(root).rstrip("/")
    return text.replace(base, "<folder>") if base else text
