"""The console's server-side routes (``/console/api``) on a DSM alone, without a lab (no up.json), on
SQLite and PostgreSQL: what needs the other services answers 503 saying how to start them, never a 500;
a session is needed; changing the lab needs an account administrator, and a refusal is audited."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ADMIN = ("admin@xkslab.local", "correct horse battery")  # tests.integration.test_cli.init


async def bearer(http: aiohttp.ClientSession, url: str, email: str, password: str) -> dict[str, str]:
    basic = base64.b64encode(f"{email}:{password}".encode()).decode()
    async with http.post(url + "/sys/v1/session/auth", headers={"Authorization": f"Basic {basic}"}) as answer:
        assert answer.status == 200
        token = (await answer.json())["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> tuple[int, Any]:
    async with http.request(method, url, headers=headers, json=body) as answer:
        return answer.status, await answer.json(content_type=None)


async def test_without_a_lab_the_console_api_says_so(dsm_on_a_port: tuple[str, Path]) -> None:
    url, _ = dsm_on_a_port
    async with aiohttp.ClientSession() as http:
        assert (await call(http, "GET", url + "/console/api/lab"))[0] == 401
        admin = await bearer(http, url, *ADMIN)
        for method, path in (
            ("GET", "/console/api/lab"),
            ("GET", "/console/api/kms-keys"),
            ("GET", "/console/api/faults"),
            ("POST", "/console/api/demo"),
            ("POST", "/console/api/key-store/connect"),
        ):
            status, body = await call(http, method, url + path, admin, {} if method == "POST" else None)
            assert (status, body) == (503, {"message": body["message"]}), path
            assert "xkslab up" in body["message"], path
        status, body = await call(http, "POST", url + "/console/api/kms-keys", admin, {"xks_key_id": 7})
        assert status == 400 and "xks_key_id" in body["message"]
        status, body = await call(http, "GET", url + "/console/api/audit-chain", admin)
        assert status == 200 and body["ok"] is True and body["rows"] > 0 and body["problems"] == []
        # The changes that could not be made are in the audit log as refused, never as done.
        status, logs = await call(http, "GET", url + "/sys/v1/logs?size=100", admin)
        console_rows = [
            h["_source"]["message"] for h in logs["hits"] if "console: " in h["_source"]["message"]
        ]
        assert sorted(m.split(": refused:")[0] for m in console_rows) == [
            "console: reconnect the key store",
            "console: run the demo with KMS key the lab's alias",
        ]
        assert all(": refused: the lab is not running" in m for m in console_rows), console_rows


async def test_changing_the_lab_needs_an_administrator_and_a_refusal_is_audited(
    dsm_on_a_port: tuple[str, Path],
) -> None:
    url, _ = dsm_on_a_port
    email, password = f"member-{uuid.uuid4().hex[:8]}@xkslab.local", "member password 1!"
    async with aiohttp.ClientSession() as http:
        admin = await bearer(http, url, *ADMIN)
        invite = {"user_email": email, "user_password": password, "account_role": ["ACCOUNTMEMBER"]}
        status, member = await call(http, "POST", url + "/sys/v1/users/invite", admin, invite)
        assert status == 200
        as_member = await bearer(http, url, email, password)
        for method, path, body in (
            ("POST", "/console/api/demo", {}),
            ("POST", "/console/api/kms-keys", {"xks_key_id": str(uuid.uuid4())}),
            ("POST", "/console/api/key-store/connect", None),
            ("GET", "/console/api/audit-chain", None),
        ):
            status, answer = await call(http, method, url + path, as_member, body)
            assert status == 403 and "account administrator" in answer["message"], path
        status, logs = await call(http, "GET", url + "/sys/v1/logs?size=100", admin)
        refused = [
            hit["_source"]["message"]
            for hit in logs["hits"]
            if hit["_source"]["actor_id"] == member["user_id"] and ": refused:" in hit["_source"]["message"]
        ]
        assert any(m.startswith("console: run the demo") for m in refused), refused
        assert any(m.startswith("console: KMS CreateKey") for m in refused), refused
        assert any(m.startswith("console: reconnect the key store") for m in refused), refused
