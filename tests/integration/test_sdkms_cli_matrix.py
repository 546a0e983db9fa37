"""Every command of Fortanix's own ``sdkms-cli`` 5.6, unchanged, against ``xkslab dsm serve`` over HTTPS:
one table, ``COMMANDS``, one row per command, each expecting one outcome: **works** (exit 0, and its effect
checked through the REST API, with ``cryptography``, or in the files it wrote), **not emulated** (a
non-zero exit printing the lab's 501 that names the feature, from ``dsm_emulator/api/not_emulated.py``),
or **fails in sdkms-cli** (the client itself crashes before it asks the lab anything: ``import-pfx`` under
the ``cryptography`` it installs with; the lab cannot help it). The rows run in order in one lab, so a row
may use what an earlier one made (``Lab.ctx``). A new command is one row; ``test_every_command_has_a_row``
fails until it has one. The parts the rows are made of are in ``tests/integration/sdkms_cli_lab.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from dsm_emulator.api.not_emulated import ATTESTATION, CERTIFICATE_LOGIN, LDAP, PLUGINS
from tests.integration.sdkms_cli_exe import SDKMS_CLI
from tests.integration.sdkms_cli_lab import (
    IV,
    KEY,
    PLAIN,
    Args,
    Check,
    Lab,
    Row,
    both,
    cbc,
    certificate_and_key,
    client_fails,
    ecdsa_ok,
    eq,
    expect,
    file_is,
    key_field,
    last,
    not_emulated,
    pem_key,
    put,
    shows,
    tokens,
    works,
)
from tests.integration.test_sdkms_cli import dsm_https
from tests.integration.test_sdkms_cli_quorum import ADMIN, ADMIN_PW

__all__ = ["dsm_https"]  # the server fixture, shared with the other sdkms-cli tests

# ------------------------------------------------------------------- set-up steps some rows take


def acct(lab: Lab) -> str:
    lab.ctx.setdefault("acct", next(iter(lab.rest("GET", "/sys/v1/users/accounts"))))
    return lab["acct"]


def admin_id(lab: Lab) -> str:
    return str(next(u["user_id"] for u in lab.rest("GET", "/sys/v1/users") if u["user_email"] == ADMIN))


def api_key(lab: Lab, out: str) -> None:
    """get-app-api-key and regenerate-app-api-key: base64(app_id:secret), a new one each time."""
    key = last(out)
    assert base64.b64decode(key).decode().startswith(f"{lab['app']}:"), out
    assert key != lab.ctx.get("api_key")
    lab.ctx["api_key"] = key


def spare_app(lab: Lab) -> Sequence[str]:
    body = {"name": "mx-spare", "add_groups": [lab["group"]], "default_group": lab["group"]}
    lab.ctx["spare"] = lab.rest("POST", "/sys/v1/apps", body)["app_id"]
    return ["--app-id", lab["spare"]]


def spare_group(lab: Lab) -> Sequence[str]:
    lab.ctx["spare"] = lab.rest("POST", "/sys/v1/groups", {"name": "mx-spare"})["group_id"]
    return ["--group-id", lab["spare"]]


def gone(kind: str) -> Check:
    return lambda lab, out: lab.rest("GET", f"/{kind}/{lab['spare']}", status=404)


def quorum_request(lab: Lab) -> Sequence[str]:
    """An export held by a one-member quorum (the administrator), asked with ``export-object --quorum``
    and approved through the REST API: task-result fetches its result."""
    group = last(lab.cli("create-group", "--name", "mx-quorum", "--add-quorum-policy", "--n", "1",
                         "--users", admin_id(lab)))  # fmt: skip
    kid = last(lab.cli("create-key", "--obj-type", "AES", "--key-size", "256", "--name", "mx-held",
                       "--group-id", group, "--exportable", "-f"))  # fmt: skip
    match = re.search(r"request_id: (\S+)", lab.cli("export-object", "--kid", kid, "--quorum"))
    assert match
    assert lab.rest("POST", f"/sys/v1/approval_requests/{match.group(1)}/approve", {})["status"] == "APPROVED"
    return ["--request-id", match.group(1), "--out", lab.file("held.bin")]


def preactive(lab: Lab) -> Sequence[str]:
    body = {
        "name": "mx-later",
        "obj_type": "AES",
        "key_size": 256,
        "group_id": lab["group"],
        "state": "PreActive",
    }
    lab.ctx["later"] = lab.rest("POST", "/crypto/v1/keys", body, status=201)["kid"]
    return ["--kid", lab["later"]]


def ec_key(lab: Lab) -> str:
    if "ec" not in lab.ctx:
        lab.ctx["ec"] = last(
            lab.cli("create-key", "--obj-type", "EC", "--ec-name", "NistP256", "--name", "mx-ec")
        )
    return lab["ec"]


def agreeing_key(lab: Lab) -> str:
    """An EC key that may agree (AGREEKEY is not among an EC key's default key_ops)."""
    if "agree" not in lab.ctx:
        lab.ctx["agree"] = last(
            lab.cli("create-key", "--obj-type", "EC", "--ec-name", "NistP256", "--name", "mx-agree",
                    "--key-ops", "SIGN,VERIFY,AGREEKEY")
        )  # fmt: skip
    return lab["agree"]


def hmac_key(lab: Lab) -> str:
    if "hmac" not in lab.ctx:
        key_file = lab.file("hmac.hex", KEY.hex().encode())
        lab.ctx["hmac"] = last(
            lab.cli("import-key", "--obj-type", "HMAC", "--name", "mx-hmac", "--in", key_file)
        )
    return lab["hmac"]


def pfx_in(lab: Lab) -> Sequence[str]:
    cert, private = certificate_and_key("pfx.example")
    data = pkcs12.serialize_key_and_certificates(
        b"mx", private, cert, None, serialization.BestAvailableEncryption(b"pfx-pass")
    )
    return ["--in", lab.file("in.p12", data), "--key-type", "EC", "--ec-curve", "NistP256", "--name", "mx-pfx",
            "--password", "pfx-pass", "--exportable", "--force"]  # fmt: skip


def pfx_out(lab: Lab) -> Sequence[str]:
    """A key and its certificate, imported with import-key (PEM) and import-cert, for export-pfx."""
    cert, private = certificate_and_key("pfx.example")
    lab.ctx["pfx_cert"] = cert
    key = last(lab.cli("import-key", "--obj-type", "EC", "--name", "mx-pfx-key", "--exportable", "-f",
                       "--in", lab.file("pfx.key", pem_key(private))))  # fmt: skip
    crt = last(lab.cli("import-cert", "--name", "mx-pfx-cert",
                       "--in", lab.file("pfx.crt", cert.public_bytes(serialization.Encoding.PEM))))  # fmt: skip
    return ["--out", lab.file("out.pfx"), "--cert-uuid", crt, "--key-uuid", key, "--password", "pfx-pass"]


def pfx_holds_them(lab: Lab, out: str) -> None:
    loaded = pkcs12.load_pkcs12(lab.read("out.pfx"), b"pfx-pass")
    assert loaded.cert is not None and loaded.key is not None
    assert loaded.cert.certificate == lab.ctx["pfx_cert"]
    assert loaded.key.public_key() == lab.ctx["pfx_cert"].public_key()


def client_certificate(lab: Lab) -> Sequence[str]:
    cert, private = certificate_and_key("app.example")
    return ["--app-id", str(uuid.uuid4()),
            "--certificate-path", lab.file("app.crt", cert.public_bytes(serialization.Encoding.PEM)),
            "--key-path", lab.file("app.key", pem_key(private))]  # fmt: skip


def logged_in_again(lab: Lab) -> Sequence[str]:
    lab.cli("user-login", "--username", ADMIN, "--password", ADMIN_PW)
    lab.cli("app-login", "--api-key", lab["api_key"])
    return []


def batch_file(lab: Lab, name: str, line: str) -> Sequence[str]:
    return ["--in", lab.file(name, line.format(t=lab.tmp, **lab.ctx).encode() + b"\n")]


def transient(lab: Lab) -> str:
    return lab.cli(
        "create-key", "--obj-type", "AES", "--key-size", "256", "--name", "t", "--transient"
    ).strip()


def cert_pem(lab: Lab) -> str:
    return lab.file(
        "cert.pem", certificate_and_key("cert.example")[0].public_bytes(serialization.Encoding.PEM)
    )


HMAC_HEX = hmac.new(KEY, PLAIN, "sha256").hexdigest()
CBC = ["--alg", "AES", "--mode", "CBC", "--iv", IV.hex()]
PFX_BUG = "'builtins.PKCS12Certificate' object has no attribute '_cert'"


def cli_row(lab: Lab, *args: str) -> Sequence[str]:
    """Arguments as given, with ``{name}`` filled from ``lab.ctx`` and ``{t}`` the lab's directory."""
    return [arg.format(t=lab.tmp, **lab.ctx) for arg in args]


def a(*args: str) -> Args:
    return lambda lab: cli_row(lab, *args)


# ------------------------------------------------------------------------------------- the table

# fmt: off
COMMANDS: tuple[Row, ...] = (
    # Before any login.
    works("server-health", a(), shows("Server is Healthy")),
    works("server-version", a(), shows(lambda lab: lab.rest("GET", "/sys/v1/version")["version"])),
    not_emulated("ldap-auth", LDAP, a("--user-email", ADMIN, "--password", ADMIN_PW)),
    not_emulated("app-certificate-login", CERTIFICATE_LOGIN, client_certificate),
    # The administrator: user commands, and "either" commands while no app is logged in.
    works("user-login", a("--username", ADMIN, "--password", ADMIN_PW), tokens(has=["user-token"])),
    works("list-accounts", a(), shows(acct)),
    works("select-account", lambda lab: ["--account-id", acct(lab)], tokens(has=["user-token"])),
    works("show-account", lambda lab: ["--account-id", acct(lab)], shows(acct)),
    works("list-users", a(), shows(ADMIN, admin_id)),
    works("show-user", lambda lab: ["--user-id", admin_id(lab)], shows(ADMIN)),
    works("create-group", a("--name", "mx-group"),
          both(put("group"), lambda lab, out: eq(lab.group(lab["group"])["name"], "mx-group"))),
    works("update-group", a("--group-id", "{group}", "--description", "matrix group"),
          lambda lab, out: eq(lab.group(lab["group"])["description"], "matrix group")),
    works("list-groups", a(), shows("mx-group", lambda lab: lab["group"])),
    works("show-group", a("--group-id", "{group}"), shows("mx-group", "matrix group")),
    works("create-app", a("--name", "mx-app", "--default-group", "{group}", "--groups", "{group}"),
          both(put("app"), lambda lab, out: eq(lab.rest("GET", f"/sys/v1/apps/{lab['app']}")["name"], "mx-app"))),
    works("list-apps", a(), shows("mx-app", lambda lab: lab["app"])),
    works("show-app", a("--app-id", "{app}"), shows("mx-app")),
    works("get-app-api-key", a("--app-id", "{app}"), api_key),
    works("regenerate-app-api-key", a("--app-id", "{app}"), api_key),
    works("delete-app", spare_app, gone("sys/v1/apps")),
    works("delete-group", spare_group, gone("sys/v1/groups")),
    works("task-result", quorum_request,
          both(lambda lab, out: eq(json.loads(out)["status"], 200), lambda lab, out: eq(len(lab.read("held.bin")), 32))),
    works("audit-log", a("--limit", "5", "--out", "{t}/audit.csv"),
          lambda lab, out: eq(len(lab.read("audit.csv").splitlines()) >= 5, True)),
    # The app: "either" commands use its session from here on.
    works("app-login", a("--api-key", "{api_key}"), tokens(has=["app-token", "user-token"])),
    works("create-key", a("--obj-type", "AES", "--key-size", "256", "--name", "mx-aes"),
          both(put("aes"), key_field("aes", "obj_type", "AES"))),
    works("create-key", a("--obj-type", "EC", "--ec-name", "Ed25519", "--name", "mx-ed25519"),
          both(put("ed"), key_field("ed", "elliptic_curve", "Ed25519"))),
    works("list-keys", a(), shows("mx-aes", lambda lab: lab["aes"])),
    works("list-objects", a(), shows("mx-aes", lambda lab: lab["aes"])),
    works("show-sobject", a("--kid", "{aes}"), lambda lab, out: eq(json.loads(out)["kid"], lab["aes"])),
    works("update-object", a("--kid", "{aes}", "--description", "changed"), key_field("aes", "description", "changed")),
    works("import-key", lambda lab: ["--obj-type", "AES", "--name", "mx-known", "--exportable", "-f",
                                     "--in", lab.file("key.hex", KEY.hex().encode())], put("known")),
    works("export-object", a("--kid", "{known}", "--der"), lambda lab, out: eq(lab.ctx["stdout"], KEY)),
    works("encrypt", lambda lab: ["--kid", lab["known"], *CBC, "--in", lab.file("plain.txt", PLAIN),
                                  "--out", lab.file("cipher.bin")], file_is("cipher.bin", cbc(PLAIN))),
    works("decrypt", a("--kid", "{known}", *CBC, "--in", "{t}/cipher.bin", "--out", "{t}/back.txt"),
          file_is("back.txt", PLAIN)),
    works("encrypt-init", a("--kid", "{known}", *CBC, "--state", "{t}/state"),
          lambda lab, out: eq(bool(lab.read("state")), True)),
    works("encrypt-update", a("--kid", "{known}", "--state", "{t}/state", "--out", "{t}/mp.bin"),
          file_is("mp.bin", cbc(PLAIN)[:32]), stdin=PLAIN),
    works("encrypt-final", a("--kid", "{known}", "--state", "{t}/state", "--out", "{t}/mp.bin"),
          file_is("mp.bin", cbc(PLAIN))),
    works("decrypt-init", a("--kid", "{known}", *CBC, "--state", "{t}/dstate"),
          lambda lab, out: eq(bool(lab.read("dstate")), True)),
    works("decrypt-update", a("--kid", "{known}", "--state", "{t}/dstate", "--out", "{t}/mp.txt"),
          lambda lab, out: eq(PLAIN.startswith(lab.read("mp.txt")), True), stdin=cbc(PLAIN)),
    works("decrypt-final", a("--kid", "{known}", "--state", "{t}/dstate", "--out", "{t}/mp.txt"),
          file_is("mp.txt", PLAIN)),
    works("batch-encrypt", lambda lab: batch_file(
        lab, "benc.txt", f"--kid {{known}} --in {{t}}/plain.txt {' '.join(CBC)} --out {{t}}/bc.bin"),
          file_is("bc.bin", cbc(PLAIN))),
    works("batch-decrypt", lambda lab: batch_file(
        lab, "bdec.txt", f"--kid {{known}} --in {{t}}/bc.bin {' '.join(CBC)} --out {{t}}/bp.txt"),
          file_is("bp.txt", PLAIN)),
    works("wrap-key", a("--wrapping-kid", "{known}", "--kid", "{known}", "--alg", "AES", "--mode", "KW",
                        "--out", "{t}/wrapped.bin"), lambda lab, out: eq(len(lab.read("wrapped.bin")), 40)),
    works("unwrap-key", a("--in", "{t}/wrapped.bin", "--wrapping-kid", "{known}", "--alg", "AES", "--mode", "KW",
                          "--obj-type", "AES", "--name", "mx-unwrapped"),
          both(put("unwrapped"), lambda lab, out: eq(lab.key(lab["unwrapped"])["kcv"], lab.key(lab["known"])["kcv"]))),
    works("import-secret", lambda lab: ["--name", "mx-secret", "--obj-type", "SECRET",
                                        "--in", lab.file("s1.txt", b"first secret")],
          both(put("secret"), key_field("secret", "obj_type", "SECRET"))),
    works("rotate-secret", lambda lab: ["--name", "mx-secret", "--in", lab.file("s2.txt", b"second secret")],
          lambda lab, out: eq(lab.rest("POST", "/crypto/v1/keys/info", {"name": "mx-secret"})["kid"], last(out))),
    works("rotate-key", a("--name", "mx-aes"), lambda lab, out: eq(lab.key(last(out))["links"]["replaced"], lab["aes"])),
    works("persist-key", lambda lab: ["--name", "mx-kept", "--transient-key", transient(lab)],
          lambda lab, out: eq(lab.key(last(out))["name"], "mx-kept")),
    works("activate-object", preactive, key_field("later", "state", "Active")),
    works("revoke-object", a("--kid", "{later}", "--code", "Superseded", "--message", "replaced"),
          key_field("later", "state", "Deactivated")),
    works("delete-key", a("--kid", "{later}"),
          lambda lab, out: lab.rest("GET", f"/crypto/v1/keys/{lab['later']}", status=404)),
    works("message-digest", lambda lab: ["--alg", "SHA256", "--in", lab.file("message.txt", PLAIN)],
          shows(hashlib.sha256(PLAIN).hexdigest())),
    works("sign", lambda lab: ["--kid", ec_key(lab), "--hash-alg", "SHA256", "--in", lab.file("message.txt"),
                               "--out", lab.file("message.sig")], ecdsa_ok("message.sig")),
    # verify and hmac-verify: exit 0 is the verdict (a wrong signature or MAC exits 1).
    works("verify", a("--kid", "{ec}", "--hash-alg", "SHA256", "--in", "{t}/message.txt", "--sig-in", "{t}/message.sig"),
          lambda lab, out: eq(lab.ctx["stdout"], b"")),
    works("batch-sign", lambda lab: batch_file(
        lab, "bsign.txt", "--kid {ec} --hash-alg SHA256 --in {t}/message.txt --out {t}/batch.sig"),
          both(lambda lab, out: eq(out.split()[::2], ["1", "0"]), ecdsa_ok("batch.sig"))),
    works("batch-verify", lambda lab: batch_file(
        lab, "bverify.txt", "--kid {ec} --hash-alg SHA256 --in {t}/message.txt --sig-in {t}/batch.sig"),
          lambda lab, out: eq(out.split(), ["1", "0"])),
    works("hmac-digest", lambda lab: ["--kid", hmac_key(lab), "--alg", "SHA256", "--in", lab.file("message.txt")],
          shows(HMAC_HEX)),
    works("hmac-verify", a("--kid", "{hmac}", "--alg", "SHA256", "--in", "{t}/message.txt", "--digest", HMAC_HEX),
          lambda lab, out: eq(lab.ctx["stdout"], b"")),
    works("import-cert", lambda lab: ["--name", "mx-cert", "--in", cert_pem(lab)],
          both(put("cert"), key_field("cert", "obj_type", "CERTIFICATE"))),
    client_fails("import-pfx", PFX_BUG, pfx_in),
    works("export-pfx", pfx_out, pfx_holds_them),
    not_emulated("key-attestation", ATTESTATION, a("--kid", "{known}")),
    not_emulated("create-plugin", PLUGINS, lambda lab: ["--name", "p", "--in", lab.file("plugin.lua", b"return 1")]),
    not_emulated("invoke-plugin", PLUGINS, a("--id", str(uuid.uuid4()))),
    not_emulated("update-plugin", PLUGINS, a("--id", str(uuid.uuid4()), "--in", "{t}/plugin.lua")),
    not_emulated("delete-plugin", PLUGINS, a("--id", str(uuid.uuid4()))),
    # Derivation, agreement, DES3 and the CFB, OFB and CCM modes.
    works("derive-key", a("--kid", "{known}", "--name", "mx-derived", "--key-size", "256", "--key-type", "AES",
                          "--plain", PLAIN[:16].hex(), "--alg", "AES", "--mode", "CBCNOPAD", "--iv", IV.hex()),
          lambda lab, out: eq(lab.key(last(out))["obj_type"], "AES")),
    works("agree-key", lambda lab: ["--private-key", agreeing_key(lab), "--public-key", lab["agree"], "--name", "mx-agreed",
                                    "--key-size", "256", "--key-type", "AES"],
          lambda lab, out: eq(lab.key(last(out))["obj_type"], "AES")),
    works("create-key", a("--obj-type", "DES3", "--key-size", "168", "--name", "mx-des3"),
          both(put("des3"), key_field("des3", "obj_type", "DES3"))),
    works("encrypt", a("--kid", "{known}", "--alg", "AES", "--mode", "CFB", "--iv", IV.hex(),
                       "--in", "{t}/plain.txt", "--out", "{t}/cfb.bin"),
          lambda lab, out: eq(len(lab.read("cfb.bin")), len(PLAIN))),
    works("encrypt", a("--kid", "{known}", "--alg", "AES", "--mode", "OFB", "--iv", IV.hex(),
                       "--in", "{t}/plain.txt", "--out", "{t}/ofb.bin"),
          lambda lab, out: eq(len(lab.read("ofb.bin")), len(PLAIN))),
    works("encrypt", a("--kid", "{known}", "--alg", "AES", "--mode", "CCM", "--iv", IV[:12].hex(), "--tag-len", "128",
                       "--in", "{t}/plain.txt", "--out", "{t}/ccm.bin"),
          lambda lab, out: eq(len(lab.read("ccm.bin")), len(PLAIN))),
    # Logging out, last.
    works("app-logout", a(), tokens(has=["user-token"], lacks=["app-token"])),
    works("user-logout", a(), tokens(lacks=["app-token", "user-token"])),
    works("logout", logged_in_again, tokens(lacks=["app-token", "user-token"])),
)

# fmt: on


# ------------------------------------------------------------------------------------- the tests


def test_every_command_has_a_row() -> None:
    """The table covers what ``sdkms-cli --help`` lists, and nothing else (a command an upgrade adds
    fails here until it has its row); each row expects exactly one outcome."""
    proc = subprocess.run([SDKMS_CLI, "--help"], capture_output=True, text=True, timeout=60)
    match = re.search(r"\{([a-z0-9,-]+)\}", proc.stdout)
    assert proc.returncode == 0 and match, proc.stdout
    listed = set(match.group(1).split(","))
    assert len(listed) >= 70
    assert {row.command for row in COMMANDS} == listed
    for row in COMMANDS:
        assert sum(x is not None for x in (row.check, row.feature, row.client_error)) == 1, row.command


def test_every_sdkms_cli_command_works_or_answers_501(dsm_https: tuple[str, Path], tmp_path: Path) -> None:
    endpoint, ca = dsm_https
    env = {**os.environ, "SDKMS_CLI_TOKEN_FILE": str(tmp_path / "tokens"), "HOME": str(tmp_path)}
    for name in ("FORTANIX_API_KEY", "SDKMS_API_KEY"):
        env.pop(name, None)
    lab = Lab(endpoint, ca, tmp_path, env)
    (tmp_path / "tokens").write_text("")
    failures: list[str] = []
    for row in COMMANDS:
        try:
            expect(lab, row)
        except (AssertionError, KeyError, OSError, ValueError) as exc:
            failures.append(f"{row.command} ({row.outcome()}): {exc!r}"[:1500])
    assert not failures, "\n".join(failures)
    # import-pfx failed in the client, before any request: nothing of it is in the lab.
    assert not [k for k in lab.rest("GET", "/crypto/v1/keys") if k["name"].startswith("mx-pfx_")]


def test_readme_table_of_commands_says_the_same() -> None:
    """The README's table of sdkms-cli commands gives each the outcome its row expects."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = dict(
        re.findall(r"^\| `([a-z0-9-]+)` \| (works|not emulated|fails in sdkms-cli)", text, re.M)
    )
    expected = {row.command: row.outcome() for row in COMMANDS}
    assert documented == expected
