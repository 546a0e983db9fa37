"""Accounts, users, groups and apps: the administrative side of the key manager.

Every mutation commits together with its ADMINISTRATIVE audit row (``AuditLog.apply``), and a refused
mutation is audited as refused (``AuditEvent.refused``). Logins (users and apps) are AUTH events, success
and failure alike. Reads are not audited, except ``get_credential``: it shows a secret, so who looked is
recorded.

Who may do what:

* managing groups and apps, and reading credentials, needs ``principal.is_admin`` (an account
  administrator, or the local operator through the CLI); anyone else gets AccessDenied;
* any user of the account may read its groups and apps; an app sees only the groups it belongs to and
  itself (anything else is "does not exist", like objects outside its groups).

Credentials: a ``secret`` app keeps a keyed hash of its secret (HMAC-SHA256 under a key derived from the
keyring; an older scrypt row is rewritten at its next successful login), the only thing logins check, and,
sealed by the keyring under ``b"secret|" + app_id``, a copy shown to administrators by
``get_credential`` (sdkms-cli's ``get-app-api-key`` needs it back, as with real DSM). An ``awsxks`` app
keeps its access key id in clear (an identifier) and its SigV4 secret sealed under
``b"awsxks|" + app_id + b"|" + access_key_id``; a reset keeps the old pair as ``previous`` so that the
XKS proxy can be reconfigured without downtime. User passwords are scrypt hashes only.

scrypt (passwords) costs tens of milliseconds of CPU; it runs in a worker thread, never on the event
loop. Failed logins are limited per identity and client address (``dsm_emulator.logins``): past the
limit a login is refused with 429 before any look-up or hashing, and a burst of failures is audited as
its first row plus one summary row.

The service is one class composed of mixins, one module per concern: ``accounts`` (accounts, users,
bootstrap, user logins), ``users`` (an account's users and its own settings, as its principals see
them), ``groups``, ``apps`` (apps and their group memberships), ``credentials`` (app
credentials and app logins), on the shared core in ``base`` and the input checks in ``validation``.
"""

from __future__ import annotations

from dsm_emulator.admin.accounts import ACCOUNT_ADMINISTRATOR, ACCOUNT_ROLES, AccountsMixin
from dsm_emulator.admin.apps import AppsMixin, GroupSpec
from dsm_emulator.admin.base import INVALID_CREDENTIALS, AdminBase, now
from dsm_emulator.admin.credentials import (
    AUTH_TYPES,
    CREDENTIAL_KINDS,
    CredentialsMixin,
    awsxks_context,
    secret_context,
)
from dsm_emulator.admin.groups import GroupsMixin
from dsm_emulator.admin.users import AccountChanges, UserChanges, UsersMixin, parse_roles, person_name
from dsm_emulator.admin.validation import MAX_APP_TYPE, MAX_DESCRIPTION, MAX_EMAIL, MAX_NAME, MAX_PASSWORD

__all__ = [
    "ACCOUNT_ADMINISTRATOR",
    "ACCOUNT_ROLES",
    "AUTH_TYPES",
    "CREDENTIAL_KINDS",
    "INVALID_CREDENTIALS",
    "MAX_APP_TYPE",
    "MAX_DESCRIPTION",
    "MAX_EMAIL",
    "MAX_NAME",
    "MAX_PASSWORD",
    "AccountChanges",
    "AdminService",
    "GroupSpec",
    "UserChanges",
    "awsxks_context",
    "now",
    "parse_roles",
    "person_name",
    "secret_context",
]


class AdminService(AccountsMixin, UsersMixin, GroupsMixin, AppsMixin, CredentialsMixin, AdminBase):
    """Accounts, users, groups, apps and app credentials of the key manager (see the module docstring)."""
