"""OpenAPI shapes of the users and accounts routes (dsm_emulator.api.users), beside the DSM document's
other paths (the e-mail flows and account creation are in the not-emulated table's)."""

from __future__ import annotations

from typing import Any, Protocol

from xkslab_shared.openapi import Schema, array, nullable, obj, ref, string


class OperationBuilder(Protocol):
    def __call__(
        self, name: str, response: Schema | None, request: Schema | None = None, *, summary: str = ""
    ) -> dict[str, Any]: ...


USER_SCHEMA = obj(
    ["user_id", "user_email", "account_role"],
    user_id=string(),
    user_email=string(),
    first_name=nullable(string()),
    last_name=nullable(string()),
    account_role=array(string()),
)


def user_paths(op: OperationBuilder) -> dict[str, dict[str, Any]]:
    """UsersApi and AccountsApi (dsm_emulator.api.users)."""
    user_body = obj(first_name=string(), last_name=string(), account_role=array(string()))
    invite = obj(
        ["user_email", "user_password"],
        user_email=string(),
        user_password=string(),
        **user_body["properties"],
    )
    password = obj(["current_password", "new_password"], current_password=string(), new_password=string())
    account_body = obj(name=string(), description=string(), enabled={"type": "boolean"})
    return {
        "/sys/v1/users": {
            "get": op("listUsers", array(ref("User"))),
            "delete": op("deleteOwnUser", None),
        },
        "/sys/v1/users/{user_id}": {
            "get": op("getUser", ref("User")),
            "patch": op("updateUser", ref("User"), user_body),
            "delete": op("removeUser", None),
        },
        "/sys/v1/users/{user_id}/accounts": {"delete": op("removeUserFromAccount", None)},
        "/sys/v1/users/change_password": {"post": op("changePassword", None, password)},
        "/sys/v1/users/invite": {"post": op("inviteUser", ref("User"), invite)},
        "/sys/v1/accounts": {
            "get": op("listAccounts", array(ref("Account"))),
        },
        "/sys/v1/accounts/{acct_id}": {
            "get": op("getAccount", ref("Account")),
            "patch": op("updateAccount", ref("Account"), account_body),
        },
    }
