"""The symmetric key types (AES, DES, DES3) behind one door: encrypt, decrypt, key check value, and the
length of a key's material, chosen by the object's type. AES is ``dsm_emulator.crypto``; DES and DES3
are ``dsm_emulator.crypto_des``. Pure: bytes in, bytes out."""

from __future__ import annotations

from dsm_emulator import crypto, crypto_des

SYMMETRIC_TYPES = ("AES", "DES", "DES3")
KCV_TYPES = SYMMETRIC_TYPES


def encrypt(
    obj_type: str,
    mode: str,
    key: bytes,
    plain: bytes,
    *,
    iv: bytes | None = None,
    aad: bytes | None = None,
    tag_len_bits: int | None = None,
) -> crypto.Ciphertext:
    if obj_type == "AES":
        return crypto.encrypt(mode, key, plain, iv=iv, aad=aad, tag_len_bits=tag_len_bits)
    return crypto_des.encrypt(obj_type, mode, key, plain, iv=iv, aad=aad, tag_len_bits=tag_len_bits)


def decrypt(
    obj_type: str,
    mode: str,
    key: bytes,
    cipher: bytes,
    *,
    iv: bytes | None = None,
    aad: bytes | None = None,
    tag: bytes | None = None,
) -> bytes:
    if obj_type == "AES":
        return crypto.decrypt(mode, key, cipher, iv=iv, aad=aad, tag=tag)
    return crypto_des.decrypt(obj_type, mode, key, cipher, iv=iv, aad=aad, tag=tag)


def kcv(obj_type: str, material: bytes) -> str | None:
    """The key check value Fortanix shows for AES, DES and DES3 keys (None for other types): the first
    3 bytes of the ECB encryption of one zero block under the key, upper-case hex."""
    if obj_type == "AES":
        return crypto.kcv(material)
    if obj_type in crypto_des.DES_TYPES:
        return crypto_des.kcv(obj_type, material)
    return None


def key_size_of(obj_type: str, material: bytes) -> int | None:
    """The key_size (bits) of imported material: its length in bits, except for DES and DES3, whose
    parity bits do not count (None: no DES or DES3 key has that length)."""
    if obj_type in crypto_des.DES_TYPES:
        return crypto_des.key_size_of(obj_type, len(material))
    return len(material) * 8


def material_length(obj_type: str, key_size: int) -> int:
    """The bytes of material a key of ``key_size`` bits holds (``key_size`` already checked)."""
    if obj_type in crypto_des.DES_TYPES:
        return crypto_des.KEY_BYTES[obj_type][key_size]
    return key_size // 8


def generate(obj_type: str, key_size: int) -> bytes:
    """New random material for a symmetric, HMAC or SECRET key of ``key_size`` bits (already checked)."""
    if obj_type in crypto_des.DES_TYPES:
        return crypto_des.generate(obj_type, key_size)
    return crypto.random_bytes(key_size // 8)
