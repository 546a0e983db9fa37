"""Secondary authorization policy: each condition kind, first match wins, the default, validation that
names the file/rule/key (and never a value), and PolicyFile's reload on change with a fake clock."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from xks_frontend.policy import ALLOW_ALL, Decision, Policy, PolicyError, PolicyFile, RequestFacts

METADATA = {
    "kmsOperation": "Encrypt",
    "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
    "awsPrincipalArn": "arn:aws:iam::111122223333:role/app",
    "kmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "kmsViaService": "ebs",
    "awsSourceVpc": "vpc-0abc",
    "awsSourceVpce": "vpce-0def",
}


def facts(
    prefix: str = "/crypto/v1/apps/a1/aws", key_id: str = "root-kek-1", **metadata: str
) -> RequestFacts:
    return RequestFacts(prefix=prefix, key_id=key_id, metadata={**METADATA, **metadata})


def one_rule(effect: str, condition: str, patterns: list[str], default: str) -> Policy:
    listed = ", ".join(f'"{p}"' for p in patterns)
    return Policy.parse(
        f'default = "{default}"\n[[rule]]\nname = "r"\neffect = "{effect}"\n{condition} = [{listed}]\n'
    )


# condition key, a pattern that matches facts(), one that does not
CONDITIONS = [
    ("prefixes", "/crypto/v1/apps/*/aws", "/crypto/v1/apps/*/gcp"),
    ("keys", "root-kek-*", "other-*"),
    ("operations", "Encrypt", "Decrypt"),
    ("principals", "arn:aws:iam::111122223333:*", "arn:aws:iam::444455556666:*"),
    ("key_arns", "arn:aws:kms:*:111122223333:key/*", "arn:aws:kms:*:444455556666:key/*"),
    ("via_services", "ebs", "s3"),
    ("source_vpcs", "vpc-*", "vpc-9*"),
    ("source_vpces", "vpce-0def", "vpce-0abc"),
]


@pytest.mark.parametrize(("condition", "hit", "miss"), CONDITIONS)
@pytest.mark.parametrize("effect", ["allow", "deny"])
def test_each_condition_decides_when_it_matches(condition: str, hit: str, miss: str, effect: str) -> None:
    default = "deny" if effect == "allow" else "allow"
    assert one_rule(effect, condition, [hit], default).decide(facts()) == Decision(effect == "allow", "r")


@pytest.mark.parametrize(("condition", "hit", "miss"), CONDITIONS)
@pytest.mark.parametrize("effect", ["allow", "deny"])
def test_each_condition_falls_through_when_it_does_not_match(
    condition: str, hit: str, miss: str, effect: str
) -> None:
    default = "deny" if effect == "allow" else "allow"
    decision = one_rule(effect, condition, [miss], default).decide(facts())
    assert decision == Decision(effect != "allow", "default")


def test_any_pattern_of_a_condition_matches() -> None:
    policy = one_rule("allow", "operations", ["Decrypt", "Encrypt"], "deny")
    assert policy.decide(facts(kmsOperation="Encrypt")).allowed
    assert policy.decide(facts(kmsOperation="Decrypt")).allowed
    assert not policy.decide(facts(kmsOperation="ReEncrypt")).allowed


def test_every_listed_condition_must_match() -> None:
    policy = Policy.parse(
        'default = "deny"\n[[rule]]\nname = "both"\neffect = "allow"\n'
        'keys = ["root-kek-*"]\nvia_services = ["ebs"]\n'
    )
    assert policy.decide(facts()) == Decision(True, "both")
    assert policy.decide(facts(kmsViaService="s3")) == Decision(False, "default")
    assert policy.decide(facts(key_id="other-1")) == Decision(False, "default")


def test_a_rule_without_conditions_matches_everything() -> None:
    policy = Policy.parse('[[rule]]\nname = "deny-all"\neffect = "deny"\n')
    assert policy.decide(facts()) == Decision(False, "deny-all")
    assert policy.decide(RequestFacts(prefix="", key_id="k", metadata={})) == Decision(False, "deny-all")


RULE_ALLOW_EBS = '[[rule]]\nname = "allow-ebs"\neffect = "allow"\nvia_services = ["ebs"]\n'
RULE_DENY_ACCOUNT = (
    '[[rule]]\nname = "deny-acct"\neffect = "deny"\nprincipals = ["arn:aws:iam::111122223333:*"]\n'
)
RULE_DENY_S3 = '[[rule]]\nname = "deny-s3"\neffect = "deny"\nvia_services = ["s3"]\n'


def test_first_match_wins_allow_before_deny() -> None:
    policy = Policy.parse(RULE_DENY_S3 + RULE_ALLOW_EBS + RULE_DENY_ACCOUNT)
    assert policy.decide(facts()) == Decision(True, "allow-ebs")
    assert [r.name for r in policy.rules] == ["deny-s3", "allow-ebs", "deny-acct"]


def test_first_match_wins_deny_before_allow() -> None:
    policy = Policy.parse(RULE_DENY_ACCOUNT + RULE_ALLOW_EBS)
    assert policy.decide(facts()) == Decision(False, "deny-acct")
    # The later allow still decides for requests the deny does not cover.
    other = facts(awsPrincipalArn="arn:aws:iam::444455556666:role/x")
    assert policy.decide(other) == Decision(True, "allow-ebs")


def test_default_deny_and_default_allow() -> None:
    assert Policy.parse('default = "deny"\n' + RULE_DENY_S3).decide(facts()) == Decision(False, "default")
    assert Policy.parse('default = "allow"\n' + RULE_DENY_S3).decide(facts()) == Decision(True, "default")
    assert Policy.parse(RULE_DENY_S3).default_allow is True  # absent means allow
    assert Policy.parse("").decide(facts()) == Decision(True, "default")
    assert ALLOW_ALL.rules == () and ALLOW_ALL.decide(facts()) == Decision(True, "default")


def test_missing_via_service_never_matches_a_via_services_rule() -> None:
    no_via = RequestFacts("/p", "root-kek-1", {k: v for k, v in METADATA.items() if k != "kmsViaService"})
    # Not even a match-anything pattern, and not for a deny either.
    assert one_rule("allow", "via_services", ["*"], "deny").decide(no_via) == Decision(False, "default")
    assert one_rule("deny", "via_services", ["*"], "allow").decide(no_via) == Decision(True, "default")
    assert one_rule("allow", "via_services", ["*"], "deny").decide(facts()) == Decision(True, "r")


def test_missing_metadata_for_each_field_never_matches() -> None:
    empty = RequestFacts("/p", "k", {})
    for condition, *_ in CONDITIONS[2:]:
        assert not one_rule("allow", condition, ["*"], "deny").decide(empty).allowed, condition


def test_a_non_string_metadata_value_is_treated_as_missing() -> None:
    odd = RequestFacts("/p", "k", {"kmsViaService": 7})  # type: ignore[dict-item]
    assert one_rule("allow", "via_services", ["*"], "deny").decide(odd) == Decision(False, "default")


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("GenerateDataKey*", "GenerateDataKeyWithoutPlaintext", True),
        ("GenerateDataKey*", "GenerateDataKey", True),
        ("GenerateDataKey*", "Encrypt", False),
        ("Encrypt", "ReEncrypt", False),  # anchored at both ends, not a substring search
        ("*Encrypt", "ReEncrypt", True),
        ("Decryp?", "Decrypt", True),
        ("Decryp?", "Decrypts", False),
        ("[DE]*crypt", "Decrypt", True),
        ("[DE]*crypt", "ReEncrypt", False),
        ("*", "anything", True),
    ],
)
def test_glob_patterns(pattern: str, value: str, matches: bool) -> None:
    policy = one_rule("allow", "operations", [pattern], "deny")
    assert policy.decide(facts(kmsOperation=value)).allowed is matches


@pytest.mark.parametrize(
    ("condition", "wrong_case", "right_case"),
    [
        ("operations", "encrypt", "Encrypt"),
        ("via_services", "EBS", "ebs"),
        ("principals", "ARN:aws:iam::*", "arn:aws:iam::*"),
        ("source_vpcs", "VPC-*", "vpc-*"),
    ],
)
def test_patterns_are_case_sensitive(condition: str, wrong_case: str, right_case: str) -> None:
    assert one_rule("allow", condition, [wrong_case], "deny").decide(facts()) == Decision(False, "default")
    assert one_rule("allow", condition, [right_case], "deny").decide(facts()) == Decision(True, "r")


def test_case_sensitivity_of_uri_values() -> None:
    assert not one_rule("allow", "keys", ["ROOT-KEK-*"], "deny").decide(facts()).allowed
    assert one_rule("allow", "keys", ["root-kek-*"], "deny").decide(facts()).allowed
    assert not one_rule("allow", "prefixes", ["/Crypto/*"], "deny").decide(facts()).allowed
    assert one_rule("allow", "prefixes", ["/crypto/*"], "deny").decide(facts()).allowed


def rule(body: str, name: str = "r1") -> str:
    return f'[[rule]]\nname = "{name}"\neffect = "allow"\n{body}'


# file text, substrings the message must contain (beside the path)
INVALID = [
    ('defualt = "deny"\n', ["top-level", "'defualt'"]),
    ('default = "SECRET"\n', ['"default"']),
    ("default = 1\n", ['"default"']),
    ("rule = 5\n", ['"rule"']),
    ("rule = [1]\n", ["rule #1", "table"]),
    ('[[rule]]\neffect = "allow"\n', ["rule #1", '"name"']),
    ('[[rule]]\nname = 5\neffect = "allow"\n', ["rule #1", '"name"']),
    ('[[rule]]\nname = ""\neffect = "allow"\n', ["rule #1", '"name"']),
    (f'[[rule]]\nname = "{"n" * 65}"\neffect = "allow"\n', ["rule #1", '"name"']),
    ('[[rule]]\nname = "a\\tb"\neffect = "allow"\n', ["rule #1", '"name"']),
    ('[[rule]]\nname = "default"\neffect = "allow"\n', ["rule #1", '"name"', "reserved"]),
    (rule("") + rule("", name="r2") + rule("", name="r2"), ['rule #3 ("r2")', '"name"', "duplicate"]),
    (rule('operation = ["SECRET"]\n'), ['rule #1 ("r1")', "'operation'"]),
    ('[[rule]]\nname = "r1"\nkeys = ["k"]\n', ['rule #1 ("r1")', '"effect"']),
    ('[[rule]]\nname = "r1"\neffect = "SECRET"\n', ['rule #1 ("r1")', '"effect"']),
    ('[[rule]]\nname = "r1"\neffect = true\n', ['rule #1 ("r1")', '"effect"']),
    (rule('keys = "SECRET-*"\n'), ['rule #1 ("r1")', '"keys"', "list of strings"]),
    (rule('principals = ["SECRET", 1]\n'), ['rule #1 ("r1")', '"principals"', "list of strings"]),
    (rule("via_services = []\n"), ['rule #1 ("r1")', '"via_services"', "empty"]),
    (rule("") + rule("source_vpces = []\n", name="r2"), ['rule #2 ("r2")', '"source_vpces"', "empty"]),
    ('default = "SECRET\n', ["not valid TOML"]),
]


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_invalid_files_name_the_file_rule_and_key(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        Policy.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message
    assert "SECRET" not in message


def test_parse_names_the_given_source() -> None:
    with pytest.raises(PolicyError, match=r"^inline: unknown top-level"):
        Policy.parse("x = 1\n", source="inline")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        Policy.load(tmp_path / "absent.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'default = "\xff"\n')
    with pytest.raises(PolicyError, match="not valid UTF-8"):
        Policy.load(binary)


def test_valid_file_loads_every_condition(tmp_path: Path) -> None:
    body = "".join(f'{condition} = ["{hit}"]\n' for condition, hit, _ in CONDITIONS)
    path = tmp_path / "policy.toml"
    path.write_text('default = "deny"\n' + rule(body, name="everything"))
    policy = Policy.load(path)
    assert [c for c, _ in policy.rules[0].conditions] == [c for c, *_ in CONDITIONS]
    assert policy.decide(facts()) == Decision(True, "everything")
    assert policy.decide(facts(awsSourceVpce="vpce-other")) == Decision(False, "default")


@pytest.mark.parametrize(
    ("decision", "text"),
    [
        (Decision(True, "ebs-only"), 'allowed by rule "ebs-only"'),
        (Decision(False, "ebs-only"), 'denied by rule "ebs-only"'),
        (Decision(True, "default"), "allowed by default"),
        (Decision(False, "default"), "denied by default"),
    ],
)
def test_decision_describe(decision: Decision, text: str) -> None:
    assert decision.describe() == text


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


ALLOW = 'default = "allow"\n'
DENY = 'default = "deny"\n'
BROKEN = 'default = "nope"\n'


def write(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def policy_file(tmp_path: Path) -> tuple[Path, FakeClock, PolicyFile]:
    path = tmp_path / "policy.toml"
    write(path, ALLOW, 1_000_000_000)
    clock = FakeClock()
    return path, clock, PolicyFile(path, check_interval_s=5.0, clock=clock)


def test_policy_file_reloads_after_the_interval(policy_file: tuple[Path, FakeClock, PolicyFile]) -> None:
    path, clock, pf = policy_file
    assert pf.decide(facts()) == Decision(True, "default")
    write(path, DENY, 2_000_000_000)
    clock.now += 4.9
    assert pf.decide(facts()).allowed  # not checked yet
    clock.now += 0.2
    assert pf.decide(facts()) == Decision(False, "default")


def test_policy_file_notices_same_size_by_mtime(policy_file: tuple[Path, FakeClock, PolicyFile]) -> None:
    path, clock, pf = policy_file
    same_size = 'default = "deny" \n'
    assert len(same_size) == len(ALLOW)
    write(path, same_size, 1_000_000_000)  # same size, same mtime: not seen as a change
    clock.now += 10
    assert pf.current().default_allow is True
    os.utime(path, ns=(3_000_000_000, 3_000_000_000))
    clock.now += 10
    assert pf.current().default_allow is False


def test_policy_file_keeps_old_policy_and_logs_once_on_bad_reload(
    policy_file: tuple[Path, FakeClock, PolicyFile], caplog: pytest.LogCaptureFixture
) -> None:
    path, clock, pf = policy_file
    old = pf.current()
    write(path, BROKEN, 2_000_000_000)
    with caplog.at_level(logging.ERROR, logger="xks_frontend.policy"):
        for _ in range(3):
            clock.now += 10
            assert pf.current() is old
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].name == "xks_frontend.policy"
    assert str(path) in errors[0].getMessage() and '"default"' in errors[0].getMessage()
    # A further bad version is reported again; then a good one takes effect.
    write(path, BROKEN + "# still broken\n", 3_000_000_000)
    clock.now += 10
    with caplog.at_level(logging.ERROR, logger="xks_frontend.policy"):
        assert pf.current() is old
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2
    write(path, DENY, 4_000_000_000)
    clock.now += 10
    assert pf.decide(facts()) == Decision(False, "default")


def test_policy_file_keeps_old_policy_when_file_disappears(
    policy_file: tuple[Path, FakeClock, PolicyFile], caplog: pytest.LogCaptureFixture
) -> None:
    path, clock, pf = policy_file
    path.unlink()
    with caplog.at_level(logging.ERROR, logger="xks_frontend.policy"):
        for _ in range(2):
            clock.now += 10
            assert pf.decide(facts()) == Decision(True, "default")
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    assert "cannot read policy file" in caplog.records[0].getMessage()


def test_policy_file_bad_first_load_raises(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(BROKEN)
    with pytest.raises(PolicyError, match='"default"'):
        PolicyFile(path)
    with pytest.raises(PolicyError, match="cannot read policy file"):
        PolicyFile(tmp_path / "absent.toml")
