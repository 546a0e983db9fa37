"""The OpenAPI 3.1 document of the XKS proxy (XKS Proxy API v1), under the Fortanix-style URI path prefix
``/crypto/v1/apps/{appId}/aws`` (aliases added with ``xkslab xks alias add`` serve the same operations),
plus GET /ping, /metrics and /openapi.json. The four XKS operations are served by the app's catch-all
route (the dispatcher matches the raw path itself), hence their ``x-route``."""

from __future__ import annotations

from typing import Any

from xkslab_shared.faults_wire import FAULTS_PATH
from xkslab_shared.openapi import Schema, array, content, document, health_path, obj, ref, string

PREFIX = "/crypto/v1/apps/{appId}/aws/kms/xks/v1"
CATCH_ALL = "* /{tail}"
B64 = string(pattern="^[A-Za-z0-9+/]*={0,2}$", contentEncoding="base64")
METADATA = obj(
    ["kmsRequestId", "kmsOperation"],
    awsPrincipalArn=string(),
    kmsKeyArn=string(),
    kmsOperation=string(),
    kmsRequestId=string(),
    kmsViaService=string(),
    awsSourceVpc=string(),
    awsSourceVpce=string(),
)
GCM = {"type": "string", "enum": ["AES_GCM"]}

SCHEMAS: dict[str, Schema] = {
    "Error": obj(["errorName"], errorName=string(), errorMessage=string()),
    "HealthRequest": obj(["requestMetadata"], requestMetadata=METADATA),
    "HealthResponse": obj(
        ["xksProxyFleetSize", "ekmFleetDetails"],
        xksProxyFleetSize={"type": "integer"},
        xksProxyVendor=string(),
        xksProxyModel=string(),
        ekmVendor=string(),
        ekmFleetDetails=array(
            obj(
                ["id", "healthStatus"],
                id=string(),
                model=string(),
                healthStatus={"type": "string", "enum": ["ACTIVE", "DEGRADED", "UNAVAILABLE"]},
            )
        ),
    ),
    "MetadataRequest": obj(["requestMetadata"], requestMetadata=METADATA),
    "MetadataResponse": obj(
        ["keySpec", "keyUsage", "keyStatus"],
        keySpec=string(),
        keyUsage=array(string()),
        keyStatus={"type": "string", "enum": ["ENABLED", "DISABLED"]},
    ),
    "EncryptRequest": obj(
        ["requestMetadata", "plaintext", "encryptionAlgorithm"],
        requestMetadata=METADATA,
        plaintext=B64,
        encryptionAlgorithm=GCM,
        additionalAuthenticatedData=B64,
        ciphertextDataIntegrityValueAlgorithm={"type": "string", "enum": ["SHA_256"]},
    ),
    "EncryptResponse": obj(
        ["ciphertext", "initializationVector", "authenticationTag"],
        ciphertext=B64,
        initializationVector=B64,
        authenticationTag=B64,
        ciphertextMetadata=B64,
        ciphertextDataIntegrityValue=B64,
    ),
    "DecryptRequest": obj(
        ["requestMetadata", "ciphertext", "encryptionAlgorithm", "initializationVector", "authenticationTag"],
        requestMetadata=METADATA,
        ciphertext=B64,
        encryptionAlgorithm=GCM,
        initializationVector=B64,
        authenticationTag=B64,
        additionalAuthenticatedData=B64,
        ciphertextMetadata=B64,
    ),
    "DecryptResponse": obj(["plaintext"], plaintext=B64),
}
APP_ID = {"name": "appId", "in": "path", "required": True, "schema": string(format="uuid")}
KEY_ID = {"name": "externalKeyId", "in": "path", "required": True, "schema": string(1, 128)}
ERROR = {"description": "XKS error (`errorName`, `errorMessage`)", "content": content(ref("Error"))}


def _xks(name: str, summary: str, request: str, response: str, key: bool) -> dict[str, Any]:
    return {
        "post": {
            "operationId": name,
            "summary": summary,
            "x-route": CATCH_ALL,
            "security": [{"sigv4": []}],
            "parameters": [APP_ID, KEY_ID] if key else [APP_ID],
            "requestBody": {"required": True, "content": content(ref(request))},
            "responses": {"200": {"description": name, "content": content(ref(response))}, "default": ERROR},
        }
    }


def _plain(name: str, media: str, schema: Schema, summary: str) -> dict[str, Any]:
    return {
        "get": {
            "operationId": name,
            "summary": summary,
            "responses": {"200": {"description": summary, "content": content(schema, media)}},
        }
    }


def _admin(name: str, summary: str, *, body: bool = False, path_id: bool = False) -> dict[str, Any]:
    """An operation of the fault-injection endpoint (Breaking things on purpose): admin token only."""
    error = {"description": "refused", "content": content(obj(error=string()))}
    operation: dict[str, Any] = {
        "operationId": name,
        "summary": summary,
        "security": [{"adminToken": []}],
        "responses": {"200": {"description": summary, "content": content(obj())}, "401": error},
    }
    if body:
        operation["requestBody"] = {"required": True, "content": content(obj(faults=array(obj())))}
        operation["responses"]["400"] = error
    if path_id:
        operation["parameters"] = [{"name": "fault_id", "in": "path", "required": True, "schema": string()}]
    return operation


def build() -> dict[str, Any]:
    paths = {
        f"{PREFIX}/health": _xks(
            "GetHealthStatus", "Proxy and key manager health", "HealthRequest", "HealthResponse", key=False
        ),
        f"{PREFIX}/keys/{{externalKeyId}}/metadata": _xks(
            "GetKeyMetadata",
            "An external key's spec, usage and status",
            "MetadataRequest",
            "MetadataResponse",
            key=True,
        ),
        f"{PREFIX}/keys/{{externalKeyId}}/encrypt": _xks(
            "Encrypt",
            "AES-256-GCM encryption under an external key",
            "EncryptRequest",
            "EncryptResponse",
            key=True,
        ),
        f"{PREFIX}/keys/{{externalKeyId}}/decrypt": _xks(
            "Decrypt",
            "AES-256-GCM decryption under an external key",
            "DecryptRequest",
            "DecryptResponse",
            key=True,
        ),
        "/ping": _plain("ping", "text/plain", string(), "Liveness for load balancers"),
        "/health": health_path(),
        "/metrics": _plain("metrics", "text/plain", string(), "Prometheus text exposition"),
        "/openapi.json": _plain("openapi", "application/json", obj(), "This document"),
        FAULTS_PATH: {
            "get": _admin("listFaults", "The faults in force"),
            "post": _admin("setFaults", "Add faults (or a scenario)", body=True),
            "delete": _admin("clearFaults", "Clear every fault"),
        },
        FAULTS_PATH + "/{fault_id}": {"delete": _admin("clearFault", "Clear one fault", path_id=True)},
    }
    components = {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "adminToken": {"type": "http", "scheme": "bearer", "description": "<data-dir>/xks-admin.token"},
            "sigv4": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "AWS SigV4, service `kms-xks-proxy`, any region, with the app's awsxks "
                "credential (X-Amz-Date signed).",
            },
        },
    }
    return document(
        "xkslab XKS proxy",
        "XKS Proxy API v1. The URI path prefix is `/crypto/v1/apps/<app id>/aws` or an alias of it; every "
        "other path answers 404 InvalidUriPathException, every other method 405.",
        paths,
        components,
    )
