"""The OpenAPI 3.1 document of the DSM REST API: the subset of Fortanix DSM's paths and shapes xkslab
serves, the internal XKS endpoints its proxies call, and GET /metrics and /openapi.json. Members not
listed are accepted (and ignored) as Fortanix does; tests/unit/test_openapi_routes.py keeps the document
and the router equal."""

from __future__ import annotations

from typing import Any

from dsm_emulator.api.not_emulated import NOT_EMULATED, NotEmulated
from dsm_emulator.api.openapi_schemas import (
    ANY_OBJECT,
    COMPONENTS_ANSWER,
    COMPONENTS_EXPORT,
    COMPONENTS_IMPORT,
    DESCRIPTOR,
    KEY_OPS,
    SCHEMAS,
)
from dsm_emulator.api.openapi_users import user_paths
from dsm_emulator.console.openapi import console_paths
from xkslab_shared.openapi import Schema, array, content, document, health_path, obj, ref, string

JSON_ERROR = {
    "description": '`{"message"}`: 400, 401, 403, 404, 409, 413, 415, 429 …',
    "content": content(ref("Error")),
}
NO_CONTENT = {"204": {"description": "done"}}


def op(
    name: str,
    response: Schema | None,
    request: Schema | None = None,
    status: str = "200",
    *,
    public: bool = False,
    query: dict[str, Schema] | None = None,
    summary: str = "",
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": name, "summary": summary or name}
    if not public:
        operation["security"] = [{"bearer": []}, {"basic": []}]
    else:
        operation["security"] = []
    if query:
        operation["parameters"] = [
            {"name": key, "in": "query", "required": False, "schema": schema} for key, schema in query.items()
        ]
    if request is not None:
        operation["requestBody"] = {"required": True, "content": content(request)}
    responses: dict[str, Any] = (
        {status: {"description": name, "content": content(response)}} if response is not None else NO_CONTENT
    )
    operation["responses"] = {**responses, "default": JSON_ERROR}
    return operation


KEY = ref("KeyObject")
KEYS_QUERY = {
    "name": string(),
    "group_id": string(),
    "obj_type": string(),
    "limit": {"type": "integer", "minimum": 0},
    "offset": {"type": "integer", "minimum": 0},
    "sort": string(),
    "start": string(),
    "show_destroyed": {"type": "boolean"},
    "show_deleted": {"type": "boolean"},
}
LOGS_QUERY = {
    "size": {"type": "integer", "minimum": 1, "maximum": 1000},
    "from": {"type": "integer", "minimum": 0},
    "previous_id": string(),
    "range_from": {"type": "integer", "minimum": 0},
    "range_to": {"type": "integer", "minimum": 0},
    "action_type": string(),
    "actor_type": string(),
    "actor_id": string(),
    "object_id": string(),
    "severity": string(),
}
UNDO_POLICY = obj(
    ["undo_time_window"], undo_time_window={"type": "integer", "minimum": 604800, "maximum": 15552000}
)
# The GroupRequest fields the lab enforces; any other non-null field is refused with a 400 naming it.
GROUP_BODY = obj(
    name=string(1, 4096),
    description=string(),
    acct_id=string(),
    cryptographic_policy={"oneOf": [ANY_OBJECT, {"type": "string", "enum": ["remove"]}]},
    key_metadata_policy={"oneOf": [ANY_OBJECT, {"type": "string", "enum": ["remove"]}]},
    export_policy=ANY_OBJECT,
    approval_policy={"oneOf": [ANY_OBJECT, {"type": "string", "enum": ["remove"]}]},
    key_undo_policy=UNDO_POLICY,
    key_history_policy={"oneOf": [UNDO_POLICY, {"const": "remove"}]},
    custom_metadata={"type": "object", "additionalProperties": string()},
)
APPROVAL = ref("ApprovalRequest")
APPROVALS_QUERY = {"requester": string(), "reviewer": string(), "subject": string(), "status": string()}
APP_BODY = obj(
    name=string(1, 4096),
    description=string(),
    default_group=string(),
    add_groups={"oneOf": [array(string()), {"type": "object"}]},
    del_groups=array(string()),
    credential=ANY_OBJECT,
    enabled={"type": "boolean"},
)
BATCH = array(obj(kid=string(), request=ref("CryptRequest")))


def _paths() -> dict[str, dict[str, Any]]:
    keyed = "/crypto/v1/keys/{kid}"
    return {
        "/sys/v1/health": {"get": op("health", None, public=True, summary="204 while serving")},
        "/health": health_path(),
        "/sys/v1/nodes": {
            "get": op("listNodes", ANY_OBJECT, summary="xkslab: the fleet's nodes (administrators)")
        },
        "/sys/v1/version": {"get": op("version", obj(["version"], version=string()), public=True)},
        "/sys/v1/session/auth": {
            "post": {
                **op("authorize", ref("Token"), public=True, summary="Basic app_id:secret or email:password"),
                "security": [{"basic": []}],
            }
        },
        "/sys/v1/session/terminate": {"post": op("terminate", None)},
        "/sys/v1/session/refresh": {"post": op("refresh", None)},
        "/sys/v1/session/reauth": {"post": op("reauth", ref("Token"))},
        "/sys/v1/session/select_account": {
            "post": op("selectAccount", ANY_OBJECT, obj(["acct_id"], acct_id=string()))
        },
        "/sys/v1/users/accounts": {"get": op("userAccounts", ANY_OBJECT)},
        **user_paths(op),
        "/sys/v1/plugins": {"get": op("listPlugins", array(ANY_OBJECT))},
        "/sys/v1/groups": {
            "post": op("createGroup", ref("Group"), GROUP_BODY),
            "get": op("listGroups", array(ref("Group"))),
        },
        "/sys/v1/groups/{group_id}": {
            "get": op("getGroup", ref("Group")),
            "patch": op("updateGroup", ref("Group"), GROUP_BODY),
            "delete": op("deleteGroup", None),
        },
        "/sys/v1/apps": {
            "post": op("createApp", ref("App"), APP_BODY),
            "get": op("listApps", array(ref("App")), query={"group_id": string()}),
        },
        "/sys/v1/apps/{app_id}": {
            "get": op("getApp", ref("App")),
            "patch": op("updateApp", ref("App"), APP_BODY),
            "delete": op("deleteApp", None),
        },
        "/sys/v1/apps/{app_id}/credential": {"get": op("getAppCredential", ANY_OBJECT)},
        "/sys/v1/apps/{app_id}/reset_secret": {"post": op("resetAppSecret", ref("App"), ANY_OBJECT)},
        "/sys/v1/approval_requests": {
            "post": op(
                "createApprovalRequest",
                APPROVAL,
                obj(["operation"], method=string(), operation=string(), body={}, description=string()),
                "201",
            ),
            "get": op("listApprovalRequests", array(APPROVAL), query=APPROVALS_QUERY),
        },
        "/sys/v1/approval_requests/{request_id}": {
            "get": op("getApprovalRequest", APPROVAL),
            "delete": op("deleteApprovalRequest", None),
        },
        "/sys/v1/approval_requests/{request_id}/approve": {
            "post": op("approve", APPROVAL, obj(password=string()))
        },
        "/sys/v1/approval_requests/{request_id}/deny": {"post": op("deny", APPROVAL)},
        "/sys/v1/approval_requests/{request_id}/result": {
            "post": op(
                "approvalResult",
                obj(["status", "body"], status={"type": "integer"}, body={}),
                summary="runs the approved operation once, for its requester",
            )
        },
        "/sys/v1/logs": {"get": op("auditLogs", obj(["hits"], hits=array(ANY_OBJECT)), query=LOGS_QUERY)},
        "/crypto/v1/keys": {
            "post": op("generateKey", KEY, ref("KeyRequest"), "201"),
            "put": op("importKey", KEY, ref("KeyRequest"), "201"),
            "get": op("listKeys", array(KEY), query=KEYS_QUERY),
        },
        "/crypto/v1/keys/info": {"post": op("keyInfo", KEY, DESCRIPTOR)},
        "/crypto/v1/keys/export": {"post": op("exportKey", KEY, DESCRIPTOR)},
        "/crypto/v1/keys/rekey": {"post": op("rekey", KEY, ref("KeyRequest"))},
        "/crypto/v1/keys/persist": {
            "post": op(
                "persistKey",
                KEY,
                obj(
                    ["name", "transient_key"],
                    name=string(1, 4096),
                    transient_key=string(),
                    group_id=string(),
                    key_ops=KEY_OPS,
                    description=string(),
                    custom_metadata={"type": "object", "additionalProperties": string()},
                    enabled={"type": "boolean"},
                ),
                "201",
                summary="stores a transient key as a new object; key_ops at most the transient key's",
            )
        },
        "/crypto/v1/keys/components/export": {
            "post": op(
                "exportComponents",
                COMPONENTS_ANSWER,
                COMPONENTS_EXPORT,
                summary="only through an approval request; each custodian fetches their own component",
            )
        },
        "/crypto/v1/keys/components/import": {
            "post": op(
                "importComponents",
                KEY,
                COMPONENTS_IMPORT,
                "201",
                summary="only through an approval request approved by every custodian it names",
            )
        },
        keyed: {
            "get": op("getKey", KEY, query={"show_deleted": {"type": "boolean"}}),
            "patch": op("updateKey", KEY, ref("KeyRequest")),
            "delete": op("deleteKey", None),
        },
        f"{keyed}/export": {"get": op("exportKeyById", KEY)},
        f"{keyed}/activate": {"post": op("activateKey", None)},
        f"{keyed}/revoke": {"post": op("revokeKey", None, ANY_OBJECT)},
        f"{keyed}/destroy": {"post": op("destroyKey", None)},
        f"{keyed}/revert": {
            "put": op("revertKey", None, obj(["ids"], ids=array(string(), minItems=1, maxItems=1)))
        },
        f"{keyed}/encrypt": {"post": op("encryptWithKid", ref("CryptResponse"), ref("CryptRequest"))},
        f"{keyed}/decrypt": {"post": op("decryptWithKid", ref("CryptResponse"), ref("CryptRequest"))},
        f"{keyed}/wrapkey": {"post": op("wrapWithKid", ANY_OBJECT, ref("WrapRequest"))},
        f"{keyed}/unwrapkey": {"post": op("unwrapWithKid", KEY, ref("WrapRequest"))},
        "/crypto/v1/encrypt": {"post": op("encrypt", ref("CryptResponse"), ref("CryptRequest"))},
        "/crypto/v1/decrypt": {"post": op("decrypt", ref("CryptResponse"), ref("CryptRequest"))},
        "/crypto/v1/wrapkey": {"post": op("wrapKey", ANY_OBJECT, ref("WrapRequest"))},
        "/crypto/v1/unwrapkey": {"post": op("unwrapKey", KEY, ref("WrapRequest"))},
        "/crypto/v1/digest": {"post": op("digest", ref("DigestResponse"), ref("DigestRequest"))},
        f"{keyed}/mac": {"post": op("macWithKid", ref("MacResponse"), ref("MacRequest"))},
        f"{keyed}/macverify": {"post": op("macVerifyWithKid", ref("MacVerifyResponse"), ref("MacRequest"))},
        "/crypto/v1/mac": {"post": op("mac", ref("MacResponse"), ref("MacRequest"))},
        "/crypto/v1/macverify": {"post": op("macVerify", ref("MacVerifyResponse"), ref("MacRequest"))},
        "/crypto/v1/keys/batch/mac": {"post": op("batchMac", array(ANY_OBJECT), array(ref("MacRequest")))},
        "/crypto/v1/keys/batch/macverify": {
            "post": op("batchMacVerify", array(ANY_OBJECT), array(ref("MacRequest")))
        },
        "/crypto/v1/keys/batch/encrypt": {"post": op("batchEncrypt", array(ANY_OBJECT), BATCH)},
        "/crypto/v1/keys/batch/decrypt": {"post": op("batchDecrypt", array(ANY_OBJECT), BATCH)},
        **_multipart_paths(keyed),
        **_derive_paths(keyed),
        f"{keyed}/sign": {"post": op("signWithKid", ref("SignResponse"), ref("SignRequest"))},
        f"{keyed}/verify": {"post": op("verifyWithKid", ref("VerifyResponse"), ref("VerifyRequest"))},
        "/crypto/v1/sign": {"post": op("sign", ref("SignResponse"), ref("SignRequest"))},
        "/crypto/v1/verify": {"post": op("verify", ref("VerifyResponse"), ref("VerifyRequest"))},
        "/crypto/v1/keys/batch/sign": {"post": op("batchSign", array(ANY_OBJECT), array(ref("SignRequest")))},
        "/crypto/v1/keys/batch/verify": {
            "post": op("batchVerify", array(ANY_OBJECT), array(ref("VerifyRequest")))
        },
        "/internal/xks/v1/prefixes": {
            "get": {**op("xksPrefixes", ANY_OBJECT, summary="internal: for XKS proxies"), "x-internal": True}
        },
        "/internal/xks/v1/call": {
            "post": {
                **op(
                    "xksCall", ANY_OBJECT, ANY_OBJECT, summary="internal: one XKS call forwarded by a proxy"
                ),
                "x-internal": True,
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "security": [],
                "responses": {
                    "200": {"description": "Prometheus", "content": content(string(), "text/plain")}
                },
            }
        },
        "/openapi.json": {"get": op("openapi", ANY_OBJECT, public=True, summary="This document")},
        **console_paths(op),
    }


def _not_emulated(entry: NotEmulated) -> dict[str, Any]:
    operation = op(entry.operation, None, public=entry.public, summary=f"not emulated: {entry.feature}")
    operation["responses"] = {
        "501": {"description": entry.message, "content": content(ref("Error"))},
        "default": JSON_ERROR,
    }
    return operation


def _all_paths() -> dict[str, dict[str, Any]]:
    paths = _paths()
    for entry in NOT_EMULATED:
        paths.setdefault(entry.path, {})[entry.method.lower()] = _not_emulated(entry)
    return paths


def _derive_paths(keyed: str) -> dict[str, dict[str, Any]]:
    """Keys made from keys, and KCVs (dsm_emulator.api.derive)."""
    derive, agree = ref("DeriveRequest"), ref("AgreeRequest")
    return {
        f"{keyed}/derive": {"post": op("deriveKey", KEY, derive, summary="mechanism encrypt_data or hkdf")},
        "/crypto/v1/derive": {"post": op("deriveKeyEx", KEY, derive, summary="the base key in key")},
        "/crypto/v1/agree": {"post": op("agreeKey", KEY, agree, summary="ECDH of two EC keys")},
        "/crypto/v1/keys/kcv": {
            "post": op(
                "getSecurityObjectKcv", ref("KcvResponse"), DESCRIPTOR, summary="kcv: base64 of 3 bytes"
            )
        },
        "/crypto/v1/keys/kcv/verify": {
            "post": op("verifyKcv", obj(["verified"], verified={"type": "boolean"}), ref("VerifyKcvRequest"))
        },
    }


def _multipart_paths(keyed: str) -> dict[str, dict[str, Any]]:
    """Both URL styles of each step of multipart encrypt and decrypt (dsm_emulator.api.multipart)."""
    paths: dict[str, dict[str, Any]] = {}
    for direction in ("encrypt", "decrypt"):
        for step in ("init", "update", "final"):
            name = f"{direction}{step.title()}"
            answer, body = ref("MultipartResponse"), ref("MultipartRequest")
            paths[f"{keyed}/{direction}/{step}"] = {"post": op(f"{name}WithKid", answer, body)}
            paths[f"/crypto/v1/{direction}/{step}"] = {"post": op(name, answer, body)}
    return paths


def build() -> dict[str, Any]:
    components = {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token from /sys/v1/session/auth",
            },
            "basic": {"type": "http", "scheme": "basic", "description": "app_id:secret (the API key)"},
        },
    }
    return document(
        "xkslab DSM REST API (Fortanix DSM subset)",
        'The Fortanix DSM paths and shapes xkslab serves. Errors are `{"message"}`. `/internal/xks/v1/*` '
        "take the proxy token and are for XKS proxies only.",
        _all_paths(),
        components,
    )
