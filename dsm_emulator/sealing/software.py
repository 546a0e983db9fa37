"""Software sealer: AES-256-GCM under a key file or a scrypt-stretched passphrase.

Meant for labs and CI where no HSM is around. The blob format matches the PKCS#11 sealer
(version byte, 12-byte nonce, ciphertext||tag) so the keyring treats both alike.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from dsm_emulator.sealing import SealError, SoftwareSealConfig

__all__ = ["SoftwareSealer"]

BLOB_VERSION = b"\x01"
NONCE_LEN = 12
TAG_LEN = 16
KEY_LEN = 32
SALT_LEN = 16
# scrypt cost: ~32 MiB and well under a second; paid once per process start, not per request.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
KEY_ID_LABEL = b"xkslab sealer key id"


class SoftwareSealer:
    """Seals with an in-process AES-256-GCM key.

    key_id is a keyed hash of the key, so two deployments can tell whether they share a sealing key
    without either one revealing it.
    """

    kind: str = "software"

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise SealError("software sealing key must be 32 bytes")
        self.key_id: str = "software:" + hmac.new(key, KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]
        self._aead: AESGCM | None = AESGCM(key)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, config: SoftwareSealConfig) -> SoftwareSealer:
        if config.key_file is not None:
            return cls(_read_key_file(config.key_file))
        assert config.passphrase is not None and config.salt_file is not None
        return cls(_derive_key(config.passphrase, _read_salt_file(config.salt_file)))

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        aead = self._require_open()
        nonce = os.urandom(NONCE_LEN)
        return BLOB_VERSION + nonce + aead.encrypt(nonce, bytes(plaintext), bytes(aad))

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        aead = self._require_open()
        blob = bytes(blob)
        if not blob or blob[:1] != BLOB_VERSION:
            raise SealError("unknown sealed blob format version")
        if len(blob) < 1 + NONCE_LEN + TAG_LEN:
            raise SealError("sealed blob is truncated")
        nonce = blob[1 : 1 + NONCE_LEN]
        try:
            return aead.decrypt(nonce, blob[1 + NONCE_LEN :], bytes(aad))
        except InvalidTag:
            raise SealError(
                f"unwrap failed with sealer {self.key_id}: wrong key, tampered blob or wrong aad"
            ) from None

    def close(self) -> None:
        """Drop the key object; later wrap/unwrap calls fail instead of silently working."""
        with self._lock:
            self._aead = None

    def _require_open(self) -> AESGCM:
        aead = self._aead
        if aead is None:
            raise SealError("sealer is closed")
        return aead

    def __enter__(self) -> SoftwareSealer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SoftwareSealer {self.key_id}>"


def _read_key_file(path: Path) -> bytes:
    """Read the raw 32-byte key, refusing files others can read or that were truncated/padded.

    The mode and size come from fstat on the opened descriptor so a file swapped between the check
    and the read cannot slip through; symlinks are not followed for the same reason.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise SealError(
            f"sealing key file {path} does not exist (create it with create_sealing_key)"
        ) from None
    except OSError as exc:
        raise SealError(f"cannot open sealing key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SealError(f"sealing key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise SealError(
                f"sealing key file {path} is accessible by group/others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
            )
        if st.st_size != KEY_LEN:
            raise SealError(f"sealing key file {path} must hold exactly {KEY_LEN} raw bytes")
        key = os.read(fd, KEY_LEN + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_LEN:
        raise SealError(f"sealing key file {path} must hold exactly {KEY_LEN} raw bytes")
    return key


def _read_salt_file(path: Path) -> bytes:
    # The salt is not secret, so its mode is not policed; its length is, to catch truncation.
    try:
        salt = Path(path).read_bytes()
    except FileNotFoundError:
        raise SealError(f"salt file {path} does not exist (create it with create_sealing_key)") from None
    except OSError as exc:
        raise SealError(f"cannot read salt file {path}: {exc.strerror}") from None
    if len(salt) != SALT_LEN:
        raise SealError(f"salt file {path} must hold exactly {SALT_LEN} bytes")
    return salt


def _derive_key(passphrase: str, salt: bytes) -> bytes:
    kdf = Scrypt(salt=salt, length=KEY_LEN, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return kdf.derive(passphrase.encode("utf-8"))
