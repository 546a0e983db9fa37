"""The keyring: a barrier of terms between the sealing key and everything stored.

Each term is a random AES-256 data key, stored in ``keyring_terms`` wrapped by the sealer. Terms are
unwrapped once when a service starts and then live only in memory, so the sealer (a file key or an HSM)
is never on the request path. ``rotate`` adds a term that seals from then on; older terms stay to open
what they sealed. ``rewrap`` moves every term under another sealer without touching any object. Both
are audited mutations (``audit.apply``: one row, the cache generation raised).

Another process may rotate while this one runs (``xkslab seal rotate`` beside ``xkslab up``, another
replica): a blob that names a term this process has not loaded makes it load that term from the
database, once, however many requests ask at the same moment. The term this process seals under stays
the one it started with (or rotated to itself) until it restarts: tokens and hashes keyed from the
active term keep working for as long as it runs.

Blob layout written by ``seal`` (one place, refused when the version is unknown)::

    0      1          5              17
    | ver  | term u32 | nonce (12 B) | AES-256-GCM ciphertext || tag (16 B) |
    GCM AAD = b"xkslab-keyring-v1" || ver || term u32 || context

``context`` binds a blob to what it belongs to (object id, version), so a blob copied onto another row
does not open.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import func, select
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
        self._active = max(keys)
        self._loading: dict[int, asyncio.Task[None]] = {}
        self.term_loads = 0  # terms loaded on demand (another process rotated)

    # ------------------------------------------------------------------------------------- opening

    @classmethod
    async def load(cls, sessions: async_sessionmaker[AsyncSession], sealer: Sealer) -> Keyring:
        """Unwrap every term once. Raises Sealed when there is none or the sealer cannot open one."""
        async with sessions() as session:
            rows = (await session.scalars(select(KeyringTerm).order_by(KeyringTerm.term))).all()
        if not rows:
            raise Sealed("the keyring has no term: run 'xkslab init' first")
        return cls(sessions, sealer, {row.term: _unwrap(sealer, row) for row in rows})

    @classmethod
    async def initialize(cls, sessions: async_sessionmaker[AsyncSession], sealer: Sealer) -> Keyring:
        """Create the first term if the keyring is empty, then load it."""
        async with sessions.begin() as session:
            existing = await session.scalar(select(KeyringTerm.term).limit(1))
            if existing is None:
                session.add(cls._new_term_row(sealer, 1))
        return await cls.load(sessions, sealer)

    async def ensure_term(self, term: int) -> None:
        """Load ``term`` from the database unless this process has it: another process rotated. One
        load per term, shared by every caller waiting for it (a cancelled caller stops waiting, the
        load goes on). Sealed when the database has no such term or the sealer cannot open it."""
        if term in self._keys:
            return
        loading = self._loading.get(term)
        if loading is None:
            loading = self._loading[term] = asyncio.create_task(self._load_term(term))
            loading.add_done_callback(_retrieve)
        await asyncio.shield(loading)

    async def _load_term(self, term: int) -> None:
        try:
            async with self._sessions() as session:
                row = await session.scalar(select(KeyringTerm).where(KeyringTerm.term == term))
            if row is None:
                raise Sealed(f"sealed blob names keyring term {term}, which this keyring does not have")
            self._add(term, _unwrap(self._sealer, row))
            self.term_loads += 1
        finally:
            del self._loading[term]

    def _add(self, term: int, key: bytes) -> None:
        self._keys[term] = key
        self._ciphers[term] = AESGCM(key)

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
        return self._active

    @property
    def terms(self) -> list[int]:
        return sorted(self._keys)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        term = self.active_term
        header = _HEADER.pack(BLOB_VERSION, term)
        nonce = random_bytes(12)
        return header + nonce + self._ciphers[term].encrypt(nonce, plaintext, _AAD_PREFIX + header + context)

    async def open(self, blob: bytes, context: bytes) -> bytes:
        """The plaintext of a blob ``seal`` made (in any process), bound to ``context``."""
        await self.ensure_term(_blob_term(blob))
        return self.open_loaded(blob, context)

    def open_loaded(self, blob: bytes, context: bytes) -> bytes:
        """``open`` for a blob this process sealed itself (a transient key's token): no database, and a
        term it has not loaded is Sealed."""
        term = _blob_term(blob)
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

    async def add_term(self, session: AsyncSession) -> int:
        """In the caller's transaction (KeyringAdmin's audited apply): a new term, numbered the
        database's next whatever this process knew; ``activate`` it once committed."""
        term = (await session.scalar(select(func.max(KeyringTerm.term))) or 0) + 1
        session.add(self._new_term_row(self._sealer, term))
        return term

    async def activate(self, term: int) -> None:
        """Seal under ``term`` from now on (a term this process just committed)."""
        await self.ensure_term(term)
        self._active = max(self._active, term)

    async def rewrap_terms(self, session: AsyncSession, new_sealer: Sealer) -> int:
        """In the caller's transaction: every term re-wrapped under ``new_sealer``; the number of terms.
        ``use_sealer`` once committed."""
        rows = (await session.scalars(select(KeyringTerm).with_for_update())).all()
        for row in rows:
            if row.term not in self._keys:  # rotated by another process since this one started
                self._add(row.term, _unwrap(self._sealer, row))
            try:
                row.wrapped_key = new_sealer.wrap(self._keys[row.term], _term_aad(row.term))
            except SealError as exc:
                raise Sealed(f"cannot wrap keyring term {row.term} with the new sealer: {exc}") from None
            row.sealer_kind = new_sealer.kind
            row.sealer_key_id = new_sealer.key_id
        return len(rows)

    def use_sealer(self, sealer: Sealer) -> None:
        self._sealer = sealer

    def status(self) -> KeyringStatus:
        return KeyringStatus(len(self._keys), self.active_term, self._sealer.kind, self._sealer.key_id)


def _blob_term(blob: bytes) -> int:
    if len(blob) < _HEADER.size + 12 + 16:
        raise Sealed("sealed blob is truncated")
    version, term = _HEADER.unpack_from(blob)
    if version != BLOB_VERSION:
        raise Sealed(f"sealed blob has unknown format version {version}")
    return int(term)


def _unwrap(sealer: Sealer, row: KeyringTerm) -> bytes:
    if row.sealer_key_id != sealer.key_id:
        raise Sealed(
            f"keyring term {row.term} is sealed by {row.sealer_key_id}, "
            f"but the configured sealing key is {sealer.key_id}"
        )
    try:
        return sealer.unwrap(row.wrapped_key, _term_aad(row.term))
    except SealError as exc:
        raise Sealed(f"cannot unseal keyring term {row.term}: {exc}") from None


def _retrieve(task: asyncio.Task[None]) -> None:
    # A failed load's callers re-raise it; if all of them were cancelled, asyncio would log it unseen.
    if not task.cancelled():
        task.exception()
