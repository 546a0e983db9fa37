"""Derivation, agreement, DES3 keys and the AES CFB, OFB (single-shot and multipart) and CCM modes through Fortanix's own
``sdkms-cli`` 5.6, unchanged, against ``xkslab dsm serve`` over HTTPS. Oracles: ``cryptography``, on the
material the CLI exported (``export-object``) or on the ECDH secret computed from the exported EC keys."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.decrepit.ciphers.modes import CFB, OFB
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from tests.integration.sdkms_cli_exe import SDKMS_CLI
from tests.integration.test_sdkms_cli import dsm_https

__all__ = ["dsm_https"]  # the fixture

KID = rb"[0-9a-f-]{36}"


def test_derive_agree_des3_and_modes_through_sdkms_cli(dsm_https: tuple[str, Path], tmp_path: Path) -> None:
    endpoint, ca = dsm_https
    env = {**os.environ, "SDKMS_CLI_TOKEN_FILE": str(tmp_path / "tokens"), "HOME": str(tmp_path)}
    env.pop("FORTANIX_API_KEY", None)
    env.pop("SDKMS_API_KEY", None)

    def cli(*args: str, ok: bool = True) -> bytes:
        proc = subprocess.run(
            [SDKMS_CLI, "--api-endpoint", endpoint, "--ssl-ca-cert", str(ca), *args],
            capture_output=True, env=env, cwd=tmp_path, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert (proc.returncode == 0) == ok, f"sdkms-cli {args}: {proc.stdout!r} {proc.stderr!r}"
        return proc.stdout + (b"" if ok else proc.stderr)

    def kid_of(out: bytes) -> str:
        kid = out.split()[-1]
        assert re.fullmatch(KID, kid), out
        return kid.decode()

    cli("user-login", "--username", "admin@example.com", "--password", "s3cret-pass")

    # derive-key: the new AES key is the base key's AES-CBC encryption of --plain under --iv.
    base = kid_of(
        cli("create-key", "--obj-type", "AES", "--key-size", "256", "--name", "base", "--exportable", "-f")
    )
    base_value = bytes.fromhex(cli("export-object", "--kid", base).decode().strip())
    plain, iv = b"derivation data, thirty-two byte", bytes(16)
    derived = kid_of(
        cli(
            "derive-key", "--kid", base, "--name", "derived", "--key-size", "256", "--key-type", "AES",
            "--plain", plain.decode(), "--alg", "AES", "--mode", "CBCNOPAD", "--iv", iv.hex(), "--exportable",
        )
    )  # fmt: skip
    enc = Cipher(algorithms.AES(base_value), modes.CBC(iv)).encryptor()
    expected = enc.update(plain) + enc.finalize()
    assert bytes.fromhex(cli("export-object", "--kid", derived).decode().strip()) == expected
    shown = json.loads(cli("show-sobject", "--kid", derived))
    check = Cipher(algorithms.AES(expected), modes.ECB()).encryptor()
    assert shown["kcv"] == check.update(bytes(16))[:3].hex().upper() and shown["origin"] == "FortanixHSM"
    refused = cli(
        "derive-key", "--kid", derived, "--name", "again", "--key-size", "256", "--key-type", "EC",
        "--plain", plain.decode(), "--alg", "AES", "--mode", "CBCNOPAD", "--iv", iv.hex(), ok=False,
    )  # fmt: skip
    assert b"key_type EC cannot be derived" in refused

    # agree-key: ECDH of two EC keys made by the CLI with AGREEKEY; the agreed AES key encrypts as an
    # AES key made of the shared secret computed here from the exported keys.
    ec_ops = ("--key-ops", "SIGN,VERIFY,AGREEKEY", "--exportable", "-f")
    alice = kid_of(cli("create-key", "--obj-type", "EC", "--ec-name", "NistP256", "--name", "alice", *ec_ops))
    bob = kid_of(cli("create-key", "--obj-type", "EC", "--ec-name", "NistP256", "--name", "bob", *ec_ops))
    alice_key = serialization.load_der_private_key(cli("export-object", "--kid", alice, "--der"), None)
    bob_key = serialization.load_der_private_key(cli("export-object", "--kid", bob, "--der"), None)
    assert isinstance(alice_key, ec.EllipticCurvePrivateKey) and isinstance(
        bob_key, ec.EllipticCurvePrivateKey
    )
    shared = bob_key.exchange(ec.ECDH(), alice_key.public_key())
    agreed = kid_of(
        cli(
            "agree-key",
            "--private-key",
            alice,
            "--public-key",
            bob,
            "--name",
            "agreed",
            "--key-size",
            "256",
            "--key-type",
            "AES",
        )
    )
    (tmp_path / "block").write_bytes(bytes(range(32)))
    cli(
        "encrypt",
        "--kid",
        agreed,
        "--alg",
        "AES",
        "--mode",
        "ECB",
        "--in",
        str(tmp_path / "block"),
        "--out",
        str(tmp_path / "block.enc"),
    )
    ecb = Cipher(algorithms.AES(shared), modes.ECB()).encryptor()
    assert (tmp_path / "block.enc").read_bytes() == ecb.update(bytes(range(32))) + ecb.finalize()
    secret = kid_of(
        cli("agree-key", "--private-key", alice, "--public-key", bob, "--name", "secret", "--key-size", "256")
    )
    assert json.loads(cli("show-sobject", "--kid", secret))["obj_type"] == "SECRET"  # the CLI's default type
    refused = cli(
        "agree-key",
        "--private-key",
        alice,
        "--public-key",
        base,
        "--name",
        "x",
        "--key-size",
        "256",
        ok=False,
    )
    assert b"AGREEKEY is not allowed" in refused

    # DES3: create-key, encrypt and decrypt in CBC, checked with TripleDES on the exported key.
    des3 = kid_of(
        cli("create-key", "--obj-type", "DES3", "--key-size", "168", "--name", "des3", "--exportable", "-f")
    )
    des3_value = bytes.fromhex(cli("export-object", "--kid", des3).decode().strip())
    message = tmp_path / "message"
    message.write_bytes(b"an odd-length message for triple DES")
    cli(
        "encrypt",
        "--kid",
        des3,
        "--alg",
        "DES3",
        "--mode",
        "CBC",
        "--in",
        str(message),
        "--out",
        str(tmp_path / "des3.enc"),
    )
    des3_iv = bytes.fromhex((tmp_path / "des3.enc.iv").read_text())
    dec = Cipher(TripleDES(des3_value), modes.CBC(des3_iv)).decryptor()
    unpadder = padding.PKCS7(64).unpadder()
    padded = dec.update((tmp_path / "des3.enc").read_bytes()) + dec.finalize()
    assert unpadder.update(padded) + unpadder.finalize() == message.read_bytes()
    cli(
        "decrypt", "--kid", des3, "--alg", "DES3", "--mode", "CBC", "--iv", des3_iv.hex(),
        "--in", str(tmp_path / "des3.enc"), "--out", str(tmp_path / "des3.dec"),
    )  # fmt: skip
    assert (tmp_path / "des3.dec").read_bytes() == message.read_bytes()

    # import-key of a hex DES3 key (three-key and two-key), used in ECB.
    for hex_key, size in (
        ("0123456789abcdeffedcba987654321089abcdef01234567", 168),
        ("0123456789abcdeffedcba9876543210", 112),
    ):
        (tmp_path / "des3.hex").write_text(hex_key)
        imported = kid_of(
            cli(
                "import-key", "--in", str(tmp_path / "des3.hex"), "--obj-type", "DES3", "--name", f"d3-{size}"
            )
        )
        assert json.loads(cli("show-sobject", "--kid", imported))["key_size"] == size
        (tmp_path / "eight").write_bytes(b"8 bytes!")
        cli(
            "encrypt",
            "--kid",
            imported,
            "--alg",
            "DES3",
            "--mode",
            "ECB",
            "--in",
            str(tmp_path / "eight"),
            "--out",
            str(tmp_path / "eight.enc"),
        )
        raw = bytes.fromhex(hex_key)
        ecb3 = Cipher(TripleDES(raw if size == 168 else raw + raw[:8]), modes.ECB()).encryptor()
        assert (tmp_path / "eight.enc").read_bytes() == ecb3.update(b"8 bytes!") + ecb3.finalize()

    # AES CFB, OFB (a server-made IV written beside the output) and CCM (nonce, ad and a tag file).
    for mode, cls in (("CFB", CFB), ("OFB", OFB)):
        out = tmp_path / f"{mode}.enc"
        cli("encrypt", "--kid", base, "--alg", "AES", "--mode", mode, "--in", str(message), "--out", str(out))
        mode_iv = bytes.fromhex(Path(f"{out}.iv").read_text())
        dec = Cipher(algorithms.AES(base_value), cls(mode_iv)).decryptor()
        assert dec.update(out.read_bytes()) + dec.finalize() == message.read_bytes()
        cli(
            "decrypt",
            "--kid",
            base,
            "--alg",
            "AES",
            "--mode",
            mode,
            "--iv",
            mode_iv.hex(),
            "--in",
            str(out),
            "--out",
            str(tmp_path / f"{mode}.dec"),
        )
        assert (tmp_path / f"{mode}.dec").read_bytes() == message.read_bytes()
    nonce, ad = bytes(range(12)), b"header"
    out = tmp_path / "ccm.enc"
    cli(
        "encrypt", "--kid", base, "--alg", "AES", "--mode", "CCM", "--iv", nonce.hex(), "--ad", ad.hex(),
        "--tag-len", "128", "--in", str(message), "--out", str(out),
    )  # fmt: skip
    tag = bytes.fromhex(Path(f"{out}.tag").read_text())
    assert AESCCM(base_value).decrypt(nonce, out.read_bytes() + tag, ad) == message.read_bytes()
    cli(
        "decrypt", "--kid", base, "--alg", "AES", "--mode", "CCM", "--iv", nonce.hex(), "--ad", ad.hex(),
        "--tag", f"{out}.tag", "--in", str(out), "--out", str(tmp_path / "ccm.dec"),
    )  # fmt: skip
    assert (tmp_path / "ccm.dec").read_bytes() == message.read_bytes()

    # Files of 350 KiB and more go through multipart encrypt and decrypt: CFB and OFB in pieces.
    big, stream_iv = tmp_path / "big", bytes(range(16, 32))
    big.write_bytes(os.urandom(400 * 1024 + 5))
    for mode, cls in (("CFB", CFB), ("OFB", OFB)):
        out = tmp_path / f"big.{mode}"
        common = ("--kid", base, "--alg", "AES", "--mode", mode, "--iv", stream_iv.hex())
        cli("encrypt", *common, "--in", str(big), "--out", str(out))
        enc = Cipher(algorithms.AES(base_value), cls(stream_iv)).encryptor()
        assert out.read_bytes() == enc.update(big.read_bytes()) + enc.finalize()
        cli("decrypt", *common, "--in", str(out), "--out", str(tmp_path / f"big.{mode}.dec"))
        assert (tmp_path / f"big.{mode}.dec").read_bytes() == big.read_bytes()
