"""DSM REST API: sessions, the caller's accounts and the public system endpoints.

A token is an HS256 JWT signed with ``keyring.derive("session-jwt")`` (claims sub, kind, acct, jti,
iat, exp, sid, sxp). A login starts a session: ``sid`` names it and ``sxp`` is its absolute expiry
(``dsm.session_max_lifetime_s`` after the login). Reauth mints a token of the same session, so its
``exp`` never passes ``sxp``: renewing cannot keep a session alive past its lifetime. Terminate revokes
the whole session (every token of the reauth chain, before and after the one presented) in the database
(``dsm_emulator.revocations``), so every replica refuses it and a restart does not forget it.
A user's selected account is kept in the database (``dsm_emulator.session_accounts``), so every node and
worker knows it. Refresh is a no-op.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web

from dsm_emulator import session_accounts
from dsm_emulator.api.context import (
    PRINCIPAL,
    core_of,
    json_response,
    no_content,
    principal_of,
    read_json,
)
from dsm_emulator.api.context import (
    field as body_field,
)
from dsm_emulator.api.not_emulated import CERTIFICATE_LOGIN, is_certificate_login, not_emulated_message
from dsm_emulator.authz import Principal
from dsm_emulator.core import DsmCore
from dsm_emulator.errors import AccessDenied, AuthFailed, BadRequest, NotFound, Unsupported
from dsm_emulator.models import Account, App, User, is_uuid
from xkslab_shared.generation import GenerationCache

routes = web.RouteTableDef()

VERSION = {"version": "xkslab-0.1.0", "api_version": "1.0", "server_mode": "Software", "fips_level": None}
JWT_PURPOSE = "session-jwt"
# Session-less Basic calls reuse a successful check while nothing has changed (any administrative change,
# in any process, invalidates it within database.cache_poll_ms) and for at most this long (or
# database.cache_max_age_s when that is shorter): the check itself is now cheap, its database reads and audit
# row are not.
BASIC_CACHE_TTL_S = 60.0
# Set for Bearer-authenticated requests: the verified token claims.
CLAIMS: web.RequestKey[dict[str, Any]] = web.RequestKey("xkslab.session_claims", dict)
# Paths a user may call before an account is selected.
ACCOUNTLESS_PATHS = frozenset(
    {
        "/sys/v1/users/accounts",
        "/sys/v1/session/select_account",
        "/sys/v1/session/terminate",
        "/sys/v1/session/refresh",
        "/sys/v1/session/reauth",
        "/sys/v1/accounts",
    }
)


@dataclass
class SessionState:
    """Per-process caches of the session checks (what they cache is in the database)."""

    # Made at the first Basic call: it needs the core's generation counter.
    basic_cache: GenerationCache[bytes, Principal] | None = None
    # Who a Bearer token's subject is (an app, or a user in an account): read on every call, changed
    # only by audited mutations, so cached like the rest of the request path.
    principals: GenerationCache[tuple[str, ...], Principal] | None = None


SESSION_STATE_KEY: web.AppKey[SessionState] = web.AppKey("dsm_session_state", SessionState)


def _state(request: web.Request) -> SessionState:
    return request.app[SESSION_STATE_KEY]


def _jwt_key(core: DsmCore) -> bytes:
    return core.keyring.derive(JWT_PURPOSE)


def issue_token(
    core: DsmCore, kind: str, sub: str, acct: str | None, session: tuple[str, int] | None = None
) -> dict[str, Any]:
    """A token for ``sub``: of a new session, or of ``session`` (sid, absolute expiry) when renewing."""
    dsm = core.settings.dsm
    now = int(time.time())
    sid, sxp = session if session is not None else (str(uuid.uuid4()), now + dsm.session_max_lifetime_s)
    if sxp <= now:
        raise AuthFailed("session lifetime is over: authenticate again")
    exp = min(now + dsm.session_ttl_s, sxp)
    claims: dict[str, Any] = {
        "sub": sub,
        "kind": kind,
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": exp,
        "sid": sid,
        "sxp": sxp,
    }
    if acct is not None:
        claims["acct"] = acct
    token = jwt.encode(claims, _jwt_key(core), algorithm="HS256")
    return {"token_type": "Bearer", "expires_in": exp - now, "access_token": token, "entity_id": sub}


def _decode_basic(header: str) -> tuple[str, str]:
    try:
        text = base64.b64decode(header.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise AuthFailed("invalid credentials") from None
    left, sep, right = text.partition(":")
    # No stored name or id holds a NUL, and PostgreSQL refuses one in a query parameter (a 500).
    if not sep or not left or not right or "\x00" in left:
        raise AuthFailed("invalid credentials")
    return left, right


def _split_auth(request: web.Request) -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if not value.strip():
        raise AuthFailed("authentication required")
    return scheme.lower(), value.strip()


async def principal_from_basic_app(request: web.Request, value: str) -> Principal:
    """Session-less mode: ``Basic <api key>`` of an app; a success is cached (BASIC_CACHE_TTL_S), a
    failure never is, and failures are limited per app and client address like logins."""
    state = _state(request)
    core = core_of(request)
    if state.basic_cache is None:
        max_age = min(BASIC_CACHE_TTL_S, float(core.settings.database.cache_max_age_s))
        state.basic_cache = GenerationCache(core.generation, max_age)

    async def check() -> Principal:
        app_id, secret = _decode_basic(value)
        if not is_uuid(app_id):
            raise AuthFailed("invalid credentials")
        app = await core.admin.authenticate_app(app_id, secret, request.remote or "unknown")
        return await core.admin.principal_for_app(app)

    return await state.basic_cache.get(hashlib.sha256(value.encode()).digest(), check)


async def _user(core: DsmCore, user_id: str) -> User:
    async with core.sessions() as session:
        user = await session.get(User, user_id) if is_uuid(user_id) else None
    if user is None:
        raise AuthFailed("invalid session")
    return user


async def principal_from_bearer(request: web.Request, token: str) -> Principal | None:
    """The caller of a Bearer token; None for a user who has not selected an account yet (allowed only
    on ACCOUNTLESS_PATHS)."""
    core = core_of(request)
    try:
        claims = jwt.decode(
            token,
            _jwt_key(core),
            algorithms=["HS256"],
            options={"require": ["sub", "kind", "jti", "iat", "exp", "sid", "sxp"]},
        )
    except jwt.PyJWTError:
        raise AuthFailed("invalid or expired session token") from None
    if not isinstance(claims["sxp"], int) or claims["sxp"] <= time.time():
        raise AuthFailed("session lifetime is over: authenticate again")
    if await core.revocations.is_revoked(str(claims["sid"])):
        raise AuthFailed("session terminated")
    state = _state(request)
    jti = str(claims["jti"])
    request[CLAIMS] = claims
    sub = str(claims["sub"])
    if state.principals is None:
        state.principals = GenerationCache(core.generation, float(core.settings.database.cache_max_age_s))
    if claims["kind"] == "app":
        return await state.principals.get(("app", sub), lambda: _app_principal(core, sub))
    if claims["kind"] != "user":
        raise AuthFailed("invalid session")
    # A selection (in the database: any node or worker may have made it) wins over the token's own.
    acct = await session_accounts.selected_account(core.sessions, jti) or claims.get("acct")
    if acct is None:
        await _user(core, sub)  # still refused when the user is gone
        if request.path in ACCOUNTLESS_PATHS:
            return None
        raise AccessDenied("no account selected: call /sys/v1/session/select_account first")
    return await state.principals.get(("user", sub, str(acct)), lambda: _user_principal(core, sub, str(acct)))


async def _app_principal(core: DsmCore, app_id: str) -> Principal:
    async with core.sessions() as session:
        app = await session.get(App, app_id) if is_uuid(app_id) else None
        account = await session.get(Account, app.acct_id) if app is not None else None
    if app is None or not app.enabled or account is None or not account.enabled:
        raise AuthFailed("invalid session")
    return await core.admin.principal_for_app(app)


async def _user_principal(core: DsmCore, user_id: str, acct_id: str) -> Principal:
    user = await _user(core, user_id)
    try:
        return await core.admin.principal_for_user(user, acct_id)
    except AccessDenied:
        raise AuthFailed("invalid session") from None


async def authenticate(request: web.Request) -> None:
    """Set ``request[PRINCIPAL]`` from the Authorization header or raise AuthFailed."""
    scheme, value = _split_auth(request)
    if scheme == "bearer":
        principal = await principal_from_bearer(request, value)
        if principal is not None:
            request[PRINCIPAL] = principal
    elif scheme == "basic":
        request[PRINCIPAL] = await principal_from_basic_app(request, value)
    else:
        raise AuthFailed("unsupported authorization scheme")


def _claims(request: web.Request) -> dict[str, Any] | None:
    return request.get(CLAIMS)


# ----------------------------------------------------------------------------------- sessions


@routes.post("/sys/v1/session/auth")
async def auth(request: web.Request) -> web.Response:
    core = core_of(request)
    scheme, value = _split_auth(request)
    if scheme != "basic":
        raise AuthFailed("Basic authentication required")
    if is_certificate_login(value):
        raise Unsupported(not_emulated_message(CERTIFICATE_LOGIN))
    left, right = _decode_basic(value)
    # The peer address, never a forwarded-for header: a client could name any address it likes there.
    source = request.remote or "unknown"
    if is_uuid(left):
        app = await core.admin.authenticate_app(left, right, source)
        return json_response(issue_token(core, "app", app.app_id, app.acct_id))
    user = await core.admin.authenticate_user(left, right, source)
    accounts = await core.admin.user_accounts(user.user_id)
    acct = next(iter(accounts)) if len(accounts) == 1 else None
    return json_response(issue_token(core, "user", user.user_id, acct))


@routes.post("/sys/v1/session/terminate")
async def terminate(request: web.Request) -> web.Response:
    claims = _claims(request)
    if claims is not None:
        core = core_of(request)
        await core.revocations.revoke(str(claims["sid"]), float(claims["sxp"]))
        await session_accounts.forget(core.sessions, str(claims["jti"]))
    return no_content()


@routes.post("/sys/v1/session/refresh")
async def refresh(request: web.Request) -> web.Response:
    return no_content()


@routes.post("/sys/v1/session/reauth")
async def reauth(request: web.Request) -> web.Response:
    core = core_of(request)
    claims = _claims(request)
    principal = request.get(PRINCIPAL)
    # The new token belongs to the caller's session (none for session-less Basic): same sid, same end.
    session = (str(claims["sid"]), int(claims["sxp"])) if claims is not None else None
    if principal is not None and principal.kind == "app":
        return json_response(issue_token(core, "app", str(principal.id), principal.acct_id, session))
    if claims is not None and claims["kind"] == "user":
        acct = principal.acct_id if principal is not None else claims.get("acct")
        return json_response(issue_token(core, "user", str(claims["sub"]), acct, session))
    raise BadRequest("reauth needs a session")


@routes.post("/sys/v1/session/select_account")
async def select_account(request: web.Request) -> web.Response:
    body = await read_json(request)
    acct_id = body_field(body, "acct_id", str, required=True)
    claims = _claims(request)
    if claims is None or claims["kind"] != "user":
        raise BadRequest("only a user session selects an account")
    core = core_of(request)
    user = await _user(core, str(claims["sub"]))
    try:
        await core.admin.principal_for_user(user, acct_id)
    except AccessDenied:
        raise NotFound("account does not exist") from None
    await session_accounts.select_account(core.sessions, str(claims["jti"]), acct_id, float(claims["exp"]))
    return json_response({})


# ------------------------------------------------------------------------- accounts, users


@routes.get("/sys/v1/users/accounts")
async def user_accounts(request: web.Request) -> web.Response:
    claims = _claims(request)
    if claims is None or claims["kind"] != "user":
        raise BadRequest("only a user session has accounts")
    accounts = await core_of(request).admin.user_accounts(str(claims["sub"]))
    return json_response({acct: {"roles": roles, "state": "Enabled"} for acct, roles in accounts.items()})


@routes.get("/sys/v1/plugins")
async def list_plugins(request: web.Request) -> web.Response:
    principal_of(request)
    return json_response([])


# ----------------------------------------------------------------------------------- system


@routes.get("/sys/v1/health")
async def health(request: web.Request) -> web.Response:
    return no_content()


@routes.get("/sys/v1/version")
async def version(request: web.Request) -> web.Response:
    return json_response(VERSION)
