"""The XKS operations inside the key manager: what the proxy asks for on behalf of AWS KMS.

The proxy holds no SigV4 secret. It forwards the signed parts of each request with the raw body, and this
module, in the order the XKS spec's checklist gives: verifies the signature against the app's current and
previous ``awsxks`` credential (401) -> validates the body (400 / 501) -> finds the external key among the
app's groups (404) -> applies the proxy's secondary-authorization verdict (403) -> checks the key's state
(InvalidState) and usage (InvalidKeyUsage) -> runs AES-256-GCM with the spec's AAD construction -> writes
one audit row (success or refusal) carrying the request metadata, never plaintext.

Key rotation: ``ciphertextMetadata`` is ``key_version=<n>``, the security object's version. A rekey
creates a new object linked to the old one; new encryptions use the newest object of the chain and a
decryption walks the links back to the version the ciphertext names, so old ciphertexts still decrypt.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import struct
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator import crypto
from dsm_emulator.admin import AUTH_TYPES, AdminService
from dsm_emulator.audit import AuditEvent, AuditLog
from dsm_emulator.authz import PROCESS_STATES, PROTECT_STATES, Principal, require_permission
from dsm_emulator.errors import (
    AccessDenied,
    AuthFailed,
    BadRequest,
    Conflict,
    DsmError,
    IntegrityFailure,
    Internal,
    InvalidState,
    KeyOpNotAllowed,
    NotFound,
    Unsupported,
)
from dsm_emulator.keyring import Keyring
from dsm_emulator.keys import KeyService, effective_state
from dsm_emulator.models import App, KeyringTerm, SecurityObject, XksPathPrefix, is_uuid
from xkslab_shared import sigv4, xks_wire

log = logging.getLogger(__name__)

VIA_PROXY = "xks-proxy"
HEALTH_KEY_PURPOSE = "xks-health-test-key"
_VERSION_METADATA = re.compile(rb"key_version=([1-9][0-9]{0,7})")
# An alias prefix: the XKS URI path before "/kms/xks/v1", from the characters the spec allows.
PREFIX_PATTERN = re.compile(r"(/[A-Za-z0-9_-]+)+")
_URI_SUFFIX = "/kms/xks/v1"
_MAX_URI_PATH = 128
# XKS keyUsage names for the DSM key_ops that have one (at most 10, the spec's limit).
_USAGE = (
    ("ENCRYPT", "ENCRYPT"),
    ("DECRYPT", "DECRYPT"),
    ("WRAPKEY", "WRAP"),
    ("UNWRAPKEY", "UNWRAP"),
    ("SIGN", "SIGN"),
    ("VERIFY", "VERIFY"),
    ("DERIVEKEY", "DERIVE"),
)


def canonical_prefix(app_id: str) -> str:
    """Fortanix's URI path prefix of an awsxks app (its Terraform provider builds the same string)."""
    return f"/crypto/v1/apps/{app_id}/aws"


def gcm_aad(aad: bytes | None, ciphertext_metadata: bytes | None) -> bytes:
    """The AAD given to AES-GCM (XKS spec, Encrypt): lengths always present, so metadata moved into the
    AAD field (or the reverse) no longer authenticates.

        uint16_be(len(aad)) || aad || uint8(len(metadata)) || metadata
    """
    aad, cm = aad or b"", ciphertext_metadata or b""
    return struct.pack(">H", len(aad)) + aad + struct.pack(">B", len(cm)) + cm


def cdiv(aad: bytes | None, metadata: bytes | None, iv: bytes, ciphertext: bytes, tag: bytes) -> str:
    """CiphertextDataIntegrityValue (XKS spec, Appendix C): Base64(SHA-256(aad||metadata||iv||ct||tag))."""
    digest = hashlib.sha256((aad or b"") + (metadata or b"") + iv + ciphertext + tag).digest()
    return base64.b64encode(digest).decode("ascii")


def version_metadata(version: int) -> bytes:
    return b"key_version=%d" % version


@dataclass(frozen=True)
class PolicyVerdict:
    """The proxy's secondary-authorization decision, applied here so that it is audited and comes after
    the key lookup, where the spec's order puts it."""

    allowed: bool
    rule: str


@dataclass(frozen=True)
class XksCall:
    app_id: str
    operation: str
    key_id: str | None
    signed: sigv4.SignedRequest
    body: bytes
    limits: xks_wire.Limits
    policy: PolicyVerdict | None = None


APP_CACHE_TTL_S = 2.0


@dataclass(frozen=True)
class _AppAuth:
    credentials: tuple[tuple[str, str], ...] = field(repr=False)
    principal: Principal
    prefixes: frozenset[str]  # the URI path prefixes this app is served under
    loaded_at: float
    generation: int


@dataclass(frozen=True)
class NodeHealth:
    id: str
    model: str
    status: str  # ACTIVE | DEGRADED | UNAVAILABLE

    def as_xks(self) -> dict[str, str]:
        return {"id": self.id, "model": self.model, "healthStatus": self.status}


class XksService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        audit: AuditLog,
        admin: AdminService,
        keys: KeyService,
        *,
        node_id: str,
        model: str,
        health_cache_s: float,
    ) -> None:
        self._sessions = sessions
        self._keyring = keyring
        self._audit = audit
        self._admin = admin
        self._keys = keys
        self._node_id = node_id
        self._model = model
        self._health_cache_s = health_cache_s
        self._health: tuple[float, NodeHealth] | None = None
        self._apps: dict[str, _AppAuth] = {}

    # ------------------------------------------------------------------------------- prefixes

    async def prefixes(self) -> dict[str, str]:
        """Every URI path prefix the proxy should serve -> app id: the canonical prefix of each enabled
        app with an awsxks credential, and each alias."""
        async with self._sessions() as session:
            apps = (
                await session.scalars(
                    select(App.app_id).where(App.auth_type == AUTH_TYPES["awsxks"], App.enabled)
                )
            ).all()
            aliases = (await session.execute(select(XksPathPrefix.prefix, XksPathPrefix.app_id))).all()
        enabled = set(apps)
        table = {canonical_prefix(app_id): app_id for app_id in apps}
        table.update({prefix: app_id for prefix, app_id in aliases if app_id in enabled})
        return table

    async def add_alias(self, p: Principal, app_id: str, prefix: str) -> None:
        if not PREFIX_PATTERN.fullmatch(prefix) or len(prefix + _URI_SUFFIX) > _MAX_URI_PATH:
            raise BadRequest(
                "an XKS path prefix is /segment[/segment...] of A-Z a-z 0-9 _ -, at most "
                f"{_MAX_URI_PATH - len(_URI_SUFFIX)} characters"
            )
        if prefix.startswith("/crypto/v1/apps/") or prefix.endswith(_URI_SUFFIX):
            raise BadRequest("this XKS path prefix is reserved")
        app = await self._admin.get_app(p, app_id)
        if app.auth_type != AUTH_TYPES["awsxks"]:
            raise BadRequest("only an app with an awsxks credential can have an XKS path prefix")
        event = AuditEvent.by(
            p, "xks.alias.add", f"Added XKS path prefix {prefix} to app {app.name}", object_id=app.app_id
        )

        async def work(session: AsyncSession) -> tuple[None, AuditEvent]:
            if await session.get(XksPathPrefix, prefix) is not None:
                raise Conflict("this XKS path prefix is already in use")
            session.add(XksPathPrefix(prefix=prefix, app_id=app.app_id, created_at=datetime.now(UTC)))
            await session.flush()
            return None, event

        await self._audit.apply(work, event.refused)
        self._apps.clear()

    async def remove_alias(self, p: Principal, prefix: str) -> None:
        event = AuditEvent.by(p, "xks.alias.remove", f"Removed XKS path prefix {prefix}")

        async def work(session: AsyncSession) -> tuple[None, AuditEvent]:
            row = await session.get(XksPathPrefix, prefix)
            if row is None:
                raise NotFound("no such XKS path prefix")
            await self._admin.get_app(p, row.app_id)  # the caller must see the app
            await session.delete(row)
            return None, replace(event, object_id=row.app_id)

        await self._audit.apply(work, event.refused)
        self._apps.clear()

    async def aliases(self, p: Principal, app_id: str) -> list[str]:
        await self._admin.get_app(p, app_id)
        async with self._sessions() as session:
            rows = await session.scalars(select(XksPathPrefix.prefix).where(XksPathPrefix.app_id == app_id))
            return sorted(rows.all())

    # ------------------------------------------------------------------------------- health

    async def node_health(self) -> NodeHealth:
        """A deep check, as the spec asks: a real encrypt and decrypt with a dedicated test key (derived
        from the keyring, so it never touches a customer's key) after a database read; reused for at most
        ``health_cache_s`` seconds."""
        cached = self._health
        if cached is not None and time.monotonic() - cached[0] < self._health_cache_s:
            return cached[1]
        status = "ACTIVE"
        try:
            async with self._sessions() as session:
                await session.scalar(select(KeyringTerm.term).limit(1))
            key = self._keyring.derive(HEALTH_KEY_PURPOSE)
            probe = crypto.random_bytes(32)
            iv, ct, tag = crypto.aes_gcm_encrypt(key, probe, b"xks-health")
            if crypto.aes_gcm_decrypt(key, iv, ct, tag, b"xks-health") != probe:
                status = "UNAVAILABLE"
        except Exception:
            log.warning("XKS deep health check failed", exc_info=True)
            status = "UNAVAILABLE"
        if not self._audit.running:
            status = "UNAVAILABLE"
        health = NodeHealth(self._node_id, self._model, status)
        self._health = (time.monotonic(), health)
        return health

    # ------------------------------------------------------------------------------- operations

    async def call(self, call: XksCall) -> dict[str, Any]:
        """Run one XKS request; raises the DsmError that the proxy maps to an XKS errorName."""
        started = time.perf_counter()
        principal = await self._authenticate(call)
        event = AuditEvent.by(
            principal,
            f"xks.{call.operation}",
            _MESSAGES[call.operation],
            action_type="OTHER" if call.operation == "health" else "CRYPTOOPERATION",
        )
        keys: list[SecurityObject] = []
        try:
            try:
                request = xks_wire.parse_request(call.operation, call.body, call.limits)
            except xks_wire.XksTooLargeError as exc:
                raise Unsupported(exc.message) from None
            except xks_wire.XksRequestError as exc:
                raise BadRequest(exc.message) from None
            event = _with_metadata(event, request.metadata)
            if call.policy is not None:
                verdict = "allowed" if call.policy.allowed else "denied"
                event = replace(
                    event, message=f"{event.message}, {verdict} by policy rule {call.policy.rule}"
                )
            result = await self._run(principal, call, request, keys)
        except DsmError as exc:
            await self._audit.record(_about(event, keys).refused(exc))
            raise
        elapsed = int((time.perf_counter() - started) * 1e6)
        await self._audit.record(replace(_about(event, keys), response_time_us=elapsed))
        return result

    async def _app_auth(self, app_id: str, *, fresh: bool = False) -> _AppAuth | None:
        """The app's awsxks credentials and permissions, cached briefly: they are read on every request.
        Any administrative change in this process empties the cache at once; another replica's change
        is seen within APP_CACHE_TTL_S (and a credential added there, at the first request using it)."""
        entry = self._apps.get(app_id)
        generation = self._admin.generation
        if (
            not fresh
            and entry is not None
            and entry.generation == generation
            and time.monotonic() - entry.loaded_at < APP_CACHE_TTL_S
        ):
            return entry
        self._apps.pop(app_id, None)
        credentials = await self._admin.awsxks_secrets(app_id)
        if not credentials:
            return None
        async with self._sessions() as session:
            app = await session.get(App, app_id)
        if app is None:
            return None
        principal = replace(await self._admin.principal_for_app(app), via=VIA_PROXY)
        async with self._sessions() as session:
            aliases = await session.scalars(
                select(XksPathPrefix.prefix).where(XksPathPrefix.app_id == app_id)
            )
            prefixes = frozenset({canonical_prefix(app_id), *aliases.all()})
        entry = _AppAuth(tuple(credentials), principal, prefixes, time.monotonic(), generation)
        self._apps[app_id] = entry
        return entry

    async def _authenticate(self, call: XksCall) -> Principal:
        auth = await self._app_auth(call.app_id)
        if auth is None:
            # The proxy only forwards prefixes it knows; an app removed since then lands here.
            raise AuthFailed("no XKS credential is configured for this URI path prefix")
        principal = auth.principal
        try:
            # The proxy token alone must not let anyone replay a signed request against another key or
            # operation: the signed path has to name exactly what the forwarded call asks for.
            match = xks_wire.URI_PATH.fullmatch(call.signed.path)
            if (
                match is None
                or xks_wire.path_operation(match) != call.operation
                or match["key"] != call.key_id
                or match["prefix"] not in auth.prefixes
            ):
                raise sigv4.SigV4Error("the signed path does not match the forwarded request")
            try:
                sigv4.verify(call.signed, auth.credentials, now=datetime.now(UTC))
            except sigv4.SigV4Error:
                # A credential rotated on another replica is not in the cache yet: look once more.
                fresh = await self._app_auth(call.app_id, fresh=True)
                if fresh is None:
                    raise
                principal = fresh.principal
                sigv4.verify(call.signed, fresh.credentials, now=datetime.now(UTC))
        except sigv4.SigV4Error as exc:
            refusal = AuthFailed(f"SigV4 verification failed: {exc}")
            metadata = xks_wire.parse_metadata_only(call.body)
            event = AuditEvent.by(
                principal, f"xks.{call.operation}", "XKS request authentication", action_type="AUTH"
            )
            await self._audit.record(_with_metadata(event, metadata).refused(refusal))
            raise refusal from None
        return principal

    async def _run(
        self, p: Principal, call: XksCall, request: xks_wire.XksRequest, keys: list[SecurityObject]
    ) -> dict[str, Any]:
        if isinstance(request, xks_wire.HealthRequest):
            health = await self.node_health()
            return {"ekmFleetDetails": [health.as_xks()]}
        async with self._sessions() as session:
            named = await self._find_key(session, p, call.key_id or "")
            keys.append(named)
            if call.policy is not None and not call.policy.allowed:
                raise AccessDenied(f"denied by policy rule {call.policy.rule}")
            if isinstance(request, xks_wire.MetadataRequest):
                return key_metadata(named)
            if isinstance(request, xks_wire.EncryptRequest):
                return self._encrypt(p, named, request)
            assert isinstance(request, xks_wire.DecryptRequest)
            # Authorization, state and usage of the external key come before anything about the
            # ciphertext (its metadata included), in the spec's order.
            require_permission(p, "DECRYPT", named.group_id)
            _require_usable(named, "DECRYPT", PROCESS_STATES)
            _require_usage(named, "DECRYPT")
            version_key = await self._version(session, named, request.ciphertext_metadata)
            if version_key is not named:
                keys.append(version_key)
            return self._decrypt(p, named, version_key, request)

    async def _find_key(self, session: AsyncSession, p: Principal, key_id: str) -> SecurityObject:
        """The externalKeyId is the key's kid, or its name; only the app's groups are searched, and a key
        outside them is 'not found'. A rotated key stands for the newest key of its chain."""
        stmt = select(SecurityObject).where(
            SecurityObject.acct_id == p.acct_id, SecurityObject.group_id.in_(p.groups())
        )
        if is_uuid(key_id):
            obj = await session.scalar(stmt.where(SecurityObject.kid == str(uuid.UUID(key_id))))
            obj = obj or await session.scalar(stmt.where(SecurityObject.name == key_id))
        else:
            obj = await session.scalar(stmt.where(SecurityObject.name == key_id))
        if obj is None:
            raise NotFound("external key not found")
        seen = {obj.kid}
        while obj.replacement_kid is not None:
            newer = await session.get(SecurityObject, obj.replacement_kid)
            if newer is None or newer.kid in seen or newer.group_id not in p.groups():
                break
            seen.add(newer.kid)
            obj = newer
        return obj

    async def _version(
        self, session: AsyncSession, newest: SecurityObject, metadata: bytes | None
    ) -> SecurityObject:
        """The object of the key version a ciphertext names, walking the rekey links back."""
        if metadata is None:
            return newest
        match = _VERSION_METADATA.fullmatch(metadata)
        if match is None:
            raise IntegrityFailure(_BAD_CIPHERTEXT)
        wanted, obj = int(match.group(1)), newest
        while obj.version != wanted:
            if obj.replaced_kid is None or obj.version < wanted:
                raise IntegrityFailure(_BAD_CIPHERTEXT)
            older = await session.get(SecurityObject, obj.replaced_kid)
            if older is None:
                raise IntegrityFailure(_BAD_CIPHERTEXT)
            obj = older
        return obj

    def _encrypt(self, p: Principal, key: SecurityObject, request: xks_wire.EncryptRequest) -> dict[str, Any]:
        require_permission(p, "ENCRYPT", key.group_id)
        _require_usable(key, "ENCRYPT", PROTECT_STATES)
        _require_usage(key, "ENCRYPT")
        if request.cdiv_algorithm is not None:
            _require_usage(key, "DECRYPT")  # the verification decrypt must be allowed too
        metadata = version_metadata(key.version)
        material = self._keys.material(key)
        aad = gcm_aad(request.aad, metadata)
        iv, ciphertext, tag = crypto.aes_gcm_encrypt(material, request.plaintext, aad)
        response = {
            "ciphertext": _b64(ciphertext),
            "initializationVector": _b64(iv),
            "authenticationTag": _b64(tag),
            "ciphertextMetadata": _b64(metadata),
        }
        if request.cdiv_algorithm is not None:
            # Computed BEFORE the verification decrypt, so corruption between the two is not hidden.
            response["ciphertextDataIntegrityValue"] = cdiv(request.aad, metadata, iv, ciphertext, tag)
            try:
                crypto.aes_gcm_decrypt(material, iv, ciphertext, tag, aad)
            except crypto.CryptoError:
                raise Internal("the verification decrypt failed") from None
        return response

    def _decrypt(
        self, p: Principal, named: SecurityObject, key: SecurityObject, request: xks_wire.DecryptRequest
    ) -> dict[str, Any]:
        require_permission(p, "DECRYPT", key.group_id)
        _require_usable(key, "DECRYPT", PROCESS_STATES)
        _require_usage(key, "DECRYPT")
        aad = gcm_aad(request.aad, request.ciphertext_metadata)
        try:
            plaintext = crypto.aes_gcm_decrypt(
                self._keys.material(key), request.iv, request.ciphertext, request.tag, aad
            )
        except crypto.CryptoError:
            raise IntegrityFailure(_BAD_CIPHERTEXT) from None
        return {"plaintext": _b64(plaintext)}


_BAD_CIPHERTEXT = (
    "The ciphertext, initialization vector, authentication tag, additional authenticated data or "
    "ciphertext metadata is corrupted, missing, or otherwise invalid"
)
_MESSAGES = {
    "health": "XKS health check",
    "metadata": "Read key metadata via AWS XKS",
    "encrypt": "Encrypted data via AWS XKS",
    "decrypt": "Decrypted data via AWS XKS",
}


def key_metadata(key: SecurityObject) -> dict[str, Any]:
    """GetKeyMetadata's answer: AWS CreateKey needs AES_256, ENCRYPT and DECRYPT, and ENABLED."""
    spec = f"{key.obj_type}_{key.key_size}" if key.key_size else key.obj_type
    usage = [xks for dsm, xks in _USAGE if dsm in key.key_ops]
    usable = key.enabled and effective_state(key) in PROTECT_STATES
    return {"keySpec": spec, "keyUsage": usage, "keyStatus": "ENABLED" if usable else "DISABLED"}


def _require_usable(key: SecurityObject, op: str, states: frozenset[str]) -> None:
    if not key.enabled:
        raise InvalidState("the external key is disabled")
    state = effective_state(key)
    if state not in states or key.sealed_material is None:
        raise InvalidState(f"the external key is in state {state}; {op} is not allowed")


def _require_usage(key: SecurityObject, op: str) -> None:
    if key.obj_type != "AES":
        raise KeyOpNotAllowed(f"a {key.obj_type} key cannot be used for AES-GCM")
    if op not in key.key_ops:
        raise KeyOpNotAllowed(f"the external key's key_ops do not include {op}")


def _with_metadata(event: AuditEvent, metadata: xks_wire.RequestMetadata | None) -> AuditEvent:
    if metadata is None:
        return event
    return replace(
        event,
        kms_request_id=metadata.kms_request_id,
        kms_operation=metadata.kms_operation,
        aws_principal_arn=metadata.aws_principal_arn,
        kms_key_arn=metadata.kms_key_arn,
    )


def _about(event: AuditEvent, keys: list[SecurityObject]) -> AuditEvent:
    if not keys:
        return event
    key = keys[-1]
    return replace(
        event, object_id=key.kid, group_ids=(key.group_id,), message=f"{event.message} (key {key.name})"
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
