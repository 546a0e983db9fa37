"""Software sealer: AES-256-GCM under a key file or a scrypt-stretched passphrase.

Meant for labs and CI where no HSM is around. The blob format matches the PKCS#11 sealer
(version byte, 12-byte nonce, ciphertext||tag; xkslab_shared.keyfile's box, which the KMS emulator's
key file uses too) so the keyring treats both alike.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from pathlib import Path

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from dsm_emulator.sealing.base import SealError, SoftwareSealConfig
from xkslab_shared.keyfile import AesGcmBox, BoxOpenError, KeyFileError, read_key_file

__all__ = ["SoftwareSealer"]

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
        self._box: AesGcmBox | None = AesGcmBox(key)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, config: SoftwareSealConfig) -> SoftwareSealer:
        if config.key_file is not None:
            return cls(_read_key_file(config.key_file))
        assert config.passphrase is not None and config.salt_file is not None
        return cls(_derive_key(config.passphrase, _read_salt_file(config.salt_file)))

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        return self._require_open().seal(plaintext, aad)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        box = self._require_open()
        try:
            return box.open(blob, aad)
        except BoxOpenError as exc:
            if "tag" not in str(exc):
                raise SealError(str(exc)) from None
            raise SealError(
                f"unwrap failed with sealer {self.key_id}: wrong key, tampered blob or wrong aad"
            ) from None

    def close(self) -> None:
        """Drop the key object; later wrap/unwrap calls fail instead of silently working."""
        with self._lock:
            self._box = None

    def _require_open(self) -> AesGcmBox:
        box = self._box
        if box is None:
            raise SealError("sealer is closed")
        return box

    def __enter__(self) -> SoftwareSealer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SoftwareSealer {self.key_id}>"


def _read_key_file(path: Path) -> bytes:
    try:
        return read_key_file(path, KEY_LEN, "sealing key file")
    except KeyFileError as exc:
        hint = " (create it with create_sealing_key)" if "does not exist" in str(exc) else ""
        raise SealError(f"{exc}{hint}") from None


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
