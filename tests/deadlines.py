"""Generous deadlines for the labs tests start, where timing is not what a test checks.

A shared 2-core machine stalls for longer than the production budgets (KMS gives the proxy 250 ms, the
proxy gives the key manager 200 ms), and a request that outlives one is answered as a timeout, failing a
test about something else. Tests about the timing itself set their own values, and say so."""

from __future__ import annotations

from xkslab_shared.config import env_var

GENEROUS: dict[str, str] = {"xks.dsm_timeout_ms": "5000", "kms.xks_timeout_ms": "10000"}


def set_args() -> list[str]:
    """``--set name=value`` for each, for an ``xkslab`` command line."""
    return [arg for name, value in GENEROUS.items() for arg in ("--set", f"{name}={value}")]


def environ() -> dict[str, str]:
    """The same as environment variables, for a lab that a script or another pytest starts."""
    return {env_var(name): value for name, value in GENEROUS.items()}
