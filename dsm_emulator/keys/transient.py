"""Transient keys are the one kind of key that is never stored: material and metadata live only in a
token sealed by the keyring for the caller's account, and (as in Fortanix DSM without "Transient audit
logging") their use is not audit-logged. They are kept apart so that it stays plain that the token is the
whole of such a key's state and that nothing here writes to the database.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dsm_emulator import crypto, symmetric
from dsm_emulator.authz import Principal, require_permission
from dsm_emulator.errors import AccessDenied, BadRequest, InvalidState, Sealed
from dsm_emulator.keys.base import KeyServiceBase, KeySpec, now
from dsm_emulator.keys.crypto_ops import _require_aes_type, run_crypto
from dsm_emulator.keys.pairs import checked_ops

TRANSIENT_LIFETIME = timedelta(hours=24)
TRANSIENT_TYPES = ("AES", "HMAC", "SECRET")
INVALID_TRANSIENT = "invalid transient key"


def transient_context(acct_id: str) -> bytes:
    return b"transient|" + acct_id.encode()


@dataclass(frozen=True)
class TransientKey:
    """A key that lives only in its token (``transient_key``): the material and metadata sealed by the
    keyring under ``transient|<acct_id>``. Nothing of it is stored; it expires TRANSIENT_LIFETIME after
    it was made."""

    material: bytes
    obj_type: str
    key_size: int
    key_ops: frozenset[str]
    group_id: str
    acct_id: str
    name: str
    description: str | None
    custom_metadata: Mapping[str, str]
    enabled: bool
    creator_type: str
    creator_id: str
    created_at: datetime
    expiry: datetime
    state: str = "Active"

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "material": base64.b64encode(self.material).decode("ascii"),
                "obj_type": self.obj_type,
                "key_size": self.key_size,
                "key_ops": sorted(self.key_ops),
                "group_id": self.group_id,
                "acct_id": self.acct_id,
                "name": self.name,
                "description": self.description,
                "custom_metadata": dict(self.custom_metadata),
                "enabled": self.enabled,
                "creator_type": self.creator_type,
                "creator_id": self.creator_id,
                "created_at": int(self.created_at.timestamp()),
                "expiry": int(self.expiry.timestamp()),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> TransientKey:
        d = json.loads(blob)
        return cls(
            material=base64.b64decode(d["material"], validate=True),
            obj_type=str(d["obj_type"]),
            key_size=int(d["key_size"]),
            key_ops=frozenset(str(op) for op in d["key_ops"]),
            group_id=str(d["group_id"]),
            acct_id=str(d["acct_id"]),
            name=str(d["name"]),
            description=d["description"],
            custom_metadata={str(k): str(v) for k, v in d["custom_metadata"].items()},
            enabled=bool(d["enabled"]),
            creator_type=str(d["creator_type"]),
            creator_id=str(d["creator_id"]),
            created_at=datetime.fromtimestamp(int(d["created_at"]), UTC),
            expiry=datetime.fromtimestamp(int(d["expiry"]), UTC),
        )

    def view(self, token: str, *, value: bytes | None = None) -> dict[str, Any]:
        """A KeyObject like ``views.sobject_view`` but without a kid, origin Transient."""
        view: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "acct_id": self.acct_id,
            "group_id": self.group_id,
            "obj_type": self.obj_type,
            "key_size": self.key_size,
            "key_ops": sorted(self.key_ops),
            "enabled": self.enabled,
            "state": self.state,
            "origin": "Transient",
            "creator": {"app": self.creator_id} if self.creator_type == "app" else {"user": self.creator_id},
            "created_at": _compact(self.created_at),
            "lastused_at": "19700101T000000Z",
            "activation_date": _compact(self.created_at),
            "deactivation_date": None,
            "compromise_date": None,
            "destruction_date": None,
            "revocation_reason": None,
            "custom_metadata": dict(self.custom_metadata),
            "kcv": symmetric.kcv(self.obj_type, self.material),
            "links": {},
            "version": 1,
            "never_exportable": "EXPORT" not in self.key_ops,
            "public_only": False,
            "compliant_with_policies": True,
            "transient_key": token,
        }
        if value is not None:
            view["value"] = base64.b64encode(value).decode("ascii")
        return view


def _compact(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


class TransientMixin(KeyServiceBase):
    # ------------------------------------------------------------------------- transient keys
    #
    # Transient-key operations are NOT audit-logged: as in Fortanix DSM, where they are logged only when
    # the account setting "Transient audit logging" is enabled (which xkslab does not have). Nothing of a
    # transient key (material or metadata) is written to the database; it lives only in its token.

    async def create_transient(
        self, p: Principal, spec: KeySpec, material: bytes | None = None
    ) -> tuple[dict[str, Any], str]:
        """Generate an AES, HMAC or SECRET key that is not stored (or make one of ``material``, derived
        or agreed by the caller); returns (its view, its token). An app needs some permission in the
        target group; administrators always may."""
        size, ops = self._validate(spec, material, made_inside=True)
        if spec.obj_type not in TRANSIENT_TYPES:
            raise BadRequest(f"transient keys must be one of {', '.join(TRANSIENT_TYPES)}")
        async with self._sessions() as session:
            group_id = await self._resolve_group(session, p, spec.group_id)
            policies = await self._policies(session, group_id)
        if not p.is_admin and not p.group_permissions.get(group_id):
            raise AccessDenied("app has no permission in the group of this object")
        ops = checked_ops(policies, spec, size, ops)
        created = now()
        key = TransientKey(
            material=crypto.random_bytes(size // 8) if material is None else material,
            obj_type=spec.obj_type,
            key_size=size,
            key_ops=ops,
            group_id=group_id,
            acct_id=p.acct_id,
            name=spec.name,
            description=spec.description,
            custom_metadata=dict(spec.custom_metadata or {}),
            enabled=spec.enabled,
            creator_type=p.kind if p.kind != "system" else "user",
            creator_id=p.id or p.acct_id,
            created_at=created,
            expiry=created + TRANSIENT_LIFETIME,
        )
        sealed = self._keyring.seal(key.to_json(), transient_context(p.acct_id))
        token = base64.b64encode(sealed).decode("ascii")
        return key.view(token), token

    def open_transient(self, p: Principal, token: str) -> TransientKey:
        """The key a token holds. Any problem (not base64, not sealed by this keyring for this account,
        malformed, expired) is the same BadRequest, so the answer tells nothing about the token."""
        try:
            sealed = base64.b64decode(token, validate=True)
            # Sealed by this process under its own active term: no other process's term to load.
            key = TransientKey.from_json(self._keyring.open_loaded(sealed, transient_context(p.acct_id)))
        except (binascii.Error, ValueError, TypeError, KeyError, AttributeError, Sealed):
            raise BadRequest(INVALID_TRANSIENT) from None
        if key.acct_id != p.acct_id or key.expiry <= now():
            raise BadRequest(INVALID_TRANSIENT)
        return key

    def _usable_transient(self, p: Principal, token: str, permission: str, key_op: str) -> TransientKey:
        key = self.open_transient(p, token)
        if not p.is_admin and key.group_id not in p.group_permissions:
            raise AccessDenied("the object is in a group this app is not a member of")
        require_permission(p, permission, key.group_id)
        if key_op not in key.key_ops:
            raise InvalidState(f"operation {key_op} is not allowed by this key's key_ops")
        if not key.enabled:
            raise InvalidState("the key is disabled")
        return key

    def visible_transient(self, p: Principal, token: str) -> TransientKey:
        """The key a token holds, if it is in a group of the caller."""
        key = self.open_transient(p, token)
        if not p.is_admin and key.group_id not in p.group_permissions:
            raise AccessDenied("the object is in a group this app is not a member of")
        return key

    def transient_info(self, p: Principal, token: str) -> dict[str, Any]:
        return self.visible_transient(p, token).view(token)

    def encrypt_transient(
        self,
        p: Principal,
        token: str,
        mode: str,
        plain: bytes,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag_len_bits: int | None = None,
    ) -> crypto.Ciphertext:
        key = self._usable_transient(p, token, "ENCRYPT", "ENCRYPT")
        _require_aes_type(key.obj_type)
        return run_crypto(
            lambda: crypto.encrypt(mode, key.material, plain, iv=iv, aad=aad, tag_len_bits=tag_len_bits)
        )

    def decrypt_transient(
        self,
        p: Principal,
        token: str,
        mode: str,
        cipher: bytes,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag: bytes | None = None,
    ) -> bytes:
        key = self._usable_transient(p, token, "DECRYPT", "DECRYPT")
        _require_aes_type(key.obj_type)
        return run_crypto(lambda: crypto.decrypt(mode, key.material, cipher, iv=iv, aad=aad, tag=tag))

    async def export_transient(self, p: Principal, token: str) -> tuple[dict[str, Any], bytes]:
        key = self.visible_transient(p, token)
        require_permission(p, "EXPORT", key.group_id)
        if "EXPORT" not in key.key_ops:
            raise InvalidState("this key is not exportable (no EXPORT key operation)")
        async with self._sessions() as session:
            (await self._policies(session, key.group_id)).check_plain_export()
        return key.view(token, value=key.material), key.material
