"""Settings precedence (file < environment < flags), validation that names the setting and its source,
and secrets kept out of printed settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from xkslab_shared.config import LEAF_SPECS, ConfigError, env_var, load_settings, render_toml


def write(data_dir: Path, text: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "xkslab.toml").write_text(text)


def test_defaults_are_the_embedded_ones(tmp_path: Path) -> None:
    s = load_settings(tmp_path, environ={})
    assert s.seal.backend == "software"
    assert s.database_url == f"sqlite+aiosqlite:///{(tmp_path / 'xkslab.db').resolve()}"
    assert s.path(s.seal.key_file) == tmp_path / "seal.key"


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    write(tmp_path, '[audit]\nbatch_max = 10\nnode_id = "from-file"\n[dsm]\nport = 9000\n')
    env = {"XKSLAB_AUDIT_BATCH_MAX": "20", "XKSLAB_DSM_PORT": "9100"}
    s = load_settings(tmp_path, overrides={"dsm.port": 9200}, environ=env)
    assert s.audit.node_id == "from-file"
    assert s.audit.batch_max == 20
    assert s.dsm.port == 9200


def test_data_dir_from_environment(tmp_path: Path) -> None:
    assert load_settings(environ={"XKSLAB_DATA_DIR": str(tmp_path)}).data_dir == tmp_path


@pytest.mark.parametrize(
    ("toml", "env", "needle"),
    [
        ('[seal]\nbackend = "hsm"\n', {}, "setting seal.backend"),
        ("[audit]\nbatch_max = 0\n", {}, "must be greater than 0"),
        ("[nope]\nx = 1\n", {}, "unknown setting nope.x"),
        ("not toml = = 1", {}, "not valid TOML"),
        ("", {"XKSLAB_DSM_PORT": "70000"}, "XKSLAB_DSM_PORT"),
        ("", {"XKSLAB_AUDIT_FLUSH_INTERVAL_MS": "soon"}, "expected a number"),
        ("", {"XKSLAB_DATABASE_URL": "mysql://x"}, "database.url"),
        ('[dsm]\nport = "eighty"\n', {}, "expected an integer"),
        (
            "",
            {"XKSLAB_DATABASE_WAL_RESTART_FRAMES": "-1"},
            r"database\.wal_restart_frames \(environment XKSLAB_DATABASE_WAL_RESTART_FRAMES\): must be 0",
        ),
        (
            "[database]\nwal_restart_frames = 1000001\n",
            {},
            r"database\.wal_restart_frames \(.*xkslab\.toml\): must be 0",
        ),
    ],
)
def test_bad_settings_name_the_setting_and_source(
    tmp_path: Path, toml: str, env: dict[str, str], needle: str
) -> None:
    write(tmp_path, toml)
    with pytest.raises(ConfigError, match=needle):
        load_settings(tmp_path, environ=env)


def test_unknown_override_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting seal\.colour"):
        load_settings(tmp_path, overrides={"seal.colour": "red"}, environ={})


def test_secrets_are_redacted(tmp_path: Path) -> None:
    env = {
        "XKSLAB_SEAL_PKCS11_PIN": "987654",
        "XKSLAB_SEAL_PASSPHRASE": "open sesame",
        "XKSLAB_DATABASE_URL": "postgresql+asyncpg://bob:hunter2@127.0.0.1/db",
    }
    s = load_settings(tmp_path, environ=env)
    assert s.seal.pkcs11.pin == "987654"
    shown = repr(s) + str(s.redacted())
    for secret in ("987654", "open sesame", "hunter2"):
        assert secret not in shown
    assert s.redacted()["database"]["url"] == "postgresql+asyncpg://bob:***@127.0.0.1/db"


def test_every_setting_has_an_environment_variable_and_round_trips_through_toml(tmp_path: Path) -> None:
    assert env_var("seal.pkcs11.token_label") == "XKSLAB_SEAL_PKCS11_TOKEN_LABEL"
    values = {"seal.backend": "pkcs11", "audit.flush_interval_ms": 2.5, "dsm.port": 8600}
    write(tmp_path, render_toml(values))
    s = load_settings(tmp_path, environ={})
    assert (s.seal.backend, s.audit.flush_interval_ms, s.dsm.port) == ("pkcs11", 2.5, 8600)
    assert "seal.pkcs11.pin" in LEAF_SPECS


def test_xks_mtls_defaults_the_client_ca_and_subject_to_kms_own(tmp_path: Path) -> None:
    plain = load_settings(tmp_path, environ={})
    assert (plain.xks_client_ca(), plain.xks_client_subject()) == (None, "")
    mtls = load_settings(tmp_path, {"xks.mtls": "true", "kms.region": "eu-west-1"}, environ={})
    assert mtls.xks_client_ca() == tmp_path / "tls" / "ca.crt"
    assert mtls.xks_client_subject() == "cks.kms.eu-west-1.amazonaws.com"
    assert mtls.kms.xks_client_cert == Path("tls/kms-client.crt")
    explicit = load_settings(
        tmp_path,
        {"xks.mtls": "yes", "xks.client_ca": "/etc/other-ca.pem", "xks.client_subject": "CN=x"},
        environ={},
    )
    assert (explicit.xks_client_ca(), explicit.xks_client_subject()) == (Path("/etc/other-ca.pem"), "CN=x")
    # xks.client_ca alone is mTLS as before, with any subject from that CA
    alone = load_settings(tmp_path, environ={"XKSLAB_XKS_CLIENT_CA": "ca.pem"})
    assert (alone.xks_client_ca(), alone.xks_client_subject()) == (tmp_path / "ca.pem", "")
