"""The XKS operations inside the key manager: what the proxy asks for on behalf of AWS KMS.

The proxy holds no SigV4 secret. It forwards the signed parts of each request with the raw body, and this
package, in the order the XKS spec's checklist gives: verifies the signature against the app's current and
previous ``awsxks`` credential (401) -> validates the body (400 / 501) -> finds the external key among the
app's groups (404) -> applies the proxy's secondary-authorization verdict (403) -> checks the key's state
(InvalidState) and usage (InvalidKeyUsage) -> runs AES-256-GCM with the spec's AAD construction -> writes
one audit row (success or refusal) carrying the request metadata, never plaintext.

Key rotation: ``ciphertextMetadata`` is ``key_version=<n>``, the security object's version. A rekey
creates a new object linked to the old one; new encryptions use the newest object of the chain and a
decryption walks the links back to the version the ciphertext names, so old ciphertexts still decrypt.

The package is split by concern: ``wire`` (the spec's byte formats), ``prefixes`` (the URI prefix /
alias table), ``health`` (deep health) and ``service`` (XksService and the request path). Import from
here; the names below are the public API. (Settings such as ``APP_CACHE_TTL_S`` are read where they are
used, in ``service``: patch them there.)
"""

from dsm_emulator.xks.health import HEALTH_KEY_PURPOSE, NodeHealth
from dsm_emulator.xks.prefixes import PREFIX_PATTERN
from dsm_emulator.xks.service import VIA_PROXY, PolicyVerdict, XksCall, XksService
from dsm_emulator.xks.wire import canonical_prefix, cdiv, gcm_aad, key_metadata, version_metadata

__all__ = [
    "HEALTH_KEY_PURPOSE",
    "PREFIX_PATTERN",
    "VIA_PROXY",
    "NodeHealth",
    "PolicyVerdict",
    "XksCall",
    "XksService",
    "canonical_prefix",
    "cdiv",
    "gcm_aad",
    "key_metadata",
    "version_metadata",
]
