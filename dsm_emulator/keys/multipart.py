"""Multipart encrypt and decrypt (Fortanix's ``init``, ``update``, ``final``): the running cipher state
travels with the client between calls, so it is sealed and checked here.

The state token is the keyring's AEAD blob (``Keyring.seal``, as for transient keys) over the stream
(``dsm_emulator.crypto_stream``) and what it belongs to; the blob's context binds it to the account, the
caller (app or user), the key (a kid, or a transient key's token by its hash) and the direction, so a
token cannot be forged, nor used by another caller, with another key or for the other direction.

Replay is refused by a ledger in this process: each operation has a random id and a step number, the
ledger knows the step each open operation expects next, and ``final`` closes it. A token may therefore
be used once: an earlier one (which would reuse CTR keystream) or one after ``final`` is refused. The
ledger lives in memory, so a restart ends every open operation (its tokens are refused; the client
starts again). An operation also ends STATE_IDLE_LIFETIME after its last step, and STATE_MAX_LIFETIME
after it began, whichever comes first.

Every step checks the caller and the key afresh (permission, key_ops, enabled flag, state, quorum gate),
as a single-shot call would, so a key disabled halfway stops the operation. One audit row is written per
operation, at ``final`` (the reference does not say where Fortanix writes it); refusals at any step are
audited as refusals.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from dsm_emulator import crypto_stream
from dsm_emulator.approvals.policy import CRYPTO
from dsm_emulator.audit import AuditEvent
from dsm_emulator.authz import Principal
from dsm_emulator.crypto_stream import Stream
from dsm_emulator.errors import BadRequest, DsmError, Sealed
from dsm_emulator.keys.base import KeyServiceBase, _about, now
from dsm_emulator.keys.crypto_ops import _require_aes, _require_aes_type, run_crypto
from dsm_emulator.models import SecurityObject

if TYPE_CHECKING:
    from dsm_emulator.keys.transient import TransientKey

T = TypeVar("T")

STATE_IDLE_LIFETIME = timedelta(hours=1)
STATE_MAX_LIFETIME = timedelta(hours=24)
MAX_OPEN_OPERATIONS = 10_000
INVALID_STATE = (
    "multipart state is not valid: it was altered, belongs to another caller, key or direction, was "
    "already used, has expired, or predates a restart of the server"
)
_VERSION = 1


@dataclass(frozen=True)
class KeyRef:
    """The key a multipart operation uses: a stored object's kid, or a transient key's token."""

    kid: str | None = None
    token: str | None = None

    @property
    def binding(self) -> str:
        if self.kid is not None:
            return "kid:" + self.kid
        assert self.token is not None
        return "transient:" + hashlib.sha256(self.token.encode()).hexdigest()


@dataclass(frozen=True)
class _State:
    op: str
    step: int
    born: int
    expiry: int
    stream: Stream

    def to_json(self) -> bytes:
        s = self.stream
        return json.dumps(
            {
                "v": _VERSION,
                "op": self.op,
                "step": self.step,
                "born": self.born,
                "exp": self.expiry,
                "mode": s.mode,
                "enc": s.encrypt,
                "block": base64.b64encode(s.block).decode("ascii"),
                "pending": base64.b64encode(s.pending).decode("ascii"),
                "offset": s.offset,
                "ghash": format(s.ghash, "x"),
                "aad_len": s.aad_len,
            }
        ).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> _State:
        d = json.loads(blob)
        if d["v"] != _VERSION:
            raise ValueError("unknown state version")
        stream = Stream(
            mode=str(d["mode"]),
            encrypt=bool(d["enc"]),
            block=base64.b64decode(d["block"], validate=True),
            pending=base64.b64decode(d["pending"], validate=True),
            offset=int(d["offset"]),
            ghash=int(d["ghash"], 16),
            aad_len=int(d["aad_len"]),
        )
        return cls(str(d["op"]), int(d["step"]), int(d["born"]), int(d["exp"]), stream)


class MultipartLedger:
    """Open operations of this process: op id -> (the step expected next, expiry in epoch seconds)."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[int, int]] = {}

    def begin(self, op: str, expiry: int, at: int) -> None:
        if len(self._open) >= MAX_OPEN_OPERATIONS:
            self._open = {k: v for k, v in self._open.items() if v[1] > at}
        if len(self._open) >= MAX_OPEN_OPERATIONS:
            raise BadRequest(
                f"too many multipart operations are open ({MAX_OPEN_OPERATIONS}); finish some or wait "
                f"for them to expire"
            )
        self._open[op] = (1, expiry)

    def claim(self, op: str, step: int, at: int) -> None:
        """Take step ``step`` of ``op``; no await may come between the check and the taking."""
        entry = self._open.get(op)
        if entry is None or entry[0] != step or entry[1] <= at:
            raise BadRequest(INVALID_STATE)
        self._open[op] = (step + 1, entry[1])

    def give_back(self, op: str, step: int) -> None:
        """A step that failed may be tried again with the same token."""
        entry = self._open.get(op)
        if entry is not None and entry[0] == step + 1:
            self._open[op] = (step, entry[1])

    def extend(self, op: str, expiry: int) -> None:
        entry = self._open.get(op)
        if entry is not None:
            self._open[op] = (entry[0], expiry)

    def end(self, op: str) -> None:
        self._open.pop(op, None)

    def __len__(self) -> int:
        return len(self._open)


def _context(p: Principal, key: KeyRef, encrypt: bool) -> bytes:
    direction = "encrypt" if encrypt else "decrypt"
    return f"multipart|{p.acct_id}|{p.kind}:{p.id or ''}|{key.binding}|{direction}".encode()


class MultipartMixin(KeyServiceBase):
    if TYPE_CHECKING:  # defined by KeyService's other mixins

        async def _usable(
            self,
            p: Principal,
            kid: str,
            permission: str,
            key_op: str,
            subject: list[SecurityObject] | None = None,
        ) -> SecurityObject: ...

        def _usable_transient(
            self, p: Principal, token: str, permission: str, key_op: str
        ) -> TransientKey: ...

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.multipart_ledger = MultipartLedger()

    async def multipart_init(
        self, p: Principal, key: KeyRef, mode: str, iv: bytes | None, aad: bytes | None, *, encrypt: bool
    ) -> tuple[bytes, bytes]:
        """(the first state token, the IV); nothing is audited unless refused."""

        async def action(subject: list[SecurityObject]) -> tuple[bytes, bytes]:
            material = await self._multipart_material(p, key, encrypt, subject)
            stream, used_iv = run_crypto(
                lambda: crypto_stream.start(mode, material, iv, encrypt=encrypt, aad=aad)
            )
            at = int(now().timestamp())
            op = secrets.token_hex(16)
            state = _State(op, 1, at, _expiry(at, at), stream)
            self.multipart_ledger.begin(op, state.expiry, at)
            return self._seal_state(p, key, state), used_iv

        return await self._refusals_audited(self._multipart_event(p, key, mode, encrypt), action)

    async def multipart_update(
        self, p: Principal, key: KeyRef, token: bytes, data: bytes, *, encrypt: bool
    ) -> tuple[bytes, bytes]:
        """(the output so far, the next state token)."""

        async def action(subject: list[SecurityObject]) -> tuple[bytes, bytes]:
            state = self._open_state(p, key, token, encrypt)
            at = int(now().timestamp())
            self.multipart_ledger.claim(state.op, state.step, at)
            try:
                material = await self._multipart_material(p, key, encrypt, subject)
                out, stream = await _stepped(
                    lambda: crypto_stream.update(material, state.stream, data), state
                )
            except BaseException:
                self.multipart_ledger.give_back(state.op, state.step)
                raise
            following = _State(state.op, state.step + 1, state.born, _expiry(state.born, at), stream)
            self.multipart_ledger.extend(state.op, following.expiry)
            return out, self._seal_state(p, key, following)

        return await self._refusals_audited(self._multipart_event(p, key, "", encrypt), action)

    async def multipart_final(
        self,
        p: Principal,
        key: KeyRef,
        token: bytes,
        *,
        encrypt: bool,
        tag_len_bits: int | None = None,
        tag: bytes | None = None,
    ) -> tuple[bytes, bytes | None]:
        """(the last of the output, a GCM encrypt's tag); the operation's one audit row is written here."""

        async def action(subject: list[SecurityObject]) -> tuple[bytes, bytes | None]:
            current = self._open_state(p, key, token, encrypt)
            self.multipart_ledger.claim(current.op, current.step, int(now().timestamp()))
            try:
                material = await self._multipart_material(p, key, encrypt, subject)
                out = run_crypto(
                    lambda: crypto_stream.final(material, current.stream, tag_len_bits=tag_len_bits, tag=tag)
                )
            except BaseException:
                self.multipart_ledger.give_back(current.op, current.step)
                raise
            self.multipart_ledger.end(current.op)
            return out

        try:
            mode = self._open_state(p, key, token, encrypt).stream.mode
        except BadRequest:
            mode = ""  # refused in action, and audited there
        event = self._multipart_event(p, key, mode, encrypt)
        if key.kid is None:
            return await action([])  # transient keys are not audited (see dsm_emulator.keys.transient)
        return await self._audited(event, action)

    # ------------------------------------------------------------------------------- helpers

    async def _multipart_material(
        self, p: Principal, key: KeyRef, encrypt: bool, subject: list[SecurityObject]
    ) -> bytes:
        op = "ENCRYPT" if encrypt else "DECRYPT"
        if key.token is not None:
            transient = self._usable_transient(p, key.token, op, op)
            _require_aes_type(transient.obj_type)
            return transient.material
        assert key.kid is not None
        obj = await self._usable(p, key.kid, op, op, subject)
        _require_aes(obj)
        await self._held(p, obj, CRYPTO)
        return await self.material(obj)

    def _seal_state(self, p: Principal, key: KeyRef, state: _State) -> bytes:
        return self._keyring.seal(state.to_json(), _context(p, key, state.stream.encrypt))

    def _open_state(self, p: Principal, key: KeyRef, token: bytes, encrypt: bool) -> _State:
        """The state a token holds, or one BadRequest whatever is wrong, so the answer tells nothing."""
        try:
            # Sealed by this process (only its ledger can continue the operation): no other term to load.
            state = _State.from_json(self._keyring.open_loaded(token, _context(p, key, encrypt)))
        except (ValueError, TypeError, KeyError, binascii.Error, Sealed):
            raise BadRequest(INVALID_STATE) from None
        if state.stream.encrypt != encrypt or state.expiry <= int(now().timestamp()):
            raise BadRequest(INVALID_STATE)
        return state

    def _multipart_event(self, p: Principal, key: KeyRef, mode: str, encrypt: bool) -> AuditEvent:
        verb = "Encrypted" if encrypt else "Decrypted"
        detail = f" ({mode}, multipart)" if mode else " (multipart)"
        return self._event(
            p,
            "crypto.encrypt" if encrypt else "crypto.decrypt",
            f"{verb} data with key {key.kid or 'transient'}{detail}",
            object_id=key.kid,
            action_type="CRYPTOOPERATION",
        )

    async def _refusals_audited(
        self, event: AuditEvent, action: Callable[[list[SecurityObject]], Awaitable[T]]
    ) -> T:
        """``_audited`` for the steps before ``final``: a refusal is recorded, a success is not (the
        operation's row is written once, at its end)."""
        subject: list[SecurityObject] = []
        if event.object_id is None:
            return await action(subject)  # a transient key: not audited (see dsm_emulator.keys.transient)
        try:
            return await action(subject)
        except DsmError as exc:
            await self._audit.record(_about(event, subject).refused(exc))
            raise


async def _stepped(op: Callable[[], tuple[bytes, Stream]], state: _State) -> tuple[bytes, Stream]:
    # GHASH is pure Python (about 0.1 s per 350 KiB): in a worker thread the interpreter switches back
    # to the event loop every few milliseconds, so XKS calls (250 ms budget) are not held up behind it.
    if state.stream.mode == "GCM":
        return await asyncio.to_thread(run_crypto, op)
    return run_crypto(op)


def _expiry(born: int, at: int) -> int:
    return min(at + int(STATE_IDLE_LIFETIME.total_seconds()), born + int(STATE_MAX_LIFETIME.total_seconds()))
