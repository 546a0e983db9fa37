"""Secondary authorization (spec §1.11) of XKS key requests on their requestMetadata, from a TOML file.

Rules are tried in file order and the first that matches decides, so the statement behind every
allow or deny can be named in the 403 and the log. Never applied to GetHealthStatus (the caller skips it).
Error messages name only the file, the rule and the key: never a value, which may be an account's ARN.
"""

from __future__ import annotations

import logging
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

log = logging.getLogger("xks_frontend.policy")

# Condition key -> requestMetadata field (spec camelCase); "prefixes" and "keys" come from the URI.
METADATA_FIELDS = {
    "operations": "kmsOperation",
    "principals": "awsPrincipalArn",
    "key_arns": "kmsKeyArn",
    "via_services": "kmsViaService",
    "source_vpcs": "awsSourceVpc",
    "source_vpces": "awsSourceVpce",
}
CONDITIONS = ("prefixes", "keys", *METADATA_FIELDS)
RULE_KEYS = frozenset({"name", "effect", *CONDITIONS})
TOP_KEYS = frozenset({"default", "rule"})
EFFECTS = {"allow": True, "deny": False}
MAX_NAME = 64
DEFAULT = "default"  # Decision.rule when no rule matched; reserved, so no rule may take the name


class PolicyError(ValueError):
    """The file is unreadable or invalid; the message names the file, the rule (by index and name)
    and the key."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str  # the deciding rule's name, or "default"

    def describe(self) -> str:
        """For the AccessDeniedException message and the log: which statement decided."""
        verdict = "allowed" if self.allowed else "denied"
        return f"{verdict} by default" if self.rule == DEFAULT else f'{verdict} by rule "{self.rule}"'


@dataclass(frozen=True)
class RequestFacts:
    prefix: str  # the optional path prefix before /kms/xks/v1 ("" when none)
    key_id: str  # externalKeyId from the URI
    metadata: Mapping[str, str]  # requestMetadata as received (spec camelCase names)

    def value(self, condition: str) -> str | None:
        """The request's value for a condition key; None when absent (such a condition never matches)."""
        if condition == "prefixes":
            return self.prefix
        if condition == "keys":
            return self.key_id
        value = self.metadata.get(METADATA_FIELDS[condition])
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Rule:
    name: str
    allow: bool
    conditions: tuple[tuple[str, tuple[str, ...]], ...]  # (condition key, patterns), file order

    def matches(self, facts: RequestFacts) -> bool:
        """Every listed condition matches: the request has the field and ANY pattern matches it."""
        for condition, patterns in self.conditions:
            value = facts.value(condition)
            if value is None or not any(fnmatchcase(value, p) for p in patterns):
                return False
        return True


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    default_allow: bool

    @classmethod
    def parse(cls, text: str, source: str = "<policy>") -> Policy:
        """Parse and fully validate, so a typo fails at load rather than silently never matching."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:  # its text (line, column) stays on __cause__
            raise PolicyError(f"{source}: not valid TOML") from exc
        unknown = sorted(set(data) - TOP_KEYS)
        if unknown:
            raise PolicyError(f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))}")
        default = data.get("default", "allow")
        if not isinstance(default, str) or default not in EFFECTS:
            raise PolicyError(f'{source}: "default" must be "allow" or "deny"')
        tables = data.get("rule", [])
        if not isinstance(tables, list):
            raise PolicyError(f'{source}: "rule" must be an array of tables ([[rule]])')
        rules: list[Rule] = []
        for index, table in enumerate(tables, start=1):
            rule = _parse_rule(table, f"{source}: rule #{index}")
            if any(r.name == rule.name for r in rules):
                raise PolicyError(f'{source}: rule #{index} ("{rule.name}"): duplicate "name"')
            rules.append(rule)
        return cls(rules=tuple(rules), default_allow=EFFECTS[default])

    @classmethod
    def load(cls, path: Path) -> Policy:
        """Read and parse a policy file; an unreadable file is a PolicyError too."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise PolicyError(f"{path}: cannot read policy file ({reason})") from exc
        except UnicodeDecodeError as exc:
            raise PolicyError(f"{path}: not valid UTF-8") from exc
        return cls.parse(text, str(path))

    def decide(self, facts: RequestFacts) -> Decision:
        """First matching rule decides (firewall style); no match falls back to the default."""
        for rule in self.rules:
            if rule.matches(facts):
                return Decision(allowed=rule.allow, rule=rule.name)
        return Decision(allowed=self.default_allow, rule=DEFAULT)


def _parse_rule(table: Any, where: str) -> Rule:
    if not isinstance(table, dict):
        raise PolicyError(f"{where}: must be a table ([[rule]])")
    name = table.get("name")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or not name.isprintable():
        raise PolicyError(f'{where}: "name" is required: a printable string of 1-{MAX_NAME} characters')
    if name == DEFAULT:
        raise PolicyError(f'{where}: "name" may not be "{DEFAULT}" (reserved for the default decision)')
    where = f'{where} ("{name}")'
    unknown = sorted(set(table) - RULE_KEYS)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    effect = table.get("effect")
    if not isinstance(effect, str) or effect not in EFFECTS:
        raise PolicyError(f'{where}: "effect" is required: "allow" or "deny"')
    conditions: list[tuple[str, tuple[str, ...]]] = []
    for key in CONDITIONS:
        if key not in table:
            continue
        patterns = table[key]
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise PolicyError(f'{where}: "{key}" must be a list of strings')
        if not patterns:
            raise PolicyError(f'{where}: "{key}" is empty, so the rule could never match')
        conditions.append((key, tuple(patterns)))
    return Rule(name=name, allow=EFFECTS[effect], conditions=tuple(conditions))


ALLOW_ALL = Policy(rules=(), default_allow=True)


class PolicyFile:
    """The policy of a file, reloaded when the file changes (mtime_ns or size), checked at most once per
    `check_interval_s` seconds, so an admin's edit takes effect without a restart. A reload that fails
    keeps the previous policy and logs the error (logging.getLogger("xks_frontend.policy").error) once
    per bad version; the first load raises PolicyError (start-up must fail loudly)."""

    def __init__(
        self, path: Path, *, check_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.check_interval_s = check_interval_s
        self._clock = clock
        # Stat before reading: an edit racing the read then shows up as a change at the next check.
        self._signature = self._stat()
        self._policy = Policy.load(path)
        self._next_check = clock() + check_interval_s

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None  # a missing file is a "version" too: reported once, old policy kept
        return (st.st_mtime_ns, st.st_size)

    def current(self) -> Policy:
        """The policy in force, re-reading the file if it changed since the last check."""
        now = self._clock()
        if now < self._next_check:
            return self._policy
        self._next_check = now + self.check_interval_s
        signature = self._stat()
        if signature == self._signature:
            return self._policy
        # Remember the version even if it is bad, so it is parsed and reported only once.
        self._signature = signature
        try:
            self._policy = Policy.load(self.path)
        except PolicyError as exc:
            log.error("%s; keeping the previous policy", exc)
        else:
            log.info("%s: policy reloaded (%d rules)", self.path, len(self._policy.rules))
        return self._policy

    def decide(self, facts: RequestFacts) -> Decision:
        """Decide with the current policy (see Policy.decide)."""
        return self.current().decide(facts)
