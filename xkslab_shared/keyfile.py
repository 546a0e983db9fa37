"""Key files and the AES-256-GCM box that both services seal with: the DSM's software sealer (its keyring
terms) and the KMS emulator's key file (backing keys and proxy secrets).

A key file is exactly ``length`` raw bytes, mode 0600, a regular file and not a symlink; it is created so
that it appears complete or not at all, and never overwritten. A box is

    sealed = version (0x01) || nonce (12) || ciphertext || tag (16)

with an AAD that each caller builds to bind what the value belongs to.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

BOX_VERSION = b"\x01"
NONCE_LEN = 12
TAG_LEN = 16


class KeyFileError(Exception):
    """A key file is missing, unsafe or malformed, or a sealed value does not open. Each service re-raises
    it as its own error type."""


class BoxOpenError(KeyFileError):
    """The sealed value has a wrong version, is truncated, or its tag does not verify."""


class AesGcmBox:
    """AES-256-GCM with a fresh random nonce per value, in the one blob format above."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(bytes(key))

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return BOX_VERSION + nonce + self._aead.encrypt(nonce, bytes(plaintext), bytes(aad))

    def open(self, blob: bytes, aad: bytes) -> bytes:
        blob = bytes(blob)
        if not blob or blob[:1] != BOX_VERSION:
            raise BoxOpenError("unknown sealed blob format version")
        if len(blob) < 1 + NONCE_LEN + TAG_LEN:
            raise BoxOpenError("sealed blob is truncated")
        try:
            return self._aead.decrypt(blob[1 : 1 + NONCE_LEN], blob[1 + NONCE_LEN :], bytes(aad))
        except InvalidTag:
            raise BoxOpenError("the tag does not verify") from None


def read_key_file(path: Path, length: int, what: str = "key file") -> bytes:
    """Read exactly ``length`` raw bytes, refusing files others can read or that were truncated/padded.

    The mode and size come from fstat on the opened descriptor so a file swapped between the check and
    the read cannot slip through; symlinks are not followed for the same reason.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{what} {path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"{what} {path} is accessible by group/others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
            )
        key = os.read(fd, length + 1)
    finally:
        os.close(fd)
    if len(key) != length:
        raise KeyFileError(f"{what} {path} must hold exactly {length} raw bytes")
    return key


def write_new_secret_file(path: Path, data: bytes, *, what: str = "key file", exist_ok: bool = False) -> bool:
    """Write ``data`` to a new 0600 file so that it appears complete or not at all; False when the file
    existed already (and ``exist_ok``).

    The data goes to a temporary file in the same directory which is then hard-linked into place: link()
    fails if the target exists, so a concurrent creator or an existing key is never overwritten, and a
    crash never leaves a truncated key behind.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if exist_ok:
            return False
        raise KeyFileError(f"{what} {path} already exists; refusing to overwrite it")
    parent = path.parent
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create directory {parent}: {exc.strerror}") from None
    tmp = parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot write {what} {path}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask may have been stricter; never looser
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            if exist_ok:  # lost a race with a concurrent creator; theirs wins
                return False
            raise KeyFileError(f"{what} {path} already exists; refusing to overwrite it") from None
        except OSError as exc:
            raise KeyFileError(f"cannot write {what} {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(parent)
    return True


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
