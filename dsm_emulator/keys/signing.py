"""Signatures with stored RSA and EC keys. They use material like encrypt and decrypt do (the row must
allow the operation: SIGN or VERIFY in the app's permissions and the key's key_ops, enabled, Active) and
answer only after their audit row is committed. A verify needs only the public key, which the row holds,
so it never unseals anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsm_emulator import asymmetric
from dsm_emulator.approvals.policy import CRYPTO
from dsm_emulator.authz import Principal
from dsm_emulator.errors import BadRequest
from dsm_emulator.keys.crypto_ops import CryptoMixin, run_crypto
from dsm_emulator.models import SecurityObject


def _require_asymmetric(obj: SecurityObject) -> bytes:
    if obj.obj_type not in asymmetric.ASYMMETRIC_TYPES or obj.pub_key is None:
        raise BadRequest(f"{obj.obj_type} objects cannot sign or verify (RSA and EC keys do)")
    return obj.pub_key


class SigningMixin(CryptoMixin):
    async def sign(
        self, p: Principal, kid: str, hash_alg: str, digest: bytes, mode: Mapping[str, Any] | None
    ) -> bytes:
        event = self._event(
            p, "crypto.sign", f"Signed a {hash_alg} hash with key {kid[:64]}", object_id=kid,
            action_type="CRYPTOOPERATION",
        )  # fmt: skip

        async def action(subject: list[SecurityObject]) -> bytes:
            obj = await self._usable(p, kid, "SIGN", "SIGN", subject)
            _require_asymmetric(obj)
            if obj.public_only:
                raise BadRequest(f"this {obj.obj_type} object holds only a public key: it cannot sign")
            await self._held(p, obj, CRYPTO)
            private = await self.material(obj)
            return run_crypto(lambda: asymmetric.sign(private, hash_alg, digest, mode))

        return await self._audited(event, action)

    async def verify(
        self,
        p: Principal,
        kid: str,
        hash_alg: str,
        digest: bytes,
        signature: bytes,
        mode: Mapping[str, Any] | None,
    ) -> bool:
        event = self._event(
            p, "crypto.verify", f"Verified a {hash_alg} signature with key {kid[:64]}", object_id=kid,
            action_type="CRYPTOOPERATION",
        )  # fmt: skip

        async def action(subject: list[SecurityObject]) -> bool:
            obj = await self._usable(p, kid, "VERIFY", "VERIFY", subject)
            pub_key = _require_asymmetric(obj)
            await self._held(p, obj, CRYPTO)
            return run_crypto(lambda: asymmetric.verify(pub_key, hash_alg, digest, signature, mode))

        return await self._audited(event, action)
