"""What the rows of the sdkms-cli matrix (tests/integration/test_sdkms_cli_matrix.py) are made of: the lab
they run in (the real sdkms-cli with its own token file, the REST API as the administrator, and what
earlier rows made), the three outcomes a row can expect, and the checks and set-up steps rows share."""

from __future__ import annotations

import base64
import datetime
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from tests.integration.sdkms_cli_exe import SDKMS_CLI
from tests.integration.test_sdkms_cli_quorum import ADMIN, ADMIN_PW

KEY = bytes(range(32))  # the imported AES (and HMAC) key whose results the rows check locally
IV = bytes(range(16))
PLAIN = b"sixteen byte msg and some more bytes"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class Lab:
    """The DSM over HTTPS, sdkms-cli with its own token file, the REST API as the administrator, and what
    the rows made so far (``ctx``; ``ctx["stdout"]`` is the last row's raw stdout)."""

    endpoint: str
    ca: Path
    tmp: Path
    env: dict[str, str]
    ctx: dict[str, Any] = field(default_factory=dict)

    def run(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [SDKMS_CLI, "--api-endpoint", self.endpoint, "--ssl-ca-cert", str(self.ca), *args],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            env=self.env,
            cwd=self.tmp,
            timeout=300,  # a generous bound on a shared machine, not a performance budget
        )

    def cli(self, *args: str) -> str:
        """A set-up step: sdkms-cli that must succeed; its stdout."""
        proc = self.run(*args)
        assert proc.returncode == 0, f"sdkms-cli {args}: {proc.stdout!r} {proc.stderr!r}"
        return proc.stdout.decode()

    def rest(self, method: str, path: str, body: object = None, status: int | None = 200) -> Any:
        """The REST API as the administrator, in a session of its own."""
        ca = str(self.ca)
        auth = requests.post(
            f"{self.endpoint}/sys/v1/session/auth", auth=(ADMIN, ADMIN_PW), verify=ca, timeout=60
        )
        assert auth.status_code == 200, auth.text
        headers = {"Authorization": f"Bearer {auth.json()['access_token']}"}
        resp = requests.request(
            method, self.endpoint + path, json=body, headers=headers, verify=ca, timeout=60
        )
        if status is not None:
            assert resp.status_code == status, (method, path, resp.status_code, resp.text)
        return resp.json() if resp.content else None

    def file(self, name: str, data: bytes | None = None) -> str:
        """The path of a file in the lab's directory, written first when ``data`` is given."""
        if data is not None:
            (self.tmp / name).write_bytes(data)
        return str(self.tmp / name)

    def read(self, name: str) -> bytes:
        return (self.tmp / name).read_bytes()

    def key(self, kid: str) -> dict[str, Any]:
        return dict(self.rest("GET", f"/crypto/v1/keys/{kid}"))

    def group(self, gid: str) -> dict[str, Any]:
        return dict(self.rest("GET", f"/sys/v1/groups/{gid}"))

    def __getitem__(self, name: str) -> str:
        return str(self.ctx[name])


Args = Callable[[Lab], Sequence[str]]
Check = Callable[[Lab, str], None]


@dataclass(frozen=True)
class Row:
    """One use of one command: its arguments (built when the row runs, set-up steps included) and what
    it must do: ``check`` its effect (it works), answer the 501 naming ``feature`` (not emulated), or fail
    in the client itself with ``client_error`` before it asks the lab anything (a bug of sdkms-cli 5.6)."""

    command: str
    args: Args
    check: Check | None = None
    feature: str | None = None
    client_error: str | None = None
    stdin: bytes | None = None

    def outcome(self) -> str:
        if self.check is not None:
            return "works"
        return "not emulated" if self.feature is not None else "fails in sdkms-cli"


def works(command: str, args: Args, check: Check, stdin: bytes | None = None) -> Row:
    return Row(command, args, check=check, stdin=stdin)


def not_emulated(command: str, feature: str, args: Args) -> Row:
    return Row(command, args, feature=feature)


def client_fails(command: str, error: str, args: Args) -> Row:
    return Row(command, args, client_error=error)


def expect(lab: Lab, row: Row) -> None:
    """Run one row and check its outcome."""
    proc = lab.run(row.command, *row.args(lab), stdin=row.stdin)
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    lab.ctx["stdout"] = proc.stdout
    if row.check is not None:
        assert proc.returncode == 0, out + err
        row.check(lab, out)
        return
    assert proc.returncode != 0, out
    if row.feature is not None:
        assert "501" in out + err and f"xkslab does not emulate {row.feature}" in out + err, out + err
    else:
        assert row.client_error is not None and row.client_error in err, err


# ----------------------------------------------------------------------------------- checks


def eq(got: object, want: object) -> None:
    assert got == want, (got, want)


def last(out: str) -> str:
    return out.strip().split()[-1]


def put(name: str) -> Check:
    """Keeps the UUID the command printed last as ``ctx[name]``."""

    def check(lab: Lab, out: str) -> None:
        found = UUID.findall(out)
        assert found, out
        lab.ctx[name] = found[-1]

    return check


def both(*checks: Check) -> Check:
    def check(lab: Lab, out: str) -> None:
        for one in checks:
            one(lab, out)

    return check


def shows(*needles: str | Callable[[Lab], str]) -> Check:
    """The output contains each needle (a string, or one worked out from the lab)."""

    def check(lab: Lab, out: str) -> None:
        for needle in needles:
            text = needle if isinstance(needle, str) else needle(lab)
            assert text in out, (text, out)

    return check


def file_is(name: str, want: bytes) -> Check:
    return lambda lab, out: eq(lab.read(name), want)


def key_field(ctx_name: str, name: str, want: object) -> Check:
    return lambda lab, out: eq(lab.key(lab[ctx_name])[name], want)


def tokens(*, has: Sequence[str] = (), lacks: Sequence[str] = ()) -> Check:
    """What sdkms-cli's token file holds after a login or a logout."""

    def check(lab: Lab, out: str) -> None:
        text = (lab.tmp / "tokens").read_text()
        for name in has:
            assert re.search(rf"^{name}=\S", text, re.M), text
        for name in lacks:
            assert re.search(rf"^{name}=\S", text, re.M) is None, text

    return check


def ecdsa_ok(signature_file: str) -> Check:
    """The signature in the file verifies, with ``cryptography``, against the lab's EC key's pub_key."""

    def check(lab: Lab, out: str) -> None:
        public = serialization.load_der_public_key(base64.b64decode(lab.key(lab["ec"])["pub_key"]))
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(lab.read(signature_file), PLAIN, ec.ECDSA(hashes.SHA256()))

    return check


# ----------------------------------------------------------------------------------- local oracles


def cbc(data: bytes) -> bytes:
    """AES-256-CBC with PKCS#7 padding under KEY and IV."""
    pad = 16 - len(data) % 16
    encryptor = Cipher(algorithms.AES(KEY), modes.CBC(IV)).encryptor()
    return encryptor.update(data + bytes([pad]) * pad) + encryptor.finalize()


def certificate_and_key(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name)
    builder = builder.public_key(private.public_key()).serial_number(x509.random_serial_number())
    builder = builder.not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
    return builder.sign(private, hashes.SHA256()), private


def pem_key(private: ec.EllipticCurvePrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
