"""Sealing for what the KMS side must keep but never store in the clear: each KMS key's backing key (the
inner envelope layer), each key store's XKS proxy secret and each caller access key's SigV4 secret.

AES-256-GCM under a 32-byte key file (``kms.seal_key_file``, created 0600 on first start). The AAD binds
the row id and the purpose, so a sealed value copied to another row, or from a secret column into a
backing-key column, does not open.

    sealed = version (0x01) || nonce (12) || ciphertext || tag (16)
    aad    = b"xkslab-kms-seal/v1" || 0x00 || purpose || 0x00 || row id
"""

from __future__ import annotations

import os
from pathlib import Path

from xkslab_shared.keyfile import AesGcmBox, KeyFileError, read_key_file, write_new_secret_file

KEY_LEN = 32
AAD_LABEL = b"xkslab-kms-seal/v1"

BACKING_KEY = "backing-key"
KEY_MATERIAL = "key-material"  # rotated material; row id: the material id
GRANT_TOKEN = "grant-token"  # row id: GRANT_TOKEN_ROW, so any token this KMS issued opens
PROXY_SECRET = "xks-proxy-secret"
ACCESS_KEY_SECRET = "access-key-secret"
KEY_FILE = "the KMS sealing key file"


class SealError(Exception):
    """The key file is missing, unsafe or wrong, or a sealed value does not open."""


def _aad(purpose: str, row_id: str) -> bytes:
    return b"\x00".join([AAD_LABEL, purpose.encode(), row_id.encode()])


class KmsSealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise SealError(f"the KMS sealing key must be {KEY_LEN} bytes")
        self._box = AesGcmBox(key)

    @classmethod
    def open(cls, path: Path) -> KmsSealer:
        """Open the key file, creating it (0600, 32 random bytes) if it does not exist yet; a concurrent
        creator's file wins."""
        try:
            write_new_secret_file(path, os.urandom(KEY_LEN), what=KEY_FILE, exist_ok=True)
            return cls(read_key_file(path, KEY_LEN, KEY_FILE))
        except KeyFileError as exc:
            raise SealError(str(exc)) from None

    def seal(self, plaintext: bytes, *, purpose: str, row_id: str) -> bytes:
        return self._box.seal(plaintext, _aad(purpose, row_id))

    def unseal(self, blob: bytes, *, purpose: str, row_id: str) -> bytes:
        try:
            return self._box.open(blob, _aad(purpose, row_id))
        except KeyFileError as exc:
            if "tag" not in str(exc):
                raise SealError(str(exc)) from None
            raise SealError(
                f"sealed {purpose} of {row_id} does not open: wrong KMS sealing key or tampered row"
            ) from None
