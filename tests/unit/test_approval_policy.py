"""Group approval policies as data (``dsm_emulator.approvals.policy``): normalisation, what a policy holds,
and quorum evaluation, where each approver counts once however the quorums nest."""

from __future__ import annotations

import pytest

from dsm_emulator.approvals.policy import (
    COMPONENTS,
    CRYPTO,
    ENFORCED_PERMISSIONS,
    EXPORT,
    GROUP_CHANGE,
    parse_custodian_policy,
    parse_policy,
    protected,
    requires_password,
    satisfied,
)
from dsm_emulator.errors import BadRequest

A, B, C = (f"{n}0000000-0000-4000-8000-000000000000" for n in "abc")


def test_sdkms_cli_policy_is_normalised_and_holds_the_defaults() -> None:
    # What sdkms-cli create-group --add-quorum-policy --n 2 --users A,B sends.
    raw = {
        "quorum": {
            "n": 2,
            "members": [{"user": A}, {"user": B}],
            "require_2fa": False,
            "require_password": False,
        }
    }
    policy = parse_policy(raw)
    assert policy["quorum"]["members"] == [{"user": A}, {"user": B}]
    assert protected(policy) == ENFORCED_PERMISSIONS | {EXPORT, GROUP_CHANGE, COMPONENTS}
    assert CRYPTO in protected({**policy, "protect_crypto_operations": True})
    only = parse_policy({**raw, "protect_permissions": ["DELETE_SOBJECTS"]})
    assert protected(only) == {"DELETE_SOBJECTS", EXPORT, GROUP_CHANGE, COMPONENTS}
    assert protected(None) == frozenset()


def test_each_approver_counts_once() -> None:
    nested = {"n": 2, "members": [{"user": A}, {"quorum": {"n": 1, "members": [{"user": A}, {"app": B}]}}]}
    q = parse_policy({"quorum": nested})["quorum"]
    assert not satisfied(q, [("user", A)])  # A cannot be both members
    assert satisfied(q, [("user", A), ("app", B)])
    assert not satisfied(q, [("app", B)])
    assert not satisfied(q, [("user", B), ("app", A)])  # kinds matter
    flat = parse_policy({"quorum": {"n": 2, "members": [{"user": A}, {"user": B}, {"user": C}]}})["quorum"]
    assert satisfied(flat, [("user", C), ("user", A)]) and not satisfied(flat, [("user", C)])


def test_password_requirement_is_seen_in_nested_quorums() -> None:
    inner = {"n": 1, "members": [{"user": B}], "require_password": True}
    q = parse_policy({"quorum": {"n": 1, "members": [{"user": A}, {"quorum": inner}]}})["quorum"]
    assert requires_password(q)


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ({"quorum": {"n": 1, "members": [{"user": A}], "require_2fa": True}}, "require_2fa"),
        ({"quorum": {"n": 1, "members": [{"user": A}, {"user": A}]}}, "twice"),
        ({"quorum": {"n": 0, "members": [{"user": A}]}}, "n must be"),
        ({"quorum": {"n": 1, "members": [{"user": "x"}]}}, "user id"),
        ({"quorum": {"n": 1, "members": [{"user": A, "app": B}]}}, "exactly one"),
        ({"quorum": {"n": 1, "members": []}}, "non-empty"),
        (
            {"quorum": {"n": 1, "members": [{"user": A}]}, "protect_permissions": ["GET_SOBJECTS"]},
            "GET_SOBJECTS",
        ),
        ({"quorum": {"n": 1, "members": [{"user": A}]}, "custodian": 1}, "custodian"),
    ],
)
def test_refused_by_name(policy: dict[str, object], named: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_policy(policy)
    assert named in caught.value.message


def test_nesting_is_bounded() -> None:
    q: dict[str, object] = {"n": 1, "members": [{"user": A}]}
    for _ in range(5):
        q = {"n": 1, "members": [{"quorum": q}]}
    with pytest.raises(BadRequest, match="nest"):
        parse_policy({"quorum": q})


def test_custodian_policy_is_a_quorum_of_at_least_two_users() -> None:
    policy = parse_custodian_policy({"quorum": {"n": 2, "members": [{"user": A}, {"user": B}]}})
    assert policy == {
        "quorum": {
            "n": 2,
            "members": [{"user": A}, {"user": B}],
            "require_password": False,
            "require_2fa": False,
        }
    }
    assert parse_custodian_policy("remove") is None


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ({"user": A}, "custodian_policy.user"),
        ({"quorum": {"n": 1, "members": [{"user": A}, {"user": B}]}}, "at least 2"),
        ({"quorum": {"n": 2, "members": [{"user": A}, {"app": B}]}}, "members[1].app"),
        (
            {"quorum": {"n": 2, "members": [{"user": A}, {"quorum": {"n": 1, "members": [{"user": B}]}}]}},
            "nested",
        ),
        ({"quorum": {"n": 2, "members": [{"user": A}, {"user": B}], "require_2fa": True}}, "require_2fa"),
        ({"quorum": {"n": 2, "members": [{"user": A}, {"user": B}]}, "split": "shamir"}, "split"),
    ],
)
def test_custodian_policy_refused_by_name(policy: dict[str, object], named: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_custodian_policy(policy)
    assert named in caught.value.message
