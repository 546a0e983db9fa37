"""The checks AWS KMS makes on a key policy document before it stores it (CreateKey, PutKeyPolicy), and
the default key policy it writes when CreateKey gets none. Pure: text in, MalformedPolicyDocumentException
out.

This KMS stores key policies and returns them; it does not evaluate them on calls (README, KMS emulator).
What it does check is what AWS checks on the document itself:

- at most 32 KiB (the model allows 131,072 characters; AWS's key policy quota is 32,768 bytes);
- JSON whose top level has only Version (2012-10-17 or 2008-10-17), Id and Statement;
- each statement: Effect Allow or Deny; Principal or NotPrincipal; Action or NotAction; Resource "*"
  (the only value AWS accepts in a key policy); nothing else but Sid and Condition; Sids unique;
- principals AWS can name: "*", an account id, an IAM or STS ARN, a service principal;
- the lockout safety check, unless BypassPolicyLockoutSafetyCheck: an unconditional Allow must let the
  caller (or its account's root, which delegates to IAM) call PutKeyPolicy again, and no unconditional
  Deny may take it away.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from typing import Any

from kms_emulator.errors import KmsError

MAX_POLICY_BYTES = 32768
POLICY_NAME = "default"
VERSIONS = ("2012-10-17", "2008-10-17")
_TOP_LEVEL = frozenset({"Version", "Id", "Statement"})
_STATEMENT = frozenset(
    {
        "Sid",
        "Effect",
        "Principal",
        "NotPrincipal",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
    }
)
_PRINCIPAL_KINDS = frozenset({"AWS", "Service", "Federated", "CanonicalUser"})
_AWS_PRINCIPAL = re.compile(r"\*|[0-9]{12}|arn:aws[a-z-]*:(iam|sts)::[0-9]{12}:(root|[a-z-]+/[\w+=,.@/-]+)")
_SERVICE_PRINCIPAL = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)+|\*")
LOCKOUT = "The new key policy will not allow you to update the key policy in the future."
INVALID_PRINCIPALS = "Policy contains a statement with one or more invalid principals."


def malformed(message: str) -> KmsError:
    return KmsError.named("MalformedPolicyDocumentException", message)


def default_policy(account_id: str) -> str:
    """The key policy AWS writes for CreateKey without Policy, laid out as GetKeyPolicy returns it."""
    return (
        "{\n"
        '  "Version" : "2012-10-17",\n'
        '  "Id" : "key-default-1",\n'
        '  "Statement" : [ {\n'
        '    "Sid" : "Enable IAM User Permissions",\n'
        '    "Effect" : "Allow",\n'
        '    "Principal" : {\n'
        f'      "AWS" : "arn:aws:iam::{account_id}:root"\n'
        "    },\n"
        '    "Action" : "kms:*",\n'
        '    "Resource" : "*"\n'
        "  } ]\n"
        "}"
    )


def check(text: str, *, caller_arn: str, account_id: str, bypass_lockout_check: bool) -> None:
    if len(text.encode("utf-8")) > MAX_POLICY_BYTES:
        raise malformed(f"The key policy is larger than the {MAX_POLICY_BYTES}-byte limit.")
    try:
        document = json.loads(text)
    except ValueError:
        raise malformed("The key policy is not valid JSON.") from None
    if not isinstance(document, dict):
        raise malformed("The key policy must be a JSON object.")
    unknown = sorted(set(document) - _TOP_LEVEL)
    if unknown:
        raise malformed(f"The key policy has an unknown element: {unknown[0]}.")
    if "Version" in document and document["Version"] not in VERSIONS:
        raise malformed(f"The policy Version must be one of {', '.join(VERSIONS)}.")
    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        raise malformed("The key policy must have at least one Statement.")
    sids: set[str] = set()
    for statement in statements:
        _check_statement(statement, sids)
    if not bypass_lockout_check and not _keeps_put_key_policy(statements, caller_arn, account_id):
        raise malformed(LOCKOUT)


def _check_statement(statement: Any, sids: set[str]) -> None:
    if not isinstance(statement, dict):
        raise malformed("Each policy Statement must be a JSON object.")
    unknown = sorted(set(statement) - _STATEMENT)
    if unknown:
        raise malformed(f"A policy statement has an unknown element: {unknown[0]}.")
    sid = statement.get("Sid")
    if sid is not None:
        if not isinstance(sid, str):
            raise malformed("A statement's Sid must be a string.")
        if sid in sids:
            raise malformed(f"Statement IDs (SID) in a single policy must be unique: {sid}.")
        sids.add(sid)
    if statement.get("Effect") not in ("Allow", "Deny"):
        raise malformed("A statement's Effect must be Allow or Deny.")
    _exactly_one(statement, "Principal", "NotPrincipal")
    _exactly_one(statement, "Action", "NotAction")
    if "NotResource" in statement or _strings(statement.get("Resource"), "Resource") != ["*"]:
        raise malformed('The only Resource a key policy accepts is "*".')
    _strings(statement.get("Action", statement.get("NotAction")), "Action")
    _check_principal(statement.get("Principal", statement.get("NotPrincipal")))
    condition = statement.get("Condition")
    if condition is not None and not isinstance(condition, dict):
        raise malformed("A statement's Condition must be a JSON object.")


def _exactly_one(statement: dict[str, Any], element: str, negated: str) -> None:
    if (element in statement) == (negated in statement):
        raise malformed(f"Each statement must have exactly one of {element} and {negated}.")


def _strings(value: Any, element: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise malformed(f"A statement's {element} must be a string or a list of strings.")
    return values


def _check_principal(principal: Any) -> None:
    if principal == "*":
        return
    if not isinstance(principal, dict) or not principal or not set(principal) <= _PRINCIPAL_KINDS:
        raise malformed(INVALID_PRINCIPALS)
    for kind, value in principal.items():
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise malformed(INVALID_PRINCIPALS)
        pattern = {"AWS": _AWS_PRINCIPAL, "Service": _SERVICE_PRINCIPAL}.get(kind)
        if pattern is not None and not all(pattern.fullmatch(n) for n in names):
            raise malformed(INVALID_PRINCIPALS)


def _names_caller(statement: dict[str, Any], caller_arn: str, account_id: str) -> bool:
    principal = statement.get("Principal")
    if principal is None:  # NotPrincipal: the caller is covered unless it is listed
        return not _names_caller({"Principal": statement["NotPrincipal"]}, caller_arn, account_id)
    if principal == "*":
        return True
    value = principal.get("AWS", [])
    names = [value] if isinstance(value, str) else value
    covering = {"*", caller_arn, account_id, f"arn:aws:iam::{account_id}:root"}
    return any(name in covering for name in names)


def _covers_put_key_policy(statement: dict[str, Any]) -> bool:
    action = "kms:putkeypolicy"
    if "Action" in statement:
        return any(fnmatchcase(action, a.lower()) for a in _strings(statement["Action"], "Action"))
    return not any(fnmatchcase(action, a.lower()) for a in _strings(statement["NotAction"], "Action"))


def _keeps_put_key_policy(statements: list[dict[str, Any]], caller_arn: str, account_id: str) -> bool:
    """The lockout safety check. Conditions cannot be evaluated here, so a conditional Allow does not
    count and a conditional Deny does not block (the stricter reading for the first, AWS's
    "may" for the second)."""
    relevant = [
        s
        for s in statements
        if "Condition" not in s and _names_caller(s, caller_arn, account_id) and _covers_put_key_policy(s)
    ]
    return any(s["Effect"] == "Allow" for s in relevant) and not any(s["Effect"] == "Deny" for s in relevant)
