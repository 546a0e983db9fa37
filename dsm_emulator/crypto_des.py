"""DES and triple DES (obj_type DES, DES3): the byte-level primitives, pure like ``dsm_emulator.crypto``.

Fortanix still lists both types (DES3: 168 bits, or 112 for two-key triple DES; DES: 56 bits), so the lab
keeps them, through ``cryptography``'s TripleDES (from its ``decrepit`` module, where the library keeps
the ciphers it no longer recommends). Single DES is TripleDES with one key used three times, which is
the same cipher. Material is stored as the bytes the cipher takes, parity bits included: 8 bytes for DES,
16 for two-key and 24 for three-key triple DES. Modes: ECB, CBC (PKCS#7 padding) and CBCNOPAD, on 8-byte
blocks; any other mode is refused with a message that names it.
"""

from __future__ import annotations

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from dsm_emulator.crypto import Ciphertext, CryptoError, IntegrityError, aligned, block_iv, random_bytes

DES_TYPES = ("DES", "DES3")
DES_MODES = frozenset({"ECB", "CBC", "CBCNOPAD"})
# key_size (bits, as Fortanix counts them: without parity) -> material length (bytes, with parity).
KEY_BYTES: dict[str, dict[int, int]] = {"DES": {56: 8}, "DES3": {112: 16, 168: 24}}
_BLOCK = 8
_ECB = modes.ECB()  # noqa: S305  (ECB is one of the API's modes, and what a KCV is defined over)


def key_size_of(obj_type: str, material_len: int) -> int | None:
    """The key_size of ``material_len`` bytes of a DES or DES3 key, None if no such key has that length."""
    for bits, length in KEY_BYTES[obj_type].items():
        if length == material_len:
            return bits
    return None


def with_odd_parity(key: bytes) -> bytes:
    """Each byte's low bit set so that the byte has an odd number of ones (the DES key convention)."""
    return bytes((b & 0xFE) | (1 ^ (bin(b >> 1).count("1") & 1)) for b in key)


def generate(obj_type: str, key_size: int) -> bytes:
    return with_odd_parity(random_bytes(KEY_BYTES[obj_type][key_size]))


def _cipher(obj_type: str, key: bytes, mode: modes.CBC | modes.ECB) -> Cipher[modes.CBC | modes.ECB]:
    if key_size_of(obj_type, len(key)) is None:
        sizes = " or ".join(str(n) for n in KEY_BYTES[obj_type].values())
        raise CryptoError(f"{obj_type} key must be {sizes} bytes")
    return Cipher(TripleDES(_three_keys(key)), mode)


def _three_keys(key: bytes) -> bytes:
    """K1 K2 K3 as TripleDES takes it: single DES is K1 K1 K1, two-key triple DES is K1 K2 K1."""
    if len(key) == 8:
        return key * 3
    if len(key) == 16:
        return key + key[:8]
    return key


def _iv(iv: bytes | None, mode: str, *, generate: bool) -> bytes:
    return block_iv(iv, mode, generate=generate, block=_BLOCK, of=" of a DES or DES3 key")


def _aligned(data: bytes, mode: str) -> None:
    aligned(data, mode, block=_BLOCK, of=" for DES and DES3")


def _check(mode: str, aad: bytes | None, extra: object) -> None:
    if mode not in DES_MODES:
        raise CryptoError(
            f"mode {mode[:40]} is not available for DES and DES3 keys; use ECB, CBC or CBCNOPAD"
        )
    if aad is not None:
        raise CryptoError(f"{mode} does not take additional authenticated data")
    if extra is not None:
        raise CryptoError(f"{mode} does not take a tag")


def _run(cipher: Cipher[modes.CBC | modes.ECB], data: bytes, *, encrypt: bool) -> bytes:
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


def encrypt(
    obj_type: str,
    mode: str,
    key: bytes,
    plain: bytes,
    *,
    iv: bytes | None = None,
    aad: bytes | None = None,
    tag_len_bits: int | None = None,
) -> Ciphertext:
    _check(mode, aad, tag_len_bits)
    if mode == "ECB":
        if iv is not None:
            raise CryptoError("ECB does not take an IV")
        _aligned(plain, mode)
        return Ciphertext(cipher=_run(_cipher(obj_type, key, _ECB), plain, encrypt=True))
    iv = _iv(iv, mode, generate=True)
    if mode == "CBC":
        padder = padding.PKCS7(_BLOCK * 8).padder()
        plain = padder.update(plain) + padder.finalize()
    _aligned(plain, mode)
    return Ciphertext(cipher=_run(_cipher(obj_type, key, modes.CBC(iv)), plain, encrypt=True), iv=iv)


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
    _check(mode, aad, tag)
    if mode == "ECB":
        if iv is not None:
            raise CryptoError("ECB does not take an IV")
        _aligned(cipher, mode)
        return _run(_cipher(obj_type, key, _ECB), cipher, encrypt=False)
    iv = _iv(iv, mode, generate=False)
    _aligned(cipher, mode)
    if mode == "CBC" and not cipher:
        raise CryptoError("CBC ciphertext must not be empty")
    plain = _run(_cipher(obj_type, key, modes.CBC(iv)), cipher, encrypt=False)
    if mode == "CBCNOPAD":
        return plain
    unpadder = padding.PKCS7(_BLOCK * 8).unpadder()
    try:
        return unpadder.update(plain) + unpadder.finalize()
    except ValueError:
        raise IntegrityError("invalid CBC padding") from None


def kcv(obj_type: str, key: bytes) -> str:
    """Key check value: the first 3 bytes of the key's ECB encryption of a zero block, upper-case hex."""
    return _run(_cipher(obj_type, key, _ECB), bytes(_BLOCK), encrypt=True)[:3].hex().upper()
