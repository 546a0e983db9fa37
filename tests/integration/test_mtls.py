"""mTLS end to end, as AWS recommends running an external key store: a lab with ``xks.mtls`` (``xkslab up
--mtls``), whose KMS presents ``cks.kms.<region>.amazonaws.com`` from the local CA and whose proxy requires
it. boto3 through the whole double envelope; a KMS that presents no certificate, one from another CA or
an expired one, or that trusts another CA than the proxy's; a proxy certificate for another host or
expired (the TLS faults); ``xkslab certs rotate`` under the running services; and ``xkslab up --mtls``
as a user runs it, with ``xkslab demo`` and ``xkslab env``."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.kms_harness import KmsEnv, start_kms, stop_kms
from xkslab.cli import main
from xkslab.lab.info import FREE_PORTS
from xkslab.lab.inprocess import LabInfo, lab_in_thread
from xkslab_shared import certs, tls

KMS_SUBJECT = "cks.kms.us-east-1.amazonaws.com"
TLS_CODE = "XKS_PROXY_INVALID_TLS_CONFIGURATION"
# KMS's 250 ms covers the handshake too, and the proxy gives the DSM's deep health check 200 ms; on a
# shared, loaded test machine either may take longer, and timing is not what these tests are about.
TIMEOUT = {"kms.xks_timeout_ms": "6000", "xks.dsm_timeout_ms": "5000"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabInfo]:
    with lab_in_thread(tmp_path_factory.mktemp("mtls") / "lab", {"xks.mtls": "true", **TIMEOUT}) as info:
        yield info


@pytest.fixture(scope="module")
def kms(lab: LabInfo) -> Any:
    return lab.kms_client()


def store(kms: Any, store_id: str) -> dict[str, Any]:
    return dict(kms.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"][0])


def reconnect(kms: Any, store_id: str) -> tuple[str, str | None]:
    if store(kms, store_id)["ConnectionState"] != "DISCONNECTED":
        kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    seen = store(kms, store_id)
    return seen["ConnectionState"], seen.get("ConnectionErrorCode")


@pytest.fixture
def connected_again(lab: LabInfo, kms: Any) -> Iterator[None]:
    """Whatever a test did to the lab's key store, it is connected through the lab's own KMS after it."""
    yield
    assert reconnect(kms, lab.custom_key_store_id) == ("CONNECTED", None)


def proxy_port(lab: LabInfo) -> int:
    return int(str(lab.data["xks"]["https_url"]).rsplit(":", 1)[1])


def https_get(lab: LabInfo, context: ssl.SSLContext, path: str = "/ping") -> bytes:
    """A bare HTTPS request to the proxy (handshake, send, read), as curl or any XKS client makes it."""
    with socket.create_connection(("127.0.0.1", proxy_port(lab)), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            return conn.recv(4096)


def test_boto3_generate_data_key_and_decrypt_on_the_external_key_store(
    lab: LabInfo, kms: Any, tmp_path: Path
) -> None:
    mtls = lab.data["mtls"]
    assert mtls["client_subject"] == KMS_SUBJECT
    assert Path(mtls["client_ca"]) == lab.ca_file.absolute()
    client = x509.load_pem_x509_certificate(Path(mtls["client_cert"]).read_bytes())
    assert client.subject.rfc4514_string() == f"CN={KMS_SUBJECT}"
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]

    key = kms.describe_key(KeyId=lab.key_id)["KeyMetadata"]
    assert (key["Origin"], key["CustomKeyStoreId"]) == ("EXTERNAL_KEY_STORE", lab.custom_key_store_id)
    assert store(kms, lab.custom_key_store_id)["ConnectionState"] == "CONNECTED"
    data_key = kms.generate_data_key(KeyId=lab.key_id, KeySpec="AES_256", EncryptionContext={"t": "mtls"})
    plain = kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"], EncryptionContext={"t": "mtls"})
    assert plain["Plaintext"] == data_key["Plaintext"] and len(plain["Plaintext"]) == 32

    # The proxy's HTTPS port: the files up.json names get in; without a certificate, a TLS alert.
    with_cert = tls.client_context(lab.ca_file, cert=Path(mtls["client_cert"]), key=Path(mtls["client_key"]))
    assert https_get(lab, with_cert).startswith(b"HTTP/1.1 200")
    with pytest.raises(ssl.SSLError) as caught:
        https_get(lab, tls.client_context(lab.ca_file))
    assert caught.value.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    # The lab's CA, but not KMS's name: refused in the handshake as well, not by an HTTP 403.
    tls_dir = lab.data_dir / "tls"
    files = certs.make_client_cert(
        tmp_path, tls_dir / "ca.crt", tls_dir / "ca.key", "impostor", "cks.kms.eu-west-1.amazonaws.com"
    )
    with pytest.raises(ssl.SSLError) as caught:
        https_get(lab, tls.client_context(lab.ca_file, cert=files[0], key=files[1]))
    assert caught.value.reason == "SSLV3_ALERT_BAD_CERTIFICATE"


@contextlib.asynccontextmanager
async def extra_kms(lab: LabInfo, **overrides: str) -> AsyncIterator[KmsEnv]:
    """Another KMS on the lab's data directory (the same key stores and keys), with other TLS settings."""
    env = await start_kms(lab.data_dir, {**TIMEOUT, **overrides})
    try:
        yield env
    finally:
        await stop_kms(env)


async def connect(env: KmsEnv, store_id: str) -> tuple[str, str | None]:
    entry = (await env.call("describe_custom_key_stores", CustomKeyStoreId=store_id))["CustomKeyStores"][0]
    if entry["ConnectionState"] != "DISCONNECTED":
        await env.call("disconnect_custom_key_store", CustomKeyStoreId=store_id)
    await env.call("connect_custom_key_store", CustomKeyStoreId=store_id)
    entry = (await env.call("describe_custom_key_stores", CustomKeyStoreId=store_id))["CustomKeyStores"][0]
    return entry["ConnectionState"], entry.get("ConnectionErrorCode")


def kms_client_files(lab: LabInfo, tmp_path: Path, case: str) -> dict[str, str]:
    """kms.xks_client_cert/key for a KMS that presents no certificate, one from another CA, an expired
    one; or (``other-ca-trusted``) the right one while trusting another CA than the proxy's."""
    tls_dir = lab.data_dir / "tls"
    if case == "none":
        return {
            "kms.xks_client_cert": str(tmp_path / "absent.crt"),
            "kms.xks_client_key": str(tmp_path / "absent.key"),
        }
    if case == "other-ca":
        other_ca, other_key = certs.make_local_ca(tmp_path / "other")
        cert, key = certs.make_client_cert(tmp_path / "other", other_ca, other_key, "kms", KMS_SUBJECT)
    elif case == "other-subject":  # the lab's CA, but KMS of another region
        tls_dir_ca = (tls_dir / "ca.crt", tls_dir / "ca.key")
        cert, key = certs.make_client_cert(tmp_path, *tls_dir_ca, "kms-eu", "cks.kms.eu-west-1.amazonaws.com")
    elif case == "expired":
        now = dt.datetime.now(dt.UTC)
        cert, key = certs._leaf(
            tmp_path,
            tls_dir / "ca.crt",
            tls_dir / "ca.key",
            "expired",
            KMS_SUBJECT,
            ExtendedKeyUsageOID.CLIENT_AUTH,
            None,
            (now - dt.timedelta(days=30), now - dt.timedelta(days=1)),
        )
    else:
        other_ca, _ = certs.make_local_ca(tmp_path / "distrusted")
        return {"kms.xks_ca": str(other_ca)}
    return {"kms.xks_client_cert": str(cert), "kms.xks_client_key": str(key)}


@pytest.mark.usefixtures("connected_again")
@pytest.mark.parametrize("case", ["none", "other-ca", "other-subject", "expired", "other-ca-trusted"])
async def test_a_kms_the_handshake_refuses_fails_the_store_with_invalid_tls_configuration(
    lab: LabInfo, tmp_path: Path, case: str
) -> None:
    """No client certificate, one from another CA, one of the lab's CA for another subject, an expired
    one (the proxy's alert, in the handshake each time), or a proxy
    certificate KMS does not trust: ConnectCustomKeyStore leaves the store FAILED with
    XKS_PROXY_INVALID_TLS_CONFIGURATION, and a data call is KMSInvalidStateException naming TLS."""
    store_id = lab.custom_key_store_id
    async with extra_kms(lab, **kms_client_files(lab, tmp_path, case)) as refused:
        assert await connect(refused, store_id) == ("FAILED", TLS_CODE)
        error = await refused.error("encrypt", KeyId=lab.key_id, Plaintext=b"no")
        assert error.response["Error"]["Code"] == "KMSInvalidStateException"
    # The same store through a KMS that presents the lab's certificate: connected again.
    async with extra_kms(lab) as accepted:
        assert await connect(accepted, store_id) == ("CONNECTED", None)
        blob = (await accepted.call("encrypt", KeyId=lab.key_id, Plaintext=b"yes"))["CiphertextBlob"]
        assert (await accepted.call("decrypt", CiphertextBlob=blob))["Plaintext"] == b"yes"


@pytest.mark.usefixtures("connected_again")
@pytest.mark.parametrize("kind", ["tls_wrong_host", "tls_expired"])
def test_a_proxy_certificate_for_another_host_or_expired_fails_the_store(
    lab: LabInfo, kms: Any, kind: str
) -> None:
    """The proxy's TLS faults under mTLS: the faulty certificate keeps the client-certificate rules, and
    KMS refuses it. A connection KMS made before the fault carries one more call (answered with
    Connection: close), so the first Connect may still pass; bounded tries, then a new handshake."""
    store_id = lab.custom_key_store_id
    with lab.fault(kind):
        states = [reconnect(kms, store_id) for _ in range(3)]
        assert states[-1] == ("FAILED", TLS_CODE), states
        with pytest.raises(ClientError) as caught:
            kms.encrypt(KeyId=lab.key_id, Plaintext=b"untrusted")
        assert caught.value.response["Error"]["Code"] == "KMSInvalidStateException"
    assert reconnect(kms, store_id) == ("CONNECTED", None)


def days_to_expire(lab: LabInfo) -> float:
    with urllib.request.urlopen(lab.kms_endpoint + "/metrics", timeout=30) as response:
        text = response.read().decode()
    pattern = rf'^kms_xks_proxy_certificate_days_to_expire{{key_store_id="{lab.custom_key_store_id}"}} (\S+)$'
    found = re.search(pattern, text, re.M)
    assert found, "no XksProxyCertificateDaysToExpire for the lab's key store"
    return float(found.group(1))


def served_serial(port: int, ca: Path, context: ssl.SSLContext) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            der = conn.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def serial(cert: Path) -> int:
    return int(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number)


def test_certs_rotate_under_the_running_services(lab: LabInfo, kms: Any) -> None:
    """``xkslab certs rotate`` beside the running lab: the proxy and the DSM serve the new certificates
    from their next handshake, KMS presents its new client certificate (the proxy accepts it: calls go
    on) and XksProxyCertificateDaysToExpire follows the new proxy certificate. Nothing restarts."""
    tls_dir = lab.data_dir / "tls"
    mtls = lab.data["mtls"]
    kms.encrypt(KeyId=lab.key_id, Plaintext=b"before")
    assert days_to_expire(lab) > 800  # the first certificate: 825 days
    old = {name: serial(tls_dir / f"{name}.crt") for name in ("xks", "dsm", "kms-client")}

    rotated = CliRunner().invoke(
        main, ["--data-dir", str(lab.data_dir), "certs", "rotate", "--days", "30", "--json"]
    )
    assert rotated.exit_code == 0, rotated.output
    made = json.loads(rotated.output)
    assert sorted(made) == ["dsm", "kms-client", "xks"]
    new = {name: serial(tls_dir / f"{name}.crt") for name in old}
    assert all(new[name] != old[name] for name in old)
    assert certs.common_name(tls_dir / "kms-client.crt") == KMS_SUBJECT

    client = tls.client_context(lab.ca_file, cert=Path(mtls["client_cert"]), key=Path(mtls["client_key"]))
    assert served_serial(proxy_port(lab), lab.ca_file, client) == new["xks"]
    dsm_https = str(lab.data["dsm"]["https_url"])
    assert (
        served_serial(int(dsm_https.rsplit(":", 1)[1]), lab.ca_file, tls.client_context(lab.ca_file))
        == new["dsm"]
    )
    # KMS's connection from before the rotation carries one more call (answered Connection: close), then
    # a new handshake meets the new certificate: bounded, whatever the machine's speed.
    for _ in range(5):
        blob = kms.encrypt(KeyId=lab.key_id, Plaintext=b"after")["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"after"
        if days_to_expire(lab) < 31:
            break
    assert 29 < days_to_expire(lab) < 31
    assert store(kms, lab.custom_key_store_id)["ConnectionState"] == "CONNECTED"


# ----------------------------------------------------------------------------- `xkslab up --mtls` in a shell


def xkslab(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    sets = [arg for name, value in {**FREE_PORTS, **TIMEOUT}.items() for arg in ("--set", f"{name}={value}")]
    return subprocess.run(
        [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), *sets, *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_xkslab_up_mtls_runs_the_demo_and_boto3(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    started = xkslab(lab, "up", "--mtls", "--detach")
    try:
        assert started.returncode == 0, started.stderr + (lab / "run" / "up.log").read_text()
        data = json.loads((lab / "up.json").read_text())
        tls_dir = (lab / "tls").absolute()
        assert data["mtls"] == {
            "client_ca": str(tls_dir / "ca.crt"),
            "client_subject": KMS_SUBJECT,
            "client_cert": str(tls_dir / "kms-client.crt"),
            "client_key": str(tls_dir / "kms-client.key"),
        }
        env = xkslab(lab, "env", "--format", "json")
        assert env.returncode == 0, env.stderr
        printed = json.loads(env.stdout)
        assert printed["XKSLAB_MTLS_CLIENT_CERT"] == data["mtls"]["client_cert"]
        assert printed["XKSLAB_MTLS_CLIENT_KEY"] == data["mtls"]["client_key"]
        assert printed["XKSLAB_MTLS_CA_FILE"] == data["mtls"]["client_ca"]
        assert printed["AWS_ENDPOINT_URL_KMS"] == data["aws_env"]["AWS_ENDPOINT_URL_KMS"]
        assert "XKSLAB_MTLS_CLIENT_CERT" in (lab / "run" / "up.log").read_text()

        demo = xkslab(lab, "demo", "--json")
        assert demo.returncode == 0, demo.stderr
        assert "GenerateDataKey" in demo.stdout and "Decrypt" in demo.stdout

        aws = data["aws_env"]
        client = boto3.client(
            "kms",
            endpoint_url=aws["AWS_ENDPOINT_URL_KMS"],
            region_name=aws["AWS_DEFAULT_REGION"],
            aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        )
        key = client.describe_key(KeyId=data["kms"]["key_id"])["KeyMetadata"]
        assert key["Origin"] == "EXTERNAL_KEY_STORE"
        data_key = client.generate_data_key(KeyId=data["kms"]["key_id"], KeySpec="AES_256")
        assert client.decrypt(CiphertextBlob=data_key["CiphertextBlob"])["Plaintext"] == data_key["Plaintext"]

        # The proxy's own HTTPS port (the service process runs uvloop): no certificate, an alert.
        port = int(str(data["xks"]["https_url"]).rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            context = tls.client_context(tls_dir / "ca.crt")
            with (
                pytest.raises(ssl.SSLError) as caught,
                context.wrap_socket(raw, server_hostname="localhost") as conn,
            ):
                conn.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
                conn.recv(1024)
        assert caught.value.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    finally:
        stopped = xkslab(lab, "down")
        assert stopped.returncode == 0, stopped.stderr
