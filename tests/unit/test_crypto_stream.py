"""AES in pieces (dsm_emulator.crypto_stream) against ``cryptography``'s one-shot AES of the same key and
IV, for splits at every awkward place: empty pieces, pieces shorter than a block, block boundaries."""

from __future__ import annotations

import os
import random

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from dsm_emulator import crypto_stream
from dsm_emulator.crypto import CryptoError, IntegrityError


def oracle(mode: str, key: bytes, iv: bytes, data: bytes, *, encrypt: bool) -> bytes:
    if mode == "CTR":
        ctx = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
        return ctx.update(data) + ctx.finalize()
    cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
    if encrypt:
        if mode == "CBC":
            padder = padding.PKCS7(128).padder()
            data = padder.update(data) + padder.finalize()
        ctx = cipher.encryptor()
        return ctx.update(data) + ctx.finalize()
    ctx = cipher.decryptor()
    plain = ctx.update(data) + ctx.finalize()
    if mode == "CBC":
        unpadder = padding.PKCS7(128).unpadder()
        plain = unpadder.update(plain) + unpadder.finalize()
    return plain


def run(mode: str, key: bytes, iv: bytes, pieces: list[bytes], *, encrypt: bool) -> bytes:
    stream = crypto_stream.start(mode, key, iv, encrypt=encrypt)
    out = b""
    for piece in pieces:
        chunk, stream = crypto_stream.update(key, stream, piece)
        out += chunk
    return out + crypto_stream.final(key, stream)


def split(data: bytes, rng: random.Random) -> list[bytes]:
    pieces, at = [], 0
    while at < len(data):
        size = rng.choice([0, 1, 15, 16, 17, 31, 32, 100, 1000])
        pieces.append(data[at : at + size])
        at += size
    return pieces


@pytest.mark.parametrize("mode", ["CBC", "CBCNOPAD", "CTR"])
@pytest.mark.parametrize("key_bytes", [16, 24, 32])
@pytest.mark.parametrize("seed", range(5))
def test_pieces_equal_one_shot(mode: str, key_bytes: int, seed: int) -> None:
    rng = random.Random(seed)
    key, iv = os.urandom(key_bytes), os.urandom(16)
    length = rng.randrange(0, 3000)
    if mode == "CBCNOPAD":
        length -= length % 16
    plain = os.urandom(length)
    cipher = run(mode, key, iv, split(plain, rng), encrypt=True)
    assert cipher == oracle(mode, key, iv, plain, encrypt=True)
    assert run(mode, key, iv, split(cipher, rng), encrypt=False) == plain


def test_ctr_counter_wraps_like_cryptography() -> None:
    key, iv = os.urandom(32), b"\xff" * 16
    plain = os.urandom(100)
    assert run("CTR", key, iv, [plain[:7], plain[7:50], plain[50:]], encrypt=True) == oracle(
        "CTR", key, iv, plain, encrypt=True
    )


def test_encrypt_without_iv_gets_a_random_one() -> None:
    first = crypto_stream.start("CBC", os.urandom(32), None, encrypt=True)
    second = crypto_stream.start("CBC", os.urandom(32), None, encrypt=True)
    assert len(first.block) == 16 and first.block != second.block


@pytest.mark.parametrize(
    ("mode", "iv", "encrypt", "needle"),
    [
        ("GCM", bytes(16), True, "cannot be used in pieces"),
        ("ECB", None, True, "cannot be used in pieces"),
        ("CBC", bytes(12), True, "IV must be 16 bytes"),
        ("CTR", None, False, "IV must be 16 bytes"),
    ],
)
def test_start_refuses(mode: str, iv: bytes | None, encrypt: bool, needle: str) -> None:
    with pytest.raises(CryptoError, match=needle):
        crypto_stream.start(mode, os.urandom(32), iv, encrypt=encrypt)


def test_final_refuses_partial_blocks_and_bad_padding() -> None:
    key, iv = os.urandom(32), os.urandom(16)
    stream = crypto_stream.start("CBCNOPAD", key, iv, encrypt=True)
    _, stream = crypto_stream.update(key, stream, b"x" * 20)
    with pytest.raises(CryptoError, match="multiple of 16"):
        crypto_stream.final(key, stream)
    stream = crypto_stream.start("CBC", key, iv, encrypt=False)
    _, stream = crypto_stream.update(key, stream, b"x" * 20)
    with pytest.raises(CryptoError, match="multiple of 16"):
        crypto_stream.final(key, stream)
    # Ciphertext whose last block decrypts to bad padding (a CBCNOPAD encryption of an unpadded block).
    bad = oracle("CBCNOPAD", key, iv, b"\x00" * 31 + b"\x11", encrypt=True)
    stream = crypto_stream.start("CBC", key, iv, encrypt=False)
    _, stream = crypto_stream.update(key, stream, bad)
    with pytest.raises(IntegrityError, match="padding"):
        crypto_stream.final(key, stream)
