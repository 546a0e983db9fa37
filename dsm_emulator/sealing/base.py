"""The sealing interface and its settings: what both backends (software.py, pkcs11.py) and the factory in
``__init__`` share, in a module of its own so the backends never import the package that imports them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

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
