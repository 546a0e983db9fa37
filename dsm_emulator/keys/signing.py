"""Signatures with stored RSA and EC keys (ECDSA, and EdDSA for Ed25519), and verification with a
certificate's public key. They use material like encrypt and decrypt do (the row must allow the
operation: SIGN or VERIFY in the app's permissions and the key's key_ops, enabled, Active) and answer only
after their audit row is committed. A verify needs only the public key, which the row holds, so it never
unseals anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsm_emulator import asymmetric, certificates
from dsm_emulator.approvals.policy import CRYPTO
from dsm_emulator.authz import Principal
from dsm_emulator.errors import BadRequest
from dsm_emulator.keys.crypto_ops import CryptoMixin, run_crypto
from dsm_emulator.models import SecurityObject


def _require_asymmetric(obj: SecurityObject, *, verify: bool = False) -> bytes:
    types = asymmetric.ASYMMETRIC_TYPES + ((certificates.CERTIFICATE,) if verify else ())
    if obj.obj_type not in types or obj.pub_key is None:
        raise BadRequest(
            f"{obj.obj_type} objects cannot {'verify' if verify else 'sign'} (RSA and EC keys do"
            + (", and certificates verify)" if verify else ")")
        )
    return obj.pub_key


def _signed(message: asymmetric.Message) -> str:
    if message.data is None:
        return f"Signed a {(message.hash_alg or '')[:40]} hash"
    return f"Signed data ({(message.hash_alg or 'EdDSA')[:40]})"


def _verified(message: asymmetric.Message) -> str:
    algorithm = (message.hash_alg or "EdDSA")[:40]
    return f"Verified a {algorithm} signature" + (" of data" if message.data is not None else "")


class SigningMixin(CryptoMixin):
    async def sign(
        self, p: Principal, kid: str, message: asymmetric.Message, mode: Mapping[str, Any] | None
    ) -> bytes:
        event = self._event(
            p, "crypto.sign", f"{_signed(message)} with key {kid[:64]}", object_id=kid,
            action_type="CRYPTOOPERATION",
        )  # fmt: skip

        async def action(subject: list[SecurityObject]) -> bytes:
            obj = await self._usable(p, kid, "SIGN", "SIGN", subject)
            _require_asymmetric(obj)
            if obj.public_only:
                raise BadRequest(f"this {obj.obj_type} object holds only a public key: it cannot sign")
            await self._held(p, obj, CRYPTO)
            private = await self.material(obj)
            return run_crypto(lambda: asymmetric.sign(private, message, mode))

        return await self._audited(event, action)

    async def verify(
        self,
        p: Principal,
        kid: str,
        message: asymmetric.Message,
        signature: bytes,
        mode: Mapping[str, Any] | None,
    ) -> bool:
        event = self._event(
            p, "crypto.verify", f"{_verified(message)} with key {kid[:64]}", object_id=kid,
            action_type="CRYPTOOPERATION",
        )  # fmt: skip

        async def action(subject: list[SecurityObject]) -> bool:
            obj = await self._usable(p, kid, "VERIFY", "VERIFY", subject)
            pub_key = _require_asymmetric(obj, verify=True)
            await self._held(p, obj, CRYPTO)
            return run_crypto(lambda: asymmetric.verify(pub_key, message, signature, mode))

        return await self._audited(event, action)
