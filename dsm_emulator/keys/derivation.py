"""New keys made from stored ones: derivation (DERIVEKEY on the base key) and ECDH agreement (AGREEKEY on
both keys), and the key check value of a stored key. A derive or agree is audited twice, as an unwrap is:
once as the use of the key(s) it read (``crypto.derive``, ``crypto.agree``, refusals included, answered
only after the row is committed), then as the creation of the new object (``key.derive``). A transient
result is not stored and, like every transient key, its creation is not audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsm_emulator import derivation, symmetric
from dsm_emulator.approvals.gate import Touch
from dsm_emulator.approvals.policy import CRYPTO
from dsm_emulator.authz import Principal
from dsm_emulator.errors import BadRequest
from dsm_emulator.keys.base import KeyServiceBase, KeySpec
from dsm_emulator.keys.crypto_ops import run_crypto
from dsm_emulator.keys.object_types import OBJECT_TYPES
from dsm_emulator.models import SecurityObject


@dataclass(frozen=True)
class Made:
    """What a derive or agree made: the stored object, or a transient key's view."""

    obj: SecurityObject | None = None
    transient_view: dict[str, Any] | None = None


def _length(spec: KeySpec) -> int:
    """The bytes of material the new key takes, once its type and size are checked."""
    if spec.obj_type not in derivation.DERIVED_TYPES:
        raise BadRequest(
            f"key_type {spec.obj_type[:40]} cannot be derived; one of {', '.join(derivation.DERIVED_TYPES)}"
        )
    rule = OBJECT_TYPES[spec.obj_type]
    if spec.key_size is None:
        raise BadRequest("missing required field key_size")
    if not rule.sizes(spec.key_size):
        raise BadRequest(f"key_size {spec.key_size} is not valid for {spec.obj_type}")
    return symmetric.material_length(spec.obj_type, spec.key_size)


class DerivationMixin(KeyServiceBase):
    if TYPE_CHECKING:  # defined by KeyService's other mixins

        async def create(
            self,
            p: Principal,
            spec: KeySpec,
            value: bytes | None = None,
            *,
            persisted: bool = False,
            derived: bool = False,
        ) -> SecurityObject: ...

        async def create_transient(
            self, p: Principal, spec: KeySpec, material: bytes | None = None
        ) -> tuple[dict[str, Any], str]: ...

        async def _usable(
            self,
            p: Principal,
            kid: str,
            permission: str,
            key_op: str,
            subject: list[SecurityObject] | None = None,
        ) -> SecurityObject: ...

    async def _store(self, p: Principal, spec: KeySpec, material: bytes, transient: bool) -> Made:
        if transient:
            view, _token = await self.create_transient(p, spec, material)
            return Made(transient_view=view)
        return Made(obj=await self.create(p, spec, material, derived=True))

    async def derive(
        self, p: Principal, kid: str, mechanism: derivation.Mechanism, spec: KeySpec, *, transient: bool
    ) -> Made:
        """A new key from the base key ``kid`` (which needs DERIVEKEY) by ``mechanism``."""
        length = _length(spec)
        kind = "encrypt_data" if isinstance(mechanism, derivation.EncryptData) else "hkdf"
        event = self._event(
            p,
            "crypto.derive",
            f"Derived a new {spec.obj_type} key from key {kid} ({kind})",
            object_id=kid,
            action_type="CRYPTOOPERATION",
        )

        async def action(subject: list[SecurityObject]) -> bytes:
            base = await self._usable(p, kid, "DERIVEKEY", "DERIVEKEY", subject)
            await self._held(p, base, CRYPTO)
            material = await self.material(base)
            return run_crypto(
                lambda: derivation.derive(mechanism, base.obj_type, material, spec.obj_type, length)
            )

        material = await self._audited(event, action)
        return await self._store(p, spec, material, transient)

    async def agree(
        self, p: Principal, private_kid: str, public_kid: str, spec: KeySpec, *, transient: bool
    ) -> Made:
        """ECDH between the EC private key ``private_kid`` and the EC key ``public_kid`` (whose public part
        is used); both need AGREEKEY."""
        length = _length(spec)
        event = self._event(
            p,
            "crypto.agree",
            f"Agreed a new {spec.obj_type} key from keys {private_kid} and {public_kid} (diffie_hellman)",
            object_id=private_kid,
            action_type="CRYPTOOPERATION",
        )

        async def action(subject: list[SecurityObject]) -> bytes:
            private = await self._usable(p, private_kid, "AGREEKEY", "AGREEKEY", subject)
            public = await self._usable(p, public_kid, "AGREEKEY", "AGREEKEY")
            for role, obj in (("private_key", private), ("public_key", public)):
                if obj.obj_type != "EC":
                    raise BadRequest(f"{role}: key agreement takes EC keys, not {obj.obj_type}")
            if private.public_only:
                raise BadRequest("private_key: this EC object holds only a public key")
            if private.elliptic_curve != public.elliptic_curve:
                raise BadRequest(
                    f"the keys are on different curves ({private.elliptic_curve} and {public.elliptic_curve})"
                )
            await self.gate.check(p, [Touch.sobject(private, CRYPTO), Touch.sobject(public, CRYPTO)])
            secret_key = await self.material(private)
            public_key = public.pub_key or b""
            self.usage.note(public)  # the private key's use is noted with the audit row
            return run_crypto(lambda: derivation.ecdh(secret_key, public_key, spec.obj_type, length))

        material = await self._audited(event, action)
        return await self._store(p, spec, material, transient)

    async def kcv(self, p: Principal, *, kid: str | None = None, name: str | None = None) -> tuple[str, str]:
        """(kid, key check value) of a stored AES, DES or DES3 key; audited like an export, since it is
        computed from the key."""
        event = self._event(p, "key.kcv", f"Read the KCV of key {kid or name}", object_id=kid)

        async def action(subject: list[SecurityObject]) -> tuple[str, str]:
            async with self._sessions() as session:
                obj = await self._find(session, p, kid=kid, name=name)
            subject.append(obj)
            if obj.obj_type not in symmetric.KCV_TYPES:
                raise BadRequest(
                    f"a key check value is defined for AES, DES and DES3 keys, not {obj.obj_type}"
                )
            if obj.kcv is None:
                raise BadRequest("this key has no key check value (its material is gone)")
            return obj.kid, obj.kcv

        return await self._audited(event, action)
