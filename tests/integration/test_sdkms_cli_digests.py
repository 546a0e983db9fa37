"""Fortanix's own ``sdkms-cli``, unchanged, runs ``message-digest``, ``hmac-digest`` and ``hmac-verify``
against ``xkslab dsm serve`` over HTTPS: the digests are FIPS's, the HMAC of an imported RFC 4231 key is
the RFC's, and a wrong MAC makes ``hmac-verify`` fail. The ``sdkms`` SDK's DigestApi does the same through
the Ex paths (key by name in the body) and CMACs with an AES key to RFC 4493's MAC."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.integration import test_dsm_api
from tests.integration.sdkms_cli_exe import SDKMS_CLI
from tests.integration.test_sdkms_cli import dsm_https
from tests.integration.test_sdkms_sdk import login_admin
from tests.unit.test_digests import ABC, CMAC_KEY, CMAC_VECTORS, HMAC_VECTORS

__all__ = ["dsm_https"]  # the fixture
sqlite_dir = test_dsm_api.sqlite_dir
server_url = test_dsm_api.server_url


def test_sdkms_cli_digests_and_hmacs(dsm_https: tuple[str, Path], tmp_path: Path) -> None:
    endpoint, ca = dsm_https
    env = {**os.environ, "SDKMS_CLI_TOKEN_FILE": str(tmp_path / "tokens"), "HOME": str(tmp_path)}
    env.pop("FORTANIX_API_KEY", None)
    env.pop("SDKMS_API_KEY", None)

    def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [SDKMS_CLI, "--api-endpoint", endpoint, "--ssl-ca-cert", str(ca), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert (proc.returncode == 0) == ok, f"sdkms-cli {args}: {proc.stdout} {proc.stderr}"
        return proc

    cli("user-login", "--username", "admin@example.com", "--password", "s3cret-pass")
    group_id = cli("create-group", "--name", "mac-group").stdout.strip().split()[-1]
    app_id = cli("create-app", "--name", "mac-app", "--default-group", group_id, "--groups", group_id)
    api_key = cli("get-app-api-key", "--app-id", app_id.stdout.strip().split()[-1]).stdout.strip().split()[-1]
    cli("app-login", "--api-key", api_key)

    abc = tmp_path / "abc"
    abc.write_bytes(b"abc")
    for alg in ("SHA1", "SHA256", "SHA512", "SHA3_256"):
        assert cli("message-digest", "--alg", alg, "--in", str(abc)).stdout.strip().lower() == ABC[alg]

    key, data, alg, expected = HMAC_VECTORS[7]  # RFC 4231 test case 6: a key longer than the block
    key_file, data_file = tmp_path / "hmac.hex", tmp_path / "message.bin"
    key_file.write_text(key.hex())
    data_file.write_bytes(data)
    out = cli("import-key", "--obj-type", "HMAC", "--in", str(key_file), "--name", "rfc4231-6").stdout
    kid = out.strip().split()[-1]
    assert cli("hmac-digest", "--kid", kid, "--alg", alg, "--in", str(data_file)).stdout.strip() == expected
    cli("hmac-verify", "--kid", kid, "--alg", alg, "--in", str(data_file), "--digest", expected)
    wrong = expected[:-2] + ("00" if expected[-2:] != "00" else "01")
    failed = cli(
        "hmac-verify", "--kid", kid, "--alg", alg, "--in", str(data_file), "--digest", wrong, ok=False
    )
    assert "verification fail" in failed.stdout + failed.stderr


def sdk_flow(url: str) -> dict[str, Any]:
    import sdkms.v1 as sdk

    client = login_admin(sdk, url)
    keys, api = sdk.SecurityObjectsApi(api_client=client), sdk.DigestApi(api_client=client)
    key, data, alg, _ = HMAC_VECTORS[8]  # RFC 4231 test case 7
    hmac_key = keys.import_security_object(
        sdk.SobjectRequest(name="rfc4231-7", obj_type="HMAC", value=bytearray(key))
    )
    aes_key = keys.import_security_object(
        sdk.SobjectRequest(
            name="rfc4493", obj_type="AES", value=bytearray(CMAC_KEY), key_ops=["MACGENERATE", "MACVERIFY"]
        )
    )
    by_name = sdk.SobjectDescriptor(name="rfc4231-7")
    mac = api.compute_mac_ex(sdk.MacGenerateRequestEx(key=by_name, alg=alg, data=bytearray(data)))
    verify = sdk.MacVerifyRequestEx(key=by_name, alg=alg, data=bytearray(data), mac=mac.mac)
    cmac_data, _ = CMAC_VECTORS[1]
    cmac = api.compute_mac(aes_key.kid, sdk.MacGenerateRequest(data=bytearray(cmac_data)))
    batch = sdk.BatchMacRequest()
    batch.append(sdk.MacGenerateRequestEx(key=by_name, alg=alg, data=bytearray(data)))
    batch.append(
        sdk.MacGenerateRequestEx(key=sdk.SobjectDescriptor(name="nope"), alg=alg, data=bytearray(data))
    )
    batch_answer = [
        (item.status, bytes(item.body.mac).hex() if item.body else None) for item in api.batch_mac(batch)
    ]
    return {
        "batch": batch_answer,
        "kid": hmac_key.kid,
        "mac_kid": mac.kid,
        "mac": bytes(mac.mac).hex(),
        "verified": api.verify_mac_ex(verify).result,
        "cmac": bytes(cmac.mac).hex(),
        "sha3": bytes(
            api.compute_digest(sdk.DigestRequest(alg="SHA3_512", data=bytearray(b"abc"))).digest
        ).hex(),
    }


async def test_sdkms_sdk_digest_api(server_url: str) -> None:
    r = await asyncio.to_thread(sdk_flow, server_url)
    assert r["mac"] == HMAC_VECTORS[8][3] and r["mac_kid"] == r["kid"] and r["verified"] is True
    assert r["cmac"] == CMAC_VECTORS[1][1]
    assert r["batch"] == [(200, HMAC_VECTORS[8][3]), (404, None)]
    assert r["sha3"] == ABC["SHA3_512"]
