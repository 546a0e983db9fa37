"""Credential helpers: password and app-secret hashing, app secrets and API keys, AWS XKS SigV4 pairs.

Pure functions, no I/O. Passwords are salted scrypt, encoded as ``scrypt$n$r$p$salt_b64$hash_b64``
(standard padded base64): a person chooses them, so guessing one offline must be slow; scrypt takes tens
of milliseconds, and async callers run it in a thread. App secrets are random (at least 128 bits), so a
slow KDF buys nothing against guessing and only makes every wrong login expensive: they are an
HMAC-SHA256 keyed from the keyring, ``hmac-sha256$term$hash_b64`` (the keyring term whose derived key
made it, so a keyring rotation does not break old hashes). App secrets stored by an older xkslab are
still scrypt rows; callers upgrade them after a successful check. Verification is constant time and
answers False, never raises, on anything malformed.

Note: this module shadows nothing; ``import secrets`` elsewhere still gets the standard library, only
``from dsm_emulator import secrets`` gets this one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# Bounds accepted when verifying a stored hash, so that a corrupted or hostile row cannot make one
# verification take gigabytes of memory or minutes of CPU.
_MAX_LOG2_N = 20
_MAX_R = 32
_MAX_P = 16
_MAXMEM = 256 * 1024 * 1024

MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 512

_ACCESS_KEY_ID = re.compile(r"[A-Z2-7]{20,30}")
_XKS_SECRET = re.compile(r"[a-zA-Z0-9/+=]{43,64}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(secret: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=dklen)


def hash_secret(secret: str) -> str:
    """A salted scrypt hash of ``secret`` (n=2**14, r=8, p=1, 16-byte salt, 32-byte hash)."""
    if not isinstance(secret, str):
        raise TypeError("secret must be a str")
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(secret.encode("utf-8"), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, encoded: str) -> bool:
    """True iff ``secret`` matches ``encoded`` (from :func:`hash_secret`); False on malformed input."""
    try:
        scheme, n_s, r_s, p_s, salt_b64, hash_b64 = encoded.split("$")
        if scheme != "scrypt" or not (n_s.isdigit() and r_s.isdigit() and p_s.isdigit()):
            return False
        n, r, p = int(n_s), int(r_s), int(p_s)
        if n < 2 or n & (n - 1) or n > 2**_MAX_LOG2_N or not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P:
            return False
        if 128 * n * r + 128 * r * p > _MAXMEM // 2:
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
        if not salt or not 16 <= len(expected) <= 64:
            return False
        candidate = _scrypt(secret.encode("utf-8"), salt, n, r, p, len(expected))
    except (AttributeError, TypeError, ValueError, binascii.Error, UnicodeError, MemoryError):
        return False
    return hmac.compare_digest(candidate, expected)


KEYED_SCHEME = "hmac-sha256"
# Which keyring-derived key (Keyring.derive) app-secret hashes are made with.
KEYED_PURPOSE = "app-secret-hash"


def keyed_hash(secret: str, key: bytes, term: int) -> str:
    """``hmac-sha256$term$hash_b64``: HMAC-SHA256 of ``secret`` under ``key`` (derived from keyring
    ``term``)."""
    if not isinstance(secret, str):
        raise TypeError("secret must be a str")
    digest = hmac.new(key, secret.encode("utf-8"), hashlib.sha256).digest()
    return f"{KEYED_SCHEME}${term}${_b64(digest)}"


def keyed_term(encoded: str) -> int | None:
    """The keyring term of a keyed hash; None when ``encoded`` is not one."""
    parts = encoded.split("$") if isinstance(encoded, str) else []
    if len(parts) != 3 or parts[0] != KEYED_SCHEME or not parts[1].isdigit() or len(parts[1]) > 9:
        return None
    return int(parts[1])


def verify_keyed(secret: str, encoded: str, key: bytes) -> bool:
    """True iff ``secret`` matches the keyed hash ``encoded`` made with ``key``; constant time."""
    term = keyed_term(encoded)
    if term is None or not isinstance(secret, str):
        return False
    try:
        expected = base64.b64decode(encoded.rsplit("$", 1)[1], validate=True)
        candidate = hmac.new(key, secret.encode("utf-8"), hashlib.sha256).digest()
    except (binascii.Error, ValueError, UnicodeError):
        return False
    return hmac.compare_digest(candidate, expected)


def is_scrypt(encoded: object) -> bool:
    return isinstance(encoded, str) and encoded.startswith("scrypt$")


def new_app_secret(size_bytes: int = 64) -> str:
    """A random app secret: ``size_bytes`` random bytes as unpadded base64url (never contains ':')."""
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int):
        raise TypeError("size_bytes must be an int")
    if not MIN_SECRET_BYTES <= size_bytes <= MAX_SECRET_BYTES:
        raise ValueError(f"secret size must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")
    return base64.urlsafe_b64encode(os.urandom(size_bytes)).rstrip(b"=").decode("ascii")


def api_key(app_id: str, secret: str) -> str:
    """The API key DSM shows for an app: standard base64 of ``"<app_id>:<secret>"``."""
    return _b64(f"{app_id}:{secret}".encode())


def parse_api_key(key: str) -> tuple[str, str]:
    """``(app_id, secret)`` from an API key. ValueError unless it is valid base64 of UTF-8 text with
    exactly one ':' between two non-empty parts (sdkms refuses the same keys client-side)."""
    try:
        text = base64.b64decode(key.strip(), validate=True).decode("utf-8")
    except (AttributeError, binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("invalid API key: not base64 of UTF-8 text") from None
    parts = text.split(":")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError("invalid API key: expected '<app_id>:<secret>'")
    return parts[0], parts[1]


def new_awsxks_credential() -> tuple[str, str]:
    """A fresh AWS XKS SigV4 pair: a 24-character base32 access key id and a 44-character base64 secret,
    both within AWS's XksProxyAuthenticationCredentialType constraints."""
    access_key_id = base64.b32encode(os.urandom(15)).decode("ascii")  # 120 bits -> 24 chars, no padding
    secret = _b64(os.urandom(33))  # 264 bits -> 44 chars, no padding
    return access_key_id, secret


def valid_access_key_id(value: object) -> bool:
    """AWS: 20 to 30 characters of ``[A-Z2-7]``."""
    return isinstance(value, str) and _ACCESS_KEY_ID.fullmatch(value) is not None


def valid_xks_secret(value: object) -> bool:
    """AWS: 43 to 64 characters of ``[a-zA-Z0-9/+=]``."""
    return isinstance(value, str) and _XKS_SECRET.fullmatch(value) is not None
