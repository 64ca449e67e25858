"""A folder's identity: its key, its self-signed certificate, and its peer ID.

The peer ID is the SHA-256 of the certificate's DER, in base32, grouped for
reading (like Syncthing's device IDs). Knowing a peer's ID is enough to pin it:
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


def format_id(peer_id: str) -> str:
    raw = normalise_id(peer_id)
    return "-".join(raw[i : i + _GROUP] for i in range(0, len(raw), _GROUP))


def normalise_id(text: str) -> str:
    """Accept an ID with or without dashes/spaces, any case; refuse anything else."""
    raw = re.sub(r"[\s-]", "", text).upper()
    if not re.fullmatch(r"[A-Z2-7]{52}", raw):
        raise ConfigError(f"not a peer ID: {text!r} (expected 52 base32 characters, dashes optional)")
    return raw


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

