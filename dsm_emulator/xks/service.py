"""The request path: one XKS call from the proxy, authenticated, authorized, run and audited.

The proxy holds no SigV4 secret, so everything that decides whether a request may act on a key happens
here, in the order the XKS spec's checklist gives: verify the signature against the app's current and
previous ``awsxks`` credential (401) -> validate the body (400 / 501) -> find the external key among the
app's groups (404) -> apply the proxy's secondary-authorization verdict (403) -> check the key's state
(InvalidState) and usage (InvalidKeyUsage) -> run AES-256-GCM with the spec's AAD construction -> write
one audit row (success or refusal) carrying the request metadata, never plaintext. A rekeyed key is
followed to its newest version for encryption and back to the version a ciphertext names for decryption,
so old ciphertexts still decrypt.

The app's credentials and permissions, and the keys it names, come from caches that a change in any
process invalidates within ``database.cache_poll_ms`` (xkslab_shared/generation.py): a steady load costs no
database read per request beyond its audit row.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator import crypto
from dsm_emulator.admin import AdminService
from dsm_emulator.audit import AuditEvent, AuditLog
from dsm_emulator.authz import PROCESS_STATES, PROTECT_STATES, Principal, require_permission
from dsm_emulator.errors import (
    AccessDenied,
    AuthFailed,
    BadRequest,
    DeadlineExceeded,
    DsmError,
    IntegrityFailure,
    Internal,
    InvalidState,
    KeyOpNotAllowed,
    NotFound,
    NotVisible,
    Unsupported,
)
from dsm_emulator.keyring import Keyring
from dsm_emulator.keys import DELETED, KeyService, effective_state
from dsm_emulator.models import App, SecurityObject, XksPathPrefix, is_uuid
from dsm_emulator.xks.health import NodeHealth, XksHealth
from dsm_emulator.xks.prefixes import AppAuth, XksPrefixes
from dsm_emulator.xks.refusals import CREDENTIAL_FAILURES, RefusalBursts
from dsm_emulator.xks.wire import (
    _VERSION_METADATA,
    canonical_prefix,
    cdiv,
    gcm_aad,
    key_metadata,
    version_metadata,
)
from xkslab_shared import sigv4, xks_wire
from xkslab_shared.generation import Generation, GenerationCache

VIA_PROXY = "xks-proxy"


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
    deadline: float | None = None  # event-loop time after which the caller no longer waits
    # Told the metadata once the body is parsed (the caller's access line need not parse it again).
    on_metadata: Callable[[xks_wire.RequestMetadata], None] | None = None


class XksService(XksPrefixes, XksHealth):
    """The XKS operations of one node: the alias table (XksPrefixes), deep health (XksHealth) and the
    request path (here)."""

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
        generation: Generation,
        cache_max_age_s: float = 30.0,
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
        self._apps: GenerationCache[str, AppAuth | None] = GenerationCache(generation, cache_max_age_s)
        self.refusals = RefusalBursts(audit)
        # (account, groups, externalKeyId) -> the newest key of its chain; (kid, metadata) -> a version
        self._keys_by_name: GenerationCache[Hashable, SecurityObject] = GenerationCache(
            generation, cache_max_age_s
        )
        self._versions: GenerationCache[Hashable, SecurityObject] = GenerationCache(
            generation, cache_max_age_s
        )

    def caches(self) -> dict[str, GenerationCache[Any, Any]]:
        return {"xks_apps": self._apps, "xks_keys": self._keys_by_name, "xks_key_versions": self._versions}

    # ------------------------------------------------------------------------------- operations

    async def call(self, call: XksCall) -> dict[str, Any]:
        """Run one XKS request; raises the DsmError that the proxy maps to an XKS errorName.

        With a deadline, work that has not started by then is not done, and a result whose audit row
        is not being written by then is not acknowledged: either way the row says DeadlineExceeded,
        which is what the proxy tells its caller."""
        started = time.perf_counter()
        principal = await self._authenticate(call)
        # The event's fields are gathered as the request goes and the event is built once, at the end.
        fields: dict[str, Any] = {
            "message": _MESSAGES[call.operation],
            "action_type": "OTHER" if call.operation == "health" else "CRYPTOOPERATION",
        }
        keys: list[SecurityObject] = []
        try:
            try:
                request = xks_wire.parse_request(call.operation, call.body, call.limits)
            except xks_wire.XksTooLargeError as exc:
                raise Unsupported(exc.message) from None
            except xks_wire.XksRequestError as exc:
                raise BadRequest(exc.message) from None
            fields.update(_metadata_fields(request.metadata))
            if call.on_metadata is not None:
                call.on_metadata(request.metadata)
            if call.policy is not None:
                verdict = "allowed" if call.policy.allowed else "denied"
                fields["message"] += f", {verdict} by policy rule {call.policy.rule}"
            if call.deadline is not None and asyncio.get_running_loop().time() >= call.deadline:
                raise DeadlineExceeded(_TOO_LATE)
            result = await self._run(principal, call, request, keys)
        except DsmError as exc:
            await self._audit.record(_event(principal, call, fields, keys).refused(exc))
            raise
        fields["response_time_us"] = int((time.perf_counter() - started) * 1e6)
        await self._audit.record(
            _event(principal, call, fields, keys), deadline=call.deadline, late=DeadlineExceeded(_TOO_LATE)
        )
        return result

    async def _app_auth(self, app_id: str, *, fresh: bool = False) -> AppAuth | None:
        """The app's awsxks credentials and permissions (cached: see the module's docstring; ``fresh``
        re-reads the generation, for a signature the cached ones do not verify: reloaded if it moved)."""
        return await self._apps.get(app_id, lambda: self._load_app_auth(app_id), fresh=fresh)

    async def _load_app_auth(self, app_id: str) -> AppAuth | None:
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
        return AppAuth(tuple(credentials), principal, prefixes)

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
            except sigv4.SigV4Error as exc:
                # A credential rotated elsewhere may not be cached yet: look again (see CREDENTIAL_FAILURES).
                if exc.kind not in CREDENTIAL_FAILURES:
                    raise
                fresh = await self._app_auth(call.app_id, fresh=True)
                # The same credentials back (the generation did not move): verifying again would only repeat.
                if fresh is None:
                    raise
                principal = fresh.principal
                if fresh.credentials == auth.credentials:
                    raise
                sigv4.verify(call.signed, fresh.credentials, now=datetime.now(UTC))
        except sigv4.SigV4Error as exc:
            refusal = AuthFailed(f"SigV4 verification failed: {exc}")
            if self.refusals.audit_one(call.app_id, principal):  # else counted for its summary row
                event = AuditEvent.by(
                    principal, f"xks.{call.operation}", "XKS request authentication", action_type="AUTH"
                )
                await self._audit.record(
                    _with_metadata(event, xks_wire.parse_metadata_only(call.body)).refused(refusal)
                )
            raise refusal from None
        return principal

    async def _run(
        self, p: Principal, call: XksCall, request: xks_wire.XksRequest, keys: list[SecurityObject]
    ) -> dict[str, Any]:
        if isinstance(request, xks_wire.HealthRequest):
            health = await self.node_health()
            return {"ekmFleetDetails": [health.as_xks()]}
        key_id = call.key_id or ""
        named = await self._keys_by_name.get(
            (p.acct_id, p.groups(), key_id), lambda: self._find_key(p, key_id)
        )
        keys.append(named)
        if call.policy is not None and not call.policy.allowed:
            raise AccessDenied(f"denied by policy rule {call.policy.rule}")
        if isinstance(request, xks_wire.MetadataRequest):
            return key_metadata(named)
        if isinstance(request, xks_wire.EncryptRequest):
            return await self._encrypt(p, named, request)
        assert isinstance(request, xks_wire.DecryptRequest)
        # Authorization, state and usage of the external key come before anything about the
        # ciphertext (its metadata included), in the spec's order.
        require_permission(p, "DECRYPT", named.group_id)
        _require_usable(named, "DECRYPT", PROCESS_STATES)
        _require_usage(named, "DECRYPT")
        metadata = request.ciphertext_metadata
        version_key = await self._versions.get((named.kid, metadata), lambda: self._version(named, metadata))
        if version_key is not named:
            keys.append(version_key)
        return await self._decrypt(p, named, version_key, request)

    async def _find_key(self, p: Principal, key_id: str) -> SecurityObject:
        async with self._sessions() as session:
            return await self._find_key_in(session, p, key_id)

    async def _find_key_in(self, session: AsyncSession, p: Principal, key_id: str) -> SecurityObject:
        """The externalKeyId is the key's kid, or its name; only the app's groups are searched, and a key
        outside them is 'not found' (the audit row, not the caller, learns that it exists). A rotated key
        stands for the newest key of its chain."""
        # A key deleted under a history policy is kept only for its revert: here it does not exist.
        account = select(SecurityObject).where(
            SecurityObject.acct_id == p.acct_id, SecurityObject.state != DELETED
        )
        obj = await _lookup(session, account.where(SecurityObject.group_id.in_(p.groups())), key_id)
        if obj is None:
            # Only on this error path: is it missing, or in someone else's group?
            other = await _lookup(session, account, key_id)
            if other is not None:
                raise NotVisible("external key not found", other.kid, other.group_id)
            raise NotFound("external key not found")
        seen = {obj.kid}
        while obj.replacement_kid is not None:
            newer = await session.get(SecurityObject, obj.replacement_kid)
            if newer is None or newer.kid in seen or newer.group_id not in p.groups():
                break
            seen.add(newer.kid)
            obj = newer
        return obj

    async def _version(self, newest: SecurityObject, metadata: bytes | None) -> SecurityObject:
        """The object of the key version a ciphertext names, walking the rekey links back."""
        if metadata is None:
            return newest
        match = _VERSION_METADATA.fullmatch(metadata)
        if match is None:
            raise IntegrityFailure(_BAD_CIPHERTEXT)
        wanted, obj = int(match.group(1)), newest
        if obj.version == wanted:
            return obj
        async with self._sessions() as session:
            while obj.version != wanted:
                if obj.replaced_kid is None or obj.version < wanted:
                    raise IntegrityFailure(_BAD_CIPHERTEXT)
                older = await session.get(SecurityObject, obj.replaced_kid)
                if older is None:
                    raise IntegrityFailure(_BAD_CIPHERTEXT)
                obj = older
        return obj

    async def _encrypt(
        self, p: Principal, key: SecurityObject, request: xks_wire.EncryptRequest
    ) -> dict[str, Any]:
        require_permission(p, "ENCRYPT", key.group_id)
        _require_usable(key, "ENCRYPT", PROTECT_STATES)
        _require_usage(key, "ENCRYPT")
        if request.cdiv_algorithm is not None:
            _require_usage(key, "DECRYPT")  # the verification decrypt must be allowed too
        metadata = version_metadata(key.version)
        material = await self._keys.material(key)
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
        self._keys.usage.note(key)
        return response

    async def _decrypt(
        self, p: Principal, named: SecurityObject, key: SecurityObject, request: xks_wire.DecryptRequest
    ) -> dict[str, Any]:
        require_permission(p, "DECRYPT", key.group_id)
        _require_usable(key, "DECRYPT", PROCESS_STATES)
        _require_usage(key, "DECRYPT")
        aad = gcm_aad(request.aad, request.ciphertext_metadata)
        material = await self._keys.material(key)
        try:
            plaintext = crypto.aes_gcm_decrypt(material, request.iv, request.ciphertext, request.tag, aad)
        except crypto.CryptoError:
            raise IntegrityFailure(_BAD_CIPHERTEXT) from None
        self._keys.usage.note(key)
        return {"plaintext": _b64(plaintext)}


_TOO_LATE = "the request's deadline passed before the key manager could answer it"
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


_AUDITED_METADATA = ("kms_request_id", "kms_operation", "aws_principal_arn", "kms_key_arn")


def _metadata_fields(metadata: xks_wire.RequestMetadata) -> dict[str, Any]:
    return {name: getattr(metadata, name) for name in _AUDITED_METADATA}


def _with_metadata(event: AuditEvent, metadata: xks_wire.RequestMetadata | None) -> AuditEvent:
    return replace(event, **_metadata_fields(metadata)) if metadata is not None else event


def _event(p: Principal, call: XksCall, fields: dict[str, Any], keys: list[SecurityObject]) -> AuditEvent:
    """The request's audit event, about the key it acted on last (if any)."""
    if keys:
        key = keys[-1]
        fields = {
            **fields,
            "object_id": key.kid,
            "group_ids": (key.group_id,),
            "message": f"{fields['message']} (key {key.name})",
        }
    return AuditEvent.by(p, f"xks.{call.operation}", **fields)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def _lookup(session: AsyncSession, stmt: Select[SecurityObject], key_id: str) -> SecurityObject | None:
    """The first of ``stmt``'s objects named by ``key_id``: as a kid (when it is one), else as a name."""
    if is_uuid(key_id):
        obj = await session.scalar(stmt.where(SecurityObject.kid == str(uuid.UUID(key_id))))
        if obj is not None:
            return obj
    return await session.scalar(stmt.where(SecurityObject.name == key_id))
