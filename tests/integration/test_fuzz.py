"""Property-based fuzzing of the three APIs (issue 11), against live servers on loopback, on SQLite and
PostgreSQL: random bodies, paths and parameters on the main routes, sent with valid credentials so
they get past authentication and reach the handlers.

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
import string
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from kms_emulator.app import OPERATIONS
from tests import xks_harness
from tests.kms_harness import KmsEnv, start_kms, stop_kms
from tests.xks_harness import XksEnv, metadata, sign

db_env = xks_harness.db_env

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

DSM_ROUTES = [
    ("GET", "/sys/v1/health"),
    ("GET", "/sys/v1/version"),
    ("POST", "/sys/v1/session/auth"),
    ("POST", "/sys/v1/session/reauth"),
    ("POST", "/sys/v1/session/select_account"),
    ("GET", "/sys/v1/users/accounts"),
    ("GET", "/sys/v1/accounts/{id}"),
    ("GET", "/sys/v1/users"),
    ("GET", "/sys/v1/groups"),
    ("POST", "/sys/v1/groups"),
    ("GET", "/sys/v1/groups/{id}"),
    ("PATCH", "/sys/v1/groups/{id}"),
    ("GET", "/sys/v1/apps"),
    ("POST", "/sys/v1/apps"),
    ("GET", "/sys/v1/apps/{id}"),
    ("PATCH", "/sys/v1/apps/{id}"),
    ("GET", "/sys/v1/apps/{id}/credential"),
    ("POST", "/crypto/v1/keys"),
    ("PUT", "/crypto/v1/keys"),
    ("GET", "/crypto/v1/keys"),
    ("POST", "/crypto/v1/keys/info"),
    ("POST", "/crypto/v1/keys/export"),
    ("POST", "/crypto/v1/keys/rekey"),
    ("GET", "/crypto/v1/keys/{id}"),
    ("PATCH", "/crypto/v1/keys/{id}"),
    ("GET", "/crypto/v1/keys/{id}/export"),
    ("POST", "/crypto/v1/keys/{id}/activate"),
    ("POST", "/crypto/v1/keys/{id}/revoke"),
    ("POST", "/crypto/v1/keys/{id}/encrypt"),
    ("POST", "/crypto/v1/keys/{id}/decrypt"),
    ("POST", "/crypto/v1/keys/{id}/wrapkey"),
    ("POST", "/crypto/v1/keys/{id}/unwrapkey"),
    ("POST", "/crypto/v1/keys/batch/encrypt"),
    ("POST", "/crypto/v1/keys/batch/decrypt"),
    ("POST", "/crypto/v1/encrypt"),
    ("POST", "/crypto/v1/decrypt"),
    ("POST", "/crypto/v1/wrapkey"),
    ("POST", "/crypto/v1/unwrapkey"),
    ("GET", "/sys/v1/logs"),
]
DSM_FIELDS = [
    "name", "description", "obj_type", "key_size", "group_id", "key_ops", "enabled", "transient", "value",
    "kid", "key", "alg", "mode", "plain", "cipher", "iv", "ad", "tag", "tag_len", "wrapped_key",
    "key_format", "batch", "request", "add_groups", "del_groups", "mod_groups", "default_group",
    "credential", "secret_size", "acct_id", "custom_metadata", "activation_date", "deactivation_date",
    "code", "message", "transient_key", "state", "expires_in",
]  # fmt: skip
DSM_QUERY = [
    "name", "group_id", "obj_type", "limit", "offset", "sort", "start", "show_destroyed", "size", "from",
    "previous_id", "range_from", "range_to", "action_type", "actor_type", "actor_id", "object_id", "severity",
]  # fmt: skip


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
        *ids, "AES", "HMAC", "SECRET", "OPAQUE", "GCM", "CBC", "CBCNOPAD", "CTR", "ECB", "KW", "KWP", "Raw",
        ["ENCRYPT", "DECRYPT", "WRAPKEY", "UNWRAPKEY", "EXPORT"], {"kid": env.kek_id}, {"name": "root-kek-1"},
        {env.group_id: ["ENCRYPT"]}, [env.group_id], {"secret": {}}, {"awsxks": {}},
        [{"kid": env.kek_id, "request": {"alg": "AES", "mode": "GCM", "plain": "AAAA"}}],
    )  # fmt: skip
    cases = st.tuples(
        st.sampled_from(DSM_ROUTES),
        in_path(ids),
        queries,
        bodies(DSM_FIELDS, known),
        st.booleans(),
        st.integers(0, 9).map(lambda n: n == 0),
    )

    async with aiohttp.ClientSession() as http:

        async def token() -> str:
            async with http.post(f"{env.dsm_url}/sys/v1/session/auth", headers={"Authorization": admin}) as r:
                assert r.status == 200, await r.text()
                return "Bearer " + (await r.json())["access_token"]

        bearer = await token()

        async def send(case: Any) -> None:
            (method, template), ident, query, body, as_admin, as_random_method = case
            if as_random_method:  # a method the route does not serve: the 405 must be Fortanix-shaped too
                method = {"GET": "DELETE", "POST": "GET", "PUT": "GET", "PATCH": "POST"}[method]
            path = template.replace("{id}", ident)
            url = URL(env.dsm_url + path, encoded=True).update_query(query)
            headers = {"Authorization": bearer if as_admin else api_key, "Content-Type": "application/json"}
            async with http.request(method, url, data=body, headers=headers) as r:
                text = await r.text()
            assert_clean(r.status, text, case)
            assert r.status < 500, (case, r.status, text)
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


async def test_the_xks_proxy_under_random_signed_requests(
    db_env: XksEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = db_env
    tails = st.one_of(
        st.just("/kms/xks/v1/health"),
        st.tuples(
            in_path([env.kek_id]), st.sampled_from(["metadata", "encrypt", "decrypt", "health", "x"])
        ).map(lambda t: f"/kms/xks/v1/keys/{t[0]}/{t[1]}"),
        st.text(alphabet=string.ascii_letters + "/%._-", max_size=40).map(lambda t: "/" + t),
    )
    prefixes = st.sampled_from([env.prefix, env.prefix, "/crypto/v1/apps/x/aws", ""])
    known = METADATA.map(lambda m: {**metadata(), **m}) | plausible("AES_GCM", "SHA_256", "key_version=1")
    cases = st.tuples(prefixes, tails, bodies(XKS_FIELDS, known))

    async def send(case: Any) -> None:
        prefix, tail, body = case
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

    await fuzz(cases, send)
    status, answer = await env.encrypt(b"still serving")
    assert status == 200, answer
    assert_no_unhandled_errors(caplog)


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
