"""Sealing of the keyring: one narrow interface in front of a software key or an HSM key.

The keyring keys live in SQL wrapped by a sealer; the sealer is touched only at start, rotation and
rewrap, so it can be slow (scrypt, a PKCS#11 round trip) without hurting the hot path. Keeping the
interface this small (wrap/unwrap with AAD) lets a software key and a PKCS#11 token be swapped
without the keyring knowing which one it has, as with Vault seals or Barbican crypto plugins.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from dsm_emulator.sealing.base import (
    PKCS11_MISSING,
    Pkcs11SealConfig,
    SealConfig,
    Sealer,
    SealError,
    SoftwareSealConfig,
)
from xkslab_shared import keyfile

__all__ = [
    "PKCS11_MISSING",
    "Pkcs11SealConfig",
    "SealConfig",
    "SealError",
    "Sealer",
    "SoftwareSealConfig",
    "create_sealing_key",
    "open_sealer",
]


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
    try:
        keyfile.write_new_secret_file(path, data, what=what, exist_ok=exist_ok)
    except keyfile.KeyFileError as exc:
        raise SealError(str(exc)) from None
