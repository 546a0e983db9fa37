"""RSA and EC keys through Fortanix's own ``sdkms-cli`` 5.6, unchanged, against ``xkslab dsm serve`` over
HTTPS: ``create-key`` of RSA and EC (the CLI's default key_ops), ``list-keys`` showing the curve,
``import-key`` of a PEM PKCS#8 EC key and ``export-object --der`` of it, checked with ``cryptography``.
``sign`` and ``verify`` (the CLI digests the file through ``/crypto/v1/digest`` first), checked by the
OpenSSL command line."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.integration.sdkms_cli_exe import SDKMS_CLI
from tests.integration.test_sdkms_cli import dsm_https

__all__ = ["dsm_https"]  # the fixture


def test_rsa_and_ec_keys_through_sdkms_cli(dsm_https: tuple[str, Path], tmp_path: Path) -> None:
    endpoint, ca = dsm_https
    env = {**os.environ, "SDKMS_CLI_TOKEN_FILE": str(tmp_path / "tokens"), "HOME": str(tmp_path)}
    env.pop("FORTANIX_API_KEY", None)
    env.pop("SDKMS_API_KEY", None)

    def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [SDKMS_CLI, "--api-endpoint", endpoint, "--ssl-ca-cert", str(ca), *args],
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
    public = serialization.load_der_public_key(base64.b64decode(shown["pub_key"]))
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

    # sign and verify: the CLI digests the file through /crypto/v1/digest, then signs the digest; the
    # signatures are checked by the OpenSSL command line and by the CLI's own verify.
    message = tmp_path / "message.txt"
    message.write_bytes(b"signed by sdkms-cli " * 100)
    for key_id, name in ((rsa_kid.decode(), "rsa"), (ec_kid.decode(), "ec")):
        signature = tmp_path / f"{name}.sig"
        cli("sign", "--kid", key_id, "--hash-alg", "SHA256", "--in", str(message), "--out", str(signature))
        pub = json.loads(cli("show-sobject", "--kid", key_id).stdout)["pub_key"]
        (tmp_path / f"{name}.pub.der").write_bytes(base64.b64decode(pub))
        checked = subprocess.run(
            ["openssl", "dgst", "-sha256", "-keyform", "DER", "-verify", str(tmp_path / f"{name}.pub.der"),
             "-signature", str(signature), str(message)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert checked.returncode == 0 and "Verified OK" in checked.stdout, checked.stderr
        cli(
            "verify",
            "--kid",
            key_id,
            "--hash-alg",
            "SHA256",
            "--in",
            str(message),
            "--sig-in",
            str(signature),
        )
        (tmp_path / "other.txt").write_bytes(b"not what was signed")
        failed = cli(
            "verify", "--kid", key_id, "--hash-alg", "SHA256", "--in", str(tmp_path / "other.txt"),
            "--sig-in", str(signature), ok=False,
        )  # fmt: skip
        assert b"Signature verification fail" in failed.stderr + failed.stdout
