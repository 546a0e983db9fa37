"""The KMS's inner envelope layer: the encryption context's canonical bytes (the AAD of every ciphertext
this KMS made, so they may never change) and the cached AESGCM of a key standing in for its bytes."""

from __future__ import annotations

import json
import os
import random

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms_emulator.envelope import canonical_context, inner_decrypt, inner_encrypt
from kms_emulator.errors import InvalidCiphertext


def reference(context: dict[str, str] | None) -> bytes:
    """The canonical form as first defined: the standard encoder, sorted keys, ASCII escapes."""
    return json.dumps(dict(context or {}), sort_keys=True, separators=(",", ":")).encode("ascii")


CONTEXTS: list[dict[str, str] | None] = [
    None,
    {},
    {"pool": "7"},
    {"b": "2", "a": "1", "B": "0", "aa": "", "a-b": "x y"},
    {"quote": 'say "hi"', "back\\slash": "c:\\tmp"},
    {"line": "one\ntwo\tthree\r", "nul": "\x00", "del": "\x7f", "bell": "\x07"},
    {"café": "naïve", "ключ": "значение", "emoji": "\U0001f511"},
    {"é": "1", "z": "2", "ä": "3"},  # non-ASCII keys: sorted by code point
    {"<>&'": "/", "~": "{}[]:,"},
]


@pytest.mark.parametrize("context", CONTEXTS)
def test_the_canonical_context_is_the_same_bytes_as_ever(context: dict[str, str] | None) -> None:
    assert canonical_context(context) == reference(context)


def test_random_contexts_keep_their_canonical_bytes() -> None:
    rng = random.Random(22)
    alphabet = 'aZ09 -_.:/"\\\n\t\x01\x7féü€\U0001f511'
    for _ in range(2000):
        context = {
            "".join(rng.choices(alphabet, k=rng.randint(1, 6))): "".join(
                rng.choices(alphabet, k=rng.randint(0, 8))
            )
            for _ in range(rng.randint(1, 5))
        }
        assert canonical_context(context) == reference(context), context


def test_a_key_as_bytes_or_as_its_aesgcm_seals_alike() -> None:
    key = os.urandom(32)
    context = {"purpose": "test"}
    sealed = inner_encrypt(AESGCM(key), b"data key", context)
    assert inner_decrypt(key, sealed, context) == b"data key"
    assert inner_decrypt(AESGCM(key), inner_encrypt(key, b"other", None), {}) == b"other"
    with pytest.raises(InvalidCiphertext):
        inner_decrypt(AESGCM(key), sealed, {"purpose": "other"})
