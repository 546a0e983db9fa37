"""The uses of a stored object's material (encrypt, decrypt, wrap, unwrap, MAC, export) never change its row,
and are checked and audited differently from the lifecycle: the row must allow the operation (key_ops,
enabled flag, effective state) and each call answers only after its audit row is committed
(``AuditLog.record`` through ``_audited``), refusals included. How crypto-library errors become DsmErrors
is decided here once, for transient keys too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from dsm_emulator import asymmetric, crypto, digests, symmetric
from dsm_emulator.approvals.gate import Touch
from dsm_emulator.approvals.policy import CRYPTO, EXPORT
from dsm_emulator.authz import Principal, require_key_op, require_permission
from dsm_emulator.errors import BadRequest, IntegrityFailure, InvalidState
from dsm_emulator.keys.base import KeyServiceBase, KeySpec, effective_state
from dsm_emulator.models import SecurityObject

T = TypeVar("T")


class CryptoMixin(KeyServiceBase):
    if TYPE_CHECKING:  # unwrap stores the unwrapped key through the lifecycle (LifecycleMixin.create)

        async def create(self, p: Principal, spec: KeySpec, value: bytes | None = None) -> SecurityObject: ...

    async def _usable(
        self,
        p: Principal,
        kid: str,
        permission: str,
        key_op: str,
        subject: list[SecurityObject] | None = None,
    ) -> SecurityObject:
        obj = await self._load_for_use(p, kid)
        if subject is not None:
            subject.append(obj)
        require_permission(p, permission, obj.group_id)
        require_key_op(obj, key_op, effective_state(obj))
        return obj

    async def encrypt(
        self,
        p: Principal,
        kid: str,
        mode: str,
        plain: bytes,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag_len_bits: int | None = None,
        context: Mapping[str, str | None] | None = None,
        alg: str | None = None,
    ) -> crypto.Ciphertext:
        # AuditEvent fields for _event's **extra; typed Any, or mypy matches them against its `obj`.
        audit_fields: dict[str, Any] = dict(context or {})
        event = self._event(
            p,
            "crypto.encrypt",
            f"Encrypted data with key {kid} ({mode})",
            object_id=kid,
            action_type="CRYPTOOPERATION",
            **audit_fields,
        )

        async def action(subject: list[SecurityObject]) -> crypto.Ciphertext:
            obj = await self._usable(p, kid, "ENCRYPT", "ENCRYPT", subject)
            if obj.obj_type == "RSA":
                _rsa_only_args(obj, alg, iv=iv, ad=aad, tag_len=tag_len_bits)
                await self._held(p, obj, CRYPTO)
                pub_key = obj.pub_key or b""
                return crypto.Ciphertext(run_crypto(lambda: asymmetric.rsa_encrypt(pub_key, mode, plain)))
            _require_symmetric(obj, alg)
            await self._held(p, obj, CRYPTO)
            material = await self.material(obj)
            return run_crypto(
                lambda: symmetric.encrypt(
                    obj.obj_type, mode, material, plain, iv=iv, aad=aad, tag_len_bits=tag_len_bits
                )
            )

        return await self._audited(event, action)

    async def decrypt(
        self,
        p: Principal,
        kid: str,
        mode: str,
        cipher: bytes,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag: bytes | None = None,
        context: Mapping[str, str | None] | None = None,
        alg: str | None = None,
    ) -> bytes:
        audit_fields: dict[str, Any] = dict(context or {})
        event = self._event(
            p,
            "crypto.decrypt",
            f"Decrypted data with key {kid} ({mode})",
            object_id=kid,
            action_type="CRYPTOOPERATION",
            **audit_fields,
        )

        async def action(subject: list[SecurityObject]) -> bytes:
            obj = await self._usable(p, kid, "DECRYPT", "DECRYPT", subject)
            if obj.obj_type == "RSA":
                _rsa_only_args(obj, alg, iv=iv, ad=aad, tag=tag)
                if obj.public_only:
                    raise BadRequest("this RSA object holds only a public key: it cannot decrypt")
                await self._held(p, obj, CRYPTO)
                private = await self.material(obj)
                return run_crypto(lambda: asymmetric.rsa_decrypt(private, mode, cipher))
            _require_symmetric(obj, alg)
            await self._held(p, obj, CRYPTO)
            material = await self.material(obj)
            return run_crypto(
                lambda: symmetric.decrypt(obj.obj_type, mode, material, cipher, iv=iv, aad=aad, tag=tag)
            )

        return await self._audited(event, action)

    async def wrap(
        self,
        p: Principal,
        wrapping_kid: str,
        subject_kid: str,
        mode: str,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag_len_bits: int | None = None,
    ) -> crypto.Ciphertext:
        event = self._event(
            p,
            "crypto.wrap",
            f"Wrapped key {subject_kid} with key {wrapping_kid} ({mode})",
            object_id=wrapping_kid,
            action_type="CRYPTOOPERATION",
        )

        async def action(seen: list[SecurityObject]) -> crypto.Ciphertext:
            wrapping = await self._usable(p, wrapping_kid, "WRAPKEY", "WRAPKEY", seen)
            _require_aes(wrapping)
            subject = await self._usable(p, subject_kid, "EXPORT", "EXPORT")
            async with self._sessions() as session:
                policies = await self._policies(session, subject.group_id)
            policies.check_wrap(wrapping.kid, wrapping.name)
            # Wrapping reveals the subject key: an export of it, held like one.
            await self.gate.check(p, [Touch.sobject(wrapping, CRYPTO), Touch.sobject(subject, EXPORT)])
            material = _exported(subject, await self.material(subject))
            kek = await self.material(wrapping)
            wrapped = run_crypto(
                lambda: crypto.encrypt(mode, kek, material, iv=iv, aad=aad, tag_len_bits=tag_len_bits)
            )
            self.usage.note(subject)  # the wrapping key's use is noted with the audit row
            return wrapped

        return await self._audited(event, action)

    async def unwrap(
        self,
        p: Principal,
        wrapping_kid: str,
        wrapped: bytes,
        mode: str,
        spec: KeySpec,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag: bytes | None = None,
    ) -> SecurityObject:
        event = self._event(
            p,
            "crypto.unwrap",
            f"Unwrapped a key with key {wrapping_kid} ({mode})",
            object_id=wrapping_kid,
            action_type="CRYPTOOPERATION",
        )

        async def action(seen: list[SecurityObject]) -> bytes:
            wrapping = await self._usable(p, wrapping_kid, "UNWRAPKEY", "UNWRAPKEY", seen)
            _require_aes(wrapping)
            await self._held(p, wrapping, CRYPTO)
            kek = await self.material(wrapping)
            return run_crypto(lambda: crypto.decrypt(mode, kek, wrapped, iv=iv, aad=aad, tag=tag))

        material = await self._audited(event, action)
        return await self.create(p, spec, value=material)

    async def mac(self, p: Principal, kid: str, alg: str | None, data: bytes) -> bytes:
        """HMAC with an HMAC key (``alg`` names the hash), CMAC with an AES key (no ``alg``)."""
        event = self._event(
            p, "crypto.mac", f"Computed a MAC with key {kid}", object_id=kid, action_type="CRYPTOOPERATION"
        )

        async def action(subject: list[SecurityObject]) -> bytes:
            obj = await self._usable(p, kid, "MACGENERATE", "MACGENERATE", subject)
            return await self._mac(p, obj, alg, data)

        return await self._audited(event, action)

    async def mac_verify(self, p: Principal, kid: str, alg: str | None, data: bytes, mac: bytes) -> bool:
        """Whether ``mac`` is the MAC of ``data``; a mismatch is an answer (False), not an error."""
        event = self._event(
            p,
            "crypto.macverify",
            f"Verified a MAC with key {kid}",
            object_id=kid,
            action_type="CRYPTOOPERATION",
        )

        async def action(subject: list[SecurityObject]) -> bool:
            obj = await self._usable(p, kid, "MACVERIFY", "MACVERIFY", subject)
            return digests.mac_matches(await self._mac(p, obj, alg, data), mac)

        return await self._audited(event, action)

    async def _mac(self, p: Principal, obj: SecurityObject, alg: str | None, data: bytes) -> bytes:
        if obj.obj_type == "HMAC":
            if alg is None:
                raise BadRequest("missing required field alg (the hash of the HMAC)")
        elif obj.obj_type == "AES":
            if alg is not None:
                raise BadRequest("alg does not apply to an AES key's MAC (CMAC); omit it")
        else:
            raise BadRequest(f"{obj.obj_type} objects cannot be used for this operation")
        await self._held(p, obj, CRYPTO)
        material = await self.material(obj)
        if alg is None:
            return run_crypto(lambda: digests.cmac_generate(material, data))
        return run_crypto(lambda: digests.hmac_generate(alg, material, data))

    async def export(
        self, p: Principal, *, kid: str | None = None, name: str | None = None
    ) -> tuple[SecurityObject, bytes]:
        event = self._event(p, "key.export", f"Exported key {kid or name}", object_id=kid)

        async def action(subject: list[SecurityObject]) -> tuple[SecurityObject, bytes]:
            async with self._sessions() as session:
                obj = await self._find(session, p, kid=kid, name=name)
                subject.append(obj)
                require_permission(p, "EXPORT", obj.group_id)
                if obj.public_only:  # a public key is no secret: its export needs no EXPORT key_op
                    return obj, await self.material(obj)
                if "EXPORT" not in obj.key_ops:
                    raise InvalidState("this key is not exportable (no EXPORT key operation)")
                (await self._policies(session, obj.group_id)).check_plain_export()
            await self._held(p, obj, EXPORT)
            return obj, _exported(obj, await self.material(obj))

        return await self._audited(event, action)


def _exported(obj: SecurityObject, material: bytes) -> bytes:
    """Material as it leaves the DSM (export, wrap): a private key in Fortanix's Default format."""
    if obj.obj_type in asymmetric.ASYMMETRIC_TYPES and not obj.public_only:
        return asymmetric.export_form(material)
    return material


def _require_aes(obj: SecurityObject, alg: str | None = None) -> None:
    _require_aes_type(obj.obj_type)
    _alg_matches(obj, alg)


def _require_symmetric(obj: SecurityObject, alg: str | None = None) -> None:
    """Encrypt and decrypt take AES, DES and DES3 keys (wrap and unwrap only AES)."""
    if obj.obj_type not in symmetric.SYMMETRIC_TYPES:
        raise BadRequest(f"{obj.obj_type} objects cannot be used for this operation")
    _alg_matches(obj, alg)


def _alg_matches(obj: SecurityObject, alg: str | None) -> None:
    if alg is not None and alg != obj.obj_type:
        raise BadRequest(f"alg {alg[:40]} does not match the key's type {obj.obj_type}")


def _rsa_only_args(obj: SecurityObject, alg: str | None, **symmetric: object) -> None:
    """An RSA encryption takes no IV, AD or tag: a request that sends one is refused, not ignored."""
    if alg is not None and alg != "RSA":
        raise BadRequest(f"alg {alg[:40]} does not match the key's type RSA")
    given = sorted(name for name, value in symmetric.items() if value is not None)
    if given:
        raise BadRequest(f"{given[0]} is not a parameter of RSA encryption")


def _require_aes_type(obj_type: str) -> None:
    if obj_type != "AES":
        raise BadRequest(f"{obj_type} objects cannot be used for this operation")


def run_crypto(op: Callable[[], T]) -> T:
    try:
        return op()
    except crypto.IntegrityError as exc:
        raise IntegrityFailure(str(exc)) from None
    except crypto.CryptoError as exc:
        raise BadRequest(str(exc)) from None
