"""Fault injection end to end: a real lab (in-process, its own thread), faults set on the real proxy over
its admin endpoint or with ``xkslab faults``, and KMS's reaction seen through boto3, one test per kind.

The lab runs with ``kms.xks_failure_threshold=3`` and a KmsHealthCheck every 0.2 s, so repeated failures
turn the key store FAILED; after each test the faults are cleared and the store is connected again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from tests import deadlines
from xkslab.cli import main
from xkslab.lab.bootstrap import bootstrap_kms
from xkslab.lab.inprocess import LabInfo, lab_in_thread
from xkslab_shared.faults_wire import FAULTS_PATH

THRESHOLD = 3
KMS_BUDGET_MS = 2000
PAST_BUDGET_MS = KMS_BUDGET_MS + 600
SCENARIOS = Path(__file__).resolve().parents[2] / "docs" / "scenarios"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabInfo]:
    overrides = {
        "kms.xks_failure_threshold": str(THRESHOLD),
        "kms.xks_health_check_s": "0.2",
        "xks.dsm_timeout_ms": deadlines.GENEROUS["xks.dsm_timeout_ms"],
        # KMS's budget for the proxy: longer than production's 250 ms, which a stalled shared machine
        # outlives in tests about something else; the latency faults outlast it (PAST_BUDGET_MS).
        "kms.xks_timeout_ms": str(KMS_BUDGET_MS),
    }
    with lab_in_thread(tmp_path_factory.mktemp("faults") / "lab", overrides) as info:
        yield info


@pytest.fixture(scope="module")
def kms(lab: LabInfo) -> Any:
    return lab.kms_client()


@pytest.fixture(autouse=True)
def healthy_again(lab: LabInfo, kms: Any) -> Iterator[None]:
    yield
    admin(lab, "DELETE")
    reconnect(kms, lab.custom_key_store_id)
    kms.encrypt(KeyId=lab.key_id, Plaintext=b"reset")  # a success zeroes the store's failure count


def token(lab: LabInfo) -> str:
    return (lab.data_dir / "xks-admin.token").read_text().strip()


def admin(lab: LabInfo, method: str, body: Any = None, *, auth: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        lab.data["xks"]["url"] + FAULTS_PATH,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": auth if auth is not None else f"Bearer {token(lab)}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def inject(lab: LabInfo, **fault: Any) -> str:
    status, answer = admin(lab, "POST", {"faults": [fault]})
    assert status == 200, answer
    return str(answer["ids"][0])


def store(kms: Any, store_id: str) -> dict[str, Any]:
    return dict(kms.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"][0])


def reconnect(kms: Any, store_id: str) -> dict[str, Any]:
    if store(kms, store_id)["ConnectionState"] != "DISCONNECTED":
        kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    return store(kms, store_id)


def refused(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    return error["Code"], error["Message"]


def encrypt(lab: LabInfo, kms: Any) -> Callable[[], Any]:
    return lambda: kms.encrypt(KeyId=lab.key_id, Plaintext=b"chaos")


def injected(lab: LabInfo, kind: str) -> float:
    with urllib.request.urlopen(lab.data["xks"]["url"] + "/metrics", timeout=30) as response:
        text = response.read().decode()
    found = re.search(rf'^xks_proxy_faults_injected_total{{kind="{kind}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def until_failed(kms: Any, store_id: str, poke: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Bounded: the store must turn FAILED within a number of tries, whatever the machine's speed."""
    for _ in range(200):
        if poke is not None:
            try:
                poke()
            except ClientError:
                pass
        seen = store(kms, store_id)
        if seen["ConnectionState"] == "FAILED":
            return seen
        if poke is None:
            kms.list_keys(Limit=1)  # a round trip to the KMS, which lets a health check or two happen
    raise AssertionError(f"the key store never turned FAILED: {seen}")


def test_the_admin_endpoint_needs_its_token(lab: LabInfo) -> None:
    assert admin(lab, "GET", auth="")[0] == 401
    assert admin(lab, "GET", auth="Bearer " + "x" * 43)[0] == 401
    assert admin(lab, "POST", {"faults": [{"kind": "drop"}]}, auth="Bearer nope")[0] == 401
    assert admin(lab, "GET") == (200, {"faults": []})  # the refused POST set nothing
    status, answer = admin(lab, "POST", {"faults": [{"kind": "error", "error_name": "NoSuchError"}]})
    assert status == 400 and "error_name" in answer["error"]


def test_latency_past_kms_budget_is_a_kms_timeout(lab: LabInfo, kms: Any) -> None:
    before = injected(lab, "latency")
    inject(lab, kind="latency", latency_ms=PAST_BUDGET_MS, operation="Encrypt", count=1)
    code, message = refused(encrypt(lab, kms))
    assert code == "KMSInvalidStateException" and "timed out" in message
    assert injected(lab, "latency") == before + 1
    assert kms.encrypt(KeyId=lab.key_id, Plaintext=b"on time")["CiphertextBlob"]  # count=1: it ended


def test_any_xks_error_scoped_by_key_and_kms_operation(lab: LabInfo, kms: Any) -> None:
    xks_key = lab.data["dsm"]["root_kek_id"]
    inject(lab, kind="error", error_name="KeyNotFoundException", key_id="some-other-key")
    inject(lab, kind="error", error_name="KeyNotFoundException", kms_operation="GenerateDataKey")
    blob = kms.encrypt(KeyId=lab.key_id, Plaintext=b"not this key")["CiphertextBlob"]  # neither matches
    code, message = refused(lambda: kms.generate_data_key(KeyId=lab.key_id, KeySpec="AES_256"))
    assert code == "KMSInvalidStateException" and "could not find the external key" in message
    inject(lab, kind="error", error_name="InvalidCiphertextException", key_id=xks_key, operation="Decrypt")
    code, message = refused(lambda: kms.decrypt(CiphertextBlob=blob))
    assert code == "KMSInvalidStateException" and "ciphertext" in message
    # Key-level answers prove the proxy works: the store stays CONNECTED however many there are.
    for _ in range(THRESHOLD + 1):
        refused(lambda: kms.decrypt(CiphertextBlob=blob))
    assert store(kms, lab.custom_key_store_id)["ConnectionState"] == "CONNECTED"


def test_throttling(lab: LabInfo, kms: Any) -> None:
    before = injected(lab, "throttle")
    inject(lab, kind="throttle", operation="Encrypt", count=2)
    for _ in range(2):
        code, message = refused(encrypt(lab, kms))
        assert code == "KMSInvalidStateException" and "request rate is too high" in message
    assert injected(lab, "throttle") == before + 2
    assert kms.encrypt(KeyId=lab.key_id, Plaintext=b"calm again")["CiphertextBlob"]


def test_health_states_per_node(lab: LabInfo, kms: Any) -> None:
    store_id = lab.custom_key_store_id
    fault = inject(lab, kind="health", health=["DEGRADED", "ACTIVE", "DEGRADED"])
    assert reconnect(kms, store_id)["ConnectionState"] == "CONNECTED"  # a DEGRADED fleet serves
    assert kms.encrypt(KeyId=lab.key_id, Plaintext=b"degraded")["CiphertextBlob"]
    assert admin(lab, "GET")[1]["faults"][0]["applied"] > 0
    admin(lab, "DELETE")
    assert admin(lab, "GET")[1]["faults"] == [] and fault

    inject(lab, kind="health", health=["UNAVAILABLE", "UNAVAILABLE"], kms_operation="ConnectCustomKeyStore")
    seen = reconnect(kms, store_id)
    assert (seen["ConnectionState"], seen["ConnectionErrorCode"]) == ("FAILED", "XKS_PROXY_NOT_REACHABLE")
    admin(lab, "DELETE")
    assert reconnect(kms, store_id)["ConnectionState"] == "CONNECTED"

    # The periodic KmsHealthCheck sees the whole fleet UNAVAILABLE, again and again: the store fails.
    inject(lab, kind="health", health=["UNAVAILABLE"], kms_operation="KmsHealthCheck")
    seen = until_failed(kms, store_id)
    assert seen["ConnectionErrorCode"] == "XKS_PROXY_NOT_REACHABLE"
    code, message = refused(encrypt(lab, kms))
    assert code == "KMSInvalidStateException" and "not connected" in message


def test_malformed_answers_fail_the_store(lab: LabInfo, kms: Any) -> None:
    inject(lab, kind="malformed", operation="Encrypt")
    code, message = refused(encrypt(lab, kms))
    assert code == "KMSInvalidStateException" and "cannot interpret the response" in message
    seen = until_failed(kms, lab.custom_key_store_id, encrypt(lab, kms))
    assert seen["ConnectionErrorCode"] == "XKS_PROXY_INVALID_RESPONSE"
    assert injected(lab, "malformed") >= THRESHOLD


def test_truncated_answer(lab: LabInfo, kms: Any) -> None:
    inject(lab, kind="truncated", operation="Encrypt", count=1)
    code, message = refused(encrypt(lab, kms))
    assert code == "KMSInvalidStateException" and "cannot interpret the response" in message
    assert injected(lab, "truncated") >= 1


def test_dropped_connection(lab: LabInfo, kms: Any) -> None:
    inject(lab, kind="drop", operation="Encrypt", count=1)
    code, message = refused(encrypt(lab, kms))
    assert code == "KMSInvalidStateException" and "cannot reach" in message
    assert injected(lab, "drop") >= 1
    assert kms.encrypt(KeyId=lab.key_id, Plaintext=b"back")["CiphertextBlob"]


def test_probability_zero_and_a_pending_start_never_apply(lab: LabInfo, kms: Any) -> None:
    inject(lab, kind="drop", operation="Encrypt", probability=0.0)
    inject(lab, kind="drop", operation="Encrypt", start_s=3600)
    for _ in range(3):
        assert kms.encrypt(KeyId=lab.key_id, Plaintext=b"lucky")["CiphertextBlob"]
    states = sorted(f["state"] for f in admin(lab, "GET")[1]["faults"])
    assert states == ["active", "pending"]


def cli(lab: LabInfo, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--data-dir", str(lab.data_dir), "faults", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_set_list_clear(lab: LabInfo, kms: Any) -> None:
    set_out = cli(lab, "set", "latency", "--latency-ms", "1-2", "--operation", "Decrypt", "--count", "5")
    fault_id = set_out.split()[0]
    listed = json.loads(cli(lab, "list", "--json"))["faults"]
    assert [(f["id"], f["fault"]["latency_max_ms"], f["left"]) for f in listed] == [(fault_id, 2, 5)]
    url = lab.data["xks"]["url"]
    assert fault_id in cli(lab, "list", "--url", url)
    assert cli(lab, "clear", fault_id).strip() == "cleared 1 fault(s)"
    assert cli(lab, "list").strip() == "no faults"
    bad = CliRunner().invoke(main, ["--data-dir", str(lab.data_dir), "faults", "set", "error"])
    assert bad.exit_code == 1 and "error_name" in bad.output


@pytest.mark.parametrize(
    "name", ["slow-key-manager", "flapping-health", "credential-rejected", "bad-certificate"]
)
def test_each_scenario_parses_and_loads(lab: LabInfo, name: str) -> None:
    out = cli(lab, "load", str(SCENARIOS / f"{name}.toml"), "--json")
    ids = json.loads(out)["ids"]
    listed = json.loads(cli(lab, "list", "--json"))["faults"]
    assert ids and [f["id"] for f in listed] == ids
    assert cli(lab, "clear").strip() == f"cleared {len(ids)} fault(s)"


def test_credential_rejected_scenario_fails_the_store(lab: LabInfo, kms: Any) -> None:
    cli(lab, "load", str(SCENARIOS / "credential-rejected.toml"), "--replace")
    code, message = refused(encrypt(lab, kms))
    assert code == "KMSInvalidStateException" and "authentication credential is not valid" in message
    seen = until_failed(kms, lab.custom_key_store_id, encrypt(lab, kms))
    assert seen["ConnectionErrorCode"] == "INVALID_CREDENTIALS"
    seen = reconnect(kms, lab.custom_key_store_id)
    assert (seen["ConnectionState"], seen["ConnectionErrorCode"]) == ("FAILED", "INVALID_CREDENTIALS")


def tls_refused(lab: LabInfo, kms: Any) -> tuple[str, str]:
    """Bounded: a connection KMS made before the fault carries one more request (answered with
    Connection: close), so the first calls may still pass; then a new handshake meets the certificate."""
    for _ in range(10):
        try:
            kms.encrypt(KeyId=lab.key_id, Plaintext=b"old connection")
        except ClientError as exc:
            error = exc.response["Error"]
            return error["Code"], error["Message"]
    raise AssertionError("no new TLS handshake met the faulty certificate")


@pytest.mark.parametrize("kind", ["tls_expired", "tls_wrong_host"])
def test_a_bad_certificate_is_a_tls_failure_until_cleared(lab: LabInfo, kms: Any, kind: str) -> None:
    store_id = lab.custom_key_store_id
    before = injected(lab, kind)
    fault = inject(lab, kind=kind)
    code, message = tls_refused(lab, kms)
    assert code == "KMSInvalidStateException"
    assert "TLS connection" in message or "not connected" in message  # the health check may fail it first
    assert injected(lab, kind) > before
    seen = until_failed(kms, store_id, encrypt(lab, kms))
    assert seen["ConnectionErrorCode"] == "XKS_PROXY_INVALID_TLS_CONFIGURATION"
    seen = reconnect(kms, store_id)  # ConnectCustomKeyStore's health call meets the certificate too
    assert (seen["ConnectionState"], seen["ConnectionErrorCode"]) == (
        "FAILED",
        "XKS_PROXY_INVALID_TLS_CONFIGURATION",
    )
    assert [f["id"] for f in admin(lab, "GET")[1]["faults"]] == [fault]
    assert admin(lab, "DELETE")[1] == {"cleared": 1}
    assert reconnect(kms, store_id)["ConnectionState"] == "CONNECTED"
    assert kms.encrypt(KeyId=lab.key_id, Plaintext=b"trusted again")["CiphertextBlob"]


def test_tls_faults_take_no_filters_and_count_handshakes(lab: LabInfo, kms: Any) -> None:
    status, answer = admin(lab, "POST", {"faults": [{"kind": "tls_expired", "operation": "Encrypt"}]})
    assert status == 400 and "TLS handshake" in answer["error"]
    args = ["--data-dir", str(lab.data_dir), "faults", "set", "tls_expired", "--key-id", "k"]
    bad = CliRunner().invoke(main, args)
    assert bad.exit_code == 1 and "TLS handshake" in bad.output
    before = injected(lab, "tls_wrong_host")
    assert "wrong-host.invalid" in cli(lab, "set", "tls_wrong_host", "--count", "1")
    for _ in range(20):  # KMS's calls or its health checks make a new connection and use the handshake
        if not admin(lab, "GET")[1]["faults"]:
            break
        try:
            kms.encrypt(KeyId=lab.key_id, Plaintext=b"one bad handshake")
        except ClientError:
            pass
    assert admin(lab, "GET")[1]["faults"] == []
    assert injected(lab, "tls_wrong_host") == before + 1
    assert reconnect(kms, lab.custom_key_store_id)["ConnectionState"] == "CONNECTED"


def test_the_lab_start_tries_again_when_the_proxy_outlives_kms_budget(lab: LabInfo, kms: Any) -> None:
    """What `up` and the fixtures do on start, on a proxy that stalls past KMS's budget once in each call
    that reaches it (as a busy machine does): ConnectCustomKeyStore ends FAILED and CreateKey is refused
    once each, and the start goes on to a connected store and a new key."""
    kms.disconnect_custom_key_store(CustomKeyStoreId=lab.custom_key_store_id)
    kms.delete_alias(AliasName=lab.data["kms"]["alias"])  # so the start makes its key again
    before = injected(lab, "latency")
    inject(lab, kind="latency", latency_ms=PAST_BUDGET_MS, kms_operation="ConnectCustomKeyStore", count=1)
    inject(lab, kind="latency", latency_ms=PAST_BUDGET_MS, kms_operation="CreateKey", count=1)
    # A key of its own for the new KMS key: an external key backs one KMS key only.
    dsm = {**lab.data["dsm"], "xks_uri_path": lab.xks_uri_path, "root_kek_id": dsm_key(lab)}
    try:
        facts = asyncio.run(bootstrap_kms(lab.settings, dsm, lab.kms_endpoint, lab.xks_uri_endpoint))
        assert injected(lab, "latency") == before + 2  # each stalled call was made, and made again
        assert facts["custom_key_store_id"] == lab.custom_key_store_id
        assert store(kms, lab.custom_key_store_id)["ConnectionState"] == "CONNECTED"
        assert facts["kms_key_id"] != lab.key_id
        assert kms.encrypt(KeyId=facts["kms_key_id"], Plaintext=b"a key made on the second try")
    finally:
        with contextlib.suppress(kms.exceptions.NotFoundException):  # the start may have failed before it
            kms.delete_alias(AliasName=lab.data["kms"]["alias"])
        kms.create_alias(AliasName=lab.data["kms"]["alias"], TargetKeyId=lab.key_id)


def dsm_key(lab: LabInfo) -> str:
    """A new AES-256 key in the lab's group, made by the lab's client app."""

    def call(path: str, auth: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(lab.dsm_url + path, data=data, headers={"Authorization": auth})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    token = call("/sys/v1/session/auth", f"Basic {lab.api_key}", {})["access_token"]
    spec = {"name": "second try", "obj_type": "AES", "key_size": 256, "key_ops": ["ENCRYPT", "DECRYPT"]}
    return str(call("/crypto/v1/keys", f"Bearer {token}", spec)["kid"])
