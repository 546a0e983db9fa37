"""RSA and EC keys through Fortanix's own ``sdkms-cli`` 5.6, unchanged, against ``xkslab dsm serve`` over
HTTPS: ``create-key`` of RSA and EC (the CLI's default key_ops), ``list-keys`` showing the curve,
``import-key`` of a PEM PKCS#8 EC key and ``export-object --der`` of it, checked with ``cryptography``.
(``sdkms-cli sign``/``verify`` first call ``/crypto/v1/digest``, so signatures are tested through the SDK
with the digest given: tests/integration/test_sdkms_sdk_asymmetric.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.integration.test_sdkms_cli import dsm_https

__all__ = ["dsm_https"]  # the fixture


def test_rsa_and_ec_keys_through_sdkms_cli(dsm_https: tuple[str, Path], tmp_path: Path) -> None:
    endpoint, ca = dsm_https
    env = {**os.environ, "SDKMS_CLI_TOKEN_FILE": str(tmp_path / "tokens"), "HOME": str(tmp_path)}
    env.pop("FORTANIX_API_KEY", None)
    env.pop("SDKMS_API_KEY", None)

    def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            ["sdkms-cli", "--api-endpoint", endpoint, "--ssl-ca-cert", str(ca), *args],
            capture_output=True, env=env, cwd=tmp_path, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert (proc.returncode == 0) == ok, f"sdkms-cli {args}: {proc.stdout!r} {proc.stderr!r}"
        return proc

    cli("user-login", "--username", "admin@example.com", "--password", "s3cret-pass")
    rsa_kid = cli(
        "create-key", "--obj-type", "RSA", "--key-size", "3072", "--name", "cli-rsa"
    ).stdout.split()[-1]
    ec_kid = cli(
        "create-key", "--obj-type", "EC", "--ec-name", "NistP384", "--name", "cli-ec"
    ).stdout.split()[-1]
    assert re.fullmatch(rb"[0-9a-f-]{36}", rsa_kid) and re.fullmatch(rb"[0-9a-f-]{36}", ec_kid)
    listed = cli("list-keys").stdout.decode()
    assert re.search(r'"cli-rsa".*RSA 3072', listed) and re.search(
        r'"cli-ec".*EC EllipticCurve.NistP384', listed
    ), listed
    shown = json.loads(cli("show-sobject", "--kid", ec_kid.decode()).stdout)
    public = serialization.load_der_public_key(__import__("base64").b64decode(shown["pub_key"]))
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
    rsa_shown = json.loads(cli("show-sobject", "--kid", rsa_kid.decode()).stdout)
    assert set(rsa_shown["key_ops"]) >= {"SIGN", "VERIFY", "ENCRYPT", "DECRYPT"}
    assert "EXPORT" not in rsa_shown["key_ops"]
    refused = cli("export-object", "--kid", rsa_kid.decode(), "--der", ok=False)
    assert b"not exportable" in refused.stderr + refused.stdout

    local = ec.generate_private_key(ec.SECP256R1())
    pem = local.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "ec.pem").write_bytes(pem)
    kid = cli(
        "import-key", "--in", str(tmp_path / "ec.pem"), "--obj-type", "EC", "--ec-curve", "NistP256",
        "--name", "cli-imported", "--exportable", "--force",
    ).stdout.split()[-1]  # fmt: skip
    exported = cli("export-object", "--kid", kid.decode(), "--der").stdout
    back = serialization.load_der_private_key(exported, password=None)  # PKCS#8 DER
    assert isinstance(back, ec.EllipticCurvePrivateKey)
    assert back.private_numbers() == local.private_numbers()
    wrong = cli("import-key", "--in", str(tmp_path / "ec.pem"), "--obj-type", "RSA", "--name", "x", ok=False)
    assert b"not an RSA key" in wrong.stderr + wrong.stdout
    assert not isinstance(back, rsa.RSAPrivateKey)
