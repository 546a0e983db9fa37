"""The lab's client environment (``aws_env`` in up.json) as text other tools read: the ``export`` lines
of the ``up`` banner and ``xkslab env``, a dotenv file, JSON, and ``$GITHUB_ENV``.

Each format quotes for its reader, so that any value (a password with a quote in it, a multi-line PEM)
reads back unchanged: shell gets POSIX single quotes, dotenv the double-quoted form with backslash
escapes that python-dotenv and docker compose read (``${...}`` in a value is left to the reader, which
may expand it), GitHub its heredoc form for multi-line values.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
from collections.abc import Mapping

__all__ = ["FORMATS", "format_env"]

FORMATS = ("shell", "dotenv", "json", "github")

# Values made of these need no quoting in any of the formats; keeping them bare keeps the banner readable.
_BARE = re.compile(r"[A-Za-z0-9_@%+=:,./-]*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def format_env(env: Mapping[str, str], fmt: str) -> str:
    """``env`` in ``fmt`` (one of FORMATS), without a trailing newline."""
    for name in env:
        # A name is never quoted by any reader, so one that is not an identifier cannot be written safely.
        if not _NAME.fullmatch(name):
            raise ValueError(f"not an environment variable name: {name!r}")
    if fmt == "json":
        return json.dumps(dict(env), indent=2, sort_keys=False)
    if fmt == "shell":
        return "\n".join(f"export {k}={_shell(v)}" for k, v in env.items())
    if fmt == "dotenv":
        return "\n".join(f"{k}={_dotenv(v)}" for k, v in env.items())
    if fmt == "github":
        return "\n".join(_github(k, v) for k, v in env.items())
    raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")


def _shell(value: str) -> str:
    return value if value and _BARE.fullmatch(value) else shlex.quote(value)


def _dotenv(value: str) -> str:
    if _BARE.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _github(name: str, value: str) -> str:
    """``K=V``, or for a value with a line break GitHub's ``K<<DELIM`` form; the delimiter is random so a
    value can never end the block early (as GitHub's own documentation advises)."""
    if "\n" not in value and "\r" not in value:
        return f"{name}={value}"
    delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
    return f"{name}<<{delimiter}\n{value}\n{delimiter}"
