"""Sealing of the keyring: one narrow interface in front of a software key or an HSM key.

The keyring keys live in SQL wrapped by a sealer; the sealer is touched only at start, rotation and
rewrap, so it can be slow (scrypt, a PKCS#11 round trip) without hurting the hot path. Keeping the
interface this small (wrap/unwrap with AAD) lets a software key and a PKCS#11 token be swapped
without the keyring knowing which one it has, as with Vault seals or Barbican crypto plugins.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = [
    "Pkcs11SealConfig",
    "SealConfig",
    "SealError",
    "Sealer",
    "SoftwareSealConfig",
    "create_sealing_key",
    "open_sealer",
]

PKCS11_MISSING = "the pkcs11 sealer needs the 'pkcs11' extra: pip install 'xkslab[pkcs11]'"


class SealError(Exception):
    """Any sealing failure.

    Messages are short and may name files, token labels and key labels, but never carry PINs,
    passphrases or key bytes: they end up in logs and HTTP error bodies.
    """


class Sealer(Protocol):
    """What the keyring needs from a sealing backend, and nothing more."""

    kind: str
    """Either "software" or "pkcs11"."""
    key_id: str
    """Stable, non-secret name of the sealing key; tells whether a wrapped term belongs to this sealer."""

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        """Raises SealError on a wrong key, a tampered blob or a wrong aad."""
        ...

    def close(self) -> None: ...


def _as_path(value: Path | str | None) -> Path | None:
    return None if value is None else Path(value)


@dataclass(frozen=True)
class SoftwareSealConfig:
    """A 32-byte key in a 0600 file, or a passphrase stretched with scrypt over a salt file.

    Exactly one of key_file / passphrase; salt_file is required with (and only with) passphrase, so
    that the same passphrase always yields the same key across restarts.
    """

    key_file: Path | None = None
    passphrase: str | None = field(default=None, repr=False)
    salt_file: Path | None = None

    def __post_init__(self) -> None:
        # Accept str paths from CLI/env code without making every caller wrap them.
        object.__setattr__(self, "key_file", _as_path(self.key_file))
        object.__setattr__(self, "salt_file", _as_path(self.salt_file))
        if (self.key_file is None) == (self.passphrase is None):
            raise SealError("software sealing needs exactly one of key_file or passphrase")
        if self.passphrase is not None:
            if not self.passphrase:
                raise SealError("software sealing passphrase must not be empty")
            if self.salt_file is None:
                raise SealError("passphrase sealing needs a salt_file")
        elif self.salt_file is not None:
            raise SealError("salt_file only applies to passphrase sealing")


@dataclass(frozen=True)
class Pkcs11SealConfig:
    """A non-extractable AES-256 key inside a PKCS#11 token (SoftHSM2 by default).

    pin is keyword-only because it has no sensible default and must not sit positionally between
    the defaulted fields; it is kept out of repr so configs can be logged.
    """

    library: Path = Path("/usr/lib/softhsm/libsofthsm2.so")
    token_label: str = "xkslab"
    pin: str = field(repr=False, kw_only=True)
    key_label: str = "xkslab-seal"

    def __post_init__(self) -> None:
        object.__setattr__(self, "library", Path(self.library))
        if not self.token_label:
            raise SealError("pkcs11 sealing needs a token_label")
        if not self.key_label:
            raise SealError("pkcs11 sealing needs a key_label")
        if not self.pin:
            raise SealError(f"pkcs11 sealing needs a PIN for token {self.token_label!r}")


SealConfig = SoftwareSealConfig | Pkcs11SealConfig


def open_sealer(config: SealConfig) -> Sealer:
    """Open the sealer described by config; the key must already exist (see create_sealing_key)."""
    if isinstance(config, SoftwareSealConfig):
        from dsm_emulator.sealing.software import SoftwareSealer

        return SoftwareSealer.open(config)
    if isinstance(config, Pkcs11SealConfig):
        from dsm_emulator.sealing.pkcs11 import Pkcs11Sealer

        return Pkcs11Sealer.open(config)
    raise SealError(f"unknown seal config type {type(config).__name__}")


def create_sealing_key(config: SealConfig) -> None:
    """Create the sealing key for first use, refusing to replace one that exists.

    Replacing a sealing key would orphan every keyring term wrapped under it, so this never
    overwrites: a software key file or a token key with the same label makes it fail.
    """
    if isinstance(config, SoftwareSealConfig):
        if config.key_file is not None:
            _write_new_secret_file(config.key_file, secrets.token_bytes(32), what="key file")
        else:
            assert config.salt_file is not None
            # An existing salt is kept: replacing it would change the key derived from the passphrase.
            _write_new_secret_file(config.salt_file, secrets.token_bytes(16), what="salt file", exist_ok=True)
        return
    if isinstance(config, Pkcs11SealConfig):
        from dsm_emulator.sealing.pkcs11 import create_token_key

        create_token_key(config)
        return
    raise SealError(f"unknown seal config type {type(config).__name__}")


def _write_new_secret_file(path: Path, data: bytes, *, what: str, exist_ok: bool = False) -> None:
    """Write data to a new 0600 file so that it appears complete or not at all.

    The data goes to a temporary file in the same directory which is then hard-linked into place:
    link() fails if the target exists, so a concurrent creator or an existing key is never
    overwritten, and a crash never leaves a truncated key behind.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if exist_ok:
            return
        raise SealError(f"{what} {path} already exists; refusing to overwrite it")
    parent = path.parent
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SealError(f"cannot create directory {parent}: {exc.strerror}") from None
    tmp = parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise SealError(f"cannot write {what} {path}: {exc.strerror}") from None
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
                return
            raise SealError(f"{what} {path} already exists; refusing to overwrite it") from None
        except OSError as exc:
            raise SealError(f"cannot write {what} {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(parent)


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
