"""Group policies: Fortanix's ``cryptographic_policy``, ``key_metadata_policy`` and ``export_policy`` of a
group, parsed once when a group is created or updated and checked when a key in the group is created,
imported, updated, rotated, exported or wrapped -- never on an encrypt or decrypt, so the XKS path does
not pay for them.

Parsing is strict in both directions: a part of a policy the lab enforces is kept (in the shape Fortanix
gives it, so GET answers what was set), and a part it does not enforce is refused with a 400 that names it
("cryptographic_policy.aes.random_iv is not implemented by xkslab"). Nothing is accepted and dropped.
Nulls are absent, as everywhere in the DSM API (sdkms clients send them for unset fields).

Every refusal of a key is a BadRequest whose message names the group policy and the offending field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dsm_emulator.errors import BadRequest
from dsm_emulator.models import Group

# Fortanix's ObjectType and KeyOperations enums (2026 spec): a policy may name any of them.
FORTANIX_OBJECT_TYPES = frozenset(
    {
        "AES", "ARIA", "DES", "DES3", "SEED", "RSA", "DSA", "EC", "KCDSA", "ECKCDSA", "BIP32", "SLIP10",
        "BLS", "OPAQUE", "HMAC", "LEDABETA", "ROUND5BETA", "SECRET", "LMS", "XMSS", "MLDSA", "MLDSABETA",
        "MLKEM", "MLKEMBETA", "CERTIFICATE", "PBE",
    }
)  # fmt: skip
FORTANIX_KEY_OPS = frozenset(
    {
        "SIGN", "VERIFY", "ENCRYPT", "DECRYPT", "WRAPKEY", "UNWRAPKEY", "DERIVEKEY", "TRANSFORM",
        "MACGENERATE", "MACVERIFY", "EXPORT", "APPMANAGEABLE", "HIGHVOLUME", "AGREEKEY", "ENCAPSULATE",
        "DECAPSULATE",
    }
)  # fmt: skip

# CryptographicPolicy members naming object types, by the type they allow. The lab's own types have
# sub-fields it enforces; the others name types the lab cannot create at all, so allowing them is kept
# (it changes nothing) but any constraint inside them would be a constraint nobody checks: refused.
_TYPE_MEMBERS = {
    "aes": "AES", "hmac": "HMAC", "secret": "SECRET", "opaque": "OPAQUE", "aria": "ARIA", "des": "DES",
    "des3": "DES3", "seed": "SEED", "rsa": "RSA", "dsa": "DSA", "ec": "EC", "kcdsa": "KCDSA",
    "eckcdsa": "ECKCDSA", "bip32": "BIP32", "slip10": "SLIP10", "bls": "BLS", "lms": "LMS", "xmss": "XMSS",
    "mldsa": "MLDSA", "mlkem": "MLKEM", "certificate": "CERTIFICATE",
}  # fmt: skip
_ENFORCED_TYPE_FIELDS: Mapping[str, frozenset[str]] = {
    "aes": frozenset({"key_sizes"}),
    "des3": frozenset({"key_sizes"}),
    "des": frozenset(),
    "hmac": frozenset({"minimum_key_length"}),
    "secret": frozenset(),
    "opaque": frozenset(),
    "rsa": frozenset({"minimum_key_length"}),
    "ec": frozenset({"elliptic_curves"}),
}
# Sub-fields Fortanix defines for the lab's types that the lab does not check (they concern each
# encryption's parameters, not the key): named in the refusal rather than called unknown.
_KNOWN_UNENFORCED = {
    "aes": frozenset({"random_iv", "fpe"}),
    "rsa": frozenset({"encryption_policy", "signature_policy"}),
}
# Fortanix EllipticCurve names a policy may list.
_CURVE_NAMES = frozenset(
    {"SecP192K1", "SecP224K1", "SecP256K1", "NistP192", "NistP224", "NistP256", "NistP384", "NistP521",
     "Gost256A", "Ed25519", "X25519", "X448"}
)  # fmt: skip

REMOVE = "remove"


def not_implemented(path: str, why: str = "") -> BadRequest:
    return BadRequest(f"{path} is not implemented by xkslab{f' ({why})' if why else ''}")


def _present(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{path} must be a JSON object")
    return _present(value)


def _only(body: Mapping[str, Any], path: str, allowed: frozenset[str] | set[str]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"{path}.{unknown[0]} is not a field of {path}")


def _int_list(value: Any, path: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise BadRequest(f"{path} must be a list of positive integers")
    return sorted(set(value))


def _str_list(value: Any, path: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{path} must be a list of strings")
    return list(dict.fromkeys(value))


def _legacy(value: Any, path: str) -> str:
    # What happens to keys that were in the group before the policy: "allowed" keeps them usable, which is
    # what the lab does (the policy is checked when keys are made or changed). "prohibited" and
    # "unprotect_only" would need a check on every crypto call, the XKS path included.
    if value == "allowed":
        return "allowed"
    if value in ("prohibited", "unprotect_only"):
        raise not_implemented(f"{path} {value!r}", "existing keys stay usable: only 'allowed'")
    raise BadRequest(f"{path} must be one of allowed, prohibited, unprotect_only")


# ------------------------------------------------------------------------------------- parsing


def parse_cryptographic_policy(value: Any, path: str = "cryptographic_policy") -> dict[str, Any] | None:
    """A CryptographicPolicy as stored, or None for ``"remove"``."""
    if value == REMOVE:
        return None
    body = _object(value, path)
    _only(body, path, set(_TYPE_MEMBERS) | {"key_ops", "legacy_policy"})
    policy: dict[str, Any] = {}
    for member in _TYPE_MEMBERS:
        if member not in body:
            continue
        options = _object(body[member], f"{path}.{member}")
        enforced = _ENFORCED_TYPE_FIELDS.get(member, frozenset())
        for name in sorted(options):
            if name not in enforced:
                if member not in _ENFORCED_TYPE_FIELDS:
                    raise not_implemented(
                        f"{path}.{member}.{name}", f"xkslab has no {_TYPE_MEMBERS[member]} keys"
                    )
                if name in _KNOWN_UNENFORCED.get(member, frozenset()):
                    raise not_implemented(f"{path}.{member}.{name}")
                raise BadRequest(f"{path}.{member}.{name} is not a field of {path}.{member}")
        kept: dict[str, Any] = {}
        if "key_sizes" in options:
            kept["key_sizes"] = _int_list(options["key_sizes"], f"{path}.{member}.key_sizes")
        if "minimum_key_length" in options:
            minimum = options["minimum_key_length"]
            if not isinstance(minimum, int) or isinstance(minimum, bool) or minimum < 0:
                raise BadRequest(f"{path}.{member}.minimum_key_length must be a non-negative integer")
            kept["minimum_key_length"] = minimum
        if "elliptic_curves" in options:
            curves = _str_list(options["elliptic_curves"], f"{path}.{member}.elliptic_curves")
            unknown_curves = sorted(set(curves) - _CURVE_NAMES)
            if unknown_curves:
                raise BadRequest(f"{path}.{member}.elliptic_curves: unknown curve {unknown_curves[0][:40]}")
            kept["elliptic_curves"] = curves
        policy[member] = kept
    if "key_ops" in body:
        ops = _str_list(body["key_ops"], f"{path}.key_ops")
        unknown = sorted(set(ops) - FORTANIX_KEY_OPS)
        if unknown:
            raise BadRequest(f"{path}.key_ops: unknown key operation {unknown[0][:40]}")
        policy["key_ops"] = sorted(ops)
    if "legacy_policy" in body:
        policy["legacy_policy"] = _legacy(body["legacy_policy"], f"{path}.legacy_policy")
    return policy


def _required(value: Any, path: str) -> dict[str, Any] | None:
    """The ``required`` body of a ``{"forbidden": {}}`` or ``{"required": {...}}`` constraint; None when
    it forbids."""
    body = _object(value, path)
    if len(body) != 1 or next(iter(body)) not in ("forbidden", "required"):
        raise BadRequest(f'{path} must be {{"forbidden": {{}}}} or {{"required": {{...}}}}')
    if "forbidden" in body:
        _only(_object(body["forbidden"], f"{path}.forbidden"), f"{path}.forbidden", set())
        return None
    return _object(body["required"], f"{path}.required")


def _string_constraint(value: Any, path: str) -> dict[str, Any]:
    required = _required(value, path)
    if required is None:
        return {"forbidden": {}}
    _only(required, f"{path}.required", {"non_empty_after_trim", "allowed_values"})
    kept: dict[str, Any] = {}
    if "non_empty_after_trim" in required:
        if not isinstance(required["non_empty_after_trim"], bool):
            raise BadRequest(f"{path}.required.non_empty_after_trim must be true or false")
        kept["non_empty_after_trim"] = required["non_empty_after_trim"]
    if "allowed_values" in required:
        kept["allowed_values"] = _str_list(required["allowed_values"], f"{path}.required.allowed_values")
    return {"required": kept}


def _duration_constraint(value: Any, path: str) -> dict[str, Any]:
    required = _required(value, path)
    if required is None:
        return {"forbidden": {}}
    if "allowed_values" in required:
        # Fortanix documents no reference point for the durations (creation? activation?): not guessed.
        raise not_implemented(f"{path}.required.allowed_values", "a date may be required or forbidden")
    _only(required, f"{path}.required", set())
    return {"required": {}}


def _metadata_item(value: Any, path: str) -> dict[str, Any]:
    body = _object(value, path)
    _only(body, path, {"custom_metadata", "description", "activation_date", "deactivation_date"})
    item: dict[str, Any] = {"custom_metadata": {}}
    for name, constraint in _object(body.get("custom_metadata", {}), f"{path}.custom_metadata").items():
        item["custom_metadata"][name] = _string_constraint(constraint, f"{path}.custom_metadata.{name}")
    if "description" in body:
        item["description"] = _string_constraint(body["description"], f"{path}.description")
    for name in ("activation_date", "deactivation_date"):
        if name in body:
            item[name] = _duration_constraint(body[name], f"{path}.{name}")
    return item


def parse_key_metadata_policy(value: Any, path: str = "key_metadata_policy") -> dict[str, Any] | None:
    """A KeyMetadataPolicy as stored, or None for ``"remove"``."""
    if value == REMOVE:
        return None
    body = _object(value, path)
    _only(body, path, {"base", "for_obj_type", "legacy_objects"})
    policy: dict[str, Any] = {
        "base": _metadata_item(body.get("base", {}), f"{path}.base"),
        "for_obj_type": {},
    }
    for obj_type, item in _object(body.get("for_obj_type", {}), f"{path}.for_obj_type").items():
        if obj_type not in FORTANIX_OBJECT_TYPES:
            raise BadRequest(f"{path}.for_obj_type: unknown object type {obj_type[:40]}")
        policy["for_obj_type"][obj_type] = _metadata_item(item, f"{path}.for_obj_type.{obj_type}")
    policy["legacy_objects"] = _legacy(body.get("legacy_objects", "allowed"), f"{path}.legacy_objects")
    return policy


def parse_export_policy(value: Any, path: str = "export_policy") -> dict[str, Any] | None:
    """An ExportPolicy as stored; ``Unrestricted`` is stored as None (the same as no policy)."""
    body = _object(value, path)
    kind = body.get("$type")
    if kind == "Unrestricted":
        _only(body, path, {"$type"})
        return None
    if kind != "Wrapped":
        raise BadRequest(f'{path}.$type must be "Unrestricted" or "Wrapped"')
    _only(body, path, {"$type", "by"})
    by = _object(body.get("by"), f"{path}.by")
    if by.get("$type") == "Any":
        _only(by, f"{path}.by", {"$type"})
        return {"$type": "Wrapped", "by": {"$type": "Any"}}
    if by.get("$type") != "Only":
        raise BadRequest(f'{path}.by.$type must be "Any" or "Only"')
    _only(by, f"{path}.by", {"$type", "keys"})
    keys = by.get("keys")
    if not isinstance(keys, list) or not keys:
        raise BadRequest(f"{path}.by.keys must be a non-empty list of {{kid}} or {{name}}")
    descriptors: list[dict[str, str]] = []
    for i, key in enumerate(keys):
        descriptor = _object(key, f"{path}.by.keys[{i}]")
        if len(descriptor) != 1 or next(iter(descriptor)) not in ("kid", "name"):
            raise BadRequest(f'{path}.by.keys[{i}] must be {{"kid": ...}} or {{"name": ...}}')
        (field, ident), *_ = descriptor.items()
        if not isinstance(ident, str) or not ident:
            raise BadRequest(f"{path}.by.keys[{i}].{field} must be a non-empty string")
        descriptors.append({field: ident})
    return {"$type": "Wrapped", "by": {"$type": "Only", "keys": descriptors}}


# -------------------------------------------------------------------------------- enforcement


@dataclass(frozen=True)
class KeyFacts:
    """What the policies look at in a key as it would be after the request."""

    obj_type: str
    key_size: int | None
    key_ops: frozenset[str]
    description: str | None
    custom_metadata: Mapping[str, str]
    activation_date: datetime | None  # as the caller gave it (a date the lab fills in does not count)
    deactivation_date: datetime | None
    # The dates the request could set: an update cannot set an activation date, so it is not judged there.
    judged_dates: frozenset[str] = frozenset({"activation_date", "deactivation_date"})
    elliptic_curve: str | None = None  # EC keys


@dataclass(frozen=True)
class GroupPolicies:
    """The policies of one group, as stored in its row."""

    cryptographic: Mapping[str, Any] | None = None
    key_metadata: Mapping[str, Any] | None = None
    export: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, group: Group | None) -> GroupPolicies:
        if group is None:
            return cls()
        return cls(group.cryptographic_policy, group.key_metadata_policy, group.export_policy)

    def default_key_ops(self, defaults: frozenset[str]) -> frozenset[str]:
        """A key created without key_ops gets its type's defaults, narrowed to what the policy allows."""
        allowed = (self.cryptographic or {}).get("key_ops")
        return defaults if allowed is None else defaults & frozenset(allowed)

    def check_key(self, facts: KeyFacts) -> None:
        self._check_cryptographic(facts)
        self._check_metadata(facts)

    def _check_cryptographic(self, facts: KeyFacts) -> None:
        policy = self.cryptographic
        if policy is None:
            return
        member = facts.obj_type.lower()
        if member not in policy:
            raise BadRequest(f"the group's cryptographic_policy does not allow {facts.obj_type} objects")
        options = policy[member]
        sizes = options.get("key_sizes")
        if sizes is not None and facts.key_size not in sizes:
            allowed = ", ".join(str(s) for s in sizes) or "none"
            raise BadRequest(
                f"the group's cryptographic_policy allows {facts.obj_type} key sizes {allowed}, "
                f"not {facts.key_size}"
            )
        minimum = options.get("minimum_key_length")
        if minimum is not None and (facts.key_size or 0) < minimum:
            raise BadRequest(
                f"the group's cryptographic_policy requires {facts.obj_type} keys of at least {minimum} "
                f"bits, not {facts.key_size}"
            )
        curves = options.get("elliptic_curves")
        if curves is not None and facts.elliptic_curve not in curves:
            raise BadRequest(
                f"the group's cryptographic_policy allows the elliptic curves {', '.join(curves) or 'none'}, "
                f"not {facts.elliptic_curve}"
            )
        allowed_ops = policy.get("key_ops")
        if allowed_ops is not None:
            extra = sorted(facts.key_ops - frozenset(allowed_ops))
            if extra:
                raise BadRequest(
                    f"the group's cryptographic_policy does not allow the key operations {', '.join(extra)}"
                )

    def _check_metadata(self, facts: KeyFacts) -> None:
        policy = self.key_metadata
        if policy is None:
            return
        item = policy["for_obj_type"].get(facts.obj_type, policy["base"])
        where = "key_metadata_policy"
        for name, constraint in item["custom_metadata"].items():
            _check_string(constraint, facts.custom_metadata.get(name), f"custom_metadata {name!r}", where)
        if "description" in item:
            _check_string(item["description"], facts.description or None, "description", where)
        for name, given in (
            ("activation_date", facts.activation_date),
            ("deactivation_date", facts.deactivation_date),
        ):
            constraint = item.get(name)
            if constraint is None or name not in facts.judged_dates:
                continue
            if "forbidden" in constraint and given is not None:
                raise BadRequest(f"the group's {where} forbids {name}")
            if "required" in constraint and given is None:
                raise BadRequest(f"the group's {where} requires {name}")

    def check_plain_export(self) -> None:
        if self.export is not None:
            raise BadRequest("the group's export_policy allows keys to leave the group only wrapped")

    def check_wrap(self, wrapping_kid: str, wrapping_name: str) -> None:
        if self.export is None or self.export["by"]["$type"] == "Any":
            return
        for descriptor in self.export["by"]["keys"]:
            if descriptor.get("kid") == wrapping_kid or descriptor.get("name") == wrapping_name:
                return
        raise BadRequest("the group's export_policy does not allow wrapping its keys with this key")


def _check_string(constraint: Mapping[str, Any], value: str | None, what: str, where: str) -> None:
    if "forbidden" in constraint:
        if value is not None:
            raise BadRequest(f"the group's {where} forbids {what}")
        return
    rules = constraint["required"]
    if value is None:
        raise BadRequest(f"the group's {where} requires {what}")
    if rules.get("non_empty_after_trim") and not value.strip():
        raise BadRequest(f"the group's {where} requires {what} to be non-empty")
    allowed = rules.get("allowed_values")
    if allowed and value not in allowed:
        raise BadRequest(f"the group's {where} does not allow this value of {what}")
