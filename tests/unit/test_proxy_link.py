"""The proxy-DSM link: the token file, the call's wire shape, and the proxy's prefix table and quota."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from xks_frontend.dsm_client import DsmUnreachable
from xks_frontend.handlers import PrefixQuota, PrefixTable
from xkslab_shared.proxy_link import ForwardedCall, read_token


def test_token_is_created_once_with_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "proxy.token"
    token = read_token(path, create=True)
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_token(path, create=True) == token  # reused, not replaced
    assert read_token(path) == token


def test_short_or_missing_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_token(tmp_path / "absent")
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ValueError, match="at least 32"):
        read_token(tmp_path / "short")


def _call(**changes: Any) -> ForwardedCall:
    base: dict[str, Any] = dict(
        app_id="a",
        operation="encrypt",
        key_id="k1",
        method="POST",
        path="/p/kms/xks/v1/keys/k1/encrypt",
        query="",
        headers={"host": "h", "authorization": "AWS4 x"},
        body=b'{"x": "\xff"}',
        max_plaintext_bytes=4300,
        max_aad_bytes=8192,
        policy_allowed=False,
        policy_rule="r1",
    )
    base.update(changes)
    return ForwardedCall(**base)


def test_call_round_trips_through_json() -> None:
    call = _call()
    assert ForwardedCall.from_json(call.to_json()) == call
    health = _call(operation="health", key_id=None, policy_allowed=None, policy_rule=None)
    assert ForwardedCall.from_json(health.to_json()) == health
    assert "body" not in repr(call) or "\\xff" not in repr(call)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("app_id"),
        lambda d: d.update(operation="sign"),
        lambda d: d.update(key_id=None),
        lambda d: d.update(body="not base64!"),
        lambda d: d.update(headers={"host": 1}),
        lambda d: d.update(headers=["host"]),
        lambda d: d.update(limits={"max_plaintext_bytes": "1", "max_aad_bytes": 1}),
        lambda d: d.update(limits={"max_plaintext_bytes": True, "max_aad_bytes": 1}),
        lambda d: d.update(policy={"allowed": True}),
        lambda d: d.update(path=None),
    ],
)
def test_malformed_calls_are_value_errors(mutate: Any) -> None:
    data = _call().to_json()
    mutate(data)
    with pytest.raises(ValueError):
        ForwardedCall.from_json(data)
    with pytest.raises(ValueError):
        ForwardedCall.from_json([data])


def test_health_call_must_not_name_a_key() -> None:
    data = _call(operation="health").to_json()
    with pytest.raises(ValueError, match="key_id"):
        ForwardedCall.from_json(data)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_quota_is_per_prefix_and_refills() -> None:
    clock = FakeClock()
    quota = PrefixQuota(rate=2.0, burst=3, clock=clock)
    assert [quota.take("/a") for _ in range(4)] == [True, True, True, False]
    assert quota.take("/b") is True  # another prefix has its own bucket
    clock.now += 0.5  # one token back at 2/s
    assert quota.take("/a") is True and quota.take("/a") is False
    assert all(PrefixQuota(rate=0, burst=1).take("/a") for _ in range(100))  # 0: no quota


class FakeDsm:
    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.calls = 0
        self.down = False

    async def prefixes(self) -> dict[str, str]:
        self.calls += 1
        if self.down:
            raise DsmUnreachable()
        return dict(self.table)


async def test_prefix_table_refreshes_on_miss_at_most_once_a_second() -> None:
    clock, dsm = FakeClock(), FakeDsm({"/a": "app-a"})
    table = PrefixTable(dsm, ttl_s=60, clock=clock)  # type: ignore[arg-type]
    assert await table.resolve("/a") == "app-a" and dsm.calls == 1
    dsm.table["/new"] = "app-new"
    assert await table.resolve("/new") is None  # just refreshed: a miss does not ask again at once
    clock.now += 1.5
    assert await table.resolve("/new") == "app-new" and dsm.calls == 2
    for _ in range(5):
        assert await table.resolve("/junk") is None
    assert dsm.calls == 2  # junk paths cannot flood the DSM


async def test_prefix_table_survives_a_dsm_outage() -> None:
    clock, dsm = FakeClock(), FakeDsm({"/a": "app-a"})
    table = PrefixTable(dsm, ttl_s=5, clock=clock)  # type: ignore[arg-type]
    assert await table.resolve("/a") == "app-a"
    dsm.down = True
    clock.now += 10
    assert await table.resolve("/a") == "app-a"  # the last known table stays in use
    fresh = PrefixTable(dsm, ttl_s=5, clock=clock)  # type: ignore[arg-type]
    app_id = "0b5e3a4c-1d2e-4f60-8a9b-0c1d2e3f4a5b"
    assert await fresh.resolve(f"/crypto/v1/apps/{app_id}/aws") == app_id  # Fortanix-style: by its shape
    with pytest.raises(DsmUnreachable):
        await fresh.resolve("/alias")
