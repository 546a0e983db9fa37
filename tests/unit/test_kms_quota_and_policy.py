"""The per-external-key-store token bucket (on a fake clock) and the key policy document checks."""

from __future__ import annotations

import json

import pytest

from kms_emulator.errors import KmsError
from kms_emulator.policy_document import LOCKOUT, check, default_policy
from kms_emulator.throttle import StoreThrottle

ACCOUNT = "111122223333"
CALLER = f"arn:aws:iam::{ACCOUNT}:user/ci"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_allows_a_second_of_requests_then_refills_at_the_rate() -> None:
    clock = Clock()
    throttle = StoreThrottle(4, clock)
    assert [throttle.take("cks-a") for _ in range(5)] == [True, True, True, True, False]
    assert throttle.take("cks-b"), "each key store has its own bucket"
    clock.now += 0.25
    assert throttle.take("cks-a") and not throttle.take("cks-a")
    clock.now += 10
    assert sum(throttle.take("cks-a") for _ in range(10)) == 4, "never more than one second's worth"


def test_a_zero_rate_is_no_quota() -> None:
    throttle = StoreThrottle(0, Clock())
    assert all(throttle.take("cks-a") for _ in range(10_000))


def statement(**overrides: object) -> dict[str, object]:
    return {"Effect": "Allow", "Principal": {"AWS": CALLER}, "Action": "kms:*", "Resource": "*", **overrides}


def refusal(document: object, *, bypass: bool = False) -> str:
    text = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(KmsError) as info:
        check(text, caller_arn=CALLER, account_id=ACCOUNT, bypass_lockout_check=bypass)
    assert info.value.code == "MalformedPolicyDocumentException"
    return info.value.message


def test_the_default_policy_passes_its_own_checks() -> None:
    check(default_policy(ACCOUNT), caller_arn=CALLER, account_id=ACCOUNT, bypass_lockout_check=False)
    assert json.loads(default_policy(ACCOUNT))["Statement"][0]["Principal"] == {
        "AWS": f"arn:aws:iam::{ACCOUNT}:root"
    }


def test_the_lockout_check_reads_actions_principals_and_denies() -> None:
    ok = [
        {"Statement": [statement(Action="kms:Put*")]},
        {"Statement": [statement(Principal="*")]},
        {"Statement": [statement(Principal={"AWS": ACCOUNT})]},
        {"Statement": [statement(NotAction="kms:Decrypt", Action=None)]},
    ]
    for document in ok:
        document["Statement"] = [{k: v for k, v in s.items() if v is not None} for s in document["Statement"]]
        check(json.dumps(document), caller_arn=CALLER, account_id=ACCOUNT, bypass_lockout_check=False)
    conditional = {"Statement": [statement(Condition={"Bool": {"aws:SecureTransport": "true"}})]}
    assert refusal(conditional) == LOCKOUT
    assert refusal({"Statement": [statement(Principal={"AWS": "arn:aws:iam::999999999999:root"})]}) == LOCKOUT
    check(json.dumps(conditional), caller_arn=CALLER, account_id=ACCOUNT, bypass_lockout_check=True)


def test_structure_is_checked_even_with_the_bypass() -> None:
    assert "Resource" in refusal({"Statement": [statement(Resource="arn:aws:kms:*")]}, bypass=True)
    assert "principals" in refusal({"Statement": [statement(Principal={"AWS": "bob"})]}, bypass=True)
    assert "Principal" in refusal(
        {"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}, bypass=True
    )
    assert "32768" in refusal(json.dumps({"Statement": [statement(Sid="é" * 16400)]}), bypass=True)
