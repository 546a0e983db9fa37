"""The OpenAPI 3.1 document of the KMS emulator: AWS JSON 1.1 on ``POST /``, one documented operation per
``X-Amz-Target`` at the pseudo-path ``/#X-Amz-Target=TrentService.<Op>`` (the fragment is never sent, so
every operation reaches ``POST /``; the header parameter names the operation). Plus GET /metrics and
GET /openapi.json. ``tests/unit/test_openapi_routes.py`` checks it against OPERATIONS and the router."""

from __future__ import annotations

from typing import Any

from xkslab_shared.openapi import Schema, array, content, document, health_path, obj, ref, string

MEDIA = "application/x-amz-json-1.1"
TARGET = "TrentService."

KEY_ID = string(1, 2048)
STORE_ID = string(1, 64)
BLOB = string(contentEncoding="base64")
CONTEXT: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
LIMIT = {"type": "integer", "minimum": 1, "maximum": 1000}
MARKER = string(1, 1024)
TAGS = array(obj(["TagKey", "TagValue"], TagKey=string(1, 128), TagValue=string(0, 256)))
XKS_CREDENTIAL = obj(
    ["AccessKeyId", "RawSecretAccessKey"], AccessKeyId=string(20, 30), RawSecretAccessKey=string(43, 64)
)
CONNECTIVITY = {"type": "string", "enum": ["PUBLIC_ENDPOINT", "VPC_ENDPOINT_SERVICE"]}
DATA_KEY_SPEC = {"type": "string", "enum": ["AES_256", "AES_128"]}
EMPTY = obj()
PAGED = {"Truncated": {"type": "boolean"}, "NextMarker": string()}
BOOLEAN = {"type": "boolean"}
POLICY = string(1, 131072)
POLICY_NAME = string(1, 128, pattern="^[\\w]+$")
PRINCIPAL = string(1, 256)
SERVICE_PRINCIPAL = string(1, 128)
GRANT_ID = string(1, 128)
GRANT_TOKEN = string(1, 8192)
GRANT_CONSTRAINTS = obj(
    EncryptionContextSubset=CONTEXT, EncryptionContextEquals=CONTEXT, SourceArn=string(20, 512)
)

STORE_SETTINGS: dict[str, Schema] = {
    "XksProxyUriEndpoint": string(1, 128),
    "XksProxyUriPath": string(10, 128),
    "XksProxyVpcEndpointServiceName": string(20, 64),
    "XksProxyVpcEndpointServiceOwner": string(12, 12, pattern="^[0-9]{12}$"),
    "XksProxyAuthenticationCredential": XKS_CREDENTIAL,
    "XksProxyConnectivity": CONNECTIVITY,
}

# Operation -> (request schema, response schema). Members not listed are accepted and ignored.
OPERATION_SHAPES: dict[str, tuple[Schema, Schema]] = {
    "CreateCustomKeyStore": (
        obj(
            ["CustomKeyStoreName"],
            CustomKeyStoreName=string(1, 256),
            CustomKeyStoreType={"type": "string", "enum": ["AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"]},
            **STORE_SETTINGS,
        ),
        obj(["CustomKeyStoreId"], CustomKeyStoreId=string()),
    ),
    "DescribeCustomKeyStores": (
        obj(CustomKeyStoreId=STORE_ID, CustomKeyStoreName=string(1, 256), Limit=LIMIT, Marker=MARKER),
        obj(["CustomKeyStores"], CustomKeyStores=array(ref("CustomKeyStore")), **PAGED),
    ),
    "UpdateCustomKeyStore": (
        obj(
            ["CustomKeyStoreId"],
            CustomKeyStoreId=STORE_ID,
            NewCustomKeyStoreName=string(1, 256),
            **STORE_SETTINGS,
        ),
        EMPTY,
    ),
    "DeleteCustomKeyStore": (obj(["CustomKeyStoreId"], CustomKeyStoreId=STORE_ID), EMPTY),
    "ConnectCustomKeyStore": (obj(["CustomKeyStoreId"], CustomKeyStoreId=STORE_ID), EMPTY),
    "DisconnectCustomKeyStore": (obj(["CustomKeyStoreId"], CustomKeyStoreId=STORE_ID), EMPTY),
    "CreateKey": (
        obj(
            Description=string(0, 8192),
            KeyUsage=string(),
            KeySpec=string(),
            Origin={"type": "string", "enum": ["AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"]},
            CustomKeyStoreId=STORE_ID,
            XksKeyId=string(1, 128, pattern="^[a-zA-Z0-9-_.]+$"),
            Policy=POLICY,
            BypassPolicyLockoutSafetyCheck=BOOLEAN,
            Tags=TAGS,
            MultiRegion={"type": "boolean"},
        ),
        obj(["KeyMetadata"], KeyMetadata=ref("KeyMetadata")),
    ),
    "DescribeKey": (obj(["KeyId"], KeyId=KEY_ID), obj(["KeyMetadata"], KeyMetadata=ref("KeyMetadata"))),
    "ListKeys": (
        obj(Limit=LIMIT, Marker=MARKER),
        obj(["Keys"], Keys=array(obj(KeyId=string(), KeyArn=string())), **PAGED),
    ),
    "EnableKey": (obj(["KeyId"], KeyId=KEY_ID), EMPTY),
    "DisableKey": (obj(["KeyId"], KeyId=KEY_ID), EMPTY),
    "ScheduleKeyDeletion": (
        obj(["KeyId"], KeyId=KEY_ID, PendingWindowInDays={"type": "integer", "minimum": 1, "maximum": 365}),
        obj(
            KeyId=string(),
            DeletionDate={"type": "number"},
            KeyState=string(),
            PendingWindowInDays={"type": "integer"},
        ),
    ),
    "CancelKeyDeletion": (obj(["KeyId"], KeyId=KEY_ID), obj(KeyId=string())),
    "UpdateKeyDescription": (obj(["KeyId", "Description"], KeyId=KEY_ID, Description=string(0, 8192)), EMPTY),
    "GetKeyPolicy": (
        obj(["KeyId"], KeyId=KEY_ID, PolicyName=POLICY_NAME),
        obj(Policy=POLICY, PolicyName=POLICY_NAME),
    ),
    "PutKeyPolicy": (
        obj(
            ["KeyId", "Policy"],
            KeyId=KEY_ID,
            PolicyName=POLICY_NAME,
            Policy=POLICY,
            BypassPolicyLockoutSafetyCheck=BOOLEAN,
        ),
        EMPTY,
    ),
    "ListKeyPolicies": (
        obj(["KeyId"], KeyId=KEY_ID, Limit=LIMIT, Marker=MARKER),
        obj(PolicyNames=array(POLICY_NAME), **PAGED),
    ),
    "CreateGrant": (
        obj(
            ["KeyId", "Operations"],
            KeyId=KEY_ID,
            GranteePrincipal=PRINCIPAL,
            GranteeServicePrincipal=SERVICE_PRINCIPAL,
            RetiringPrincipal=PRINCIPAL,
            RetiringServicePrincipal=SERVICE_PRINCIPAL,
            Operations=array(string()),
            Constraints=GRANT_CONSTRAINTS,
            GrantTokens=array(GRANT_TOKEN),
            Name=string(1, 256),
            DryRun=BOOLEAN,
        ),
        obj(GrantToken=GRANT_TOKEN, GrantId=GRANT_ID),
    ),
    "ListGrants": (
        obj(
            ["KeyId"],
            KeyId=KEY_ID,
            Limit=LIMIT,
            Marker=MARKER,
            GrantId=GRANT_ID,
            GranteePrincipal=PRINCIPAL,
            GranteeServicePrincipal=SERVICE_PRINCIPAL,
        ),
        obj(Grants=array(ref("Grant")), **PAGED),
    ),
    "ListRetirableGrants": (
        obj(
            Limit=LIMIT,
            Marker=MARKER,
            RetiringPrincipal=PRINCIPAL,
            RetiringServicePrincipal=SERVICE_PRINCIPAL,
        ),
        obj(Grants=array(ref("Grant")), **PAGED),
    ),
    "RetireGrant": (
        obj(GrantToken=GRANT_TOKEN, KeyId=KEY_ID, GrantId=GRANT_ID, DryRun=BOOLEAN),
        EMPTY,
    ),
    "RevokeGrant": (obj(["KeyId", "GrantId"], KeyId=KEY_ID, GrantId=GRANT_ID, DryRun=BOOLEAN), EMPTY),
    "EnableKeyRotation": (
        obj(
            ["KeyId"],
            KeyId=KEY_ID,
            RotationPeriodInDays={"type": "integer", "minimum": 90, "maximum": 2560},
        ),
        EMPTY,
    ),
    "DisableKeyRotation": (obj(["KeyId"], KeyId=KEY_ID), EMPTY),
    "GetKeyRotationStatus": (
        obj(["KeyId"], KeyId=KEY_ID),
        obj(
            KeyRotationEnabled=BOOLEAN,
            KeyId=string(),
            RotationPeriodInDays={"type": "integer"},
            NextRotationDate={"type": "number"},
        ),
    ),
    "RotateKeyOnDemand": (obj(["KeyId"], KeyId=KEY_ID), obj(KeyId=string())),
    "ListKeyRotations": (
        obj(
            ["KeyId"],
            KeyId=KEY_ID,
            IncludeKeyMaterial={"type": "string", "enum": ["ALL_KEY_MATERIAL", "ROTATIONS_ONLY"]},
            Limit=LIMIT,
            Marker=MARKER,
        ),
        obj(Rotations=array(ref("Rotation")), **PAGED),
    ),
    "TagResource": (obj(["KeyId", "Tags"], KeyId=KEY_ID, Tags=TAGS), EMPTY),
    "UntagResource": (obj(["KeyId", "TagKeys"], KeyId=KEY_ID, TagKeys=array(string(1, 128))), EMPTY),
    "ListResourceTags": (
        obj(["KeyId"], KeyId=KEY_ID, Limit=LIMIT, Marker=MARKER),
        obj(["Tags"], Tags=TAGS, **PAGED),
    ),
    "CreateAlias": (obj(["AliasName", "TargetKeyId"], AliasName=string(1, 256), TargetKeyId=KEY_ID), EMPTY),
    "DeleteAlias": (obj(["AliasName"], AliasName=string(1, 256)), EMPTY),
    "ListAliases": (
        obj(KeyId=KEY_ID, Limit=LIMIT, Marker=MARKER),
        obj(["Aliases"], Aliases=array(ref("Alias")), **PAGED),
    ),
    "UpdateAlias": (obj(["AliasName", "TargetKeyId"], AliasName=string(1, 256), TargetKeyId=KEY_ID), EMPTY),
    "Encrypt": (
        obj(
            ["KeyId", "Plaintext"],
            KeyId=KEY_ID,
            Plaintext=BLOB,
            EncryptionContext=CONTEXT,
            EncryptionAlgorithm=string(),
            DryRun={"type": "boolean"},
        ),
        obj(["CiphertextBlob", "KeyId"], CiphertextBlob=BLOB, KeyId=string(), EncryptionAlgorithm=string()),
    ),
    "Decrypt": (
        obj(
            ["CiphertextBlob"],
            CiphertextBlob=BLOB,
            KeyId=KEY_ID,
            EncryptionContext=CONTEXT,
            EncryptionAlgorithm=string(),
            DryRun={"type": "boolean"},
        ),
        obj(["Plaintext", "KeyId"], Plaintext=BLOB, KeyId=string(), EncryptionAlgorithm=string()),
    ),
    "ReEncrypt": (
        obj(
            ["CiphertextBlob", "DestinationKeyId"],
            CiphertextBlob=BLOB,
            SourceKeyId=KEY_ID,
            SourceEncryptionContext=CONTEXT,
            DestinationKeyId=KEY_ID,
            DestinationEncryptionContext=CONTEXT,
        ),
        obj(["CiphertextBlob", "KeyId"], CiphertextBlob=BLOB, KeyId=string(), SourceKeyId=string()),
    ),
    "GenerateDataKey": (
        obj(["KeyId"], KeyId=KEY_ID, KeySpec=DATA_KEY_SPEC, NumberOfBytes=LIMIT, EncryptionContext=CONTEXT),
        obj(["CiphertextBlob", "Plaintext", "KeyId"], CiphertextBlob=BLOB, Plaintext=BLOB, KeyId=string()),
    ),
    "GenerateDataKeyWithoutPlaintext": (
        obj(["KeyId"], KeyId=KEY_ID, KeySpec=DATA_KEY_SPEC, NumberOfBytes=LIMIT, EncryptionContext=CONTEXT),
        obj(["CiphertextBlob", "KeyId"], CiphertextBlob=BLOB, KeyId=string()),
    ),
    "GenerateRandom": (
        obj(NumberOfBytes=LIMIT, CustomKeyStoreId=STORE_ID),
        obj(["Plaintext"], Plaintext=BLOB),
    ),
}

COMPONENTS: dict[str, Any] = {
    "schemas": {
        "Error": obj(["__type", "message"], __type=string(), message=string()),
        "KeyMetadata": obj(
            ["KeyId", "Arn", "KeyState"],
            AWSAccountId=string(),
            KeyId=string(),
            Arn=string(),
            CreationDate={"type": "number"},
            Enabled={"type": "boolean"},
            Description=string(),
            KeyUsage=string(),
            KeyState=string(),
            Origin=string(),
            KeyManager=string(),
            KeySpec=string(),
            CustomKeyStoreId=string(),
            XksKeyConfiguration=obj(Id=string()),
            EncryptionAlgorithms=array(string()),
        ),
        "CustomKeyStore": obj(
            ["CustomKeyStoreId", "CustomKeyStoreName", "ConnectionState"],
            CustomKeyStoreId=string(),
            CustomKeyStoreName=string(),
            CustomKeyStoreType=string(),
            ConnectionState=string(),
            ConnectionErrorCode=string(),
            CreationDate={"type": "number"},
            XksProxyConfiguration=obj(
                Connectivity=string(),
                AccessKeyId=string(),
                UriEndpoint=string(),
                UriPath=string(),
                VpcEndpointServiceName=string(),
                VpcEndpointServiceOwner=string(),
            ),
        ),
        "Grant": obj(
            ["KeyId", "GrantId"],
            KeyId=string(),
            GrantId=string(),
            Name=string(),
            CreationDate={"type": "number"},
            GranteePrincipal=string(),
            GranteeServicePrincipal=string(),
            RetiringPrincipal=string(),
            RetiringServicePrincipal=string(),
            IssuingAccount=string(),
            Operations=array(string()),
            Constraints=GRANT_CONSTRAINTS,
        ),
        "Rotation": obj(
            ["KeyId", "KeyMaterialId"],
            KeyId=string(),
            KeyMaterialId=string(64, 64),
            KeyMaterialState=string(),
            RotationDate={"type": "number"},
            RotationType={"type": "string", "enum": ["AUTOMATIC", "ON_DEMAND"]},
        ),
        "Alias": obj(["AliasName", "AliasArn"], AliasName=string(), AliasArn=string(), TargetKeyId=string()),
    },
}
ERROR_RESPONSE = {
    "description": "AWS JSON 1.1 error (`__type`, `message`)",
    "content": content(ref("Error"), MEDIA),
}


def _operation(name: str, request: Schema, response: Schema) -> dict[str, Any]:
    return {
        "operationId": name,
        "x-route": "POST /",
        "parameters": [
            {
                "name": "X-Amz-Target",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "enum": [TARGET + name]},
            },
        ],
        "requestBody": {"required": True, "content": content(request, MEDIA)},
        "responses": {
            "200": {"description": f"{name} result", "content": content(response, MEDIA)},
            "default": ERROR_RESPONSE,
        },
    }


def pseudo_path(name: str) -> str:
    return f"/#X-Amz-Target={TARGET}{name}"


def build() -> dict[str, Any]:
    paths: dict[str, Any] = {
        pseudo_path(name): {"post": _operation(name, request, response)}
        for name, (request, response) in OPERATION_SHAPES.items()
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "responses": {
                "200": {
                    "description": "Prometheus text exposition",
                    "content": {"text/plain": {"schema": string()}},
                }
            },
        }
    }
    paths["/health"] = health_path()
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "responses": {"200": {"description": "This document", "content": content(obj())}},
        }
    }
    paths["/{tail}"] = {
        "x-route-note": "any other method or path",
        "get": {
            "operationId": "notServed",
            "x-route": "* /{tail}",
            "parameters": [{"name": "tail", "in": "path", "required": True, "schema": string()}],
            "responses": {"default": ERROR_RESPONSE},
        },
    }
    return document(
        "xkslab AWS KMS emulator",
        "AWS KMS JSON 1.1 (`POST /`, `X-Amz-Target: TrentService.<Operation>`). Each operation is documented "
        "at the pseudo-path `/#X-Amz-Target=TrentService.<Operation>`: the fragment is never sent, so the "
        "request is `POST /`. Any other X-Amz-Target is UnsupportedOperationException.",
        paths,
        COMPONENTS,
    )
