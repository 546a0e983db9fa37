"""The keyring: a barrier of terms between the sealing key and everything stored.

Each term is a random AES-256 data key, stored in ``keyring_terms`` wrapped by the sealer. Terms are
unwrapped once when a service starts and then live only in memory, so the sealer (a file key or an HSM)
is never on the request path. ``rotate`` adds a term that seals from then on; older terms stay to open
what they sealed. ``rewrap`` moves every term under another sealer without touching any object.

Blob layout written by ``seal`` (one place, refused when the version is unknown)::

    0      1          5              17
    | ver  | term u32 | nonce (12 B) | AES-256-GCM ciphertext || tag (16 B) |
    GCM AAD = b"xkslab-keyring-v1" || ver || term u32 || context

``context`` binds a blob to what it belongs to (object id, version), so a blob copied onto another row
does not open.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.crypto import random_bytes
from dsm_emulator.errors import Sealed
from dsm_emulator.models import KeyringTerm
from dsm_emulator.sealing import Sealer, SealError

BLOB_VERSION = 1
_HEADER = struct.Struct(">BI")
_AAD_PREFIX = b"xkslab-keyring-v1"


def _term_aad(term: int) -> bytes:
    # What the sealer binds a wrapped term key to: moving a wrapped key to another term fails to unwrap.
    return b"xkslab-keyring-term:" + str(term).encode()


@dataclass(frozen=True)
class KeyringStatus:
    terms: int
    active_term: int
    sealer_kind: str
    sealer_key_id: str


class Keyring:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], sealer: Sealer, keys: dict[int, bytes]):
        self._sessions = sessions
        self._sealer = sealer
        self._keys = keys
        self._ciphers = {term: AESGCM(key) for term, key in keys.items()}
        self._derived: dict[tuple[str, int], bytes] = {}

    # ------------------------------------------------------------------------------------- opening

    @classmethod
    async def load(cls, sessions: async_sessionmaker[AsyncSession], sealer: Sealer) -> Keyring:
        """Unwrap every term once. Raises Sealed when there is none or the sealer cannot open one."""
        async with sessions() as session:
            rows = (await session.scalars(select(KeyringTerm).order_by(KeyringTerm.term))).all()
        if not rows:
            raise Sealed("the keyring has no term: run 'xkslab init' first")
        keys: dict[int, bytes] = {}
        for row in rows:
            if row.sealer_key_id != sealer.key_id:
                raise Sealed(
                    f"keyring term {row.term} is sealed by {row.sealer_key_id}, "
                    f"but the configured sealing key is {sealer.key_id}"
                )
            try:
                keys[row.term] = sealer.unwrap(row.wrapped_key, _term_aad(row.term))
            except SealError as exc:
                raise Sealed(f"cannot unseal keyring term {row.term}: {exc}") from None
        return cls(sessions, sealer, keys)

    @classmethod
    async def initialize(cls, sessions: async_sessionmaker[AsyncSession], sealer: Sealer) -> Keyring:
        """Create the first term if the keyring is empty, then load it."""
        async with sessions.begin() as session:
            existing = await session.scalar(select(KeyringTerm.term).limit(1))
            if existing is None:
                session.add(cls._new_term_row(sealer, 1))
        return await cls.load(sessions, sealer)

    @staticmethod
    def _new_term_row(sealer: Sealer, term: int) -> KeyringTerm:
        try:
            wrapped = sealer.wrap(random_bytes(32), _term_aad(term))
        except SealError as exc:
            raise Sealed(f"cannot seal a new keyring term: {exc}") from None
        return KeyringTerm(
            term=term,
            sealer_kind=sealer.kind,
            sealer_key_id=sealer.key_id,
            wrapped_key=wrapped,
            created_at=datetime.now(UTC),
        )

    # --------------------------------------------------------------------------------- barrier

    @property
    def active_term(self) -> int:
        return max(self._keys)

    @property
    def terms(self) -> list[int]:
        return sorted(self._keys)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        term = self.active_term
        header = _HEADER.pack(BLOB_VERSION, term)
        nonce = random_bytes(12)
        return header + nonce + self._ciphers[term].encrypt(nonce, plaintext, _AAD_PREFIX + header + context)

    def open(self, blob: bytes, context: bytes) -> bytes:
        if len(blob) < _HEADER.size + 12 + 16:
            raise Sealed("sealed blob is truncated")
        version, term = _HEADER.unpack_from(blob)
        if version != BLOB_VERSION:
            raise Sealed(f"sealed blob has unknown format version {version}")
        cipher = self._ciphers.get(term)
        if cipher is None:
            raise Sealed(f"sealed blob names keyring term {term}, which this keyring does not have")
        header, nonce, body = blob[: _HEADER.size], blob[_HEADER.size : _HEADER.size + 12], blob[17:]
        try:
            return cipher.decrypt(nonce, body, _AAD_PREFIX + header + context)
        except InvalidTag:
            raise Sealed("sealed blob does not authenticate (tampered, or bound to another object)") from None

    def derive(self, purpose: str, term: int | None = None) -> bytes:
        """A 32-byte key for one purpose (audit chain, session tokens), derived from a term with HKDF so
        that each purpose has its own key and none of them is the term key itself."""
        term = self.active_term if term is None else term
        derived = self._derived.get((purpose, term))
        if derived is None:  # memoised: the audit writer asks once per batch
            key = self._keys.get(term)
            if key is None:
                raise Sealed(f"keyring has no term {term}")
            derived = HKDF(hashes.SHA256(), 32, salt=None, info=b"xkslab:" + purpose.encode()).derive(key)
            self._derived[(purpose, term)] = derived
        return derived

    # ------------------------------------------------------------------------------ management

    async def rotate(self) -> int:
        """Start a new term; new blobs are sealed under it, old ones still open."""
        term = self.active_term + 1
        row = self._new_term_row(self._sealer, term)
        async with self._sessions.begin() as session:
            session.add(row)
        key = self._sealer.unwrap(row.wrapped_key, _term_aad(term))
        self._keys[term] = key
        self._ciphers[term] = AESGCM(key)
        return term

    async def rewrap(self, new_sealer: Sealer) -> int:
        """Re-wrap every term under ``new_sealer`` in one transaction; returns the number of terms."""
        async with self._sessions.begin() as session:
            rows = (await session.scalars(select(KeyringTerm).with_for_update())).all()
            for row in rows:
                try:
                    row.wrapped_key = new_sealer.wrap(self._keys[row.term], _term_aad(row.term))
                except SealError as exc:
                    raise Sealed(f"cannot wrap keyring term {row.term} with the new sealer: {exc}") from None
                row.sealer_kind = new_sealer.kind
                row.sealer_key_id = new_sealer.key_id
        self._sealer = new_sealer
        return len(rows)

    def status(self) -> KeyringStatus:
        return KeyringStatus(len(self._keys), self.active_term, self._sealer.kind, self._sealer.key_id)
