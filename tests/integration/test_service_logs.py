"""The lab's logs as a user reads them: a detached ``xkslab up --log-format json`` (real processes on
loopback), real requests through boto3, the DSM REST API and the health endpoints, then each service's
``run/<service>.log`` read back. One JSON object a line; one access line per request per service with
the route's template, status and duration; the kmsRequestId of a KMS request found again in the proxy's
and the key manager's lines; a named line per service on start and stop; and nothing secret anywhere:
not the lab's credentials, API key or password, not the plaintext sent, not the raw ids of a path."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.integration.test_detach import FREE_PORTS, cleanup, xkslab
from xkslab.bench import pools

__all__ = ["cleanup"]  # a fixture, used by name

SERVICES = ("dsm", "xks", "kms")
PLAINTEXT = b"plaintext-that-must-never-be-logged-7f3a"


def read_log(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines, f"{path} is empty"
    return [json.loads(line) for line in lines]  # every line is one JSON object


def get(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=60) as response:
        return int(response.status)


def test_a_detached_lab_logs_one_json_line_per_request_per_service(
    tmp_path: Path, cleanup: list[Path]
) -> None:
    lab = tmp_path / "lab"
    cleanup.append(lab)
    started = xkslab(lab, "up", "--detach", "--log-format", "json", *FREE_PORTS)
    assert started.returncode == 0, started.stderr
    data = json.loads((lab / "up.json").read_text())
    dsm, xks, kms = data["dsm"], data["xks"], data["kms"]

    client = boto3.client(
        "kms",
        endpoint_url=kms["endpoint_url"],
        region_name=kms["region"],
        aws_access_key_id=data["aws_env"]["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=data["aws_env"]["AWS_SECRET_ACCESS_KEY"],
    )
    encrypted = client.encrypt(KeyId=kms["key_id"], Plaintext=PLAINTEXT)
    encrypt_id = encrypted["ResponseMetadata"]["RequestId"]
    # Refused before its body is parsed (a wrong signature): its lines still carry its kmsRequestId.
    forged = pools.xks_encrypt_bad_signature(data, 1)[0]
    forged_id = json.loads(forged.body)["requestMetadata"]["kmsRequestId"]
    posted = urllib.request.Request(xks["url"] + forged.path, forged.body, forged.headers, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(posted, timeout=60)
    refused.value.close()
    assert refused.value.code == 401
    assert client.decrypt(CiphertextBlob=encrypted["CiphertextBlob"])["Plaintext"] == PLAINTEXT
    basic = {"Authorization": f"Basic {dsm['api_key']}"}
    assert get(f"{dsm['url']}/crypto/v1/keys/{dsm['root_kek_id']}", basic) == 200
    for url in (dsm["url"], xks["url"], kms["endpoint_url"]):
        assert get(f"{url}/health") == 200
    waited = xkslab(lab, "wait", "--timeout", "600", "--health")
    assert waited.returncode == 0, waited.stderr
    down = xkslab(lab, "down")
    assert down.returncode == 0, down.stderr

    logs = {service: read_log(lab / "run" / f"{service}.log") for service in SERVICES}
    for service, lines in logs.items():
        assert {line["service"] for line in lines} == {service}
        assert all({"time", "level", "service"} <= line.keys() for line in lines)
        messages = [line.get("message", "") for line in lines]
        assert any(m.startswith("listening on http://127.0.0.1:") for m in messages), (service, messages)
        assert messages[-1] == "stopped", (service, messages[-3:])
        requests = [line for line in lines if line.get("event") == "request"]
        assert requests, service
        for line in requests:
            assert {"method", "route", "status", "ms"} <= line.keys(), line
            assert isinstance(line["status"], int) and line["ms"] >= 0
        health = [line for line in requests if line["route"] == "/health"]
        assert [(line["method"], line["status"]) for line in health][:1] == [("GET", 200)], service

    # The KMS request's id is the kmsRequestId the proxy and the key manager log for the same call.
    kms_encrypt = [line for line in logs["kms"] if line.get("kmsRequestId") == encrypt_id]
    assert [(line["operation"], line["status"]) for line in kms_encrypt] == [("Encrypt", 200)]
    xks_encrypt = [line for line in logs["xks"] if line.get("kmsRequestId") == encrypt_id]
    assert [(line["operation"], line["route"]) for line in xks_encrypt] == [
        ("Encrypt", "/{uriPathPrefix}/kms/xks/v1/keys/{externalKeyId}/encrypt")
    ]
    dsm_encrypt = [line for line in logs["dsm"] if line.get("kmsRequestId") == encrypt_id]
    assert [(line["route"], line["operation"]) for line in dsm_encrypt] == [
        ("/internal/xks/v1/call", "encrypt")
    ]
    dsm_forged = [line for line in logs["dsm"] if line.get("kmsRequestId") == forged_id]
    assert [(line["operation"], line["error"]) for line in dsm_forged] == [("encrypt", "AuthFailed")]
    xks_forged = [line for line in logs["xks"] if line.get("kmsRequestId") == forged_id]
    assert [line["error"] for line in xks_forged] == ["AuthenticationFailedException"]
    # The DSM's own API: the template, not the key id.
    assert any(
        line.get("route") == "/crypto/v1/keys/{kid}" and line["status"] == 200 for line in logs["dsm"]
    ), "no access line for GET /crypto/v1/keys/{kid}"

    text = {service: (lab / "run" / f"{service}.log").read_text() for service in SERVICES}
    secrets = {
        "admin password": dsm["admin_password"],
        "API key": dsm["api_key"],
        "API key's secret": base64.b64decode(dsm["api_key"]).decode().split(":", 1)[1],
        "SigV4 secret of the proxy": xks["secret_access_key"],
        "AWS secret access key": data["aws_env"]["AWS_SECRET_ACCESS_KEY"],
        "plaintext": PLAINTEXT.decode(),
        "plaintext in Base64": base64.b64encode(PLAINTEXT).decode(),
        "ciphertext in Base64": base64.b64encode(encrypted["CiphertextBlob"]).decode(),
        "proxy token": (lab / "proxy.token").read_text().strip(),
        "root KEK id": dsm["root_kek_id"],
        "XKS app id": xks["app_id"],
    }
    for service, content in text.items():
        for what, value in secrets.items():
            assert value and value not in content, f"the {what} is in {service}.log"


def test_the_log_flags_are_settings_and_refuse_unknown_values(tmp_path: Path) -> None:
    """``--log-level``/``--log-format`` are on every serve command and on up, and say what they accept."""
    for command in (["dsm", "serve"], ["xks", "serve"], ["kms", "serve"], ["up"]):
        shown = subprocess.run(
            [sys.executable, "-m", "xkslab", *command, "--help"], capture_output=True, text=True, timeout=120
        )
        assert "--log-level [debug|info|warning|error]" in shown.stdout, command
        assert "--log-format [text|json]" in shown.stdout, command
    refused = xkslab(tmp_path / "lab", "dsm", "serve", "--log-format", "xml")
    assert refused.returncode == 2 and "'xml' is not one of 'text', 'json'" in refused.stderr
