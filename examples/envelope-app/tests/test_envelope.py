"""envelope_app against a real KMS chain: the Encryption SDK's data keys are encrypted by an XKS-backed
KMS key, whose key material stays in the lab's DSM."""

from __future__ import annotations

from typing import Any

import envelope_app
import pytest
from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError


def test_round_trip(xkslab_lab: Any, xkslab_kms_key: str) -> None:
    record = b"account 42: balance 1,000.00"
    message = envelope_app.encrypt(record, xkslab_kms_key, xkslab_lab.kms, {"tenant": "acme"})
    assert record not in message
    assert envelope_app.decrypt(message, xkslab_kms_key, xkslab_lab.kms, {"tenant": "acme"}) == record


def test_the_key_is_held_by_the_external_key_store(xkslab_lab: Any, xkslab_kms_key: str) -> None:
    key = xkslab_lab.kms.describe_key(KeyId=xkslab_kms_key)["KeyMetadata"]
    assert key["Origin"] == "EXTERNAL_KEY_STORE"
    assert key["CustomKeyStoreId"] == xkslab_lab.custom_key_store_id
    assert key["KeyState"] == "Enabled"


def test_another_key_cannot_decrypt(xkslab_lab: Any, xkslab_kms_key: str) -> None:
    message = envelope_app.encrypt(b"for one key only", xkslab_kms_key, xkslab_lab.kms)
    with pytest.raises(AWSEncryptionSDKClientError):
        envelope_app.decrypt(message, xkslab_lab.key_id, xkslab_lab.kms)


def test_the_encryption_context_is_checked(xkslab_lab: Any, xkslab_kms_key: str) -> None:
    message = envelope_app.encrypt(b"tenant data", xkslab_kms_key, xkslab_lab.kms, {"tenant": "acme"})
    with pytest.raises(ValueError, match="tenant"):
        envelope_app.decrypt(message, xkslab_kms_key, xkslab_lab.kms, {"tenant": "globex"})


def test_a_disabled_key_stops_decryption(xkslab_lab: Any, xkslab_kms_key: str) -> None:
    message = envelope_app.encrypt(b"until the key is disabled", xkslab_kms_key, xkslab_lab.kms)
    xkslab_lab.kms.disable_key(KeyId=xkslab_kms_key)
    with pytest.raises(AWSEncryptionSDKClientError):
        envelope_app.decrypt(message, xkslab_kms_key, xkslab_lab.kms)
    xkslab_lab.kms.enable_key(KeyId=xkslab_kms_key)
    assert envelope_app.decrypt(message, xkslab_kms_key, xkslab_lab.kms) == b"until the key is disabled"


def test_encryption_fails_while_the_key_manager_does(xkslab_lab: Any, xkslab_kms_key: str) -> None:
    # For the block, the proxy answers KMS's GenerateDataKey as if the external key were gone.
    with xkslab_lab.fault("error", error_name="KeyNotFoundException", kms_operation="GenerateDataKey"):
        with pytest.raises(AWSEncryptionSDKClientError):
            envelope_app.encrypt(b"not now", xkslab_kms_key, xkslab_lab.kms)
    message = envelope_app.encrypt(b"now", xkslab_kms_key, xkslab_lab.kms)  # the fault is cleared
    assert envelope_app.decrypt(message, xkslab_kms_key, xkslab_lab.kms) == b"now"


def test_an_unreachable_key_manager_stops_decryption(
    xkslab_lab: Any, xkslab_kms_key: str, xkslab_fault: Any
) -> None:
    message = envelope_app.encrypt(b"written before the outage", xkslab_kms_key, xkslab_lab.kms)
    xkslab_fault("drop", operation="Decrypt")  # until the end of this test: the fixture clears it
    with pytest.raises(AWSEncryptionSDKClientError):
        envelope_app.decrypt(message, xkslab_kms_key, xkslab_lab.kms)
