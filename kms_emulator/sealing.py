"""Sealing for what the KMS side must keep but never store in the clear: each KMS key's backing key (the
inner envelope layer) and each key store's XKS proxy secret.

AES-256-GCM under a 32-byte key file (``kms.seal_key_file``, created 0600 on first start). The AAD binds
the row id and the purpose, so a sealed value copied to another row, or from a secret column into a
backing-key column, does not open.

    sealed = version (0x01) || nonce (12) || ciphertext || tag (16)
    aad    = b"xkslab-kms-seal/v1" || 0x00 || purpose || 0x00 || row id
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"\x01"
KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
AAD_LABEL = b"xkslab-kms-seal/v1"

BACKING_KEY = "backing-key"
PROXY_SECRET = "xks-proxy-secret"


class SealError(Exception):
    """The key file is missing, unsafe or wrong, or a sealed value does not open."""


def _aad(purpose: str, row_id: str) -> bytes:
    return b"\x00".join([AAD_LABEL, purpose.encode(), row_id.encode()])


class KmsSealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise SealError(f"the KMS sealing key must be {KEY_LEN} bytes")
        self._aead = AESGCM(key)

    @classmethod
    def open(cls, path: Path) -> KmsSealer:
        """Open the key file, creating it (0600, 32 random bytes) if it does not exist yet."""
        if not path.exists():
            _create_key_file(path)
        return cls(_read_key_file(path))

    def seal(self, plaintext: bytes, *, purpose: str, row_id: str) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return VERSION + nonce + self._aead.encrypt(nonce, plaintext, _aad(purpose, row_id))

    def unseal(self, blob: bytes, *, purpose: str, row_id: str) -> bytes:
        if blob[:1] != VERSION:
            raise SealError("unknown sealed value version")
        if len(blob) < 1 + NONCE_LEN + TAG_LEN:
            raise SealError("sealed value is truncated")
        try:
            return self._aead.decrypt(blob[1 : 1 + NONCE_LEN], blob[1 + NONCE_LEN :], _aad(purpose, row_id))
        except InvalidTag:
            raise SealError(
                f"sealed {purpose} of {row_id} does not open: wrong KMS sealing key or tampered row"
            ) from None


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process created it first: use theirs
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(KEY_LEN))


def _read_key_file(path: Path) -> bytes:
    # Mode and size come from fstat on the opened descriptor, and symlinks are not followed, so a file
    # swapped between the check and the read cannot slip through.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SealError(f"cannot open the KMS sealing key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SealError(f"the KMS sealing key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise SealError(
                f"the KMS sealing key file {path} is accessible by group/others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
            )
        key = os.read(fd, KEY_LEN + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_LEN:
        raise SealError(f"the KMS sealing key file {path} must hold exactly {KEY_LEN} raw bytes")
    return key
