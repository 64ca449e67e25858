"""A folder's identity: its key, its self-signed certificate, and its peer ID.

The peer ID is the SHA-256 of the certificate's DER, in base32, with a Luhn
mod 32 check character after every 13 characters, grouped for reading (like
Syncthing's device IDs), so a mistyped ID is refused when it is trusted. Knowing a peer's ID is enough to pin it:
whoever presents a certificate with that fingerprint and proves, in the TLS
handshake, that it holds the matching key *is* that peer.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
from pathlib import Path

from .errors import ConfigError

_GROUP = 7


def fingerprint(cert_der: bytes) -> str:
    """The canonical (ungrouped, upper-case) peer ID of a DER certificate."""
    return base64.b32encode(hashlib.sha256(cert_der).digest()).decode().rstrip("=")


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_CHUNK = 13  # the 52 base32 characters in four chunks, each followed by its check character


def luhn32(chunk: str) -> str:
    """The Luhn mod 32 check character of a base32 chunk: any one wrong character,
    and any swap of two neighbours that are not a pair the algorithm cannot tell apart, changes it."""
    factor, total = 1, 0
    for ch in chunk:
        addend = factor * _ALPHABET.index(ch)
        factor = 2 if factor == 1 else 1
        total += addend // 32 + addend % 32
    return _ALPHABET[(32 - total % 32) % 32]


def format_id(peer_id: str) -> str:
    """The peer ID as people read and type it: 56 characters (four chunks of 13, each with
    its check character), in eight groups of seven -- the form Syncthing's device IDs use."""
    raw = normalise_id(peer_id)
    checked = "".join(raw[i : i + _CHUNK] + luhn32(raw[i : i + _CHUNK]) for i in range(0, 52, _CHUNK))
    return "-".join(checked[i : i + _GROUP] for i in range(0, len(checked), _GROUP))


def normalise_id(text: str) -> str:
    """An ID as typed -> the canonical 52 characters (what config.toml stores).

    Accepts the checked 56-character form (dashes and spaces optional, any case; a
    typo is refused, naming the group it is in) and, for IDs printed by deltasync
    before check characters existed, the bare 52-character form (no typo check)."""
    raw = re.sub(r"[\s-]", "", text).upper()
    if re.fullmatch(r"[A-Z2-7]{56}", raw):
        chunks = [raw[i : i + _CHUNK + 1] for i in range(0, 56, _CHUNK + 1)]
        for n, c in enumerate(chunks):
            if luhn32(c[:-1]) != c[-1]:
                raise ConfigError(f"peer ID {text.strip()!r} has a typo in its groups {2 * n + 1} and {2 * n + 2} "
                                  f"of 8; copy it again from `deltasync id` on the peer")
        return "".join(c[:-1] for c in chunks)
    if re.fullmatch(r"[A-Z2-7]{52}", raw):
        return raw
    raise ConfigError(f"not a peer ID: {text!r} (expected 56 base32 characters in groups of 7, as "
                      f"`deltasync id` prints it)")


def generate(key_path: Path, cert_path: Path, name: str = "deltasync") -> str:
    """Create an EC P-256 key and a self-signed certificate; return the peer ID.

    The certificate is marked as a CA so OpenSSL accepts it as its own trust
    anchor when we pin it; it is valid for 100 years because trust comes from
    the pinned fingerprint, not from expiry.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=36500))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # owner-only from the first byte
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


def cert_der(cert_path: Path) -> bytes:
    import ssl

    return ssl.PEM_cert_to_DER_cert(cert_path.read_text())

