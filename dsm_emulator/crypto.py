"""Byte-level symmetric primitives for the DSM emulator.

Every AES operation the emulator performs (GCM, CCM, CBC, CBCNOPAD, CTR, CFB, OFB, ECB, RFC 3394 key
wrap and RFC 5649 key wrap with padding, key check values, sealing) goes through this module, so that
parameter validation, error mapping and mode semantics live in exactly one place and can be checked
against published test vectors.  It is pure: bytes in, bytes out, no I/O, no database, no logging.

Error messages are fixed strings and never contain key material, plaintext or ciphertext.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.modes import CFB, OFB  # where cryptography 47+ keeps them
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap,
    aes_key_wrap_with_padding,
)


class CryptoError(ValueError):
    """Bad input: wrong key size, IV length, alignment, mode or tag length."""


class IntegrityError(CryptoError):
    """Authentication failed: GCM tag mismatch, key-wrap integrity check, CBC padding."""


MODES: frozenset[str] = frozenset({"GCM", "CCM", "CBC", "CBCNOPAD", "CTR", "CFB", "OFB", "ECB", "KW", "KWP"})
AES_KEY_SIZES: tuple[int, ...] = (128, 192, 256)

_BLOCK = 16
_GCM_IV_LENS = (12, 16)
_GCM_DEFAULT_IV_LEN = 12
_GCM_TAG_BITS = (96, 104, 112, 120, 128)
_GCM_MIN_TAG = 12
# CCM (NIST SP 800-38C): a nonce of 7 to 13 bytes (12 when none is given, as for GCM) and a tag of 4 to
# 16 bytes in steps of 2.
_CCM_NONCE_LENS = range(7, 14)
_CCM_DEFAULT_NONCE_LEN = 12
_CCM_TAG_BITS = (32, 48, 64, 80, 96, 112, 128)
# ECB is one of the emulated API's modes and is what key check values are defined over.
_ECB = modes.ECB()  # noqa: S305


@dataclass(frozen=True, slots=True)
class Ciphertext:
    cipher: bytes
    iv: bytes | None = None
    tag: bytes | None = None


def random_bytes(n: int) -> bytes:
    """Return ``n`` bytes from the operating system CSPRNG."""
    if n < 0:
        raise CryptoError("byte count must not be negative")
    return os.urandom(n)


def _check_aes_key(key: bytes) -> None:
    if len(key) * 8 not in AES_KEY_SIZES:
        raise CryptoError("AES key must be 128, 192 or 256 bits")


def _aes(key: bytes) -> algorithms.AES:
    _check_aes_key(key)
    return algorithms.AES(key)


def block_iv(iv: bytes | None, mode: str, *, generate: bool, block: int = _BLOCK, of: str = "") -> bytes:
    """The IV of a block mode: one block (random when encrypting without one). ``of`` names the key type
    in the message when the block is not AES's (DES and DES3 share these checks)."""
    if iv is None and generate:
        return random_bytes(block)
    if iv is None or len(iv) != block:
        raise CryptoError(f"{mode} IV{of} must be {block} bytes")
    return iv


def aligned(data: bytes, mode: str, *, block: int = _BLOCK, of: str = "") -> None:
    if len(data) % block:
        raise CryptoError(f"{mode} data length must be a multiple of {block} bytes{of}")


def _no_iv(iv: bytes | None, mode: str) -> None:
    if iv is not None:
        raise CryptoError(f"{mode} does not take an IV")


def _run(
    alg: algorithms.AES,
    mode: modes.CBC | modes.CTR | CFB | OFB | modes.ECB,
    data: bytes,
    *,
    encrypt: bool,
) -> bytes:
    cipher = Cipher(alg, mode)
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


# Encrypt functions: (key, plain, iv) -> Ciphertext; GCM additionally takes aad and tag_len_bits.
# Decrypt functions: (key, cipher, iv) -> bytes; GCM additionally takes aad and tag.
# _TABLE below adapts them all to one signature.


def _gcm_enc(
    key: bytes, plain: bytes, iv: bytes | None, aad: bytes | None, tag_len_bits: int | None
) -> Ciphertext:
    alg = _aes(key)
    if tag_len_bits is None:
        tag_len_bits = 128
    if tag_len_bits not in _GCM_TAG_BITS:
        raise CryptoError("GCM tag length must be 96, 104, 112, 120 or 128 bits")
    if iv is None:
        iv = random_bytes(_GCM_DEFAULT_IV_LEN)
    elif len(iv) not in _GCM_IV_LENS:
        raise CryptoError("GCM IV must be 12 or 16 bytes")
    enc = Cipher(alg, modes.GCM(iv)).encryptor()
    if aad:
        enc.authenticate_additional_data(aad)
    body = enc.update(plain) + enc.finalize()
    return Ciphertext(cipher=body, iv=iv, tag=enc.tag[: tag_len_bits // 8])


def _gcm_dec(key: bytes, cipher: bytes, iv: bytes | None, aad: bytes | None, tag: bytes | None) -> bytes:
    alg = _aes(key)
    if iv is None or len(iv) not in _GCM_IV_LENS:
        raise CryptoError("GCM IV must be 12 or 16 bytes")
    if tag is None:
        raise CryptoError("GCM decryption requires a tag")
    if not _GCM_MIN_TAG <= len(tag) <= _BLOCK:
        raise CryptoError("GCM tag must be 12 to 16 bytes")
    dec = Cipher(alg, modes.GCM(iv, tag, min_tag_length=_GCM_MIN_TAG)).decryptor()
    if aad:
        dec.authenticate_additional_data(aad)
    plain = dec.update(cipher)
    try:
        return plain + dec.finalize()
    except InvalidTag:
        raise IntegrityError("authentication tag mismatch") from None


def _cbc_enc(key: bytes, plain: bytes, iv: bytes | None) -> Ciphertext:
    alg = _aes(key)
    iv = block_iv(iv, "CBC", generate=True)
    padder = padding.PKCS7(_BLOCK * 8).padder()
    padded = padder.update(plain) + padder.finalize()
    return Ciphertext(cipher=_run(alg, modes.CBC(iv), padded, encrypt=True), iv=iv)


def _cbc_dec(key: bytes, cipher: bytes, iv: bytes | None) -> bytes:
    alg = _aes(key)
    iv = block_iv(iv, "CBC", generate=False)
    if not cipher:
        raise CryptoError("CBC ciphertext must not be empty")
    aligned(cipher, "CBC")
    padded = _run(alg, modes.CBC(iv), cipher, encrypt=False)
    unpadder = padding.PKCS7(_BLOCK * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise IntegrityError("invalid CBC padding") from None


def _cbcnopad_enc(key: bytes, plain: bytes, iv: bytes | None) -> Ciphertext:
    alg = _aes(key)
    aligned(plain, "CBCNOPAD")
    iv = block_iv(iv, "CBCNOPAD", generate=True)
    return Ciphertext(cipher=_run(alg, modes.CBC(iv), plain, encrypt=True), iv=iv)


def _cbcnopad_dec(key: bytes, cipher: bytes, iv: bytes | None) -> bytes:
    alg = _aes(key)
    iv = block_iv(iv, "CBCNOPAD", generate=False)
    aligned(cipher, "CBCNOPAD")
    return _run(alg, modes.CBC(iv), cipher, encrypt=False)


def _ccm_enc(
    key: bytes, plain: bytes, iv: bytes | None, aad: bytes | None, tag_len_bits: int | None
) -> Ciphertext:
    _check_aes_key(key)
    if tag_len_bits is None:
        tag_len_bits = 128
    if tag_len_bits not in _CCM_TAG_BITS:
        raise CryptoError("CCM tag length must be 32, 48, 64, 80, 96, 112 or 128 bits")
    if iv is None:
        iv = random_bytes(_CCM_DEFAULT_NONCE_LEN)
    elif len(iv) not in _CCM_NONCE_LENS:
        raise CryptoError("CCM IV (nonce) must be 7 to 13 bytes")
    _ccm_fits(plain, iv)
    tag_len = tag_len_bits // 8
    sealed = AESCCM(key, tag_length=tag_len).encrypt(iv, plain, aad or None)
    return Ciphertext(cipher=sealed[:-tag_len], iv=iv, tag=sealed[-tag_len:])


def _ccm_dec(key: bytes, cipher: bytes, iv: bytes | None, aad: bytes | None, tag: bytes | None) -> bytes:
    _check_aes_key(key)
    if iv is None or len(iv) not in _CCM_NONCE_LENS:
        raise CryptoError("CCM IV (nonce) must be 7 to 13 bytes")
    if tag is None:
        raise CryptoError("CCM decryption requires a tag")
    if len(tag) * 8 not in _CCM_TAG_BITS:
        raise CryptoError("CCM tag must be 4 to 16 bytes, in steps of 2")
    _ccm_fits(cipher, iv)
    try:
        return AESCCM(key, tag_length=len(tag)).decrypt(iv, cipher + tag, aad or None)
    except InvalidTag:
        raise IntegrityError("authentication tag mismatch") from None


def _ccm_fits(data: bytes, nonce: bytes) -> None:
    """CCM counts the payload's length in the 15 - len(nonce) bytes the nonce leaves."""
    if len(data) >= 1 << (8 * (15 - len(nonce))):
        raise CryptoError("CCM data is too long for this nonce length")


def _ecb_enc(key: bytes, plain: bytes, iv: bytes | None) -> Ciphertext:
    alg = _aes(key)
    _no_iv(iv, "ECB")
    aligned(plain, "ECB")
    return Ciphertext(cipher=_run(alg, _ECB, plain, encrypt=True))


def _ecb_dec(key: bytes, cipher: bytes, iv: bytes | None) -> bytes:
    alg = _aes(key)
    _no_iv(iv, "ECB")
    aligned(cipher, "ECB")
    return _run(alg, _ECB, cipher, encrypt=False)


def _kw_enc(key: bytes, plain: bytes, iv: bytes | None) -> Ciphertext:
    _aes(key)
    _no_iv(iv, "KW")
    if len(plain) < 16 or len(plain) % 8:
        raise CryptoError("KW data must be a multiple of 8 bytes and at least 16 bytes")
    return Ciphertext(cipher=aes_key_wrap(key, plain))


def _kw_dec(key: bytes, cipher: bytes, iv: bytes | None) -> bytes:
    _aes(key)
    _no_iv(iv, "KW")
    if len(cipher) < 24 or len(cipher) % 8:
        raise CryptoError("KW wrapped data must be a multiple of 8 bytes and at least 24 bytes")
    try:
        return aes_key_unwrap(key, cipher)
    except InvalidUnwrap:
        raise IntegrityError("key unwrap integrity check failed") from None


def _kwp_enc(key: bytes, plain: bytes, iv: bytes | None) -> Ciphertext:
    _aes(key)
    _no_iv(iv, "KWP")
    if not plain:
        raise CryptoError("KWP data must not be empty")
    return Ciphertext(cipher=aes_key_wrap_with_padding(key, plain))


def _kwp_dec(key: bytes, cipher: bytes, iv: bytes | None) -> bytes:
    _aes(key)
    _no_iv(iv, "KWP")
    if len(cipher) < 16 or len(cipher) % 8:
        raise CryptoError("KWP wrapped data must be a multiple of 8 bytes and at least 16 bytes")
    try:
        return aes_key_unwrap_with_padding(key, cipher)
    except InvalidUnwrap:
        raise IntegrityError("key unwrap integrity check failed") from None


_SimpleEnc = Callable[[bytes, bytes, bytes | None], Ciphertext]
_SimpleDec = Callable[[bytes, bytes, bytes | None], bytes]
_EncFn = Callable[[bytes, bytes, bytes | None, bytes | None, int | None], Ciphertext]
_DecFn = Callable[[bytes, bytes, bytes | None, bytes | None, bytes | None], bytes]


def _stream_mode(mode: str, make: Callable[[bytes], modes.CTR | CFB | OFB]) -> tuple[_SimpleEnc, _SimpleDec]:
    """CTR, CFB and OFB: a 16-byte IV (random when encrypting without one), no padding."""

    def enc(key: bytes, plain: bytes, iv: bytes | None) -> Ciphertext:
        iv = block_iv(iv, mode, generate=True)
        return Ciphertext(cipher=_run(_aes(key), make(iv), plain, encrypt=True), iv=iv)

    def dec(key: bytes, cipher: bytes, iv: bytes | None) -> bytes:
        return _run(_aes(key), make(block_iv(iv, mode, generate=False)), cipher, encrypt=False)

    return enc, dec


def _plain_mode(mode: str, enc: _SimpleEnc, dec: _SimpleDec) -> tuple[_EncFn, _DecFn]:
    """Adapt a mode without AAD or tag to the uniform table signature, rejecting those arguments."""

    def reject(aad: bytes | None, extra: object, what: str) -> None:
        if aad is not None:
            raise CryptoError(f"{mode} does not take additional authenticated data")
        if extra is not None:
            raise CryptoError(f"{mode} does not take {what}")

    def enc_fn(key: bytes, plain: bytes, iv: bytes | None, aad: bytes | None, bits: int | None) -> Ciphertext:
        reject(aad, bits, "a tag length")
        return enc(key, plain, iv)

    def dec_fn(key: bytes, cipher: bytes, iv: bytes | None, aad: bytes | None, tag: bytes | None) -> bytes:
        reject(aad, tag, "a tag")
        return dec(key, cipher, iv)

    return enc_fn, dec_fn


_TABLE: dict[str, tuple[_EncFn, _DecFn]] = {
    "GCM": (_gcm_enc, _gcm_dec),
    "CCM": (_ccm_enc, _ccm_dec),
    "CFB": _plain_mode("CFB", *_stream_mode("CFB", CFB)),
    "OFB": _plain_mode("OFB", *_stream_mode("OFB", OFB)),
    "CBC": _plain_mode("CBC", _cbc_enc, _cbc_dec),
    "CBCNOPAD": _plain_mode("CBCNOPAD", _cbcnopad_enc, _cbcnopad_dec),
    "CTR": _plain_mode("CTR", *_stream_mode("CTR", modes.CTR)),
    "ECB": _plain_mode("ECB", _ecb_enc, _ecb_dec),
    "KW": _plain_mode("KW", _kw_enc, _kw_dec),
    "KWP": _plain_mode("KWP", _kwp_enc, _kwp_dec),
}
assert frozenset(_TABLE) == MODES


def _lookup(mode: str, key: bytes) -> tuple[_EncFn, _DecFn]:
    fns = _TABLE.get(mode)
    if fns is None:
        raise CryptoError("unsupported cipher mode; expected one of " + ", ".join(sorted(MODES)))
    _aes(key)
    return fns


# --------------------------------------------------------------------------- public API


def encrypt(
    mode: str,
    key: bytes,
    plain: bytes,
    *,
    iv: bytes | None = None,
    aad: bytes | None = None,
    tag_len_bits: int | None = None,
) -> Ciphertext:
    """Encrypt ``plain`` under ``key`` in ``mode``; a missing IV is generated where the mode needs one."""
    return _lookup(mode, key)[0](key, plain, iv, aad, tag_len_bits)


def decrypt(
    mode: str,
    key: bytes,
    cipher: bytes,
    *,
    iv: bytes | None = None,
    aad: bytes | None = None,
    tag: bytes | None = None,
) -> bytes:
    """Decrypt ``cipher`` under ``key`` in ``mode``; authentication failures raise IntegrityError."""
    return _lookup(mode, key)[1](key, cipher, iv, aad, tag)


def kcv(key: bytes) -> str:
    """Key check value: first 3 bytes of AES-ECB(key, 16 zero bytes), upper-case hex."""
    return _ecb_enc(key, bytes(_BLOCK), None).cipher[:3].hex().upper()


def aes_gcm_encrypt(
    key: bytes, plain: bytes, aad: bytes = b"", iv: bytes | None = None
) -> tuple[bytes, bytes, bytes]:
    """Seal with AES-GCM and a full 16-byte tag; returns ``(iv, cipher, tag)``.

    The XKS path's two GCM operations per request use the one-shot AEAD interface: several times less
    Python work than the streaming Cipher the general modes need (tags shorter than 16 bytes, etc.)."""
    _check_aes_key(key)
    if iv is None:
        iv = random_bytes(_GCM_DEFAULT_IV_LEN)
    elif len(iv) not in _GCM_IV_LENS:
        raise CryptoError("GCM IV must be 12 or 16 bytes")
    sealed = AESGCM(key).encrypt(iv, plain, aad or None)
    return iv, sealed[:-_BLOCK], sealed[-_BLOCK:]


def aes_gcm_decrypt(key: bytes, iv: bytes, cipher: bytes, tag: bytes, aad: bytes = b"") -> bytes:
    """Open an :func:`aes_gcm_encrypt` result; raises IntegrityError on any tampering."""
    if len(tag) != _BLOCK:  # shorter tags: the general path, which checks their length
        return _gcm_dec(key, cipher, iv, aad, tag)
    _check_aes_key(key)
    if len(iv) not in _GCM_IV_LENS:
        raise CryptoError("GCM IV must be 12 or 16 bytes")
    try:
        return AESGCM(key).decrypt(iv, cipher + tag, aad or None)
    except InvalidTag:
        raise IntegrityError("authentication tag mismatch") from None
