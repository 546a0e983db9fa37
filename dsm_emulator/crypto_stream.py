"""AES in pieces: the running state of a multipart encrypt or decrypt (Fortanix's ``init``, ``update``,
``final``) and the step functions over it. Pure like ``dsm_emulator.crypto``: bytes in, bytes out.

A :class:`Stream` holds everything needed to continue, and nothing secret but what it must (the key is
not in it; the caller seals the whole state before it leaves the server):

* CBC and CBCNOPAD: ``block`` is the chaining block (the IV, then the last ciphertext block) and
  ``pending`` the input not yet a whole block. A CBC decrypt keeps its last whole block back, because
  the PKCS#7 padding can only be checked and removed at ``final``.
* CTR: ``block`` is the initial counter block and ``offset`` the number of bytes done; every byte is
  answered at once, the keystream position being recomputed from the offset.

The result of running init, any number of updates and final equals the one-shot operation of
``dsm_emulator.crypto`` on the concatenated input (the tests check this against ``cryptography``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from dsm_emulator.crypto import CryptoError, IntegrityError, random_bytes

STREAM_MODES = ("CBC", "CBCNOPAD", "CTR")
_BLOCK = 16


@dataclass(frozen=True, slots=True)
class Stream:
    mode: str
    encrypt: bool
    block: bytes
    pending: bytes = b""
    offset: int = 0


def start(mode: str, key: bytes, iv: bytes | None, *, encrypt: bool) -> Stream:
    """A new stream; an encrypt without an IV gets a random one (``stream.block`` is then the IV)."""
    if mode not in STREAM_MODES:
        raise CryptoError(f"mode {mode} cannot be used in pieces; one of {', '.join(STREAM_MODES)} can")
    if len(key) * 8 not in (128, 192, 256):
        raise CryptoError("AES key must be 128, 192 or 256 bits")
    if iv is None and encrypt:
        iv = random_bytes(_BLOCK)
    if iv is None or len(iv) != _BLOCK:
        raise CryptoError(f"{mode} IV must be 16 bytes")
    return Stream(mode, encrypt, iv)


def update(key: bytes, stream: Stream, data: bytes) -> tuple[bytes, Stream]:
    """The output for ``data`` (as much of it as can be answered now) and the stream after it."""
    if stream.mode == "CTR":
        return _ctr(key, stream, data), dataclasses.replace(stream, offset=stream.offset + len(data))
    buffered = stream.pending + data
    whole = len(buffered) - len(buffered) % _BLOCK
    if stream.mode == "CBC" and not stream.encrypt and whole == len(buffered):
        whole -= _BLOCK  # the block that may end in padding waits for final
    whole = max(whole, 0)
    ready, rest = buffered[:whole], buffered[whole:]
    if not ready:
        return b"", dataclasses.replace(stream, pending=rest)
    out = _cbc(key, stream.block, ready, encrypt=stream.encrypt)
    chain = (out if stream.encrypt else ready)[-_BLOCK:]
    return out, dataclasses.replace(stream, block=chain, pending=rest)


def final(key: bytes, stream: Stream) -> bytes:
    """What is left to answer; refuses a CBCNOPAD stream that did not end on a block boundary and a CBC
    decrypt whose padding is wrong (IntegrityError) or whose ciphertext was not whole blocks."""
    if stream.mode == "CTR":
        return b""
    if stream.mode == "CBCNOPAD":
        if stream.pending:
            raise CryptoError("CBCNOPAD data length must be a multiple of 16 bytes")
        return b""
    if stream.encrypt:
        padder = padding.PKCS7(_BLOCK * 8).padder()
        padded = padder.update(stream.pending) + padder.finalize()
        return _cbc(key, stream.block, padded, encrypt=True)
    if len(stream.pending) != _BLOCK:
        raise CryptoError("CBC ciphertext length must be a non-zero multiple of 16 bytes")
    unpadder = padding.PKCS7(_BLOCK * 8).unpadder()
    last = _cbc(key, stream.block, stream.pending, encrypt=False)
    try:
        return unpadder.update(last) + unpadder.finalize()
    except ValueError:
        raise IntegrityError("invalid CBC padding") from None


def _cbc(key: bytes, chain: bytes, data: bytes, *, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CBC(chain))
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


def _ctr(key: bytes, stream: Stream, data: bytes) -> bytes:
    # The counter block is a 128-bit big-endian integer that wraps, as in cryptography's (and the
    # one-shot path's) CTR; the bytes of a partly used block are skipped by encrypting zeros over them.
    blocks, skip = divmod(stream.offset, _BLOCK)
    counter = (int.from_bytes(stream.block, "big") + blocks) % (1 << 128)
    ctx = Cipher(algorithms.AES(key), modes.CTR(counter.to_bytes(_BLOCK, "big"))).encryptor()
    ctx.update(bytes(skip))
    return ctx.update(data) + ctx.finalize()
