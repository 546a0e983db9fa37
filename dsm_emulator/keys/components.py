"""Export and import of a key by components (Fortanix ``/crypto/v1/keys/components/{export,import}``): a
key split between a group's key custodians so that no one of them holds it.

The split is XOR, Fortanix's only ``SplittingMethod``: n-1 components are random and the last is the key
XOR all of them; each component has its own KCV (an AES key of the key's length, checked like one), and
the key has its KCV. Both operations run only through an approval request (a direct call is refused by
the quorum gate, as Fortanix refuses it), need the group's ``custodian_policy`` beside its
``approval_policy``, and name their custodians: users of the custodian policy, at least its ``n``. The
group's export, cryptographic and key-metadata policies still apply, and so do the EXPORT permission and
key operation. Components exist in the clear only in memory and in the answers to their custodians: they
are never logged, audited or stored unsealed.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsm_emulator import crypto
from dsm_emulator.approvals.gate import Touch
from dsm_emulator.approvals.policy import COMPONENTS, members_of
from dsm_emulator.authz import Principal, require_permission
from dsm_emulator.errors import BadRequest, InvalidState
from dsm_emulator.keys.base import KeyServiceBase, KeySpec
from dsm_emulator.models import Group, SecurityObject

# Fortanix exports AES, DES, DES3 and HMAC by components; a KCV is defined here only for AES.
COMPONENT_TYPES = frozenset({"AES"})


@dataclass(frozen=True)
class Component:
    custodian: str  # a user id
    value: bytes
    kcv: str | None = None  # upper-case hex, as the caller sent it (import) or as computed (export)


def xor_all(parts: Sequence[bytes]) -> bytes:
    out = bytearray(len(parts[0]))
    for part in parts:
        for i, byte in enumerate(part):
            out[i] ^= byte
    return bytes(out)


def split(key: bytes, count: int) -> list[bytes]:
    """``count`` components whose XOR is ``key``; any ``count - 1`` of them say nothing about it."""
    parts = [crypto.random_bytes(len(key)) for _ in range(count - 1)]
    parts.append(xor_all([key, *parts]))
    return parts


def same_kcv(expected: str, actual: str) -> bool:
    return hmac.compare_digest(expected.upper().encode(), actual.upper().encode())


def _custodian_rules(group: Group | None, custodians: Sequence[str], what: str) -> None:
    if group is None or group.custodian_policy is None:
        raise BadRequest(f"{what} by components needs a custodian_policy on the key's group")
    if group.approval_policy is None:
        raise BadRequest(f"{what} by components needs an approval_policy on the key's group")
    quorum: dict[str, Any] = group.custodian_policy["quorum"]
    allowed = {ident for _kind, ident in members_of(quorum)}
    if len(set(custodians)) != len(custodians):
        raise BadRequest("custodians: a custodian is named twice")
    for index, ident in enumerate(custodians):
        if ident not in allowed:
            raise BadRequest(f"custodians[{index}]: user {ident} is not a custodian of the group")
    if len(custodians) < quorum["n"]:
        raise BadRequest(f"custodians: the group's custodian_policy needs {quorum['n']} custodians")


class ComponentsMixin(KeyServiceBase):
    if TYPE_CHECKING:  # an import stores the joined key through the lifecycle (LifecycleMixin.create)

        async def create(self, p: Principal, spec: KeySpec, value: bytes | None = None) -> SecurityObject: ...

    async def export_components(
        self, p: Principal, custodians: Sequence[str], *, kid: str | None = None, name: str | None = None
    ) -> tuple[SecurityObject, list[Component], str]:
        """(the key, one component per custodian in their order, the key's KCV)."""
        event = self._event(
            p,
            "key.components.export",
            f"Exported key {kid or name} by components to {len(custodians)} custodians",
            object_id=kid,
        )

        async def action(subject: list[SecurityObject]) -> tuple[SecurityObject, list[Component], str]:
            async with self._sessions() as session:
                obj = await self._find(session, p, kid=kid, name=name)
                subject.append(obj)
                require_permission(p, "EXPORT", obj.group_id)
                if "EXPORT" not in obj.key_ops:
                    raise InvalidState("this key is not exportable (no EXPORT key operation)")
                if obj.obj_type not in COMPONENT_TYPES:
                    raise BadRequest(f"{obj.obj_type} objects are not exported by components in the lab")
                group = await session.get(Group, obj.group_id)
                _custodian_rules(group, custodians, "export")
                # Components are clear key material in the custodians' hands.
                (await self._policies(session, obj.group_id)).check_plain_export()
            await self._held(p, obj, COMPONENTS)
            material = await self.material(obj)
            parts = split(material, len(custodians))
            components = [
                Component(custodian, part, crypto.kcv(part))
                for custodian, part in zip(custodians, parts, strict=True)
            ]
            return obj, components, crypto.kcv(material)

        return await self._audited(event, action)

    async def import_components(
        self,
        p: Principal,
        spec: KeySpec,
        custodians: Sequence[str],
        components: Sequence[Component],
        key_kcv: str | None = None,
    ) -> SecurityObject:
        """Join ``components`` (one from each custodian, each checked by its KCV when it has one) and store
        the key as ``spec`` asks, under the group's policies."""
        event = self._event(
            p,
            "key.components.import",
            f"Imported key {spec.name} from {len(components)} components",
            group_ids=(spec.group_id,) if spec.group_id else (),
        )

        async def action(subject: list[SecurityObject]) -> SecurityObject:
            if spec.obj_type not in COMPONENT_TYPES:
                raise BadRequest(f"key.obj_type: {spec.obj_type} keys are not imported by components here")
            async with self._sessions() as session:
                group_id = await self._resolve_group(session, p, spec.group_id)
                _custodian_rules(await session.get(Group, group_id), custodians, "import")
            held = sorted(c.custodian for c in components)
            if held != sorted(custodians):
                raise BadRequest("components: exactly one component from each custodian named")
            if len({len(c.value) for c in components}) != 1:
                raise BadRequest("components: every component must be as long as the key")
            if len(components[0].value) * 8 not in crypto.AES_KEY_SIZES:
                raise BadRequest("components: an AES component is 16, 24 or 32 bytes")
            for index, component in enumerate(components):
                if component.kcv is not None and not same_kcv(component.kcv, crypto.kcv(component.value)):
                    raise BadRequest(f"components[{index}].component_kcv does not match its component")
            await self.gate.check(p, [Touch.group(group_id, COMPONENTS)])
            key = xor_all([c.value for c in components])
            if key_kcv is not None and not same_kcv(key_kcv, crypto.kcv(key)):
                raise BadRequest("key.kcv does not match the key the components make")
            obj = await self.create(p, _in_group(spec, group_id), value=key)
            subject.append(obj)
            return obj

        return await self._audited(event, action)


def _in_group(spec: KeySpec, group_id: str) -> KeySpec:
    return dataclasses.replace(spec, group_id=group_id)
