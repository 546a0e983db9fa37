"""Reading a request body against the model's constraints, with AWS's own error wording.

A member of the wrong JSON type is a SerializationException (the body does not deserialise into the
operation's shape); a value that breaks a length, range, pattern or enum constraint, or a missing
required member, is a ValidationException worded as AWS words it::

    1 validation error detected: Value 'x' at 'xksProxyUriPath' failed to satisfy constraint: ...

Values of sensitive members (secrets, plaintext) are never echoed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import Any

from kms_emulator.errors import SerializationError, ValidationError

KEY_ID_MAX = 2048


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def constraint_error(
    path: str, value: object, constraint: str, *, sensitive: bool = False
) -> ValidationError:
    shown = "null" if value is None else ("'***'" if sensitive else f"'{value}'")
    return ValidationError(
        f"1 validation error detected: Value {shown} at '{path}' failed to satisfy constraint: {constraint}"
    )


class Params:
    """One JSON object of a request (the body, or a nested structure), read member by member."""

    def __init__(self, body: dict[str, Any], path: str = "") -> None:
        self._body = body
        self._path = path

    def _where(self, name: str) -> str:
        return f"{self._path}.{_camel(name)}" if self._path else _camel(name)

    def _get(self, name: str, required: bool) -> Any:
        value = self._body.get(name)
        if value is None and required:
            raise constraint_error(self._where(name), None, "Member must not be null")
        return value

    def has(self, name: str) -> bool:
        return self._body.get(name) is not None

    def string(
        self,
        name: str,
        *,
        required: bool = False,
        min_len: int | None = None,
        max_len: int | None = None,
        pattern: str | None = None,
        enum: Iterable[str] | None = None,
        sensitive: bool = False,
    ) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        where = self._where(name)
        if not isinstance(value, str):
            raise SerializationError(f"{where}: expected a string")
        if min_len is not None and len(value) < min_len:
            raise constraint_error(
                where,
                value,
                f"Member must have length greater than or equal to {min_len}",
                sensitive=sensitive,
            )
        if max_len is not None and len(value) > max_len:
            raise constraint_error(
                where, value, f"Member must have length less than or equal to {max_len}", sensitive=sensitive
            )
        if pattern is not None and re.fullmatch(pattern, value) is None:
            raise constraint_error(
                where,
                value,
                f"Member must satisfy regular expression pattern: {pattern}",
                sensitive=sensitive,
            )
        if enum is not None:
            choices = list(enum)
            if value not in choices:
                raise constraint_error(
                    where, value, f"Member must satisfy enum value set: [{', '.join(choices)}]"
                )
        return value

    def key_id(self, name: str = "KeyId", *, required: bool = True) -> str | None:
        return self.string(name, required=required, min_len=1, max_len=KEY_ID_MAX)

    def integer(
        self, name: str, *, required: bool = False, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        value = self._get(name, required)
        if value is None:
            return None
        where = self._where(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SerializationError(f"{where}: expected an integer")
        if minimum is not None and value < minimum:
            raise constraint_error(where, value, f"Member must have value greater than or equal to {minimum}")
        if maximum is not None and value > maximum:
            raise constraint_error(where, value, f"Member must have value less than or equal to {maximum}")
        return value

    def boolean(self, name: str) -> bool | None:
        value = self._get(name, False)
        if value is not None and not isinstance(value, bool):
            raise SerializationError(f"{self._where(name)}: expected a boolean")
        return value

    def blob(self, name: str, *, required: bool = False, max_len: int | None = None) -> bytes | None:
        value = self._get(name, required)
        if value is None:
            return None
        where = self._where(name)
        if not isinstance(value, str):
            raise SerializationError(f"{where}: expected a Base64 string")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise SerializationError(f"{where}: not valid Base64") from None
        if not data:
            raise constraint_error(where, None, "Member must have length greater than or equal to 1")
        if max_len is not None and len(data) > max_len:
            raise constraint_error(
                where, "***", f"Member must have length less than or equal to {max_len}", sensitive=True
            )
        return data

    def struct(self, name: str, *, required: bool = False) -> Params | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise SerializationError(f"{self._where(name)}: expected an object")
        return Params(value, self._where(name))

    def string_map(self, name: str) -> dict[str, str] | None:
        """An EncryptionContext: a map of strings to strings."""
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise SerializationError(f"{self._where(name)}: expected a map of strings to strings")
        return dict(value)

    def string_list(self, name: str, *, required: bool = False) -> list[str] | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SerializationError(f"{self._where(name)}: expected a list of strings")
        return list(value)

    def struct_list(self, name: str, *, required: bool = False) -> list[Params] | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise SerializationError(f"{self._where(name)}: expected a list of objects")
        return [Params(v, f"{self._where(name)}.{i + 1}.member") for i, v in enumerate(value)]

    def limit(self, *, default: int, maximum: int) -> int:
        return self.integer("Limit", minimum=1, maximum=maximum) or default

    def marker(self) -> str | None:
        return self.string("Marker", min_len=1, max_len=1024, pattern=r"[\u0020-\u00FF]*")
