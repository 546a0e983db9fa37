"""Property-based fuzzing of the three APIs (issue 11), against live servers on loopback, on SQLite and
PostgreSQL: random bodies, paths and parameters on every route the services' routers serve (and each
XKS operation and KMS target they dispatch), so a new route is fuzzed by default, sent with valid
credentials so they get past authentication and reach the handlers.

Whatever arrives, each API answers below 500 in its own error shape (DSM: ``{"message"}``; XKS:
``{"errorName", "errorMessage"}``; KMS: ``{"__type", "message"}``), never with a traceback, logs no
unhandled exception, and still serves a valid request afterwards. The one 5xx allowed is the XKS
spec's own 501 UnsupportedOperationException (a plaintext or AAD past the proxy's limits).

Hypothesis drives the cases from a worker thread; the servers keep running on the test's event loop,
which each case's request is handed to.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import string
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from dsm_emulator.api.app import create_app as create_dsm_app
from dsm_emulator.api.not_emulated import NOT_EMULATED
from kms_emulator.app import OPERATIONS
from tests import xks_harness
from tests.kms_harness import KmsEnv, start_kms, stop_kms
from tests.xks_harness import XksEnv, metadata, sign
from xks_frontend.app import create_app as create_xks_app
from xks_frontend.handlers import XKS_OPERATION
from xkslab_shared import xks_wire
from xkslab_shared.config import load_settings
from xkslab_shared.faults_wire import FAULTS_PATH
from xkslab_shared.proxy_link import read_token

db_env = xks_harness.db_env
xks_template = xks_harness.xks_template

EXAMPLES = settings(
    max_examples=150,
    deadline=None,  # a shared machine stalls; a slow answer is not what is being tested
    database=None,  # nothing written into the checkout
    suppress_health_check=list(HealthCheck),
)
# A hang guard per request, not a budget: far above any answer on a loaded machine.
REQUEST_GUARD_S = 120

Send = Callable[[Any], Awaitable[None]]


async def fuzz(strategy: st.SearchStrategy[Any], send: Send) -> None:
    """Run ``send`` on each case hypothesis draws, on this event loop, from a thread of hypothesis's own."""
    loop = asyncio.get_running_loop()

    @EXAMPLES
    @given(strategy)
    def case(drawn: Any) -> None:
        asyncio.run_coroutine_threadsafe(send(drawn), loop).result(REQUEST_GUARD_S)

    await asyncio.to_thread(case)


def assert_clean(status: int, text: str, what: Any) -> None:
    assert "Traceback" not in text and 'File "' not in text, (what, status, text[:500])


def assert_no_unhandled_errors(caplog: pytest.LogCaptureFixture) -> None:
    unhandled = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not unhandled, [f"{r.name}: {r.getMessage()}" for r in unhandled[:5]]


# ---------------------------------------------------------------------------------------- values

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities too: json.dumps writes them as NaN / Infinity, which is not JSON
    | st.text(max_size=40)
    | st.text(alphabet="\x00\x7f\u202e\ufeff é", max_size=6)
    | st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
    | st.uuids().map(str)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
ID_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-._~%:@!$&'()*+,;= \x00é", max_size=40)


def bodies(fields: list[str], known: st.SearchStrategy[Any] = VALUES) -> st.SearchStrategy[bytes]:
    """Mostly objects made of the route's own field names (so the cases get past "unknown field" and
    reach the validation of each value), sometimes any JSON, sometimes bytes that are not JSON."""
    objects = st.fixed_dictionaries({}, optional={name: known | VALUES for name in fields}).flatmap(
        lambda d: st.dictionaries(st.text(max_size=12), VALUES, max_size=2).map(lambda extra: {**extra, **d})
    )
    as_json = (objects | VALUES).map(lambda v: json.dumps(v).encode())
    return st.one_of(as_json, as_json, as_json, st.binary(max_size=80), st.just(b""))


def in_path(ids: list[str]) -> st.SearchStrategy[str]:
    # Mostly a real id, so that the case reaches the handler's checks of the body rather than a 404.
    return st.one_of(st.sampled_from(ids), st.sampled_from(ids), ID_TEXT).map(lambda s: quote(s, safe=""))


def plausible(*extra: Any) -> st.SearchStrategy[Any]:
    """Values a field may really take, so that some cases are nearly valid and go deep."""
    sizes = st.sampled_from([0, 1, 12, 16, 24, 32, 33, 64, 4300, 4301])
    encoded = sizes.map(lambda n: base64.b64encode(bytes(n)).decode())
    return st.sampled_from([*extra, 0, 1, -1, 96, 128, 256, 2**31, 2**63, "", "x"]) | encoded


# ------------------------------------------------------------------------------------------- DSM


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of each route the app's router serves: what the fuzz sends to, so a new
    route is fuzzed without a word here. HEAD is aiohttp's echo of each GET; "*" is a catch-all."""
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method not in {"HEAD", "*"}
    }


def catch_alls(app: web.Application) -> set[str]:
    return {r.resource.canonical for r in app.router.routes() if r.resource is not None and r.method == "*"}


def unserved_method(routes: set[tuple[str, str]], template: str) -> str:
    """A method the path does not serve: its 405 must be in the protocol's shape too."""
    served = {method for method, path in routes if path == template}
    return next(m for m in ("PUT", "PATCH", "DELETE", "POST", "GET") if m not in served)


def fill(template: str, ident: str) -> str:
    return re.sub(r"\{[^}]*\}", lambda _: ident, template)


def dsm_app(env: XksEnv) -> web.Application:
    return env.runners[1].app  # make_env lists the proxy's runner first, the key manager's second


def xks_app(env: XksEnv) -> web.Application:
    return env.runners[0].app


DSM_FIELDS = [
    "name", "description", "obj_type", "key_size", "group_id", "key_ops", "enabled", "transient", "value",
    "kid", "key", "alg", "mode", "plain", "cipher", "iv", "ad", "tag", "tag_len", "wrapped_key",
    "key_format", "batch", "request", "add_groups", "del_groups", "mod_groups", "default_group",
    "credential", "secret_size", "acct_id", "custom_metadata", "activation_date", "deactivation_date",
    "code", "message", "transient_key", "state", "expires_in", "data", "mac", "digest",
]  # fmt: skip
DSM_QUERY = [
    "name", "group_id", "obj_type", "limit", "offset", "sort", "start", "show_destroyed", "size", "from",
    "previous_id", "range_from", "range_to", "action_type", "actor_type", "actor_id", "object_id", "severity",
]  # fmt: skip


NOT_EMULATED_ROUTES = {(entry.method, entry.path) for entry in NOT_EMULATED}


async def test_the_dsm_rest_api_under_random_requests(
    db_env: XksEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = db_env
    app, secret = await env.core.admin.create_app(
        env.system, "fuzz", groups={env.group_id: frozenset({"MANAGE", "ENCRYPT", "DECRYPT", "WRAPKEY"})}
    )
    api_key = "Basic " + base64.b64encode(f"{app.app_id}:{secret}".encode()).decode()
    admin = "Basic " + base64.b64encode(b"admin@xkslab.local:pw").decode()
    ids = [env.kek_id, env.group_id, env.app_id, env.acct_id, str(uuid.uuid4())]
    queries = st.dictionaries(
        st.sampled_from(DSM_QUERY) | st.text(max_size=8), ID_TEXT | st.sampled_from(ids)
    )
    known = plausible(
        *ids, "AES", "HMAC", "SECRET", "OPAQUE", "SHA256", "SHA3_512", "Blake2b256", "GCM", "CBC", "CBCNOPAD", "CTR", "ECB", "KW", "KWP", "Raw",
        ["ENCRYPT", "DECRYPT", "WRAPKEY", "UNWRAPKEY", "EXPORT"], {"kid": env.kek_id}, {"name": "root-kek-1"},
        {env.group_id: ["ENCRYPT"]}, [env.group_id], {"secret": {}}, {"awsxks": {}},
        [{"kid": env.kek_id, "request": {"alg": "AES", "mode": "GCM", "plain": "AAAA"}}],
    )  # fmt: skip
    routes = served_routes(dsm_app(env))
    settings = load_settings(env.data_dir, environ={})
    proxy_token = "Bearer " + read_token(settings.path(settings.dsm.proxy_token_file))
    cases = st.tuples(
        st.sampled_from(sorted(routes)),
        in_path(ids),
        queries,
        bodies(DSM_FIELDS, known),
        st.sampled_from(["admin", "admin", "app", "app", "proxy"]),
        st.integers(0, 9).map(lambda n: n == 0),
    )

    async with aiohttp.ClientSession() as http:

        async def token() -> str:
            async with http.post(f"{env.dsm_url}/sys/v1/session/auth", headers={"Authorization": admin}) as r:
                assert r.status == 200, await r.text()
                return "Bearer " + (await r.json())["access_token"]

        credentials = {"admin": await token(), "app": api_key, "proxy": proxy_token}

        async def send(case: Any) -> None:
            (method, template), ident, query, body, who, as_random_method = case
            if as_random_method:
                method = unserved_method(routes, template)
            url = URL(env.dsm_url + fill(template, ident), encoded=True).update_query(query)
            headers = {"Authorization": credentials[who], "Content-Type": "application/json"}
            async with http.request(method, url, data=body, headers=headers) as r:
                text = await r.text()
            if r.status == 401 and who == "admin":  # the case ended the session (terminate): a new one
                credentials["admin"] = await token()
            assert_clean(r.status, text, case)
            # The one 5xx a route may answer: 501 from the table of what the lab does not emulate.
            not_emulated = r.status == 501 and (method, template) in NOT_EMULATED_ROUTES
            # The console's relays to the rest of the lab answer 503 here, where the key manager runs
            # alone (no up.json): the truth, in the DSM's shape; any other 5xx is a failure.
            lab_down = (
                r.status == 503
                and template.startswith("/console/api/")
                and "the lab is not running" in json.loads(text).get("message", "")
            )
            assert r.status < 500 or not_emulated or lab_down, (case, r.status, text)
            if r.status >= 400:
                answer = json.loads(text)
                assert isinstance(answer, dict) and isinstance(answer.get("message"), str), (case, text)

        await fuzz(cases, send)
        # Still serving: a new login (the fuzz may have ended the old session) and a read.
        headers = {"Authorization": await token()}
        async with http.get(f"{env.dsm_url}/crypto/v1/keys", headers=headers) as r:
            assert r.status == 200, await r.text()
    assert_no_unhandled_errors(caplog)


# ------------------------------------------------------------------------------------------- XKS

XKS_FIELDS = [
    "requestMetadata", "plaintext", "ciphertext", "encryptionAlgorithm", "additionalAuthenticatedData",
    "initializationVector", "authenticationTag", "ciphertextDataIntegrityValueAlgorithm",
    "ciphertextMetadata",
]  # fmt: skip
METADATA = st.fixed_dictionaries(
    {},
    optional={
        name: st.text(max_size=60) | VALUES
        for name in ("kmsRequestId", "kmsOperation", "awsPrincipalArn", "kmsKeyArn", "awsSourceVpc")
    },
)


def xks_operation_paths() -> list[str]:
    """The XKS operation URIs the proxy's catch-all route answers, one per operation it dispatches."""
    return sorted(
        "/kms/xks/v1/health" if op == "health" else f"/kms/xks/v1/keys/{{key}}/{op}" for op in XKS_OPERATION
    )


async def test_the_xks_proxy_under_random_signed_requests(
    db_env: XksEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = db_env
    app = xks_app(env)
    routes = served_routes(app)
    settings = load_settings(env.data_dir, environ={})
    admin = "Bearer " + read_token(settings.path(settings.xks.admin_token_file))
    # The catch-all: the XKS API under its URI path prefixes (and any other path, for its 404).
    assert catch_alls(app) == {"/{tail}"}, catch_alls(app)
    operations = st.sampled_from([*xks_operation_paths(), "/kms/xks/v1/keys/{key}/x"])
    tails = st.one_of(
        st.tuples(operations, in_path([env.kek_id])).map(lambda t: fill(*t)),
        st.text(alphabet=string.ascii_letters + "/%._-", max_size=40).map(lambda t: "/" + t),
    )
    prefixes = st.sampled_from([env.prefix, env.prefix, "/crypto/v1/apps/x/aws", ""])
    known = METADATA.map(lambda m: {**metadata(), **m}) | plausible("AES_GCM", "SHA_256", "key_version=1")
    api_cases = st.tuples(st.just("api"), prefixes, tails, bodies(XKS_FIELDS, known))
    # Every other route (ping, metrics, the OpenAPI document, the fault admin endpoint), with and without
    # the admin token, on its own methods and another.
    fault_fields = ["faults", "kind", "latency_ms", "error_name", "probability", "count", "operation"]
    route_cases = st.tuples(
        st.just("route"),
        st.sampled_from(sorted(routes)),
        st.booleans(),
        in_path(["1", "f-1"]),
        bodies(fault_fields),
        st.booleans(),
    )

    async def send_route(case: Any) -> None:
        _, (method, template), as_random_method, ident, body, with_token = case
        if as_random_method:
            method = unserved_method(routes, template)
        url = URL(env.proxy_url + fill(template, ident), encoded=True)
        headers = {"Authorization": admin} if with_token else {}
        async with env.http.request(method, url, data=body, headers=headers) as r:
            text = await r.text()
        assert_clean(r.status, text, case)
        assert r.status < 500, (case, r.status, text)
        # An empty id makes another path (``/faults/``), which no admin route serves: the proxy's
        # catch-all answers it in the XKS shape, as any unknown path.
        names_the_route = bool(ident) or "{" not in template
        if r.status >= 400 and template.startswith(FAULTS_PATH) and not as_random_method and names_the_route:
            answer = json.loads(text)  # the admin endpoint's own shape, as `xkslab faults` reads it
            assert isinstance(answer, dict) and isinstance(answer.get("error"), str), (case, text)
        elif r.status >= 400:
            answer = json.loads(text)
            assert isinstance(answer, dict) and set(answer) == {"errorName", "errorMessage"}, (case, text)
        # A fault the case set must not slow or break the cases after it.
        async with env.http.delete(env.proxy_url + FAULTS_PATH, headers={"Authorization": admin}) as r:
            assert r.status == 200, await r.text()

    async def send(case: Any) -> None:
        if case[0] == "route":
            return await send_route(case)
        _, prefix, tail, body = case
        url = env.proxy_url + prefix + tail
        headers = sign(url, body, env.akid, env.secret)
        async with env.http.post(URL(url, encoded=True), data=body, headers=headers) as r:
            text = await r.text()
        assert_clean(r.status, text, case)
        if r.status >= 400:
            answer = json.loads(text)
            assert isinstance(answer, dict) and set(answer) == {"errorName", "errorMessage"}, (case, text)
            spec_501 = r.status == 501 and answer["errorName"] == "UnsupportedOperationException"
            assert r.status < 500 or spec_501, (case, r.status, text)

    await fuzz(st.one_of(api_cases, api_cases, api_cases, route_cases), send)
    status, answer = await env.encrypt(b"still serving")
    assert status == 200, answer
    assert_no_unhandled_errors(caplog)


def test_the_fuzz_reaches_every_route(xks_template: tuple[Path, dict[str, Any]]) -> None:
    """What the fuzz sends to is the routers' routes, so no route is left out by a list going stale (the
    old hand-kept one missed DELETE, destroy, reset_secret and terminate), and each XKS operation the
    proxy dispatches is one of its URIs."""
    settings = load_settings(xks_template[0], environ={})
    for app in (create_dsm_app(settings), create_xks_app(settings)):
        everything = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
        echoes = {(method, path) for method, path in everything if method == "HEAD"}
        catch_all = {(method, path) for method, path in everything if method == "*"}
        # Nothing left out but aiohttp's HEAD echo of a GET, and the catch-all (fuzzed by its own paths).
        assert served_routes(app) == everything - echoes - catch_all
        assert {("GET", path) for _, path in echoes} <= served_routes(app)
    dsm = served_routes(create_dsm_app(settings))
    for route in [
        ("DELETE", "/crypto/v1/keys/{kid}"),
        ("DELETE", "/sys/v1/apps/{app_id}"),
        ("DELETE", "/sys/v1/groups/{group_id}"),
        ("POST", "/crypto/v1/keys/{kid}/destroy"),
        ("POST", "/sys/v1/apps/{app_id}/reset_secret"),
        ("POST", "/sys/v1/session/terminate"),
    ]:
        assert route in dsm, route
    assert not catch_alls(create_dsm_app(settings))
    assert catch_alls(create_xks_app(settings)) == {"/{tail}"}
    paths = xks_operation_paths()
    assert len(paths) == len(XKS_OPERATION)
    matched = [xks_wire.URI_PATH.fullmatch(fill(path, "k")) for path in paths]
    assert sorted(xks_wire.path_operation(m) for m in matched if m is not None) == sorted(XKS_OPERATION)


# ------------------------------------------------------------------------------------------- KMS

KMS_FIELDS = [
    "KeyId", "Plaintext", "CiphertextBlob", "EncryptionContext", "EncryptionAlgorithm", "GrantTokens",
    "KeySpec", "KeyUsage", "NumberOfBytes", "Description", "Origin", "CustomKeyStoreId", "AliasName",
    "TargetKeyId", "Tags", "TagKeys", "Limit", "Marker", "PendingWindowInDays", "CustomKeyStoreName",
    "CustomKeyStoreType", "XksProxyUriEndpoint", "XksProxyUriPath", "XksProxyConnectivity",
    "XksProxyAuthenticationCredential", "XksProxyVpcEndpointServiceName", "XksKeyId", "SourceKeyId",
    "SourceEncryptionContext", "DestinationKeyId", "DestinationEncryptionContext", "DryRun", "Policy",
    "MultiRegion", "BypassPolicyLockoutSafetyCheck", "NewCustomKeyStoreName", "KeyState",
]  # fmt: skip


@pytest.fixture
async def kms_env(db_env: XksEnv) -> AsyncIterator[KmsEnv]:
    env = await start_kms(db_env.data_dir)
    try:
        yield env
    finally:
        await stop_kms(env)


async def test_kms_under_random_targets_and_bodies(kms_env: KmsEnv, caplog: pytest.LogCaptureFixture) -> None:
    created = await kms_env.call("create_key", Description="fuzz")
    key_id = created["KeyMetadata"]["KeyId"]
    targets = st.sampled_from(sorted(OPERATIONS)).map(lambda op: f"TrentService.{op}") | st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30
    )
    known = plausible(
        key_id, created["KeyMetadata"]["Arn"], "alias/fuzz", "alias/aws/x", "SYMMETRIC_DEFAULT", "AES_256",
        "AES_128", "ENCRYPT_DECRYPT", "EXTERNAL_KEY_STORE", "AWS_KMS", "EXTERNAL", "https://127.0.0.1:1",
        "/kms/xks/v1", "PUBLIC_ENDPOINT", {"AccessKeyId": "A" * 20, "RawSecretAccessKey": "s" * 43},
        [{"TagKey": "k", "TagValue": "v"}], {"k": "v"}, "cks-1234567890abcdef0",
    )  # fmt: skip
    cases = st.tuples(targets, bodies(KMS_FIELDS, known))

    async def send(case: Any) -> None:
        target, body = case
        status, answer, _ = await kms_env.raw(target, body)
        assert_clean(status, json.dumps(answer), case)
        assert status < 500, (case, status, answer)
        if status >= 400:
            assert set(answer) == {"__type", "message"}, (case, answer)

    await fuzz(cases, send)
    # Still serving (the fuzz may have disabled or scheduled the deletion of the first key).
    fresh = (await kms_env.call("create_key"))["KeyMetadata"]["KeyId"]
    blob = (await kms_env.call("encrypt", KeyId=fresh, Plaintext=b"still serving"))["CiphertextBlob"]
    assert (await kms_env.call("decrypt", CiphertextBlob=blob))["Plaintext"] == b"still serving"
    assert_no_unhandled_errors(caplog)
