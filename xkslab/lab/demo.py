"""``xkslab demo``: the seed's workflow against a running ``xkslab up``, with real AWS clients.

GenerateDataKey under the XKS-backed KMS key -> encrypt a file locally with the plaintext data key ->
forget it -> Decrypt the data key (KMS unwraps the proxy's layer through the DSM, then its own) ->
decrypt the file -> print the DSM audit rows the flow produced, matched by kmsRequestId (the request id
KMS returned is the kmsRequestId it sent to the proxy).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xkslab.lab.up import up_file
from xkslab_shared.config import Settings

DEMO_TEXT = b"Quarterly numbers, for the eyes of the finance team only.\n" * 20


class DemoError(RuntimeError):
    pass


def _kms_client(data: dict[str, Any]) -> Any:
    import boto3

    env = data["aws_env"]
    return boto3.client(
        "kms",
        endpoint_url=data["kms"]["endpoint_url"],
        region_name=data["kms"]["region"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def _dsm_json(url: str, headers: dict[str, str], method: str = "GET") -> Any:
    request = urllib.request.Request(url, headers=headers, method=method)  # noqa: S310 (the lab's own URL)
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read() or b"null")


def audit_rows(data: dict[str, Any], request_ids: list[str]) -> list[dict[str, Any]]:
    """The DSM's audit rows (GET /sys/v1/logs as the administrator) whose kmsRequestId is one of ours."""
    dsm = data["dsm"]
    if not dsm.get("admin_password"):
        raise DemoError("up.json has no admin password (start `xkslab up --admin-password ...`)")
    basic = base64.b64encode(f"{dsm['admin_email']}:{dsm['admin_password']}".encode()).decode()
    token = _dsm_json(f"{dsm['url']}/sys/v1/session/auth", {"Authorization": f"Basic {basic}"}, "POST")
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    hits = _dsm_json(f"{dsm['url']}/sys/v1/logs?size=1000", bearer)["hits"]
    rows = []
    for hit in hits:
        source = dict(hit["_source"])
        # Fortanix gives the client context as a JSON string.
        source["client_provided_context"] = json.loads(source.get("client_provided_context") or "{}")
        if source["client_provided_context"].get("kmsRequestId") in request_ids:
            rows.append(source)
    # The log has whole seconds: within one, keep the order of the flow (the order of request_ids).
    order = {request_id: index for index, request_id in enumerate(request_ids)}
    return sorted(
        rows, key=lambda r: (str(r.get("time")), order[r["client_provided_context"]["kmsRequestId"]])
    )


def run_demo(settings: Settings, input_file: Path | None, echo: Callable[[str], None]) -> dict[str, Any]:
    path = up_file(settings)
    if not path.exists():
        raise DemoError(f"{path} not found: start `xkslab up` first (with the same --data-dir)")
    data = json.loads(path.read_text())
    if "kms" not in data:
        raise DemoError(f"{path} is incomplete: `xkslab up` has not finished starting")
    kms = _kms_client(data)
    key = data["kms"]["alias"]
    work = settings.data_dir / "demo"
    work.mkdir(exist_ok=True)
    source = input_file or work / "report.txt"
    if input_file is None:
        source.write_bytes(DEMO_TEXT)
    plain = source.read_bytes()
    context = {"purpose": "xkslab-demo", "file": source.name}

    echo(f"1. GenerateDataKey under {key} ({data['kms']['key_id']})")
    generated = kms.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=context)
    ids = [generated["ResponseMetadata"]["RequestId"]]
    echo(f"   kmsRequestId {ids[0]}; encrypted data key: {len(generated['CiphertextBlob'])} bytes")

    nonce = os.urandom(12)
    sealed = work / (source.name + ".enc")
    sealed.write_bytes(nonce + AESGCM(generated["Plaintext"]).encrypt(nonce, plain, None))
    (work / (source.name + ".key")).write_bytes(generated["CiphertextBlob"])
    del generated
    echo(f"2. Encrypted {source} locally with the data key -> {sealed} (the plaintext key is dropped)")

    decrypted = kms.decrypt(
        CiphertextBlob=(work / (source.name + ".key")).read_bytes(), EncryptionContext=context
    )
    ids.append(decrypted["ResponseMetadata"]["RequestId"])
    echo(f"3. Decrypt of the data key: kmsRequestId {ids[1]}")

    blob = sealed.read_bytes()
    recovered = AESGCM(decrypted["Plaintext"]).decrypt(blob[:12], blob[12:], None)
    if recovered != plain:
        raise DemoError("the decrypted file differs from the original")
    echo(f"4. Decrypted {sealed}: {len(recovered)} bytes, identical to the original")

    rows = audit_rows(data, ids)
    echo(f"5. DSM audit rows for these kmsRequestIds ({len(rows)}):")
    for row in rows:
        ctx = row.get("client_provided_context") or {}
        echo(
            f"   {row.get('time')}  {row.get('severity', ''):8} {ctx.get('kmsOperation', ''):16} "
            f"{ctx.get('kmsRequestId')}  {row.get('message')}"
        )
    return {"request_ids": ids, "audit_rows": rows, "file": str(source), "encrypted": str(sealed)}
