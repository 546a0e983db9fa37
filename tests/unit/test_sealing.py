"""Tests for dsm_emulator.sealing: the software sealer and the PKCS#11 sealer on SoftHSM2."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dsm_emulator.sealing import (
    Pkcs11SealConfig,
    Sealer,
    SealError,
    SoftwareSealConfig,
    create_sealing_key,
    open_sealer,
)
from tests.softhsm import SoftHsmToken

# softhsm_dir and softhsm_token come from tests/conftest.py: bound here again, they would be a second
# session-scoped token directory, and the first that a process loads SoftHSM with is the only one it
# reads (tests/softhsm.py), so under pytest-xdist a worker that ran this module first broke the others.

AAD = b"xkslab keyring term 7"
PLAINTEXT = bytes(range(32))
PASSPHRASE = "correct horse battery staple 9f2c"


def tamper(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


def assert_wrap_contract(sealer: Sealer) -> None:
    """Properties every backend must share so the keyring can treat them alike."""
    blob = sealer.wrap(PLAINTEXT, AAD)
    assert blob[:1] == b"\x01"
    assert len(blob) == 1 + 12 + len(PLAINTEXT) + 16
    assert sealer.unwrap(blob, AAD) == PLAINTEXT
    assert sealer.wrap(PLAINTEXT, AAD) != blob  # fresh nonce each time
    for plaintext, aad in [(b"", b""), (b"x", b""), (os.urandom(1000), b"a" * 300)]:
        assert sealer.unwrap(sealer.wrap(plaintext, aad), aad) == plaintext

    with pytest.raises(SealError):
        sealer.unwrap(blob, AAD + b"x")
    with pytest.raises(SealError):
        sealer.unwrap(blob, b"")
    for index in (1, 12, 13, len(blob) - 1):  # nonce, ciphertext, tag
        with pytest.raises(SealError):
            sealer.unwrap(tamper(blob, index), AAD)
    with pytest.raises(SealError, match="version"):
        sealer.unwrap(b"\x02" + blob[1:], AAD)
    with pytest.raises(SealError, match="version"):
        sealer.unwrap(b"", AAD)
    with pytest.raises(SealError):
        sealer.unwrap(blob[:28], AAD)
    with pytest.raises(SealError):
        sealer.unwrap(blob[:-1], AAD)
    # Failures must not wedge the sealer.
    assert sealer.unwrap(blob, AAD) == PLAINTEXT


# --------------------------------------------------------------------------- software, key file


@pytest.fixture
def key_config(tmp_path: Path) -> SoftwareSealConfig:
    config = SoftwareSealConfig(key_file=tmp_path / "keys" / "seal.key")
    create_sealing_key(config)
    return config


@pytest.fixture
def software_sealer(key_config: SoftwareSealConfig) -> Iterator[Sealer]:
    sealer = open_sealer(key_config)
    yield sealer
    sealer.close()


def test_software_round_trip_and_tamper_detection(software_sealer: Sealer) -> None:
    assert software_sealer.kind == "software"
    assert_wrap_contract(software_sealer)


def test_software_blob_is_plain_aes_gcm(key_config: SoftwareSealConfig, software_sealer: Sealer) -> None:
    assert key_config.key_file is not None
    blob = software_sealer.wrap(PLAINTEXT, AAD)
    key = key_config.key_file.read_bytes()
    assert AESGCM(key).decrypt(blob[1:13], blob[13:], AAD) == PLAINTEXT


def test_create_key_file_is_0600_raw_32_bytes(key_config: SoftwareSealConfig) -> None:
    assert key_config.key_file is not None
    st = key_config.key_file.stat()
    assert st.st_mode & 0o777 == 0o600
    assert st.st_size == 32
    assert not [p for p in key_config.key_file.parent.iterdir() if p.name.endswith(".tmp")]


def test_create_sealing_key_refuses_to_overwrite(key_config: SoftwareSealConfig) -> None:
    assert key_config.key_file is not None
    before = key_config.key_file.read_bytes()
    with pytest.raises(SealError, match="already exists"):
        create_sealing_key(key_config)
    assert key_config.key_file.read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(key_config: SoftwareSealConfig, mode: int) -> None:
    assert key_config.key_file is not None
    key_config.key_file.chmod(mode)
    with pytest.raises(SealError, match="chmod 600"):
        open_sealer(key_config)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 44, 64])
def test_key_file_of_wrong_length_is_refused(tmp_path: Path, length: int) -> None:
    path = tmp_path / "seal.key"
    path.write_bytes(os.urandom(length))
    path.chmod(0o600)
    with pytest.raises(SealError, match="32"):
        open_sealer(SoftwareSealConfig(key_file=path))


def test_missing_key_file_and_symlink_are_refused(tmp_path: Path, key_config: SoftwareSealConfig) -> None:
    with pytest.raises(SealError, match="does not exist"):
        open_sealer(SoftwareSealConfig(key_file=tmp_path / "nope.key"))
    link = tmp_path / "link.key"
    link.symlink_to(key_config.key_file)  # type: ignore[arg-type]
    with pytest.raises(SealError):
        open_sealer(SoftwareSealConfig(key_file=link))


def test_software_key_ids(tmp_path: Path, key_config: SoftwareSealConfig) -> None:
    other = SoftwareSealConfig(key_file=tmp_path / "other.key")
    create_sealing_key(other)
    with (
        closing(open_sealer(key_config)) as a,
        closing(open_sealer(key_config)) as a2,
        closing(open_sealer(other)) as b,
    ):
        assert a.key_id == a2.key_id
        assert a.key_id != b.key_id
        assert a.key_id.startswith("software:")
        assert len(a.key_id) == len("software:") + 16
        assert key_config.key_file is not None
        assert key_config.key_file.read_bytes().hex()[:16] not in a.key_id
        with pytest.raises(SealError):
            b.unwrap(a.wrap(PLAINTEXT, AAD), AAD)


def test_closed_software_sealer_refuses_work(key_config: SoftwareSealConfig) -> None:
    sealer = open_sealer(key_config)
    blob = sealer.wrap(PLAINTEXT, AAD)
    sealer.close()
    sealer.close()
    with pytest.raises(SealError, match="closed"):
        sealer.unwrap(blob, AAD)
    with closing(open_sealer(key_config)) as again:
        assert again.unwrap(blob, AAD) == PLAINTEXT


# --------------------------------------------------------------------------- software, passphrase


@pytest.fixture
def passphrase_config(tmp_path: Path) -> SoftwareSealConfig:
    config = SoftwareSealConfig(passphrase=PASSPHRASE, salt_file=tmp_path / "seal.salt")
    create_sealing_key(config)
    return config


def test_passphrase_round_trip_across_sealers(passphrase_config: SoftwareSealConfig) -> None:
    assert passphrase_config.salt_file is not None
    st = passphrase_config.salt_file.stat()
    assert (st.st_mode & 0o777, st.st_size) == (0o600, 16)
    salt = passphrase_config.salt_file.read_bytes()
    create_sealing_key(passphrase_config)  # existing salt is kept, not replaced
    assert passphrase_config.salt_file.read_bytes() == salt

    with closing(open_sealer(passphrase_config)) as first:
        assert_wrap_contract(first)
        blob = first.wrap(PLAINTEXT, AAD)
    again = SoftwareSealConfig(passphrase=PASSPHRASE, salt_file=passphrase_config.salt_file)
    with closing(open_sealer(again)) as second:
        assert second.key_id == first.key_id
        assert second.unwrap(blob, AAD) == PLAINTEXT


def test_wrong_passphrase_fails_without_leaking(passphrase_config: SoftwareSealConfig) -> None:
    with closing(open_sealer(passphrase_config)) as sealer:
        blob = sealer.wrap(PLAINTEXT, AAD)
    wrong_phrase = "wrong passphrase 77ad"
    wrong = SoftwareSealConfig(passphrase=wrong_phrase, salt_file=passphrase_config.salt_file)
    with closing(open_sealer(wrong)) as sealer, pytest.raises(SealError) as excinfo:
        sealer.unwrap(blob, AAD)
    assert wrong_phrase not in str(excinfo.value)
    assert PASSPHRASE not in str(excinfo.value)


def test_same_passphrase_other_salt_is_another_key(
    tmp_path: Path, passphrase_config: SoftwareSealConfig
) -> None:
    other = SoftwareSealConfig(passphrase=PASSPHRASE, salt_file=tmp_path / "other.salt")
    create_sealing_key(other)
    with closing(open_sealer(passphrase_config)) as a, closing(open_sealer(other)) as b:
        assert a.key_id != b.key_id


def test_passphrase_needs_its_salt_file(tmp_path: Path) -> None:
    with pytest.raises(SealError, match="does not exist") as excinfo:
        open_sealer(SoftwareSealConfig(passphrase=PASSPHRASE, salt_file=tmp_path / "missing.salt"))
    assert PASSPHRASE not in str(excinfo.value)
    bad = tmp_path / "short.salt"
    bad.write_bytes(b"x" * 8)
    with pytest.raises(SealError, match="16"):
        open_sealer(SoftwareSealConfig(passphrase=PASSPHRASE, salt_file=bad))


def test_software_config_validation(tmp_path: Path) -> None:
    with pytest.raises(SealError):
        SoftwareSealConfig()
    with pytest.raises(SealError) as excinfo:
        SoftwareSealConfig(key_file=tmp_path / "k", passphrase=PASSPHRASE)
    assert PASSPHRASE not in str(excinfo.value)
    with pytest.raises(SealError):
        SoftwareSealConfig(passphrase=PASSPHRASE)
    with pytest.raises(SealError):
        SoftwareSealConfig(passphrase="", salt_file=tmp_path / "s")
    with pytest.raises(SealError):
        SoftwareSealConfig(key_file=tmp_path / "k", salt_file=tmp_path / "s")
    config = SoftwareSealConfig(passphrase=PASSPHRASE, salt_file=str(tmp_path / "s"))  # type: ignore[arg-type]
    assert isinstance(config.salt_file, Path)
    assert PASSPHRASE not in repr(config)


def test_package_works_without_python_pkcs11(
    monkeypatch: pytest.MonkeyPatch, key_config: SoftwareSealConfig
) -> None:
    monkeypatch.setitem(sys.modules, "pkcs11", None)  # makes `import pkcs11` raise ImportError
    with closing(open_sealer(key_config)) as sealer:
        assert sealer.unwrap(sealer.wrap(b"k", b"a"), b"a") == b"k"
    config = Pkcs11SealConfig(pin="1234")
    with pytest.raises(SealError, match=r"pip install 'xkslab\[pkcs11\]'"):
        open_sealer(config)
    with pytest.raises(SealError, match=r"pip install 'xkslab\[pkcs11\]'"):
        create_sealing_key(config)


# --------------------------------------------------------------------------- pkcs11 (SoftHSM2)

pkcs11_test = pytest.mark.pkcs11


@pytest.fixture
def hsm_config(softhsm_token: SoftHsmToken) -> Pkcs11SealConfig:
    config = softhsm_token.seal_config()
    create_sealing_key(config)
    return config


@pytest.fixture
def hsm_sealer(hsm_config: Pkcs11SealConfig) -> Iterator[Sealer]:
    sealer = open_sealer(hsm_config)
    yield sealer
    sealer.close()


def assert_no_pin(exc: BaseException, token: SoftHsmToken, *others: str) -> None:
    message = str(exc)
    for secret in (token.pin, token.so_pin, *others):
        assert secret not in message


@pkcs11_test
def test_pkcs11_round_trip_and_tamper_detection(hsm_sealer: Sealer, softhsm_token: SoftHsmToken) -> None:
    assert hsm_sealer.kind == "pkcs11"
    assert hsm_sealer.key_id == f"pkcs11:{softhsm_token.label}/xkslab-seal"
    assert_wrap_contract(hsm_sealer)


@pkcs11_test
def test_pkcs11_key_is_not_extractable(softhsm_token: SoftHsmToken, hsm_config: Pkcs11SealConfig) -> None:
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

    with softhsm_token.session() as session:
        [key] = list(
            session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: "xkslab-seal"})
        )
        assert key.key_type == KeyType.AES
        assert key[Attribute.VALUE_LEN] == 32
        for name in (
            "TOKEN",
            "PRIVATE",
            "SENSITIVE",
            "ALWAYS_SENSITIVE",
            "NEVER_EXTRACTABLE",
            "ENCRYPT",
            "DECRYPT",
        ):
            assert key[Attribute[name]] is True, name
        for name in ("EXTRACTABLE", "WRAP", "UNWRAP", "SIGN", "VERIFY", "DERIVE"):
            assert key[Attribute[name]] is False, name

        with pytest.raises(pkcs11.AttributeSensitive):
            key[Attribute.VALUE]
        wrapping_key = session.generate_key(
            KeyType.AES, 256, store=False, template={Attribute.WRAP: True, Attribute.EXTRACTABLE: True}
        )
        with pytest.raises(pkcs11.KeyUnextractable):
            wrapping_key.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        with pytest.raises(pkcs11.PKCS11Error):
            key[Attribute.EXTRACTABLE] = True
        assert key[Attribute.EXTRACTABLE] is False

    with closing(open_sealer(hsm_config)) as sealer:
        assert sealer.unwrap(sealer.wrap(PLAINTEXT, AAD), AAD) == PLAINTEXT


@pkcs11_test
def test_pkcs11_wrong_pin_is_refused_without_leaking(
    softhsm_token: SoftHsmToken, hsm_config: Pkcs11SealConfig
) -> None:
    wrong_pin = "wrong-pin-31337"
    with pytest.raises(SealError, match="wrong PIN") as excinfo:
        open_sealer(softhsm_token.seal_config(pin=wrong_pin))
    assert softhsm_token.label in str(excinfo.value)
    assert_no_pin(excinfo.value, softhsm_token, wrong_pin)

    # Also while another sealer holds the (process-wide) login, where the token would not check it.
    with closing(open_sealer(hsm_config)) as sealer:
        with pytest.raises(SealError, match="wrong PIN") as excinfo:
            open_sealer(softhsm_token.seal_config(pin=wrong_pin))
        assert_no_pin(excinfo.value, softhsm_token, wrong_pin)
        assert sealer.unwrap(sealer.wrap(PLAINTEXT, AAD), AAD) == PLAINTEXT


@pkcs11_test
def test_pkcs11_missing_key_label(softhsm_token: SoftHsmToken) -> None:
    with pytest.raises(SealError, match="no-such-key") as excinfo:
        open_sealer(softhsm_token.seal_config(key_label="no-such-key"))
    assert softhsm_token.label in str(excinfo.value)
    assert_no_pin(excinfo.value, softhsm_token)
    # The failed open released its login: a normal session can log in again.
    with softhsm_token.session():
        pass


@pkcs11_test
def test_pkcs11_missing_token_and_library(softhsm_token: SoftHsmToken, tmp_path: Path) -> None:
    config = Pkcs11SealConfig(
        library=softhsm_token.library, token_label="no-such-token", pin=softhsm_token.pin
    )
    with pytest.raises(SealError, match="no-such-token") as excinfo:
        open_sealer(config)
    assert_no_pin(excinfo.value, softhsm_token)
    config = Pkcs11SealConfig(
        library=tmp_path / "missing.so", token_label=softhsm_token.label, pin=softhsm_token.pin
    )
    with pytest.raises(SealError, match="library") as excinfo:
        open_sealer(config)
    assert_no_pin(excinfo.value, softhsm_token)


@pkcs11_test
def test_pkcs11_create_refuses_existing_label(
    softhsm_token: SoftHsmToken, hsm_config: Pkcs11SealConfig
) -> None:
    with pytest.raises(SealError, match="already exists") as excinfo:
        create_sealing_key(hsm_config)
    assert_no_pin(excinfo.value, softhsm_token)
    from pkcs11 import Attribute

    with softhsm_token.session() as session:
        assert len(list(session.get_objects({Attribute.LABEL: hsm_config.key_label}))) == 1


@pkcs11_test
def test_pkcs11_reopen_after_close(hsm_config: Pkcs11SealConfig) -> None:
    sealer = open_sealer(hsm_config)
    blob = sealer.wrap(PLAINTEXT, AAD)
    sealer.close()
    sealer.close()
    with pytest.raises(SealError, match="closed"):
        sealer.wrap(PLAINTEXT, AAD)
    with closing(open_sealer(hsm_config)) as again:
        assert again.unwrap(blob, AAD) == PLAINTEXT


@pkcs11_test
def test_pkcs11_two_sealers_on_one_token(softhsm_token: SoftHsmToken, hsm_config: Pkcs11SealConfig) -> None:
    other_config = softhsm_token.seal_config(key_label="xkslab-seal-2")
    create_sealing_key(other_config)
    first = open_sealer(hsm_config)
    second = open_sealer(other_config)
    try:
        assert first.key_id != second.key_id
        blob = first.wrap(PLAINTEXT, AAD)
        with pytest.raises(SealError):
            second.unwrap(blob, AAD)
        rewrapped = second.wrap(first.unwrap(blob, AAD), AAD)
        first.close()  # must not log the second sealer out
        assert second.unwrap(rewrapped, AAD) == PLAINTEXT
    finally:
        first.close()
        second.close()


@pkcs11_test
def test_pkcs11_recovers_once_from_a_library_reset(softhsm_token: SoftHsmToken, hsm_sealer: Sealer) -> None:
    import pkcs11

    blob = hsm_sealer.wrap(PLAINTEXT, AAD)
    pkcs11.lib(str(softhsm_token.library)).reinitialize()  # every session handle is now invalid
    assert hsm_sealer.unwrap(blob, AAD) == PLAINTEXT
    assert hsm_sealer.unwrap(hsm_sealer.wrap(PLAINTEXT, AAD), AAD) == PLAINTEXT


@pkcs11_test
def test_pkcs11_refuses_an_extractable_key(softhsm_token: SoftHsmToken) -> None:
    from pkcs11 import Attribute, KeyType

    with softhsm_token.session() as session:
        session.generate_key(
            KeyType.AES,
            256,
            label="weak",
            store=True,
            template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
        )
    with pytest.raises(SealError, match="extractable"):
        open_sealer(softhsm_token.seal_config(key_label="weak"))


def test_pkcs11_config_hides_pin() -> None:
    config = Pkcs11SealConfig(pin="secret-pin-4242")
    assert "secret-pin-4242" not in repr(config)
    assert config.library == Path("/usr/lib/softhsm/libsofthsm2.so")
    assert (config.token_label, config.key_label) == ("xkslab", "xkslab-seal")
    with pytest.raises(SealError):
        Pkcs11SealConfig(pin="")
