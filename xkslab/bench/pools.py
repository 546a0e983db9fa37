"""Pools of real requests for each scenario, built from a running lab's ``up.json``: XKS calls signed with
botocore's SigV4 as KMS signs them, KMS JSON 1.1 calls as boto3 sends them, DSM REST calls with a Bearer
token. Each request of a pool is distinct (its own kmsRequestId, plaintext, ciphertext), and the pool is
replayed by wrk; SigV4 allows a replay within its 5-minute window, so the load generator spends its CPU
sending, not signing."""

from __future__ import annotations

import base64
import json
import os
import urllib.request
import uuid
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from xkslab.bench.wrk import Request

PRINCIPAL_ARN = "arn:aws:iam::111122223333:user/xkslab-bench"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _signed(
    url: str, body: bytes, headers: dict[str, str], akid: str, secret: str, service: str, region: str
) -> Request:
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(Credentials(akid, secret), service, region).add_auth(request)
    parts = urlsplit(url)
    signed = dict(request.headers.items())
    signed["Host"] = parts.netloc
    return Request(parts.path, signed, body)


def _post_json(url: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (loopback URL from up.json)
        return dict(json.loads(answer.read() or b"{}"))


def _xks_url(lab: dict[str, Any], operation: str) -> str:
    xks = lab["xks"]
    return f"{xks['url']}{xks['uri_path']}/keys/{lab['dsm']['root_kek_id']}/{operation}"


def _xks_signed(
    lab: dict[str, Any], operation: str, payload: dict[str, Any], secret: str | None = None
) -> Request:
    xks = lab["xks"]
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _signed(
        _xks_url(lab, operation),
        body,
        {"Content-Type": "application/json"},
        xks["access_key_id"],
        secret if secret is not None else xks["secret_access_key"],
        "kms-xks-proxy",
        lab["kms"]["region"],
    )


def _metadata(lab: dict[str, Any], operation: str) -> dict[str, str]:
    return {
        "awsPrincipalArn": PRINCIPAL_ARN,
        "kmsKeyArn": lab["kms"]["key_arn"],
        "kmsOperation": operation,
        "kmsRequestId": str(uuid.uuid4()),
    }


def _xks_encrypt_payload(lab: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestMetadata": _metadata(lab, "Encrypt"),
        "plaintext": _b64(os.urandom(32)),
        "additionalAuthenticatedData": _b64(os.urandom(64)),
        "encryptionAlgorithm": "AES_GCM",
        "ciphertextDataIntegrityValueAlgorithm": "SHA_256",
    }


def xks_encrypt(lab: dict[str, Any], size: int) -> list[Request]:
    """XKS Encrypt: 32-byte plaintext, 64-byte AAD, CDIV asked."""
    return [_xks_signed(lab, "encrypt", _xks_encrypt_payload(lab)) for _ in range(size)]


def xks_encrypt_bad_signature(lab: dict[str, Any], size: int) -> list[Request]:
    """XKS Encrypt as above, by the lab's access key id signed with a wrong secret: each one is refused
    with a signature mismatch, the refusal that may send the key manager back to its database."""
    wrong = "W" + lab["xks"]["secret_access_key"][1:]
    return [_xks_signed(lab, "encrypt", _xks_encrypt_payload(lab), wrong) for _ in range(size)]


def xks_decrypt(lab: dict[str, Any], size: int) -> list[Request]:
    """XKS Decrypt of ciphertexts made by real Encrypt calls just before."""
    pool = []
    for _ in range(size):
        payload = _xks_encrypt_payload(lab)
        enc = _xks_signed(lab, "encrypt", payload)
        answer = _post_json(lab["xks"]["url"] + enc.path, enc.body, enc.headers)
        decrypt = {
            "requestMetadata": _metadata(lab, "Decrypt"),
            "ciphertext": answer["ciphertext"],
            "initializationVector": answer["initializationVector"],
            "authenticationTag": answer["authenticationTag"],
            "additionalAuthenticatedData": payload["additionalAuthenticatedData"],
            "encryptionAlgorithm": "AES_GCM",
        }
        if "ciphertextMetadata" in answer:
            decrypt["ciphertextMetadata"] = answer["ciphertextMetadata"]
        pool.append(_xks_signed(lab, "decrypt", decrypt))
    return pool


def _kms_signed(
    endpoint: str, region: str, operation: str, params: dict[str, Any], env: dict[str, str]
) -> Request:
    body = json.dumps(params, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": f"TrentService.{operation}",
    }
    return _signed(
        endpoint.rstrip("/") + "/",
        body,
        headers,
        env["AWS_ACCESS_KEY_ID"],
        env["AWS_SECRET_ACCESS_KEY"],
        "kms",
        region,
    )


def kms_generate_data_key(
    endpoint: str, region: str, key_id: str, size: int, env: dict[str, str]
) -> list[Request]:
    return [
        _kms_signed(
            endpoint,
            region,
            "GenerateDataKey",
            {"KeyId": key_id, "NumberOfBytes": 32, "EncryptionContext": {"pool": str(n)}},
            env,
        )
        for n in range(size)
    ]


def kms_decrypt(endpoint: str, region: str, key_id: str, size: int, env: dict[str, str]) -> list[Request]:
    """KMS Decrypt of data keys made by real GenerateDataKey calls just before."""
    pool = []
    for made in kms_generate_data_key(endpoint, region, key_id, size, env):
        blob = _post_json(endpoint.rstrip("/") + "/", made.body, made.headers)["CiphertextBlob"]
        context = json.loads(made.body)["EncryptionContext"]
        pool.append(
            _kms_signed(
                endpoint,
                region,
                "Decrypt",
                {"CiphertextBlob": blob, "KeyId": key_id, "EncryptionContext": context},
                env,
            )
        )
    return pool


def dsm_encrypt(lab: dict[str, Any], size: int) -> list[Request]:
    """DSM REST encrypt (AES-GCM) with a Bearer token from the client app's API key."""
    dsm = lab["dsm"]
    session = _post_json(
        dsm["url"] + "/sys/v1/session/auth", b"", {"Authorization": f"Basic {dsm['api_key']}"}
    )
    host = urlsplit(dsm["url"]).netloc
    headers = {
        "Authorization": f"Bearer {session['access_token']}",
        "Content-Type": "application/json",
        "Host": host,
    }
    path = f"/crypto/v1/keys/{dsm['root_kek_id']}/encrypt"
    return [
        Request(
            path,
            headers,
            json.dumps(
                {"alg": "AES", "mode": "GCM", "plain": _b64(os.urandom(32)), "ad": _b64(os.urandom(16))}
            ).encode(),
        )
        for _ in range(size)
    ]


def moto_key(endpoint: str, region: str, env: dict[str, str]) -> str:
    """A plain (AWS_KMS) key in moto_server, for its GenerateDataKey anchor."""
    made = _kms_signed(endpoint, region, "CreateKey", {"Description": "xkslab bench anchor"}, env)
    return str(_post_json(endpoint.rstrip("/") + "/", made.body, made.headers)["KeyMetadata"]["KeyId"])
