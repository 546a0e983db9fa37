"""The cryptographic operations: Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
GenerateDataKeyWithoutPlaintext, GenerateRandom.

Encrypt, in a straight line: find the key (key id, key ARN, alias name or alias ARN) → it must be
Enabled → unseal its backing key → inner layer (AES-256-GCM, AAD = encryption context) → for an XKS key,
the proxy's Encrypt over the inner bytes → CiphertextBlob (envelope.build_blob). Decrypt reads the key
from the blob and walks back. Proxy failures are KMSInvalidStateException (proxy.py); a blob that does
not authenticate under its context is InvalidCiphertextException.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms_emulator import grants, materials, proxy
from kms_emulator.context import Call, KmsContext
from kms_emulator.envelope import (
    KIND_AWS_KMS,
    KIND_AWS_KMS_ROTATED,
    KIND_XKS,
    aws_kms_blob,
    inner_decrypt,
    inner_encrypt,
    parse_blob,
    rotated_blob,
    xks_blob,
)
from kms_emulator.errors import IncorrectKey, InvalidCiphertext, KmsError, ValidationError
from kms_emulator.lookup import ORIGIN_XKS, find_key, require_present, require_usable, resolve_key_id
from kms_emulator.models import CustomKeyStore, KmsKey
from kms_emulator.params import Params, constraint_error
from kms_emulator.sealing import BACKING_KEY

SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
ALGORITHMS = ["SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE"]
MAX_PLAINTEXT = 4096
MAX_CIPHERTEXT = 6144
DATA_KEY_BYTES = {"AES_256": 32, "AES_128": 16}


@dataclass(frozen=True)
class UsableKey:
    key: KmsKey
    store: CustomKeyStore | None
    backing_key: bytes  # the current key material
    material_id: str | None = None  # None: the key's first material
    # The backing key's AESGCM, made once per cache entry: making one cost as much as the encryption.
    cipher: AESGCM = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cipher", AESGCM(self.backing_key))


_NOT_THIS_KEY = "The ciphertext was not produced by a key of this key's origin."


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def usable_key(ctx: KmsContext, ref: str, *, allow_alias: bool = True) -> UsableKey:
    """The key ``ref`` names, ready for a data operation (served from the context's cache)."""

    async def load() -> UsableKey:
        async with ctx.sessions() as session:
            key, store = await find_key(ctx, session, ref, allow_alias=allow_alias)
            if key.origin == ORIGIN_XKS:
                backing = ctx.sealer.unseal(key.sealed_backing_key, purpose=BACKING_KEY, row_id=key.key_id)
                return UsableKey(key, store, backing)
            if await materials.catch_up(ctx, session, key):
                await session.commit()
            material = await materials.current(ctx, session, key)
        return UsableKey(key, store, material.key, material.material_id)

    usable: UsableKey = await ctx.usable_keys.get((ref, allow_alias), load)
    require_present(ctx, usable.key)  # a deletion date may pass while the entry is cached
    require_usable(ctx, usable.key, usable.store)
    return usable


async def seal(
    ctx: KmsContext, call: Call, usable: UsableKey, plaintext: bytes, context: dict[str, str] | None
) -> bytes:
    inner = inner_encrypt(usable.cipher, plaintext, context)
    if usable.key.origin != ORIGIN_XKS:
        if usable.material_id is not None:
            return rotated_blob(usable.key.key_id, usable.material_id, inner)
        return aws_kms_blob(usable.key.key_id, inner)
    assert usable.store is not None
    outer = await proxy.outer_encrypt(ctx, call, usable.store, usable.key, inner)
    return xks_blob(usable.key.key_id, outer)


async def open_blob(
    ctx: KmsContext, call: Call, blob: bytes, key_ref: str | None, context: dict[str, str] | None
) -> tuple[UsableKey, bytes]:
    parsed = parse_blob(blob)
    if key_ref is not None:
        given = await _resolved(ctx, key_ref)
        if given != parsed.key_id:
            raise IncorrectKey(
                f"The ciphertext was encrypted under {ctx.key_arn(parsed.key_id)}, not under {key_ref}."
            )
    usable = await usable_key(ctx, parsed.key_id, allow_alias=False)
    expected = {KIND_XKS} if usable.key.origin == ORIGIN_XKS else {KIND_AWS_KMS, KIND_AWS_KMS_ROTATED}
    if parsed.kind not in expected:
        raise InvalidCiphertext(_NOT_THIS_KEY)
    backing_key: bytes | AESGCM = usable.cipher
    if parsed.kind == KIND_AWS_KMS and usable.material_id is not None:
        backing_key = await _material(ctx, usable.key.key_id, None)
    elif parsed.material_id is not None and parsed.material_id != usable.material_id:
        backing_key = await _material(ctx, usable.key.key_id, parsed.material_id)
    if parsed.outer is not None:
        assert usable.store is not None
        inner = await proxy.outer_decrypt(ctx, call, usable.store, usable.key, parsed.outer)
    else:
        assert parsed.inner is not None
        inner = parsed.inner
    return usable, inner_decrypt(backing_key, inner, context)


async def _resolved(ctx: KmsContext, ref: str) -> str:
    """The key id a Decrypt's KeyId names (an alias too), from the context's cache: a session of its
    own per Decrypt was a visible share of the KMS's time, and an alias query more."""

    async def load() -> str:
        async with ctx.sessions() as session:
            return await resolve_key_id(ctx, session, ref, allow_alias=True)

    key_id: str = await ctx.usable_keys.get(("resolve", ref), load)
    return key_id


async def _material(ctx: KmsContext, key_id: str, material_id: str | None) -> bytes:
    """Older key material of ``key_id`` (None: its first), for a ciphertext made before a rotation."""

    async def load() -> bytes:
        async with ctx.sessions() as session:
            if material_id is None:
                key = await session.get(KmsKey, key_id)
                assert key is not None
                return ctx.sealer.unseal(key.sealed_backing_key, purpose=BACKING_KEY, row_id=key_id)
            found = await materials.by_id(ctx, session, key_id, material_id)
        if found is None:
            raise InvalidCiphertext(_NOT_THIS_KEY)
        return found.key

    material: bytes = await ctx.usable_keys.get(("material", key_id, material_id), load)
    return material


def _algorithm(p: Params, name: str = "EncryptionAlgorithm") -> str:
    algorithm = p.string(name, enum=ALGORITHMS) or SYMMETRIC_DEFAULT
    if algorithm != SYMMETRIC_DEFAULT:
        raise KmsError.named(
            "InvalidKeyUsageException", f"{algorithm} is not valid for a SYMMETRIC_DEFAULT KMS key."
        )
    return algorithm


def _refuse_unsupported(p: Params) -> None:
    if p.has("Recipient"):
        raise KmsError.named("UnsupportedOperationException", "Recipient (Nitro Enclaves) is not emulated.")


def _dry_run(p: Params) -> None:
    if p.boolean("DryRun"):
        raise KmsError.named(
            "DryRunOperationException", "The request would have succeeded, but the DryRun option is set."
        )


async def encrypt(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id()
    plaintext = p.blob("Plaintext", required=True, max_len=MAX_PLAINTEXT)
    context = p.string_map("EncryptionContext")
    algorithm = _algorithm(p)
    grants.check_grant_tokens(ctx, p)
    assert ref is not None and plaintext is not None
    usable = await usable_key(ctx, ref)
    _dry_run(p)
    blob = await seal(ctx, call, usable, plaintext, context)
    return {
        "CiphertextBlob": b64(blob),
        "KeyId": ctx.key_arn(usable.key.key_id),
        "EncryptionAlgorithm": algorithm,
    }


async def decrypt(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    blob = p.blob("CiphertextBlob", required=True, max_len=MAX_CIPHERTEXT)
    context = p.string_map("EncryptionContext")
    ref = p.key_id(required=False)
    algorithm = _algorithm(p)
    _refuse_unsupported(p)
    grants.check_grant_tokens(ctx, p)
    assert blob is not None
    if p.boolean("DryRun"):
        # Everything a real call would check before the cryptography: the blob, the key and its state.
        parsed = parse_blob(blob)
        if ref is not None:
            async with ctx.sessions() as session:
                if await resolve_key_id(ctx, session, ref, allow_alias=True) != parsed.key_id:
                    raise IncorrectKey(f"The ciphertext was not encrypted under {ref}.")
        await usable_key(ctx, parsed.key_id, allow_alias=False)
        _dry_run(p)
    usable, plaintext = await open_blob(ctx, call, blob, ref, context)
    return {
        "KeyId": ctx.key_arn(usable.key.key_id),
        "Plaintext": b64(plaintext),
        "EncryptionAlgorithm": algorithm,
    }


async def re_encrypt(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    blob = p.blob("CiphertextBlob", required=True, max_len=MAX_CIPHERTEXT)
    source_context = p.string_map("SourceEncryptionContext")
    source_ref = p.key_id("SourceKeyId", required=False)
    destination_ref = p.key_id("DestinationKeyId")
    destination_context = p.string_map("DestinationEncryptionContext")
    source_algorithm = _algorithm(p, "SourceEncryptionAlgorithm")
    destination_algorithm = _algorithm(p, "DestinationEncryptionAlgorithm")
    grants.check_grant_tokens(ctx, p)
    assert blob is not None and destination_ref is not None
    destination = await usable_key(ctx, destination_ref)
    _dry_run(p)
    source, plaintext = await open_blob(ctx, call, blob, source_ref, source_context)
    new_blob = await seal(ctx, call, destination, plaintext, destination_context)
    return {
        "CiphertextBlob": b64(new_blob),
        "SourceKeyId": ctx.key_arn(source.key.key_id),
        "KeyId": ctx.key_arn(destination.key.key_id),
        "SourceEncryptionAlgorithm": source_algorithm,
        "DestinationEncryptionAlgorithm": destination_algorithm,
    }


def _data_key_size(p: Params) -> int:
    size = p.integer("NumberOfBytes", minimum=1, maximum=1024)
    spec = p.string("KeySpec", enum=list(DATA_KEY_BYTES))
    if (size is None) == (spec is None):
        raise ValidationError("Specify either KeySpec or NumberOfBytes, but not both.")
    return size if size is not None else DATA_KEY_BYTES[spec or "AES_256"]


async def _generate_data_key(ctx: KmsContext, call: Call, p: Params) -> tuple[UsableKey, bytes, bytes]:
    ref = p.key_id()
    context = p.string_map("EncryptionContext")
    size = _data_key_size(p)
    _refuse_unsupported(p)
    grants.check_grant_tokens(ctx, p)
    assert ref is not None
    usable = await usable_key(ctx, ref)
    _dry_run(p)
    data_key = os.urandom(size)
    return usable, data_key, await seal(ctx, call, usable, data_key, context)


async def generate_data_key(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    usable, data_key, blob = await _generate_data_key(ctx, call, p)
    return {
        "CiphertextBlob": b64(blob),
        "Plaintext": b64(data_key),
        "KeyId": ctx.key_arn(usable.key.key_id),
    }


async def generate_data_key_without_plaintext(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    usable, _data_key, blob = await _generate_data_key(ctx, call, p)
    return {"CiphertextBlob": b64(blob), "KeyId": ctx.key_arn(usable.key.key_id)}


async def generate_random(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    size = p.integer("NumberOfBytes", minimum=1, maximum=1024)
    store_id = p.string("CustomKeyStoreId", min_len=1, max_len=64)
    _refuse_unsupported(p)
    if size is None:
        raise constraint_error("numberOfBytes", None, "Member must not be null")
    if store_id is not None:
        async with ctx.sessions() as session:
            store = await session.get(CustomKeyStore, store_id)
        if store is None:
            raise KmsError.named(
                "CustomKeyStoreNotFoundException", f"Custom key store {store_id} does not exist."
            )
        raise KmsError.named(
            "UnsupportedOperationException", "GenerateRandom does not take the id of an external key store."
        )
    return {"Plaintext": b64(os.urandom(size))}
