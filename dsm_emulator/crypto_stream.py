"""AES in pieces: the running state of a multipart encrypt or decrypt (Fortanix's ``init``, ``update``,
``final``) and the step functions over it. Pure like ``dsm_emulator.crypto``: bytes in, bytes out.

A :class:`Stream` holds everything needed to continue, and nothing secret but what it must (the key is
not in it; the caller seals the whole state before it leaves the server):

* CBC and CBCNOPAD: ``block`` is the chaining block (the IV, then the last ciphertext block) and
  ``pending`` the input not yet a whole block. A CBC decrypt keeps its last whole block back, because
  the PKCS#7 padding can only be checked and removed at ``final``.
* CTR: ``block`` is the initial counter block and ``offset`` the number of bytes done; every byte is
  answered at once, the keystream position being recomputed from the offset.
* CFB (CFB-128) and OFB: ``block`` is the feedback register for the current block (the IV, then the
  last whole ciphertext block for CFB, the last keystream block for OFB) and ``pending`` (CFB) the
  ciphertext of the current block so far; every byte is answered at once. CCM cannot be done in pieces:
  its first block encodes the whole length.
* GCM (NIST SP 800-38D): ``block`` is the pre-counter block J0, ``offset`` the ciphertext length so far,
  ``ghash`` the running GHASH value, ``pending`` the ciphertext not yet a whole GHASH block and
  ``aad_len`` the length of the additional data (hashed at ``start``). The tag is made, or checked in
  constant time, at ``final``. A GCM decrypt answers plaintext before the tag is checked: that is what
  decrypting in pieces means, and the caller learns at ``final`` whether to trust it.

The result of running init, any number of updates and final equals the one-shot operation of
``dsm_emulator.crypto`` on the concatenated input (the tests check this against ``cryptography``).
"""

from __future__ import annotations

import dataclasses
import hmac
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.modes import CFB, OFB
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from dsm_emulator.crypto import CryptoError, IntegrityError, random_bytes

STREAM_MODES = ("CBC", "CBCNOPAD", "CTR", "GCM", "CFB", "OFB")
_BLOCK = 16
_GCM_TAG_BITS = (96, 104, 112, 120, 128)
_GCM_MAX_BYTES = (1 << 36) - 32  # the plaintext limit of SP 800-38D (2^39 - 256 bits)
_R = 0xE1 << 120


@dataclass(frozen=True, slots=True)
class Stream:
    mode: str
    encrypt: bool
    block: bytes
    pending: bytes = b""
    offset: int = 0
    ghash: int = 0
    aad_len: int = 0


def start(
    mode: str, key: bytes, iv: bytes | None, *, encrypt: bool, aad: bytes | None = None
) -> tuple[Stream, bytes]:
    """A new stream and its IV (an encrypt without an IV gets a random one)."""
    if mode not in STREAM_MODES:
        raise CryptoError(f"mode {mode} cannot be used in pieces; one of {', '.join(STREAM_MODES)} can")
    if len(key) * 8 not in (128, 192, 256):
        raise CryptoError("AES key must be 128, 192 or 256 bits")
    if mode == "GCM":
        return _gcm_start(key, iv, aad, encrypt=encrypt)
    if aad is not None:
        raise CryptoError(f"{mode} does not take additional data (ad)")
    if iv is None and encrypt:
        iv = random_bytes(_BLOCK)
    if iv is None or len(iv) != _BLOCK:
        raise CryptoError(f"{mode} IV must be 16 bytes")
    return Stream(mode, encrypt, iv), iv


def update(key: bytes, stream: Stream, data: bytes) -> tuple[bytes, Stream]:
    """The output for ``data`` (as much of it as can be answered now) and the stream after it."""
    if stream.mode == "GCM":
        return _gcm_update(key, stream, data)
    if stream.mode == "CTR":
        return _ctr(key, stream, data), dataclasses.replace(stream, offset=stream.offset + len(data))
    if stream.mode == "OFB":
        return _ofb(key, stream, data)
    if stream.mode == "CFB":
        return _cfb(key, stream, data)
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


def final(
    key: bytes, stream: Stream, *, tag_len_bits: int | None = None, tag: bytes | None = None
) -> tuple[bytes, bytes | None]:
    """(what is left to answer, the GCM tag of an encrypt); refuses a CBCNOPAD stream that did not end on
    a block boundary, a CBC decrypt whose padding is wrong (IntegrityError) or whose ciphertext was not
    whole blocks, and a GCM decrypt whose tag does not match (IntegrityError)."""
    if stream.mode == "GCM":
        return _gcm_final(key, stream, tag_len_bits, tag)
    if tag_len_bits is not None or tag is not None:
        raise CryptoError(f"{stream.mode} has no authentication tag (tag_len, tag)")
    return _final(key, stream), None


def _final(key: bytes, stream: Stream) -> bytes:
    if stream.mode in ("CTR", "CFB", "OFB"):
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


def _ofb(key: bytes, stream: Stream, data: bytes) -> tuple[bytes, Stream]:
    # The keystream from the start of the current block (E(register), E(E(register)), ...); the bytes of
    # it already used are skipped, and the register moves to the last whole keystream block.
    skip = stream.offset % _BLOCK
    ctx = Cipher(algorithms.AES(key), OFB(stream.block)).encryptor()
    stream_bytes = ctx.update(bytes(skip + len(data))) + ctx.finalize()
    out = bytes(a ^ b for a, b in zip(data, stream_bytes[skip:], strict=True))
    whole = len(stream_bytes) // _BLOCK
    register = stream_bytes[(whole - 1) * _BLOCK : whole * _BLOCK] if whole else stream.block
    return out, dataclasses.replace(stream, block=register, offset=stream.offset + len(data))


def _cfb(key: bytes, stream: Stream, data: bytes) -> tuple[bytes, Stream]:
    # From the start of the current block: the ciphertext already answered (``pending``) is replayed
    # (an encrypt replays the plaintext that gave it), so the feedback comes out right.
    skip = len(stream.pending)
    ctx = Cipher(algorithms.AES(key), CFB(stream.block))
    if stream.encrypt:
        pad = _ecb(key, stream.block)[:skip]
        replayed = bytes(a ^ b for a, b in zip(stream.pending, pad, strict=True))
        enc = ctx.encryptor()
        out = (enc.update(replayed + data) + enc.finalize())[skip:]
        cipher = stream.pending + out
    else:
        dec = ctx.decryptor()
        out = (dec.update(stream.pending + data) + dec.finalize())[skip:]
        cipher = stream.pending + data
    whole = len(cipher) // _BLOCK
    register = cipher[(whole - 1) * _BLOCK : whole * _BLOCK] if whole else stream.block
    following = dataclasses.replace(
        stream, block=register, pending=cipher[whole * _BLOCK :], offset=stream.offset + len(data)
    )
    return out, following


# ------------------------------------------------------------------------------------------ GCM


def _gcm_start(key: bytes, iv: bytes | None, aad: bytes | None, *, encrypt: bool) -> tuple[Stream, bytes]:
    if iv is None and encrypt:
        iv = random_bytes(12)
    if iv is None or len(iv) not in (12, 16):
        raise CryptoError("GCM IV must be 12 or 16 bytes")
    table = _ghash_table(key)
    if len(iv) == 12:
        j0 = iv + b"\x00\x00\x00\x01"
    else:  # J0 = GHASH(IV || 0^64 || [len(IV)]_64) for an IV that is not 96 bits
        j0 = _ghash(table, 0, iv + (len(iv) * 8).to_bytes(16, "big")).to_bytes(16, "big")
    aad = aad or b""
    padded = aad + bytes(-len(aad) % _BLOCK)
    return Stream("GCM", encrypt, j0, ghash=_ghash(table, 0, padded), aad_len=len(aad)), iv


def _gcm_update(key: bytes, stream: Stream, data: bytes) -> tuple[bytes, Stream]:
    if stream.offset + len(data) > _GCM_MAX_BYTES:
        raise CryptoError("GCM can protect at most 2^39 - 256 bits in one operation")
    out = _gcm_ctr(key, stream.block, stream.offset, data)
    cipher = out if stream.encrypt else data
    hashed = stream.pending + cipher
    whole = len(hashed) - len(hashed) % _BLOCK
    x = _ghash(_ghash_table(key), stream.ghash, hashed[:whole])
    following = dataclasses.replace(stream, offset=stream.offset + len(data), ghash=x, pending=hashed[whole:])
    return out, following


def _gcm_final(
    key: bytes, stream: Stream, tag_len_bits: int | None, tag: bytes | None
) -> tuple[bytes, bytes | None]:
    table = _ghash_table(key)
    tail = stream.pending + bytes(-len(stream.pending) % _BLOCK)
    lengths = ((stream.aad_len * 8) << 64 | stream.offset * 8).to_bytes(16, "big")
    s = _ghash(table, stream.ghash, tail + lengths)
    ek_j0 = _ecb(key, stream.block)
    full = (s ^ int.from_bytes(ek_j0, "big")).to_bytes(16, "big")
    if stream.encrypt:
        if tag is not None:
            raise CryptoError("an encrypt does not take a tag")
        bits = 128 if tag_len_bits is None else tag_len_bits
        if bits not in _GCM_TAG_BITS:
            raise CryptoError("GCM tag length must be 96, 104, 112, 120 or 128 bits")
        return b"", full[: bits // 8]
    if tag_len_bits is not None:
        raise CryptoError("a decrypt does not take tag_len")
    if tag is None:
        raise CryptoError("GCM decryption requires a tag")
    if not 12 <= len(tag) <= _BLOCK:
        raise CryptoError("GCM tag must be 12 to 16 bytes")
    if not hmac.compare_digest(full[: len(tag)], tag):
        raise IntegrityError("authentication tag mismatch")
    return b"", None


def _gcm_ctr(key: bytes, j0: bytes, offset: int, data: bytes) -> bytes:
    # GCM's counter is inc32: only the low 32 bits count (and wrap); cryptography's CTR carries into the
    # upper 96, so the data is cut where the low word would wrap.
    base = int.from_bytes(j0, "big")
    high, low0 = base >> 32 << 32, base & 0xFFFFFFFF
    out, pos = [], 0
    while pos < len(data):
        n, skip = divmod(offset + pos, _BLOCK)
        low = (low0 + 1 + n) & 0xFFFFFFFF
        room = ((1 << 32) - low) * _BLOCK - skip
        piece = data[pos : pos + room]
        ctx = Cipher(algorithms.AES(key), modes.CTR((high | low).to_bytes(16, "big"))).encryptor()
        ctx.update(bytes(skip))
        out.append(ctx.update(piece))
        pos += len(piece)
    return b"".join(out)


def _ecb(key: bytes, block: bytes) -> bytes:
    ctx = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - one block: E_K(J0), H
    return ctx.update(block) + ctx.finalize()


def _ghash_table(key: bytes) -> list[list[int]]:
    """Multiplication by H = E_K(0^128) in GF(2^128), as 16 tables of 256 (one per byte of the
    multiplicand): the product is linear in the multiplicand, so it is the XOR of one entry per byte.
    Bits are numbered as in SP 800-38D Algorithm 1 (the block read as a big-endian integer)."""
    v = int.from_bytes(_ecb(key, bytes(_BLOCK)), "big")
    by_bit = [0] * 128  # by_bit[k] = (the block with only integer bit k set) * H
    for k in range(127, -1, -1):
        by_bit[k] = v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    tables = []
    for p in range(16):
        row = [0] * 256
        for j in range(8):
            bit, term = 1 << j, by_bit[8 * p + j]
            for b in range(bit):
                row[b | bit] = row[b] ^ term
        tables.append(row)
    return tables


def _ghash(tables: list[list[int]], x: int, data: bytes) -> int:
    """GHASH continued from ``x`` over ``data`` (whole blocks)."""
    for i in range(0, len(data), _BLOCK):
        y = x ^ int.from_bytes(data[i : i + _BLOCK], "big")
        x = 0
        for p in range(16):
            x ^= tables[p][(y >> (8 * p)) & 0xFF]
    return x
