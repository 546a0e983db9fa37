"""Envelope encryption for an application's records: the AWS Encryption SDK makes a data key per message
under a KMS key and keeps it, encrypted by KMS, in the message. With an XKS-backed KMS key, every
message's data key is protected by a key that never leaves the external key manager."""

from __future__ import annotations

from typing import Any

import aws_encryption_sdk
from aws_encryption_sdk import CommitmentPolicy
from aws_encryption_sdk.key_providers.kms import KMSMasterKey

_CLIENT = aws_encryption_sdk.EncryptionSDKClient(
    commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
)


def _master_key(key_id: str, kms_client: Any) -> KMSMasterKey:
    # The SDK records the key's ARN in each message and decrypts only with the key it names: an ARN
    # either way, whatever form of key id the caller has.
    arn = kms_client.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    return KMSMasterKey(key_id=arn, client=kms_client)


def encrypt(data: bytes, key_id: str, kms_client: Any, context: dict[str, str] | None = None) -> bytes:
    """An Encryption SDK message holding ``data``, its data key encrypted under ``key_id``."""
    message, _header = _CLIENT.encrypt(
        source=data, key_provider=_master_key(key_id, kms_client), encryption_context=context or {}
    )
    return bytes(message)


def decrypt(message: bytes, key_id: str, kms_client: Any, context: dict[str, str] | None = None) -> bytes:
    """The data in ``message``, if its data key was encrypted under ``key_id`` and every pair of
    ``context`` is in its encryption context (the SDK checks the rest itself)."""
    plain, header = _CLIENT.decrypt(source=message, key_provider=_master_key(key_id, kms_client))
    for name, value in (context or {}).items():
        if header.encryption_context.get(name) != value:
            raise ValueError(f"encryption context {name!r} does not match")
    return bytes(plain)
