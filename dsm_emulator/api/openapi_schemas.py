"""The schemas of the DSM's OpenAPI document (dsm_emulator.api.openapi): the Fortanix shapes xkslab
serves, and the building blocks its paths reuse."""

from __future__ import annotations

from dsm_emulator.api.openapi_users import USER_SCHEMA
from xkslab_shared.openapi import Schema, array, nullable, obj, ref, string

ANY_OBJECT: Schema = {"type": "object"}
BLOB = string(contentEncoding="base64")
KEY_OPS = array(string())
MODE = string()
CRYPT_FIELDS: dict[str, Schema] = {
    "alg": string(),
    "mode": MODE,
    "iv": BLOB,
    "ad": BLOB,
    "tag_len": {"type": "integer"},
}
HASH_ALG = {"enum": ["SHA1", "SHA256", "SHA384", "SHA512"]}
DESCRIPTOR = obj(kid=string(), name=string(), transient_key=string())
# Exactly one of hash (with hash_alg) and data (the message; an Ed25519 key signs it as it is).
SIGN_FIELDS: dict[str, Schema] = {
    "key": DESCRIPTOR, "hash_alg": HASH_ALG, "hash": BLOB, "data": BLOB, "mode": ANY_OBJECT
}  # fmt: skip
CUSTODIAN = obj(["user"], user=string())
COMPONENT = obj(["component", "custodian"], component=BLOB, component_kcv=string(), custodian=CUSTODIAN)
COMPONENTS_EXPORT = obj(
    ["key", "custodians"], key=DESCRIPTOR, custodians=array(CUSTODIAN), method=string(), description=string()
)
COMPONENTS_ANSWER = obj(
    ["components", "key_kcv"], components=array(COMPONENT), key_kcv=BLOB, description=string()
)
COMPONENTS_IMPORT = obj(
    ["key", "custodians", "components"],
    key=ref("KeyRequest"),
    custodians=array(CUSTODIAN),
    components=array(COMPONENT),
    method=string(),
    description=string(),
)
# The new key of a DeriveKeyRequest or AgreeKeyRequest (its type is key_type, not obj_type).
NEW_KEY_FIELDS: dict[str, Schema] = {
    "name": string(1, 4096),
    "group_id": string(),
    "key_type": {"enum": ["AES", "DES", "DES3", "HMAC", "SECRET"]},
    "key_size": {"type": "integer"},
    "enabled": {"type": "boolean"},
    "description": string(),
    "key_ops": KEY_OPS,
    "custom_metadata": {"type": "object", "additionalProperties": string()},
    "transient": {"type": "boolean"},
    "state": string(),
    "activation_date": string(),
    "deactivation_date": string(),
}
DERIVE_MECHANISM: Schema = {
    **obj(
        encrypt_data=obj(["alg", "mode", "plain"], plain=BLOB, **CRYPT_FIELDS),
        hkdf=obj(["hash_alg"], hash_alg=string(), salt=BLOB, info=BLOB),
    ),
    "minProperties": 1,
    "maxProperties": 1,
}
SCHEMAS: dict[str, Schema] = {
    "Error": obj(["message"], message=string()),
    "KeyObject": obj(
        ["name", "obj_type", "key_ops", "enabled", "state"],
        kid=string(),
        name=string(),
        acct_id=string(),
        group_id=string(),
        obj_type=string(),
        key_size=nullable({"type": "integer"}),
        key_ops=KEY_OPS,
        enabled={"type": "boolean"},
        state=string(),
        origin=string(),
        creator=ANY_OBJECT,
        custom_metadata=ANY_OBJECT,
        value=BLOB,
        transient_key=string(),
        history=array(ANY_OBJECT),
        pub_key=BLOB,
        elliptic_curve=string(),
        public_only={"type": "boolean"},
        kcv=nullable(string()),
    ),
    "KeyRequest": obj(
        name=string(1, 4096),
        obj_type=string(),
        key_size={"type": "integer"},
        key_ops=KEY_OPS,
        group_id=string(),
        description=string(),
        enabled={"type": "boolean"},
        transient={"type": "boolean"},
        value=BLOB,
        custom_metadata={"type": "object", "additionalProperties": string()},
        elliptic_curve={"enum": ["NistP256", "NistP384", "NistP521", "SecP256K1", "Ed25519"]},
        pub_exponent={"type": "integer"},
        rsa=obj(key_size={"type": "integer"}, public_exponent={"type": "integer"}),
    ),
    "DeriveRequest": obj(
        ["name", "key_type", "key_size", "mechanism"],
        key=DESCRIPTOR,
        mechanism=DERIVE_MECHANISM,
        **NEW_KEY_FIELDS,
    ),
    "AgreeRequest": obj(
        ["private_key", "public_key", "mechanism", "name", "key_type", "key_size"],
        private_key=DESCRIPTOR,
        public_key=DESCRIPTOR,
        mechanism={"enum": ["diffie_hellman"]},
        **NEW_KEY_FIELDS,
    ),
    "KcvResponse": obj(["kcv"], kid=string(), kcv=BLOB),
    "VerifyKcvRequest": obj(
        ["kcv", "value", "obj_type"], kcv=string(), value=BLOB, obj_type={"enum": ["AES", "DES", "DES3"]}
    ),
    "SignRequest": obj(**SIGN_FIELDS),
    "SignResponse": obj(["signature"], kid=string(), signature=BLOB),
    "VerifyRequest": obj(["signature"], signature=BLOB, **SIGN_FIELDS),
    "VerifyResponse": obj(["result"], kid=string(), result={"type": "boolean"}),
    "Group": obj(["group_id", "name"], group_id=string(), name=string(), acct_id=string()),
    "App": obj(["app_id", "name"], app_id=string(), name=string(), acct_id=string(), groups=ANY_OBJECT),
    "Token": obj(
        ["token_type", "access_token"],
        token_type=string(),
        expires_in={"type": "integer"},
        access_token=string(),
        entity_id=string(),
    ),
    "CryptRequest": obj(key=DESCRIPTOR, plain=BLOB, cipher=BLOB, **CRYPT_FIELDS),
    "CryptResponse": obj(kid=string(), cipher=BLOB, plain=BLOB, iv=BLOB, tag=BLOB),
    # Multipart (CBC, CBCNOPAD, CTR, CFB, OFB, GCM): ``state`` is sealed, opaque, good for one next step
    # of one caller.
    "MultipartRequest": obj(
        key=DESCRIPTOR,
        alg=string(),
        mode=MODE,
        iv=BLOB,
        ad=BLOB,
        plain=BLOB,
        cipher=BLOB,
        state=BLOB,
        tag_len={"type": "integer"},
        tag=BLOB,
    ),
    "MultipartResponse": obj(kid=string(), iv=BLOB, plain=BLOB, cipher=BLOB, state=BLOB, tag=BLOB),
    "WrapRequest": obj(key=DESCRIPTOR, subject=DESCRIPTOR, kid=string(), wrapped_key=BLOB, **CRYPT_FIELDS),
    "DigestRequest": obj(["alg", "data"], alg=string(), data=BLOB),
    "DigestResponse": obj(["digest"], digest=BLOB),
    "MacRequest": obj(["data"], key=DESCRIPTOR, alg=string(), data=BLOB, mac=BLOB, digest=BLOB),
    "MacResponse": obj(["kid", "mac"], kid=string(), mac=BLOB, digest=BLOB),
    "MacVerifyResponse": obj(["kid", "result"], kid=string(), result={"type": "boolean"}),
    "Account": obj(
        ["acct_id"], acct_id=string(), name=string(), description=nullable(string()), state=string()
    ),
    "User": USER_SCHEMA,
    "ApprovalRequest": obj(
        ["request_id", "status", "method", "operation"],
        request_id=string(),
        requester=ANY_OBJECT,
        acct_id=string(),
        method=string(),
        operation=string(),
        body={},
        description=string(),
        status={"enum": ["PENDING", "APPROVED", "DENIED", "FAILED"]},
        approvers=array(ANY_OBJECT),
        denier=ANY_OBJECT,
        reviewers=array(ANY_OBJECT),
        subjects=array(ANY_OBJECT),
        created_at=string(),
        expiry=string(),
        result_viewed={"type": "boolean"},
    ),
}
