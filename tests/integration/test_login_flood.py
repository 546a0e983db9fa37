"""Issue 11 #6: a flood of wrong logins must not take the XKS path down. App secrets are checked with a
keyed hash (no scrypt), failed logins are limited per identity and source (401, then 429 before any
check), and a burst is audited as its first failure plus one summary row. Real DSM and proxy on
loopback, on SQLite and PostgreSQL. Speed figures are for the benchmark (scripts/login_flood.py), not
asserted here."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, update

from dsm_emulator import secrets as creds
from dsm_emulator.models import AppCredential, AuditRow
from tests.xks_harness import XksEnv, b64, close_env, make_env, metadata

FLOOD_APP = 1500  # wrong API keys on /sys/v1/session/auth
FLOOD_SESSIONLESS = 300  # wrong session-less Basic calls
FLOOD_USER = 200  # wrong passwords for the administrator
CLIENTS = 4
MAX_FAILURES = 5


def basic(left: str, right: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{left}:{right}".encode()).decode()}


async def init(data_dir: Path, db_url: str) -> dict[str, Any]:
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), "init",
            "--database-url", db_url, "--admin-password", "pw", "--json",
        ],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout))


@pytest.fixture
async def lab(empty_db_url: str, tmp_path: Path) -> AsyncIterator[XksEnv]:
    """DSM + proxy on the parametrised database, failed logins limited to 5 per 60 s window per identity
    (the limit per address is far above what these tests fail, so it does not interfere)."""
    info = await init(tmp_path / "template", empty_db_url)
    env = await make_env(
        (tmp_path / "template", info),
        tmp_path / "lab",
        dsm_overrides={
            "dsm.login_max_failures": MAX_FAILURES,
            "dsm.login_window_s": 60,
            "dsm.login_max_failures_per_source": 10_000,
        },
    )
    env.admin_email = info["admin_email"]  # type: ignore[attr-defined]
    try:
        yield env
    finally:
        await close_env(env)


async def secret_app(env: XksEnv, name: str) -> tuple[str, str]:
    app, secret = await env.core.admin.create_app(
        env.system, name, groups={env.group_id: frozenset({"ENCRYPT"})}, credential_kind="secret"
    )
    return app.app_id, secret


async def auth_rows(env: XksEnv) -> list[AuditRow]:
    async with env.core.sessions() as session:
        rows = (await session.scalars(select(AuditRow).order_by(AuditRow.seq))).all()
    return [r for r in rows if r.operation in {"app.authenticate", "user.authenticate"}]


async def test_a_flood_of_wrong_logins_beside_an_xks_load_fails_no_xks_request(lab: XksEnv) -> None:
    app_id, secret = await secret_app(lab, "flooded")
    xks: Counter[int] = Counter()
    stop = asyncio.Event()

    async def xks_load() -> None:
        while not stop.is_set():
            status, _ = await lab.post(
                lab.url("encrypt"),
                {
                    "requestMetadata": metadata(),
                    "plaintext": b64(b"x" * 32),
                    "encryptionAlgorithm": "AES_GCM",
                },
            )
            xks[status] += 1

    attempts: list[tuple[str, str, dict[str, str]]] = (
        [("POST", "/sys/v1/session/auth", basic(app_id, f"wrong-{i}")) for i in range(FLOOD_APP)]
        + [("GET", "/crypto/v1/keys", basic(app_id, f"wrong-{i}")) for i in range(FLOOD_SESSIONLESS)]
        + [("POST", "/sys/v1/session/auth", basic(lab.admin_email, f"no-{i}")) for i in range(FLOOD_USER)]  # type: ignore[attr-defined]
    )
    results: dict[str, list[int]] = {"app": [], "user": []}
    messages: set[str] = set()

    async def flood(http: aiohttp.ClientSession, share: list[tuple[str, str, dict[str, str]]]) -> None:
        for method, path, headers in share:
            async with http.request(method, lab.dsm_url + path, headers=headers) as response:
                body = await response.json()
                messages.add(body["message"])
                if response.status == 429:
                    assert int(response.headers["Retry-After"]) >= 1
                who = (
                    "user"
                    if lab.admin_email in base64.b64decode(headers["Authorization"][6:]).decode()
                    else "app"
                )  # type: ignore[attr-defined]
                results[who].append(response.status)

    workers = [asyncio.create_task(xks_load()) for _ in range(4)]
    try:
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(flood(http, attempts[i::CLIENTS]) for i in range(CLIENTS)))
    finally:
        stop.set()
        await asyncio.gather(*workers)

    assert xks[200] > 0 and set(xks) == {200}, xks
    for who, statuses in results.items():
        counts = Counter(statuses)
        assert set(counts) == {401, 429}, (who, counts)
        # Attempts already past the check when the fifth failure was counted may still answer 401.
        assert MAX_FAILURES <= counts[401] <= MAX_FAILURES + CLIENTS, (who, counts)
    assert messages == {"invalid credentials", "too many failed logins: try again later"}

    # The right secret is still refused while the window lasts (the limit is per identity and source)...
    async with lab.http.post(lab.dsm_url + "/sys/v1/session/auth", headers=basic(app_id, secret)) as r:
        assert r.status == 429
    # ... and one summary row per identity and source covers every failure not audited one by one.
    assert await lab.core.admin.flush_login_summaries(everything=True) == 2
    rows = await auth_rows(lab)
    assert len(rows) == 4, [r.message for r in rows]
    single = [r for r in rows if "further failed logins" not in r.message]
    summaries = [r for r in rows if "further failed logins" in r.message]
    assert len(single) == 2 and len(summaries) == 2
    assert all(r.outcome == "refused" and r.client_ip == "127.0.0.1" for r in rows)
    counted = sum(int(re.match(r"(\d+) further", r.message).group(1)) for r in summaries)  # type: ignore[union-attr]
    assert counted + len(single) == FLOOD_APP + FLOOD_SESSIONLESS + FLOOD_USER + 1
    assert any(f"({app_id})" in r.message and r.actor_id == app_id for r in summaries)
    assert any(lab.admin_email in r.message for r in summaries)  # type: ignore[attr-defined]
    assert not any("wrong-" in r.message or "no-" in r.message for r in rows)


async def test_a_spray_of_made_up_identities_from_one_source_is_refused_after_its_limit(
    empty_db_url: str, tmp_path: Path
) -> None:
    """Each made-up app id or email is a new identity, so the per-identity limit never trips and every
    attempt would be looked up (and every email would cost a password hash). The per-source limit stops
    that: past it, every login from the address is 429 before any check, right credentials included, until
    its bucket refills (a fifth of the limit at once; the window is an hour here, so nothing refills while
    the test runs, however slow the machine)."""
    info = await init(tmp_path / "template", empty_db_url)
    per_source, burst = 25, 5
    env = await make_env(
        (tmp_path / "template", info),
        tmp_path / "lab",
        dsm_overrides={
            "dsm.login_max_failures": MAX_FAILURES,
            "dsm.login_max_failures_per_source": per_source,
            "dsm.login_window_s": 3600,
        },
    )
    try:
        app_id, secret = await secret_app(env, "sprayed")
        statuses = []
        for i in range(40):
            made_up = (
                basic(f"00000000-0000-4000-8000-{i:012d}", "wrong")
                if i % 2
                else basic(f"nobody-{i}@example.com", "wrong")
            )
            async with env.http.post(env.dsm_url + "/sys/v1/session/auth", headers=made_up) as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) >= 1
        assert statuses == [401] * burst + [429] * (40 - burst)
        # The right secret, the administrator's password and session-less Basic calls are refused too...
        for method, path, headers in (
            ("POST", "/sys/v1/session/auth", basic(app_id, secret)),
            ("POST", "/sys/v1/session/auth", basic(info["admin_email"], "pw")),
            ("GET", "/crypto/v1/keys", basic(app_id, secret)),
        ):
            async with env.http.request(method, env.dsm_url + path, headers=headers) as r:
                assert r.status == 429, (path, r.status, await r.text())
        # ... while the XKS path, which does not log in, answers.
        status, _ = await env.post(
            env.url("encrypt"),
            {"requestMetadata": metadata(), "plaintext": b64(b"x" * 32), "encryptionAlgorithm": "AES_GCM"},
        )
        assert status == 200
        # The failures before the limit are audited one by one, the refusals after it in one row.
        assert await env.core.admin.flush_login_summaries(everything=True) == 1
        rows = await auth_rows(env)
        assert len(rows) == burst + 1, [r.message for r in rows]
        [summary] = [r for r in rows if "further failed logins" in r.message]
        assert summary.message.startswith(f"{40 - burst + 3} further failed logins")
        assert "several identities" in summary.message and summary.client_ip == "127.0.0.1"
        assert not any("nobody-" in r.message for r in rows)
    finally:
        await close_env(env)


async def test_password_attempts_queued_behind_the_limit_are_refused_not_hashed(lab: XksEnv) -> None:
    """Password hashes run one at a time; attempts that arrived together all passed the limit's first
    check, and are checked again when it is their turn, so no more than the limit are ever hashed."""
    attempts = 24

    async def attempt(i: int) -> int:
        headers = basic(lab.admin_email, f"no-{i}")  # type: ignore[attr-defined]
        async with lab.http.post(lab.dsm_url + "/sys/v1/session/auth", headers=headers) as r:
            return r.status

    statuses = Counter(await asyncio.gather(*(attempt(i) for i in range(attempts))))
    assert statuses == Counter({401: MAX_FAILURES, 429: attempts - MAX_FAILURES}), statuses


async def test_summary_rows_are_written_when_the_window_ends(empty_db_url: str, tmp_path: Path) -> None:
    info = await init(tmp_path / "template", empty_db_url)
    env = await make_env(
        (tmp_path / "template", info),
        tmp_path / "lab",
        dsm_overrides={"dsm.login_max_failures": 2, "dsm.login_window_s": 1},
    )
    try:
        app_id, _ = await secret_app(env, "short-window")
        statuses = []
        for i in range(6):
            async with env.http.post(
                env.dsm_url + "/sys/v1/session/auth", headers=basic(app_id, f"w{i}")
            ) as r:
                statuses.append(r.status)
        assert statuses == [401, 401, 429, 429, 429, 429]
        for _ in range(100):  # the background task writes it within a second of the window's end
            rows = [r for r in await auth_rows(env) if "further failed logins" in r.message]
            if rows:
                break
            await asyncio.sleep(0.1)
        assert len(rows) == 1 and rows[0].message.startswith("5 further failed logins"), rows
        assert "4 of them refused with 429" in rows[0].message
        # A new window: the app may try again.
        async with env.http.post(env.dsm_url + "/sys/v1/session/auth", headers=basic(app_id, "w")) as r:
            assert r.status == 401
    finally:
        await close_env(env)


async def test_an_old_scrypt_secret_still_works_and_is_rewritten_as_a_keyed_hash(lab: XksEnv) -> None:
    app_id, secret = await secret_app(lab, "legacy")
    legacy = creds.hash_secret(secret)
    async with lab.core.sessions.begin() as session:
        await session.execute(
            update(AppCredential).where(AppCredential.app_id == app_id).values(secret_hash=legacy)
        )

    async def stored() -> str:
        async with lab.core.sessions() as session:
            value = await session.scalar(
                select(AppCredential.secret_hash).where(AppCredential.app_id == app_id)
            )
        return str(value)

    async with lab.http.post(lab.dsm_url + "/sys/v1/session/auth", headers=basic(app_id, "wrong")) as r:
        assert r.status == 401
    assert await stored() == legacy  # a wrong secret upgrades nothing
    async with lab.http.post(lab.dsm_url + "/sys/v1/session/auth", headers=basic(app_id, secret)) as r:
        assert r.status == 200, await r.text()
    upgraded = await stored()
    assert upgraded.startswith("hmac-sha256$") and secret not in upgraded
    # The upgraded row works, through both ways of logging in, and wrong secrets still fail.
    async with lab.http.post(lab.dsm_url + "/sys/v1/session/auth", headers=basic(app_id, secret)) as r:
        assert r.status == 200
    async with lab.http.get(lab.dsm_url + "/crypto/v1/keys", headers=basic(app_id, secret)) as r:
        assert r.status == 200
    assert await lab.core.admin.authenticate_app(app_id, secret) is not None


async def test_new_secrets_get_the_keyed_hash_and_logins_run_no_scrypt(
    lab: XksEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_id, secret = await secret_app(lab, "fresh")
    async with lab.core.sessions() as session:
        stored = await session.scalar(select(AppCredential.secret_hash).where(AppCredential.app_id == app_id))
    assert stored is not None and stored.startswith(f"hmac-sha256${lab.core.keyring.active_term}$")
    assert secret not in stored

    def no_scrypt(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("scrypt ran on an API-key login")

    monkeypatch.setattr(creds.hashlib, "scrypt", no_scrypt)
    async with lab.http.post(lab.dsm_url + "/sys/v1/session/auth", headers=basic(app_id, secret)) as r:
        assert r.status == 200
    for bad in (basic(app_id, "wrong"), basic("00000000-0000-4000-8000-000000000000", "wrong")):
        async with lab.http.post(lab.dsm_url + "/sys/v1/session/auth", headers=bad) as r:
            assert r.status == 401
    _, reset = await lab.core.admin.reset_secret(lab.system, app_id)
    async with lab.http.get(lab.dsm_url + "/crypto/v1/keys", headers=basic(app_id, reset)) as r:
        assert r.status == 200
