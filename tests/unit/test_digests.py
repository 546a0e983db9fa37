"""dsm_emulator.digests against published vectors: FIPS 180-4 and FIPS 202 ("abc"), RFC 2202 and RFC 4231
(HMAC), RFC 4493 (AES-CMAC). The expected values are copied from the standards, not computed."""

from __future__ import annotations

import pytest

from dsm_emulator import digests
from dsm_emulator.crypto import CryptoError

ABC = {
    "SHA1": "a9993e364706816aba3e25717850c26c9cd0d89d",
    "SHA256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    "SHA384": "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed"
    "8086072ba1e7cc2358baeca134c825a7",
    "SHA512": "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
    "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
    "SHA3_224": "e642824c3f8cf24ad09234ee7d3c766fc9a3a5168d0c94ad73b46fdf",
    "SHA3_256": "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532",
    "SHA3_384": "ec01498288516fc926459f58e2c6ad8df9b473cb0fc08c2596da7cf0e49be4b2"
    "98d88cea927ac7f539f1edf228376d25",
    "SHA3_512": "b751850b1a57168a5693cd924b6b096e08f621827444f70d884f5d0240d2712e"
    "10e116e9192af3c91a7ec57647e3934057340b4cf408d5a56592f8274eec53f0",
}

LONG_KEY = b"\xaa" * 131
# (key, data, alg, mac): RFC 4231 test cases 1, 3, 4, 6, 7 and RFC 2202 test case 1.
HMAC_VECTORS = [
    (b"\x0b" * 20, b"Hi There", "SHA1", "b617318655057264e28bc0b6fb378c8ef146be00"),
    (b"\x0b" * 20, b"Hi There", "SHA256", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (
        b"\x0b" * 20,
        b"Hi There",
        "SHA384",
        "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
    ),
    (
        b"\x0b" * 20,
        b"Hi There",
        "SHA512",
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
    ),
    (
        b"\xaa" * 20,
        b"\xdd" * 50,
        "SHA256",
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    ),
    (
        b"\xaa" * 20,
        b"\xdd" * 50,
        "SHA512",
        "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39"
        "bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb",
    ),
    (
        bytes(range(1, 26)),
        b"\xcd" * 50,
        "SHA256",
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    ),
    (
        LONG_KEY,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "SHA256",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        LONG_KEY,
        b"This is a test using a larger than block-size key and a larger than block-size data. "
        b"The key needs to be hashed before being used by the HMAC algorithm.",
        "SHA256",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
]

CMAC_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
CMAC_VECTORS = [  # RFC 4493 examples 1 and 2
    (b"", "bb1d6929e95937287fa37d129b756746"),
    (bytes.fromhex("6bc1bee22e409f96e93d7e117393172a"), "070a16b46b4d4144f79bdd9dd04a287c"),
]


@pytest.mark.parametrize("alg", sorted(ABC))
def test_digest_of_abc_matches_the_standard(alg: str) -> None:
    assert digests.digest(alg, b"abc").hex() == ABC[alg]


def test_every_emulated_digest_has_a_vector() -> None:
    assert set(ABC) == set(digests.DIGESTS)


@pytest.mark.parametrize(("key", "data", "alg", "mac"), HMAC_VECTORS)
def test_hmac_matches_the_rfc(key: bytes, data: bytes, alg: str, mac: str) -> None:
    assert digests.hmac_generate(alg, key, data).hex() == mac


@pytest.mark.parametrize(("data", "mac"), CMAC_VECTORS)
def test_cmac_matches_rfc_4493(data: bytes, mac: str) -> None:
    assert digests.cmac_generate(CMAC_KEY, data).hex() == mac


def test_mac_matches_needs_every_byte() -> None:
    mac = bytes.fromhex(CMAC_VECTORS[1][1])
    assert digests.mac_matches(mac, mac)
    assert not digests.mac_matches(mac, mac[:-1] + bytes([mac[-1] ^ 1]))
    assert not digests.mac_matches(mac, mac[:8])  # a truncated MAC is not accepted


def test_unknown_algorithm_and_bad_cmac_key_are_refused() -> None:
    with pytest.raises(CryptoError, match="alg must be one of SHA1"):
        digests.digest("MD5", b"abc")
    with pytest.raises(CryptoError, match="alg must be one of"):
        digests.hmac_generate("SHA224", b"k" * 20, b"abc")
    with pytest.raises(CryptoError, match="128, 192 or 256"):
        digests.cmac_generate(b"k" * 20, b"abc")
