"""Tests for dsm_emulator.crypto against published vectors, round trips and error paths."""

import pytest

from dsm_emulator import crypto
from dsm_emulator.crypto import (
    AES_KEY_SIZES,
    MODES,
    Ciphertext,
    CryptoError,
    IntegrityError,
    aes_gcm_decrypt,
    aes_gcm_encrypt,
    decrypt,
    encrypt,
    kcv,
    random_bytes,
)


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


# ---------------------------------------------------------------------------------------------------
# AES-GCM.  Source: D. McGrew & J. Viega, "The Galois/Counter Mode of Operation (GCM)", revised
# submission to NIST (2005), Appendix B test cases (also reproduced in NIST CAVP gcmEncryptExtIV).

GCM_K3 = h("feffe9928665731c6d6a8f9467308308")
GCM_IV3 = h("cafebabefacedbaddecaf888")
GCM_P3 = h(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
)
GCM_A4 = h("feedfacedeadbeeffeedfacedeadbeefabaddad2")

GCM_VECTORS = [
    pytest.param(
        h("00000000000000000000000000000000"),
        h("000000000000000000000000"),
        b"",
        None,
        b"",
        h("58e2fccefa7e3061367f1d57a4e7455a"),
        id="mv-tc1-aes128-empty",
    ),
    pytest.param(
        h("00000000000000000000000000000000"),
        h("000000000000000000000000"),
        h("00000000000000000000000000000000"),
        None,
        h("0388dace60b6a392f328c2b971b2fe78"),
        h("ab6e47d42cec13bdf53a67b21257bddf"),
        id="mv-tc2-aes128",
    ),
    pytest.param(
        GCM_K3,
        GCM_IV3,
        GCM_P3,
        None,
        h(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
            "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985"
        ),
        h("4d5c2af327cd64a62cf35abd2ba6fab4"),
        id="mv-tc3-aes128",
    ),
    pytest.param(
        GCM_K3,
        GCM_IV3,
        GCM_P3[:60],
        GCM_A4,
        h(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
            "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091"
        ),
        h("5bc94fbc3221a5db94fae95ae7121a47"),
        id="mv-tc4-aes128-aad",
    ),
    pytest.param(
        bytes(32),
        bytes(12),
        b"",
        None,
        b"",
        h("530f8afbc74536b9a963b4f1c4cb738b"),
        id="mv-tc13-aes256-empty",
    ),
    pytest.param(
        bytes(32),
        bytes(12),
        bytes(16),
        None,
        h("cea7403d4d606b6e074ec5d3baf39d18"),
        h("d0d1c8a799996bf0265b98b5d48ab919"),
        id="mv-tc14-aes256",
    ),
    pytest.param(
        GCM_K3 + GCM_K3,
        GCM_IV3,
        GCM_P3,
        None,
        h(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
        ),
        h("b094dac5d93471bdec1a502270e3cc6c"),
        id="mv-tc15-aes256",
    ),
    pytest.param(
        GCM_K3 + GCM_K3,
        GCM_IV3,
        GCM_P3[:60],
        GCM_A4,
        h(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
        ),
        h("76fc6ece0f4e1768cddf8853bb2d551b"),
        id="mv-tc16-aes256-aad",
    ),
    # 96-bit tag, DERIVED: McGrew & Viega test case 4 with its published 128-bit tag truncated to the
    # leftmost 96 bits (SP 800-38D section 7.1: T = MSB_t(full tag)).
    pytest.param(
        GCM_K3,
        GCM_IV3,
        GCM_P3[:60],
        GCM_A4,
        h(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
            "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091"
        ),
        h("5bc94fbc3221a5db94fae95a"),
        id="mv-tc4-truncated-96",
    ),
    # 96-bit tags, PUBLISHED: NIST CAVP gcmtestvectors.zip, gcmEncryptExtIV128.rsp,
    # [Keylen = 128] [IVlen = 96] [PTlen = 128] [Taglen = 96], AADlen = 0 and AADlen = 160 sections.
    pytest.param(
        h("f00fdd018c02e03576008b516ea971ad"),
        h("3b3e276f9e98b1ecb7ce6d28"),
        h("2853e66b7b1b3e1fa3d1f37279ac82be"),
        None,
        h("55d2da7a3fb773b8a073db499e24bf62"),
        h("cba06bb4f6e097199250b0d1"),
        id="cavp-extiv128-tag96-aad0",
    ),
    pytest.param(
        h("70fb02388301f16c4193b0fc70683f3f"),
        h("aec612be7c1ddb659a4b315c"),
        h("68e6bc0b08b8adbdc00005ae44723c8e"),
        h("3859b3c9d0b42d45c43e8ebd4c8cbde1b6eb2106"),
        h("a7c52a23b09062a1fb77d47ff83a114f"),
        h("79f91fa572220432ee3a6495"),
        id="cavp-extiv128-tag96-aad160",
    ),
]


@pytest.mark.parametrize(("key", "iv", "pt", "aad", "ct", "tag"), GCM_VECTORS)
def test_gcm_published_vectors(
    key: bytes, iv: bytes, pt: bytes, aad: bytes | None, ct: bytes, tag: bytes
) -> None:
    out = encrypt("GCM", key, pt, iv=iv, aad=aad, tag_len_bits=len(tag) * 8)
    assert out == Ciphertext(cipher=ct, iv=iv, tag=tag)
    assert decrypt("GCM", key, ct, iv=iv, aad=aad, tag=tag) == pt


@pytest.mark.parametrize(("key", "iv", "pt", "aad", "ct", "tag"), GCM_VECTORS)
def test_gcm_published_vectors_reject_tampering(
    key: bytes, iv: bytes, pt: bytes, aad: bytes | None, ct: bytes, tag: bytes
) -> None:
    bad_tag = bytes([tag[0] ^ 1]) + tag[1:]
    with pytest.raises(IntegrityError, match="authentication tag mismatch"):
        decrypt("GCM", key, ct, iv=iv, aad=aad, tag=bad_tag)
    if ct:
        bad_ct = ct[:-1] + bytes([ct[-1] ^ 0x80])
        with pytest.raises(IntegrityError):
            decrypt("GCM", key, bad_ct, iv=iv, aad=aad, tag=tag)
    bad_aad = (aad or b"") + b"x"
    with pytest.raises(IntegrityError):
        decrypt("GCM", key, ct, iv=iv, aad=bad_aad, tag=tag)
    if aad:
        with pytest.raises(IntegrityError):
            decrypt("GCM", key, ct, iv=iv, aad=None, tag=tag)


def test_gcm_helpers_match_published_vector_tc16() -> None:
    iv, ct, tag = aes_gcm_encrypt(GCM_K3 + GCM_K3, GCM_P3[:60], aad=GCM_A4, iv=GCM_IV3)
    assert iv == GCM_IV3
    assert tag == h("76fc6ece0f4e1768cddf8853bb2d551b")
    assert aes_gcm_decrypt(GCM_K3 + GCM_K3, iv, ct, tag, aad=GCM_A4) == GCM_P3[:60]


def test_gcm_helpers_round_trip_and_tamper() -> None:
    key = random_bytes(32)
    iv, ct, tag = aes_gcm_encrypt(key, b"sealed blob", aad=b"ctx")
    assert len(iv) == 12 and len(tag) == 16
    assert aes_gcm_decrypt(key, iv, ct, tag, aad=b"ctx") == b"sealed blob"
    with pytest.raises(IntegrityError):
        aes_gcm_decrypt(key, iv, ct, tag, aad=b"other")
    with pytest.raises(IntegrityError):
        aes_gcm_decrypt(random_bytes(32), iv, ct, tag, aad=b"ctx")


# ---------------------------------------------------------------------------------------------------
# RFC 3394 section 4 (AES Key Wrap).

KW_KEK = h("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
KW_DATA = h("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")

KW_VECTORS = [
    pytest.param(
        KW_KEK[:16], KW_DATA[:16], h("1FA68B0A8112B447 AEF34BD8FB5A7B82 9D3E862371D2CFE5"), id="rfc3394-4.1"
    ),
    pytest.param(
        KW_KEK[:24], KW_DATA[:16], h("96778B25AE6CA435 F92B5B97C050AED2 468AB8A17AD84E5D"), id="rfc3394-4.2"
    ),
    pytest.param(
        KW_KEK, KW_DATA[:16], h("64E8C3F9CE0F5BA2 63E9777905818A2A 93C8191E7D6E8AE7"), id="rfc3394-4.3"
    ),
    pytest.param(
        KW_KEK,
        KW_DATA,
        h("28C9F404C4B810F4 CBCCB35CFB87F826 3F5786E2D80ED326 CBC7F0E71A99F43B FB988B9B7A02DD21"),
        id="rfc3394-4.6",
    ),
]


@pytest.mark.parametrize(("kek", "data", "wrapped"), KW_VECTORS)
def test_kw_rfc3394_vectors(kek: bytes, data: bytes, wrapped: bytes) -> None:
    assert encrypt("KW", kek, data) == Ciphertext(cipher=wrapped)
    assert decrypt("KW", kek, wrapped) == data


@pytest.mark.parametrize(("kek", "data", "wrapped"), KW_VECTORS)
def test_kw_tampered_fails_integrity(kek: bytes, data: bytes, wrapped: bytes) -> None:
    for i in (0, 8, len(wrapped) - 1):
        bad = bytearray(wrapped)
        bad[i] ^= 1
        with pytest.raises(IntegrityError):
            decrypt("KW", kek, bytes(bad))
    other_kek = bytes([kek[0] ^ 1]) + kek[1:]
    with pytest.raises(IntegrityError):
        decrypt("KW", other_kek, wrapped)


# ---------------------------------------------------------------------------------------------------
# RFC 5649 section 6 (AES Key Wrap with Padding), both examples.

KWP_KEK = h("5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8")
KWP_VECTORS = [
    pytest.param(
        h("c37b7e6492584340 bed1220780894115 5068f738"),
        h("138bdeaa9b8fa7fc 61f97742e72248ee 5ae6ae5360d1ae6a 5f54f373fa543b6a"),
        id="rfc5649-20-bytes",
    ),
    pytest.param(h("466f7250617369"), h("afbeb0f07dfbf541 9200f2ccb50bb24f"), id="rfc5649-7-bytes"),
]


@pytest.mark.parametrize(("data", "wrapped"), KWP_VECTORS)
def test_kwp_rfc5649_vectors(data: bytes, wrapped: bytes) -> None:
    assert encrypt("KWP", KWP_KEK, data) == Ciphertext(cipher=wrapped)
    assert decrypt("KWP", KWP_KEK, wrapped) == data
    bad = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(IntegrityError):
        decrypt("KWP", KWP_KEK, bad)


# ---------------------------------------------------------------------------------------------------
# NIST SP 800-38A, Appendix F: F.1.1 ECB-AES128, F.2.1 CBC-AES128, F.5.1 CTR-AES128 (encrypt), and the
# AES-256 counterparts F.1.5, F.2.5, F.5.5.

SP_P = h(
    "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710"
)
SP_K128 = h("2b7e151628aed2a6abf7158809cf4f3c")
SP_K256 = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
SP_CBC_IV = h("000102030405060708090a0b0c0d0e0f")
SP_CTR_IV = h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")

SP_VECTORS = [
    pytest.param(
        "ECB",
        SP_K128,
        None,
        h(
            "3ad77bb40d7a3660a89ecaf32466ef97 f5d3d58503b9699de785895a96fdbaaf"
            "43b1cd7f598ece23881b00e3ed030688 7b0c785e27e8ad3f8223207104725dd4"
        ),
        id="sp800-38a-F.1.1-ecb-aes128",
    ),
    pytest.param(
        "CBCNOPAD",
        SP_K128,
        SP_CBC_IV,
        h(
            "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2"
            "73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7"
        ),
        id="sp800-38a-F.2.1-cbc-aes128",
    ),
    pytest.param(
        "CTR",
        SP_K128,
        SP_CTR_IV,
        h(
            "874d6191b620e3261bef6864990db6ce 9806f66b7970fdff8617187bb9fffdff"
            "5ae4df3edbd5d35e5b4f09020db03eab 1e031dda2fbe03d1792170a0f3009cee"
        ),
        id="sp800-38a-F.5.1-ctr-aes128",
    ),
    pytest.param(
        "ECB",
        SP_K256,
        None,
        h(
            "f3eed1bdb5d2a03c064b5a7e3db181f8 591ccb10d410ed26dc5ba74a31362870"
            "b6ed21b99ca6f4f9f153e7b1beafed1d 23304b7a39f9f3ff067d8d8f9e24ecc7"
        ),
        id="sp800-38a-F.1.5-ecb-aes256",
    ),
    pytest.param(
        "CBCNOPAD",
        SP_K256,
        SP_CBC_IV,
        h(
            "f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d"
            "39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b"
        ),
        id="sp800-38a-F.2.5-cbc-aes256",
    ),
    pytest.param(
        "CTR",
        SP_K256,
        SP_CTR_IV,
        h(
            "601ec313775789a5b7a7f504bbf3d228 f443e3ca4d62b59aca84e990cacaf5c5"
            "2b0930daa23de94ce87017ba2d84988d dfc9c58db67aada613c2dd08457941a6"
        ),
        id="sp800-38a-F.5.5-ctr-aes256",
    ),
]


@pytest.mark.parametrize(("mode", "key", "iv", "ct"), SP_VECTORS)
def test_sp800_38a_vectors(mode: str, key: bytes, iv: bytes | None, ct: bytes) -> None:
    assert encrypt(mode, key, SP_P, iv=iv) == Ciphertext(cipher=ct, iv=iv)
    assert decrypt(mode, key, ct, iv=iv) == SP_P


def test_ctr_partial_block_is_prefix_of_sp800_38a_f51() -> None:
    # CTR is a stream mode: encrypting a prefix yields the same prefix of the F.5.1 ciphertext.
    out = encrypt("CTR", SP_K128, SP_P[:21], iv=SP_CTR_IV)
    assert out.cipher == h("874d6191b620e3261bef6864990db6ce 9806f66b79")


def test_cbc_padded_first_blocks_match_sp800_38a_f21() -> None:
    # PKCS#7 only appends a full block to aligned input; the first 64 bytes are the F.2.1 ciphertext.
    out = encrypt("CBC", SP_K128, SP_P, iv=SP_CBC_IV)
    assert len(out.cipher) == 80
    assert out.cipher[:16] == h("7649abac8119b246cee98e9b12e9197d")
    assert decrypt("CBC", SP_K128, out.cipher, iv=SP_CBC_IV) == SP_P


# ---------------------------------------------------------------------------------------------------
# Key check value.  AES-128 with the all-zero key maps the zero block to 66e94bd4ef8a2c3b884cfa59ca342b2e
# (published as the hash subkey H = E(K, 0^128) in McGrew & Viega GCM test cases 1 and 2), so KCV = 66E94B.


def test_kcv_known_value() -> None:
    assert kcv(bytes(16)) == "66E94B"


def test_kcv_matches_sp800_38a_ecb_definition() -> None:
    assert kcv(SP_K128) == encrypt("ECB", SP_K128, bytes(16)).cipher[:3].hex().upper()
    assert len(kcv(random_bytes(32))) == 6


def test_kcv_rejects_bad_key() -> None:
    with pytest.raises(CryptoError, match="AES key must be 128, 192 or 256 bits"):
        kcv(bytes(15))


# ---------------------------------------------------------------------------------------------------
# Round trips.

KEY_BYTES = [bits // 8 for bits in AES_KEY_SIZES]


def _plain_for(mode: str) -> bytes:
    return {"CBCNOPAD": random_bytes(48), "ECB": random_bytes(32), "KW": random_bytes(24)}.get(
        mode, random_bytes(37)
    )


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("key_len", KEY_BYTES)
def test_round_trip_every_mode_and_key_size(mode: str, key_len: int) -> None:
    key = random_bytes(key_len)
    plain = _plain_for(mode)
    out = encrypt(mode, key, plain)
    if mode in {"ECB", "KW", "KWP"}:
        assert out.iv is None
    else:
        assert out.iv is not None and len(out.iv) == (12 if mode in ("GCM", "CCM") else 16)
    assert (out.tag is not None) == (mode in ("GCM", "CCM"))
    assert out.cipher != plain
    assert decrypt(mode, key, out.cipher, iv=out.iv, tag=out.tag) == plain


def test_random_ivs_differ() -> None:
    key = random_bytes(16)
    assert encrypt("GCM", key, b"x").iv != encrypt("GCM", key, b"x").iv
    assert encrypt("CBC", key, b"x").iv != encrypt("CBC", key, b"x").iv


@pytest.mark.parametrize("length", range(34))
def test_cbc_padding_lengths(length: int) -> None:
    key = random_bytes(32)
    plain = random_bytes(length)
    out = encrypt("CBC", key, plain)
    assert len(out.cipher) == (length // 16 + 1) * 16
    assert decrypt("CBC", key, out.cipher, iv=out.iv) == plain


@pytest.mark.parametrize("key_len", KEY_BYTES)
@pytest.mark.parametrize("iv_len", [12, 16])
# Ids named, not drawn from the values: a random value in a test id differs between pytest-xdist workers.
@pytest.mark.parametrize(
    "aad", [None, b"", b"header", random_bytes(100)], ids=["none", "empty", "short", "random100"]
)
@pytest.mark.parametrize("tag_bits", [96, 104, 112, 120, 128])
def test_gcm_round_trip(key_len: int, iv_len: int, aad: bytes | None, tag_bits: int) -> None:
    key, iv = random_bytes(key_len), random_bytes(iv_len)
    plain = random_bytes(45)
    out = encrypt("GCM", key, plain, iv=iv, aad=aad, tag_len_bits=tag_bits)
    assert out.iv == iv and out.tag is not None and len(out.tag) == tag_bits // 8
    assert decrypt("GCM", key, out.cipher, iv=iv, aad=aad, tag=out.tag) == plain
    with pytest.raises(IntegrityError):
        decrypt("GCM", key, out.cipher, iv=iv, aad=(aad or b"") + b"!", tag=out.tag)


def test_gcm_truncated_tag_is_prefix_of_full_tag() -> None:
    key, iv = random_bytes(16), random_bytes(12)
    full = encrypt("GCM", key, b"data", iv=iv).tag
    short = encrypt("GCM", key, b"data", iv=iv, tag_len_bits=96).tag
    assert full is not None and short == full[:12]


@pytest.mark.parametrize("length", [1, 7, 8, 9, 16, 20, 33, 64])
def test_kwp_round_trip_lengths(length: int) -> None:
    key, data = random_bytes(32), random_bytes(length)
    out = encrypt("KWP", key, data)
    assert len(out.cipher) == max(16, -(-length // 8) * 8 + 8)
    assert decrypt("KWP", key, out.cipher) == data


def test_random_bytes() -> None:
    assert len(random_bytes(0)) == 0
    assert len(random_bytes(33)) == 33
    with pytest.raises(CryptoError):
        random_bytes(-1)


# ---------------------------------------------------------------------------------------------------
# Negative cases.


def test_error_hierarchy() -> None:
    assert issubclass(IntegrityError, CryptoError)
    assert issubclass(CryptoError, ValueError)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("key_len", [0, 1, 15, 17, 20, 31, 33, 64])
def test_wrong_key_size(mode: str, key_len: int) -> None:
    with pytest.raises(CryptoError, match="AES key must be 128, 192 or 256 bits") as exc:
        encrypt(mode, bytes(key_len), bytes(32))
    assert not isinstance(exc.value, IntegrityError)
    with pytest.raises(CryptoError, match="AES key must be 128, 192 or 256 bits"):
        iv = bytes(12) if mode == "CCM" else bytes(16)
        decrypt(mode, bytes(key_len), bytes(32), iv=iv, tag=bytes(16) if mode in ("GCM", "CCM") else None)


@pytest.mark.parametrize("mode", ["gcm", "ofb", "CFB8", "XTS", "", "AES"])
def test_unsupported_mode(mode: str) -> None:
    with pytest.raises(CryptoError, match="unsupported cipher mode"):
        encrypt(mode, bytes(16), bytes(16))
    with pytest.raises(CryptoError, match="unsupported cipher mode"):
        decrypt(mode, bytes(16), bytes(16))


@pytest.mark.parametrize(
    ("mode", "iv"),
    [
        ("GCM", b""),
        ("GCM", bytes(8)),
        ("GCM", bytes(11)),
        ("GCM", bytes(13)),
        ("GCM", bytes(15)),
        ("GCM", bytes(17)),
        ("GCM", bytes(60)),
        ("CBC", bytes(12)),
        ("CBC", bytes(15)),
        ("CBC", bytes(17)),
        ("CBCNOPAD", bytes(8)),
        ("CTR", bytes(12)),
        ("CTR", bytes(32)),
        ("ECB", bytes(16)),
        ("KW", bytes(8)),
        ("KWP", bytes(4)),
        ("CFB", bytes(12)),
        ("OFB", bytes(17)),
        ("CCM", bytes(6)),
        ("CCM", bytes(14)),
    ],
)
def test_bad_iv(mode: str, iv: bytes) -> None:
    plain = bytes(16)
    with pytest.raises(CryptoError) as exc:
        encrypt(mode, bytes(16), plain, iv=iv)
    assert not isinstance(exc.value, IntegrityError)
    with pytest.raises(CryptoError) as exc:
        decrypt(mode, bytes(16), bytes(32), iv=iv, tag=bytes(16) if mode in ("GCM", "CCM") else None)
    assert not isinstance(exc.value, IntegrityError)


@pytest.mark.parametrize("mode", ["GCM", "CCM", "CBC", "CBCNOPAD", "CTR", "CFB", "OFB"])
def test_decrypt_requires_iv(mode: str) -> None:
    with pytest.raises(CryptoError, match="IV"):
        decrypt(mode, bytes(16), bytes(32), tag=bytes(16) if mode in ("GCM", "CCM") else None)


@pytest.mark.parametrize("tag_bits", [0, 32, 64, 95, 100, 127, 136, 256])
def test_bad_gcm_tag_len(tag_bits: int) -> None:
    with pytest.raises(CryptoError, match="GCM tag length"):
        encrypt("GCM", bytes(16), b"data", tag_len_bits=tag_bits)


@pytest.mark.parametrize("tag_len", [0, 4, 8, 11, 17, 32])
def test_bad_gcm_tag_on_decrypt(tag_len: int) -> None:
    with pytest.raises(CryptoError) as exc:
        decrypt("GCM", bytes(16), b"data", iv=bytes(12), tag=bytes(tag_len))
    assert not isinstance(exc.value, IntegrityError)


def test_gcm_decrypt_requires_tag() -> None:
    with pytest.raises(CryptoError, match="requires a tag"):
        decrypt("GCM", bytes(16), b"data", iv=bytes(12))


@pytest.mark.parametrize("mode", sorted(MODES - {"GCM", "CCM"}))
def test_aad_tag_len_and_tag_rejected_outside_gcm(mode: str) -> None:
    key, plain = bytes(16), bytes(32)
    with pytest.raises(CryptoError, match="additional authenticated data"):
        encrypt(mode, key, plain, aad=b"aad")
    with pytest.raises(CryptoError, match="additional authenticated data"):
        encrypt(mode, key, plain, aad=b"")
    with pytest.raises(CryptoError, match="tag length"):
        encrypt(mode, key, plain, tag_len_bits=128)
    ct = encrypt(mode, key, plain)
    with pytest.raises(CryptoError, match="additional authenticated data"):
        decrypt(mode, key, ct.cipher, iv=ct.iv, aad=b"aad")
    with pytest.raises(CryptoError, match="does not take a tag"):
        decrypt(mode, key, ct.cipher, iv=ct.iv, tag=bytes(16))


@pytest.mark.parametrize("mode", ["ECB", "CBCNOPAD"])
@pytest.mark.parametrize("length", [1, 15, 17, 31, 33])
def test_unaligned_data(mode: str, length: int) -> None:
    iv = None if mode == "ECB" else bytes(16)
    with pytest.raises(CryptoError, match="multiple of 16"):
        encrypt(mode, bytes(16), bytes(length), iv=iv)
    with pytest.raises(CryptoError, match="multiple of 16"):
        decrypt(mode, bytes(16), bytes(length), iv=iv)


@pytest.mark.parametrize("length", [0, 1, 15, 17])
def test_cbc_decrypt_malformed_ciphertext_is_crypto_error(length: int) -> None:
    with pytest.raises(CryptoError) as exc:
        decrypt("CBC", bytes(16), bytes(length), iv=bytes(16))
    assert not isinstance(exc.value, IntegrityError)


def test_cbc_bad_padding_is_integrity_error() -> None:
    key, iv = random_bytes(16), random_bytes(16)
    # A block whose CBC decryption ends in 0x00 is never valid PKCS#7.
    raw = encrypt("CBCNOPAD", key, bytes(16), iv=iv).cipher
    with pytest.raises(IntegrityError, match="padding"):
        decrypt("CBC", key, raw, iv=iv)
    # Padding byte larger than the block size.
    raw = encrypt("CBCNOPAD", key, bytes(15) + b"\x11", iv=iv).cipher
    with pytest.raises(IntegrityError, match="padding"):
        decrypt("CBC", key, raw, iv=iv)


@pytest.mark.parametrize("length", [0, 8, 15, 17, 23])
def test_kw_bad_plaintext_length(length: int) -> None:
    with pytest.raises(CryptoError) as exc:
        encrypt("KW", bytes(16), bytes(length))
    assert not isinstance(exc.value, IntegrityError)


@pytest.mark.parametrize("length", [0, 8, 16, 25, 31])
def test_kw_bad_wrapped_length(length: int) -> None:
    with pytest.raises(CryptoError) as exc:
        decrypt("KW", bytes(16), bytes(length))
    assert not isinstance(exc.value, IntegrityError)


def test_kwp_empty_and_malformed() -> None:
    with pytest.raises(CryptoError):
        encrypt("KWP", bytes(16), b"")
    for length in (0, 8, 17):
        with pytest.raises(CryptoError) as exc:
            decrypt("KWP", bytes(16), bytes(length))
        assert not isinstance(exc.value, IntegrityError)


def test_error_messages_never_leak_key_or_data() -> None:
    key = h("a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90")
    plain = h("deadbeefcafef00d0123456789abcdef55")
    secrets = [key, key[:15], key[:17], plain]
    messages: list[str] = []
    calls = [
        lambda: encrypt("GCM", key[:15], plain),
        lambda: encrypt("GCM", key[:17], plain),
        lambda: kcv(key[:17]),
        lambda: encrypt("GCM", key, plain, iv=plain[:11]),
        lambda: encrypt("GCM", key, plain, tag_len_bits=100),
        lambda: encrypt("ECB", key, plain),
        lambda: encrypt("CBCNOPAD", key, plain),
        lambda: encrypt("KW", key, plain),
        lambda: encrypt("CBC", key, plain, aad=plain),
        lambda: encrypt(key.hex(), key, plain),
        lambda: decrypt("GCM", key, plain, iv=bytes(12), tag=plain[:16]),
        lambda: decrypt("CBC", key, plain[:16], iv=bytes(16)),
        lambda: decrypt("KW", key, plain[:16] + plain[:8]),
        lambda: decrypt("KWP", key, plain[:16]),
    ]
    for call in calls:
        with pytest.raises(CryptoError) as exc:
            call()
        messages.append(str(exc.value))
    for msg in messages:
        assert msg
        for secret in secrets:
            assert secret.hex() not in msg.lower()
            assert secret.hex()[:8] not in msg.lower()
            assert repr(secret) not in msg


def test_ciphertext_is_frozen() -> None:
    ct = Ciphertext(cipher=b"x")
    with pytest.raises(AttributeError):
        ct.cipher = b"y"  # type: ignore[misc]
    assert not hasattr(ct, "__dict__")


def test_modes_constant() -> None:
    assert frozenset({"GCM", "CCM", "CBC", "CBCNOPAD", "CTR", "CFB", "OFB", "ECB", "KW", "KWP"}) == MODES
    assert AES_KEY_SIZES == (128, 192, 256)
    assert isinstance(crypto.MODES, frozenset)
