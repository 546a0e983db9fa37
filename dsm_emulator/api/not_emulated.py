"""What Fortanix DSM offers and xkslab does not: one table of routes, each answering 501 in the Fortanix
error shape with the feature it belongs to, so that a client reaching for one learns that the lab lacks
it instead of getting a 404 that reads like a typo. A route here is authenticated like any other (an
anonymous caller still gets 401) unless Fortanix itself serves it before login.

A feature that gets built leaves this table; the route then belongs to its own module."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from dsm_emulator.errors import Unsupported
from dsm_emulator.models import is_uuid

PLUGINS = "plugins"
STATS = "usage statistics"
TWO_FACTOR = "two-factor authentication (U2F, FIDO2, recovery codes)"
HMG = "hardware security module gateways (HMG, external key vaults)"
ATTESTATION = "key attestation"
PRIVATE_KEY = "removing the private part of an asymmetric key"
LDAP = "LDAP and single sign-on logins"
SIGN_UP = "self sign-up by e-mail (an account administrator invites users, with a password, instead)"
PASSWORD_RESET = "password reset by e-mail (a user changes their password with the current one instead)"
INVITATION_MAIL = "invitation e-mails (an invited user can log in at once)"
EMAIL_CONFIRMATION = "e-mail confirmation"
SYSTEM_ADMIN = (
    "system administration (creating and deleting accounts): the lab has one account per data directory"
)
CHILD_ACCOUNTS = "child accounts (the lab has one account per data directory)"
AWS_KMS_KEYS = "keys backed by AWS KMS through a group's HMG (deletion schedules, key material)"
STREAMING = "streaming encryption and decryption (/crypto/v1/stream)"
OBJECT_DIGEST = "digests of a security object's value"
# Not a route of its own: POST /sys/v1/session/auth with an app id and no secret, over mutual TLS.
CERTIFICATE_LOGIN = "app certificate logins (mutual TLS)"


@dataclass(frozen=True)
class NotEmulated:
    """One route of Fortanix DSM that xkslab answers with 501. ``operation`` is the sdkms SDK's method
    (the OpenAPI operationId); ``public`` marks a route Fortanix serves before login."""

    method: str
    path: str
    feature: str
    operation: str
    public: bool = False

    @property
    def message(self) -> str:
        return f"xkslab does not emulate {self.feature} ({self.method} {self.path})"


def not_emulated_message(feature: str) -> str:
    """The answer for a feature the lab lacks that is reached through a route it does serve."""
    return f"xkslab does not emulate {feature}"


NOT_EMULATED: tuple[NotEmulated, ...] = (
    NotEmulated("POST", "/sys/v1/plugins", PLUGINS, "createPlugin"),
    NotEmulated("GET", "/sys/v1/plugins/{plugin_id}", PLUGINS, "getPlugin"),
    NotEmulated("PATCH", "/sys/v1/plugins/{plugin_id}", PLUGINS, "updatePlugin"),
    NotEmulated("DELETE", "/sys/v1/plugins/{plugin_id}", PLUGINS, "deletePlugin"),
    NotEmulated("POST", "/sys/v1/plugins/{plugin_id}", PLUGINS, "invokePlugin"),
    NotEmulated("GET", "/sys/v1/plugins/invoke/{plugin_id}", PLUGINS, "invokePluginByGet"),
    NotEmulated("GET", "/sys/v1/stats/apps", STATS, "getAllAppsStats"),
    NotEmulated("GET", "/sys/v1/stats/groups", STATS, "getAllGroupsStats"),
    NotEmulated("GET", "/sys/v1/stats/{app_id}/app", STATS, "getAppStats"),
    NotEmulated("GET", "/sys/v1/stats/{group_id}/group", STATS, "getGroupStats"),
    NotEmulated("GET", "/sys/v1/stats/{kid}/key", STATS, "getSobjectStats"),
    NotEmulated("POST", "/sys/v1/session/auth/2fa/u2f", TWO_FACTOR, "u2fAuth"),
    NotEmulated("POST", "/sys/v1/session/auth/2fa/recovery_code", TWO_FACTOR, "recoveryCodeAuth"),
    NotEmulated("POST", "/sys/v1/session/config_2fa/auth", TWO_FACTOR, "unlock2F"),
    NotEmulated("POST", "/sys/v1/session/config_2fa/new_challenge", TWO_FACTOR, "u2fNewChallenge"),
    NotEmulated("POST", "/sys/v1/session/config_2fa/terminate", TWO_FACTOR, "lock2F"),
    NotEmulated("POST", "/sys/v1/users/generate_recovery_code", TWO_FACTOR, "generateRecoveryCodes"),
    NotEmulated("POST", "/sys/v1/groups/hmg/azure_vaults", HMG, "azureVaults"),
    NotEmulated("POST", "/sys/v1/groups/hmg/check", HMG, "checkHmg"),
    NotEmulated("POST", "/sys/v1/groups/{group_id}/hmg/check", HMG, "checkGroupHmg"),
    NotEmulated("POST", "/sys/v1/groups/{group_id}/hmg/scan", HMG, "scanHmg"),
    NotEmulated("POST", "/crypto/v1/keys/key_attestation", ATTESTATION, "getKeyAttestation"),
    NotEmulated("DELETE", "/crypto/v1/keys/{kid}/private", PRIVATE_KEY, "deletePrivateKey"),
    NotEmulated("POST", "/sys/v1/users", SIGN_UP, "createUser", public=True),
    NotEmulated("POST", "/sys/v1/users/forgot_password", PASSWORD_RESET, "forgotPassword", public=True),
    NotEmulated("POST", "/sys/v1/users/{user_id}/reset_password", PASSWORD_RESET, "resetPassword"),
    NotEmulated(
        "POST", "/sys/v1/users/{user_id}/validate_token", PASSWORD_RESET, "validatePasswordResetToken"
    ),
    NotEmulated("POST", "/sys/v1/users/process_invite", INVITATION_MAIL, "processInvitations"),
    NotEmulated("POST", "/sys/v1/users/{user_id}/resend_invite", INVITATION_MAIL, "resendInvitation"),
    NotEmulated("POST", "/sys/v1/users/{user_id}/confirm_email", EMAIL_CONFIRMATION, "confirmEmail"),
    NotEmulated(
        "POST", "/sys/v1/users/{user_id}/resend_confirm_email", EMAIL_CONFIRMATION, "resendConfirmEmail"
    ),
    NotEmulated("POST", "/sys/v1/accounts", SYSTEM_ADMIN, "createAccount"),
    NotEmulated("DELETE", "/sys/v1/accounts/{acct_id}", SYSTEM_ADMIN, "deleteAccount"),
    NotEmulated("POST", "/sys/v1/accounts/child", CHILD_ACCOUNTS, "createChildAccount"),
    NotEmulated("GET", "/sys/v1/accounts/{acct_id}/child", CHILD_ACCOUNTS, "getChildAccounts"),
    NotEmulated("POST", "/sys/v1/users/child_account", CHILD_ACCOUNTS, "createChildAccountUser"),
    NotEmulated("GET", "/sys/v1/users/child_account/{user_id}", CHILD_ACCOUNTS, "getChildAccountUser"),
    NotEmulated("PATCH", "/sys/v1/users/child_account/{user_id}", CHILD_ACCOUNTS, "updateChildAccountUser"),
    NotEmulated("DELETE", "/sys/v1/users/child_account/{user_id}", CHILD_ACCOUNTS, "deleteChildAccountUser"),
    NotEmulated(
        "GET", "/sys/v1/users/child_account/{acct_id}/all", CHILD_ACCOUNTS, "getAllChildAccountUsers"
    ),
    NotEmulated("POST", "/crypto/v1/keys/{kid}/schedule_deletion", AWS_KMS_KEYS, "scheduleDeletion"),
    NotEmulated("POST", "/crypto/v1/keys/{kid}/cancel_deletion", AWS_KMS_KEYS, "cancelDeletion"),
    NotEmulated("POST", "/crypto/v1/keys/{kid}/delete_key_material", AWS_KMS_KEYS, "deleteKeyMaterial"),
    NotEmulated("POST", "/crypto/v1/keys/{kid}/restore", AWS_KMS_KEYS, "restore"),
    NotEmulated("POST", "/crypto/v1/stream/encrypt", STREAMING, "streamEncrypt"),
    NotEmulated("POST", "/crypto/v1/stream/decrypt", STREAMING, "streamDecrypt"),
    NotEmulated("POST", "/crypto/v1/keys/digest", OBJECT_DIGEST, "getSecurityObjectDigest"),
    # sdkms-cli ldap-auth asks this before it logs in, without credentials, as Fortanix allows.
    NotEmulated("POST", "/sys/v1/session/auth/discover", LDAP, "authDiscover", public=True),
)

PUBLIC: frozenset[tuple[str, str]] = frozenset(
    (entry.method, entry.path) for entry in NOT_EMULATED if entry.public
)


def _answer(entry: NotEmulated) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise Unsupported(entry.message)

    return handler


def routes() -> list[web.RouteDef]:
    return [web.route(entry.method, entry.path, _answer(entry)) for entry in NOT_EMULATED]


def is_certificate_login(header: str) -> bool:
    """``Basic base64(app_id:)``: an app id and no secret is how a client asks for a login by its TLS
    client certificate. Judged on the header alone, so the answer says nothing of whether the app exists."""
    try:
        text = base64.b64decode(header.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return False
    app_id, sep, secret = text.partition(":")
    return bool(sep) and not secret and is_uuid(app_id)
