"""Custom key stores of type EXTERNAL_KEY_STORE: Create, Describe, Update, Delete, Connect, Disconnect.

Connection states follow KMS: a new store is DISCONNECTED; ConnectCustomKeyStore asks the proxy's health
API and ends CONNECTED, or FAILED with the ConnectionErrorCode of the failure (the call itself succeeds,
as in KMS); only a DISCONNECTED store can be deleted or get a new endpoint or connectivity (its name,
credential and URI path also change while CONNECTED). No proxy call is made inside a database
transaction: a proxy may take its whole timeout to answer.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kms_emulator import proxy
from kms_emulator.context import Call, KmsContext, epoch, utcnow
from kms_emulator.errors import (
    KeyStoreInvalidState,
    KeyStoreNotFound,
    KmsError,
    UnsupportedOperation,
    ValidationError,
)
from kms_emulator.lookup import purge_expired
from kms_emulator.models import CustomKeyStore, KmsKey
from kms_emulator.params import Params, constraint_error
from kms_emulator.sealing import PROXY_SECRET
from kms_emulator.xks_client import XksProxyConfig

CONNECTED = "CONNECTED"
DISCONNECTED = "DISCONNECTED"
FAILED = "FAILED"
EXTERNAL_KEY_STORE = "EXTERNAL_KEY_STORE"
PUBLIC_ENDPOINT = "PUBLIC_ENDPOINT"
VPC_ENDPOINT_SERVICE = "VPC_ENDPOINT_SERVICE"

# The model's patterns; the relaxed endpoint adds plain http and a port, for proxies on loopback.
STRICT_ENDPOINT = r"^https://[a-zA-Z0-9.-]+$"
RELAXED_ENDPOINT = r"^https?://[a-zA-Z0-9.-]+(:[0-9]{1,5})?$"
URI_PATH = r"^(/[a-zA-Z0-9\/_-]+/kms/xks/v[0-9]{1,2})$|^(/kms/xks/v[0-9]{1,2})$"  # ASCII digits only
ACCESS_KEY_ID = r"^[A-Z2-7]+$"
RAW_SECRET = r"^[a-zA-Z0-9\/+=]+$"
VPC_SERVICE_NAME = r"^(com|eu)\.amazonaws\.vpce\.([a-z]+-){2,3}\d+\.vpce-svc-[0-9a-z]+$"
ACCOUNT_ID = r"[0-9]{12}"
_CLOUDHSM_MEMBERS = ("CloudHsmClusterId", "TrustAnchorCertificate", "KeyStorePassword")
# AWS's quota: custom key stores per account and Region (not adjustable).
MAX_CUSTOM_KEY_STORES = 10


@dataclass(frozen=True)
class ProxySettings:
    uri_endpoint: str
    uri_path: str
    access_key_id: str
    secret: str
    connectivity: str
    vpc_service_name: str | None = None
    vpc_service_owner: str | None = None

    def config(self, region: str, key_store_id: str = "") -> XksProxyConfig:
        return XksProxyConfig(
            self.uri_endpoint, self.uri_path, self.access_key_id, self.secret, region, key_store_id
        )


_MEMBER_COLUMNS = {
    "uri_endpoint": "uri_endpoint",
    "uri_path": "uri_path",
    "access_key_id": "access_key_id",
    "connectivity": "connectivity",
    "vpc_service_name": "vpc_endpoint_service_name",
    "vpc_service_owner": "vpc_endpoint_service_owner",
}
_CHANGEABLE_WHILE_CONNECTED = frozenset({"uri_path", "access_key_id", "secret"})


def _new_store_id() -> str:
    return "cks-" + secrets.token_hex(9)[:17]


def _read_proxy_members(ctx: KmsContext, p: Params) -> dict[str, Any]:
    """The XKS members present in the request, each checked against its constraints."""
    strict = ctx.settings.strict_endpoints
    found: dict[str, Any] = {
        "uri_endpoint": p.string(
            "XksProxyUriEndpoint",
            min_len=10,
            max_len=128,
            pattern=STRICT_ENDPOINT if strict else RELAXED_ENDPOINT,
        ),
        "uri_path": p.string("XksProxyUriPath", min_len=10, max_len=128, pattern=URI_PATH),
        "connectivity": p.string("XksProxyConnectivity", enum=[PUBLIC_ENDPOINT, VPC_ENDPOINT_SERVICE]),
        "vpc_service_name": p.string(
            "XksProxyVpcEndpointServiceName", min_len=20, max_len=64, pattern=VPC_SERVICE_NAME
        ),
        "vpc_service_owner": p.string(
            "XksProxyVpcEndpointServiceOwner", min_len=12, max_len=12, pattern=ACCOUNT_ID
        ),
    }
    if found["uri_endpoint"] is not None:
        _check_port(found["uri_endpoint"])
    credential = p.struct("XksProxyAuthenticationCredential")
    if credential is not None:
        found["access_key_id"] = credential.string(
            "AccessKeyId", required=True, min_len=20, max_len=30, pattern=ACCESS_KEY_ID, sensitive=True
        )
        found["secret"] = credential.string(
            "RawSecretAccessKey", required=True, min_len=43, max_len=64, pattern=RAW_SECRET, sensitive=True
        )
    for member in _CLOUDHSM_MEMBERS:
        if p.has(member):
            raise ValidationError(f"{member} is not valid for a custom key store of type EXTERNAL_KEY_STORE.")
    return {k: v for k, v in found.items() if v is not None}


def _check_port(endpoint: str) -> None:
    """The relaxed pattern allows a port of up to five digits; it must also be a TCP port."""
    _host, colon, port = endpoint.partition("://")[2].partition(":")
    if colon and not 0 < int(port) < 65536:
        raise constraint_error("xksProxyUriEndpoint", endpoint, "Member must have a port from 1 to 65535")


def _check_connectivity(settings: ProxySettings) -> None:
    if settings.connectivity == PUBLIC_ENDPOINT:
        if settings.vpc_service_name or settings.vpc_service_owner:
            raise ValidationError(
                "XksProxyVpcEndpointServiceName and XksProxyVpcEndpointServiceOwner are valid only when "
                "XksProxyConnectivity is VPC_ENDPOINT_SERVICE."
            )
        return
    if not settings.vpc_service_name:
        raise constraint_error("xksProxyVpcEndpointServiceName", None, "Member must not be null")
    raise KmsError.named(
        "XksProxyVpcEndpointServiceNotFoundException",
        f"The VPC endpoint service {settings.vpc_service_name} cannot be reached from this emulator: "
        "VPC endpoint services are not simulated locally. Use XksProxyConnectivity PUBLIC_ENDPOINT.",
    )


async def _load_store(session: AsyncSession, store_id: str) -> CustomKeyStore:
    store = await session.get(CustomKeyStore, store_id)
    if store is None:
        raise KeyStoreNotFound(f"Custom key store {store_id} does not exist.")
    return store


async def _check_unique(
    session: AsyncSession, name: str | None, endpoint: str | None, path: str | None, own_id: str | None
) -> None:
    if name is not None:
        other = await session.scalar(select(CustomKeyStore.id).where(CustomKeyStore.name == name))
        if other is not None and other != own_id:
            raise KmsError.named(
                "CustomKeyStoreNameInUseException", f"A custom key store named {name} already exists."
            )
    if endpoint is not None and path is not None:
        other = await session.scalar(
            select(CustomKeyStore.id).where(
                CustomKeyStore.uri_endpoint == endpoint, CustomKeyStore.uri_path == path
            )
        )
        if other is not None and other != own_id:
            raise KmsError.named(
                "XksProxyUriInUseException",
                f"The proxy URI {endpoint}{path} is already used by custom key store {other}.",
            )


async def _check_store_limit(ctx: KmsContext, session: AsyncSession) -> None:
    stores = await session.scalar(select(func.count()).select_from(CustomKeyStore))
    if (stores or 0) >= MAX_CUSTOM_KEY_STORES:
        raise KmsError.named(
            "LimitExceededException",
            f"This account already has {MAX_CUSTOM_KEY_STORES} custom key stores in {ctx.settings.region}, "
            "the most AWS KMS allows per account and Region.",
        )


def _store_id(p: Params) -> str:
    value = p.string("CustomKeyStoreId", required=True, min_len=1, max_len=64)
    assert value is not None
    return value


async def create_custom_key_store(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    name = p.string("CustomKeyStoreName", required=True, min_len=1, max_len=256)
    store_type = p.string("CustomKeyStoreType", enum=["AWS_CLOUDHSM", EXTERNAL_KEY_STORE]) or "AWS_CLOUDHSM"
    if store_type != EXTERNAL_KEY_STORE:
        raise UnsupportedOperation(
            "AWS_CLOUDHSM key stores are not emulated: set CustomKeyStoreType to EXTERNAL_KEY_STORE."
        )
    members = _read_proxy_members(ctx, p)
    for needed, member in [
        ("uri_endpoint", "xksProxyUriEndpoint"),
        ("uri_path", "xksProxyUriPath"),
        ("access_key_id", "xksProxyAuthenticationCredential"),
        ("connectivity", "xksProxyConnectivity"),
    ]:
        if needed not in members:
            raise constraint_error(member, None, "Member must not be null")
    settings = ProxySettings(**members)
    _check_connectivity(settings)
    assert name is not None
    async with ctx.sessions.begin() as session:
        await _check_unique(session, name, settings.uri_endpoint, settings.uri_path, None)
        await _check_store_limit(ctx, session)
    store_id = _new_store_id()
    await proxy.health_check(ctx, call, settings.config(ctx.settings.region, store_id))
    store = CustomKeyStore(
        id=store_id,
        name=name,
        connection_state=DISCONNECTED,
        connection_error_code=None,
        creation_date=utcnow(),
        uri_endpoint=settings.uri_endpoint,
        uri_path=settings.uri_path,
        connectivity=settings.connectivity,
        access_key_id=settings.access_key_id,
        sealed_secret=ctx.sealer.seal(settings.secret.encode(), purpose=PROXY_SECRET, row_id=store_id),
        vpc_endpoint_service_name=settings.vpc_service_name,
        vpc_endpoint_service_owner=settings.vpc_service_owner,
    )
    try:
        async with ctx.sessions.begin() as session:
            await _check_store_limit(ctx, session)  # again: others may have been made meanwhile
            session.add(store)
    except IntegrityError:
        # Another request took the name or the URI during the health check: say which.
        async with ctx.sessions.begin() as session:
            await _check_unique(session, name, settings.uri_endpoint, settings.uri_path, None)
        raise
    return {"CustomKeyStoreId": store_id}


def describe_entry(store: CustomKeyStore) -> dict[str, Any]:
    """One DescribeCustomKeyStores entry. The proxy secret is never part of it."""
    config: dict[str, Any] = {
        "Connectivity": store.connectivity,
        "AccessKeyId": store.access_key_id,
        "UriEndpoint": store.uri_endpoint,
        "UriPath": store.uri_path,
    }
    if store.vpc_endpoint_service_name:
        config["VpcEndpointServiceName"] = store.vpc_endpoint_service_name
    if store.vpc_endpoint_service_owner:
        config["VpcEndpointServiceOwner"] = store.vpc_endpoint_service_owner
    entry: dict[str, Any] = {
        "CustomKeyStoreId": store.id,
        "CustomKeyStoreName": store.name,
        "CustomKeyStoreType": EXTERNAL_KEY_STORE,
        "ConnectionState": store.connection_state,
        "CreationDate": epoch(store.creation_date),
        "XksProxyConfiguration": config,
    }
    if store.connection_state == FAILED and store.connection_error_code:
        entry["ConnectionErrorCode"] = store.connection_error_code
    return entry


async def describe_custom_key_stores(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    store_id = p.string("CustomKeyStoreId", min_len=1, max_len=64)
    name = p.string("CustomKeyStoreName", min_len=1, max_len=256)
    limit = p.limit(default=1000, maximum=1000)
    marker = p.marker()
    if store_id is not None and name is not None:
        raise ValidationError("Specify either CustomKeyStoreId or CustomKeyStoreName, not both.")
    query = select(CustomKeyStore).order_by(CustomKeyStore.id)
    if store_id is not None:
        query = query.where(CustomKeyStore.id == store_id)
    if name is not None:
        query = query.where(CustomKeyStore.name == name)
    if marker is not None:
        query = query.where(CustomKeyStore.id > marker)
    async with ctx.sessions() as session:
        stores = (await session.scalars(query.limit(limit + 1))).all()
    if not stores and (store_id is not None or name is not None):
        raise KeyStoreNotFound(f"Custom key store {store_id or name} does not exist.")
    page = stores[:limit]
    result: dict[str, Any] = {"CustomKeyStores": [describe_entry(s) for s in page], "Truncated": False}
    if len(stores) > limit:
        result.update(Truncated=True, NextMarker=page[-1].id)
    return result


async def update_custom_key_store(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    store_id = _store_id(p)
    new_name = p.string("NewCustomKeyStoreName", min_len=1, max_len=256)
    members = _read_proxy_members(ctx, p)
    # KMS lets a connected external key store change its name, credential and URI path; the endpoint
    # and the connectivity need it disconnected.
    allowed = (DISCONNECTED, CONNECTED) if set(members) <= _CHANGEABLE_WHILE_CONNECTED else (DISCONNECTED,)
    async with ctx.sessions() as session:
        store = await _load_store(session, store_id)
        if store.connection_state not in allowed:
            raise KeyStoreInvalidState(
                f"Custom key store {store_id} is {store.connection_state}: disconnect it first (only the "
                "name, credential and URI path change while it is CONNECTED)."
            )
        current = ProxySettings(
            uri_endpoint=store.uri_endpoint,
            uri_path=store.uri_path,
            access_key_id=store.access_key_id,
            secret=ctx.sealer.unseal(store.sealed_secret, purpose=PROXY_SECRET, row_id=store.id).decode(),
            connectivity=store.connectivity,
            vpc_service_name=store.vpc_endpoint_service_name,
            vpc_service_owner=store.vpc_endpoint_service_owner,
        )
        merged = replace(current, **members)
        if merged.connectivity == PUBLIC_ENDPOINT and "connectivity" in members:
            merged = replace(merged, vpc_service_name=None, vpc_service_owner=None)
        _check_connectivity(merged)
        await _check_unique(session, new_name, merged.uri_endpoint, merged.uri_path, store_id)
    if members:
        await proxy.health_check(ctx, call, merged.config(ctx.settings.region, store_id))
    async with ctx.sessions.begin() as session:
        store = await _load_store(session, store_id)
        if store.connection_state not in allowed:
            raise KeyStoreInvalidState(f"Custom key store {store_id} changed state during the update.")
        if new_name is not None:
            store.name = new_name
        # Only what this request changed: a concurrent update of other members must not be undone.
        for member, column in _MEMBER_COLUMNS.items():
            if member in members or (member.startswith("vpc_") and "connectivity" in members):
                setattr(store, column, getattr(merged, member))
        if "secret" in members:
            store.sealed_secret = ctx.sealer.seal(
                merged.secret.encode(), purpose=PROXY_SECRET, row_id=store_id
            )
    if "secret" in members or "access_key_id" in members:
        ctx.metrics.credential_set(store_id)
    return {}


async def delete_custom_key_store(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    store_id = _store_id(p)
    async with ctx.sessions.begin() as session:
        store = await _load_store(session, store_id)
        if store.connection_state != DISCONNECTED:
            raise KeyStoreInvalidState(
                f"Custom key store {store_id} is {store.connection_state}: disconnect it before deleting it."
            )
        await purge_expired(session)
        keys = await session.scalar(
            select(func.count()).select_from(KmsKey).where(KmsKey.custom_key_store_id == store_id)
        )
        if keys:
            raise KmsError.named(
                "CustomKeyStoreHasCMKsException",
                f"Custom key store {store_id} still has {keys} KMS key(s): delete them first.",
            )
        await session.delete(store)
    return {}


async def connect_custom_key_store(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    store_id = _store_id(p)
    async with ctx.sessions() as session:
        store = await _load_store(session, store_id)
        if store.connection_state == CONNECTED:
            return {}
        if store.connection_state != DISCONNECTED:
            # As in KMS: a FAILED store is disconnected (and fixed) before it connects again.
            raise KeyStoreInvalidState(
                f"Custom key store {store_id} is {store.connection_state}: disconnect it first."
            )
        cfg = proxy.proxy_config(ctx, store)
    await ctx.watch.reset(store_id)  # failures before this connection say nothing about it
    error_code = await proxy.connection_error(ctx, call, cfg)
    async with ctx.sessions.begin() as session:
        store = await _load_store(session, store_id)
        store.connection_state = CONNECTED if error_code is None else FAILED
        store.connection_error_code = error_code
    return {}


async def disconnect_custom_key_store(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    store_id = _store_id(p)
    async with ctx.sessions.begin() as session:
        store = await _load_store(session, store_id)
        if store.connection_state == DISCONNECTED:
            raise KeyStoreInvalidState(f"Custom key store {store_id} is already DISCONNECTED.")
        store.connection_state = DISCONNECTED
        store.connection_error_code = None
    return {}
