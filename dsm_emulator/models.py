"""The key manager's tables. Alembic migrations in ``migrations/`` are the only way they are created.

Nothing here holds a secret in the clear: key material and ``awsxks`` secrets are keyring-sealed blobs
(they must be usable), app secrets and user passwords are salted scrypt hashes (they need only be checked).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from xkslab_shared.db import NAMING

Uuid = String(36)


def is_uuid(value: object) -> bool:
    """Whether ``value`` is a UUID string: ids from the outside are checked before they reach a query."""
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


Timestamp = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: Timestamp}


class Account(Base):
    __tablename__ = "accounts"
    acct_id: Mapped[str] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    description: Mapped[str | None] = mapped_column(Text, default=None)


class User(Base):
    __tablename__ = "users"
    user_id: Mapped[str] = mapped_column(Uuid, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime]
    last_logged_in_at: Mapped[datetime | None]
    first_name: Mapped[str | None] = mapped_column(String(200), default=None)
    last_name: Mapped[str | None] = mapped_column(String(200), default=None)


class AccountMember(Base):
    __tablename__ = "account_members"
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id", ondelete="CASCADE"), primary_key=True)
    acct_id: Mapped[str] = mapped_column(ForeignKey("accounts.acct_id", ondelete="CASCADE"), primary_key=True)
    # ACCOUNTADMINISTRATOR, ACCOUNTMEMBER, ACCOUNTAUDITOR (Fortanix UserAccountFlags)
    roles: Mapped[list[str]]


class Group(Base):
    __tablename__ = "groups"
    __table_args__ = (UniqueConstraint("acct_id", "name"),)
    group_id: Mapped[str] = mapped_column(Uuid, primary_key=True)
    acct_id: Mapped[str] = mapped_column(ForeignKey("accounts.acct_id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    creator_type: Mapped[str] = mapped_column(String(8))
    creator_id: Mapped[str] = mapped_column(Uuid)
    created_at: Mapped[datetime]
    # Fortanix's policy documents as the lab parsed them (dsm_emulator/policies.py); NULL: no policy.
    cryptographic_policy: Mapped[dict[str, Any] | None]
    key_metadata_policy: Mapped[dict[str, Any] | None]
    export_policy: Mapped[dict[str, Any] | None]
    custom_metadata: Mapped[dict[str, Any] | None]
    # The normalised GroupApprovalPolicy (dsm_emulator.approvals.policy); NULL: none.
    approval_policy: Mapped[dict[str, Any] | None]
    # The group's key custodians (approvals.policy.parse_custodian_policy); NULL: no export or import by
    # key components in this group.
    custodian_policy: Mapped[dict[str, Any] | None]
    # The undo window of its keys' history (Fortanix key_history_policy / key_undo_policy); None: no history.
    key_history_window_s: Mapped[int | None] = mapped_column(Integer)


class App(Base):
    __tablename__ = "apps"
    __table_args__ = (UniqueConstraint("acct_id", "name"),)
    app_id: Mapped[str] = mapped_column(Uuid, primary_key=True)
    acct_id: Mapped[str] = mapped_column(ForeignKey("accounts.acct_id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    app_type: Mapped[str] = mapped_column(String(64), default="default")
    # Secret or AwsXks (Fortanix OneAppAuthType)
    auth_type: Mapped[str] = mapped_column(String(16))
    default_group_id: Mapped[str | None] = mapped_column(ForeignKey("groups.group_id", ondelete="SET NULL"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    creator_type: Mapped[str] = mapped_column(String(8))
    creator_id: Mapped[str] = mapped_column(Uuid)
    created_at: Mapped[datetime]
    lastused_at: Mapped[datetime | None]


class AppGroup(Base):
    """An app's membership of a group, with the permissions it holds there."""

    __tablename__ = "app_groups"
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.app_id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[str] = mapped_column(ForeignKey("groups.group_id", ondelete="CASCADE"), primary_key=True)
    permissions: Mapped[list[str]]


class AppCredential(Base):
    """One credential of an app. ``secret`` credentials keep only a slow hash; ``awsxks`` credentials keep
    the SigV4 secret sealed by the keyring, since verifying a signature needs the secret itself. At most one
    ``current`` and one ``previous`` per app and kind, so a rotated secret keeps working until removed."""

    __tablename__ = "app_credentials"
    __table_args__ = (UniqueConstraint("app_id", "kind", "status"),)
    id: Mapped[str] = mapped_column(Uuid, primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.app_id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # secret | awsxks
    status: Mapped[str] = mapped_column(String(16))  # current | previous
    secret_hash: Mapped[str | None] = mapped_column(String(256))
    access_key_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    sealed_secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class SecurityObject(Base):
    __tablename__ = "security_objects"
    __table_args__ = (UniqueConstraint("acct_id", "name"),)
    kid: Mapped[str] = mapped_column(Uuid, primary_key=True)
    acct_id: Mapped[str] = mapped_column(ForeignKey("accounts.acct_id", ondelete="CASCADE"), index=True)
    group_id: Mapped[str] = mapped_column(ForeignKey("groups.group_id"), index=True)
    name: Mapped[str] = mapped_column(String(4096))
    description: Mapped[str | None] = mapped_column(Text)
    obj_type: Mapped[str] = mapped_column(String(16))
    key_size: Mapped[int | None] = mapped_column(Integer)
    key_ops: Mapped[list[str]]
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # PreActive, Active, Deactivated, Compromised, Destroyed, and Deleted: a key deleted under a history
    # policy, kept (hidden) until the undo windows of its history items close.
    state: Mapped[str] = mapped_column(String(16))
    origin: Mapped[str] = mapped_column(String(16))  # FortanixHSM (generated) | External (imported)
    activation_date: Mapped[datetime | None]
    deactivation_date: Mapped[datetime | None]
    compromise_date: Mapped[datetime | None]
    destruction_date: Mapped[datetime | None]
    deletion_date: Mapped[datetime | None]
    revocation_reason: Mapped[dict[str, Any] | None]
    custom_metadata: Mapped[dict[str, Any]]
    # Generation within a rekey lineage: 1 for a new key, old.version + 1 for the key that replaces it.
    version: Mapped[int] = mapped_column(Integer, default=1)
    replacement_kid: Mapped[str | None] = mapped_column(Uuid, index=True)
    replaced_kid: Mapped[str | None] = mapped_column(Uuid, index=True)
    kcv: Mapped[str | None] = mapped_column(String(16))
    # RSA and EC: the public key as DER SubjectPublicKeyInfo (public, so not sealed), the curve of an EC
    # key (Fortanix EllipticCurve name), and whether only the public half was imported.
    pub_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    elliptic_curve: Mapped[str | None] = mapped_column(String(16))
    public_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Keyring blob (version, term, nonce, ciphertext+tag), bound to kid and version; NULL once destroyed.
    sealed_material: Mapped[bytes | None] = mapped_column(LargeBinary)
    creator_type: Mapped[str] = mapped_column(String(8))
    creator_id: Mapped[str] = mapped_column(Uuid)
    created_at: Mapped[datetime]
    lastused_at: Mapped[datetime | None]


class KeyHistoryItem(Base):
    """What a key was just before a reversible change (Fortanix HistoryItem), revertible until ``expiry``.
    ``sealed_material`` is the key's keyring blob when the change took it from the key (destroy, delete):
    the blob lives in exactly one place, and this row (with the blob) is erased once ``expiry`` passes."""

    __tablename__ = "key_history"
    id: Mapped[str] = mapped_column(Uuid, primary_key=True)
    kid: Mapped[str] = mapped_column(ForeignKey("security_objects.kid", ondelete="CASCADE"), index=True)
    operation: Mapped[str] = mapped_column(String(32))  # the change it precedes: key.destroy, key.update ...
    state: Mapped[dict[str, Any]]
    sealed_material: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    expiry: Mapped[datetime] = mapped_column(Timestamp, index=True)


class KeyringTerm(Base):
    """A keyring data key, wrapped by the sealing key that ``sealer_key_id`` names."""

    __tablename__ = "keyring_terms"
    term: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sealer_kind: Mapped[str] = mapped_column(String(16))
    sealer_key_id: Mapped[str] = mapped_column(String(200))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


# The indexes of /sys/v1/logs: name -> the filter's columns between acct_id and (time, chain, seq).
AUDIT_FILTER_INDEXES: dict[str, tuple[str, ...]] = {
    "order": (),  # no filter (and range_from / range_to)
    "action_type": ("action_type",),
    "severity": ("severity",),
    "actor_type": ("actor_type",),
    "actor_id": ("actor_id",),  # the filter, and every caller that is not an administrator
    "object_id": ("object_id",),
}


class AuditRow(Base):
    """One audited operation or refusal. ``row_hash`` = HMAC(audit key of ``key_term``, ``prev_hash`` ||
    canonical encoding of every other column), so changing any column, or deleting or reordering rows,
    breaks the chain at that row."""

    __tablename__ = "audit_log"
    __table_args__ = (
        UniqueConstraint("chain", "seq"),
        # tail and export read newest or oldest first across accounts and chains.
        Index("ix_audit_log_time", "time"),
        # /sys/v1/logs answers newest first, (time, chain, seq) descending, within one account: one index
        # per documented filter, each ending in that order, so a page is read off the index in order and
        # its cost does not grow with the log (migration 0015; tests/unit/test_audit_indexes.py).
        *(
            Index(f"ix_audit_log_acct_{name}", "acct_id", *cols, "time", "chain", "seq")
            for name, cols in AUDIT_FILTER_INDEXES.items()
        ),
    )
    id: Mapped[str] = mapped_column(Uuid, primary_key=True)
    chain: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[datetime]
    acct_id: Mapped[str | None] = mapped_column(Uuid)
    actor_type: Mapped[str] = mapped_column(String(16))  # User | App | System
    actor_id: Mapped[str | None] = mapped_column(Uuid)
    via: Mapped[str | None] = mapped_column(String(64))  # e.g. "xks-proxy" when the proxy acted for the app
    action_type: Mapped[str] = mapped_column(String(32))  # ADMINISTRATIVE | AUTH | CRYPTOOPERATION | OTHER
    operation: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))  # INFO | WARNING | ERROR | CRITICAL
    outcome: Mapped[str] = mapped_column(String(16))  # success | refused | failed
    message: Mapped[str] = mapped_column(Text)
    object_id: Mapped[str | None] = mapped_column(Uuid)
    group_ids: Mapped[list[str]]
    client_ip: Mapped[str | None] = mapped_column(String(64))
    kms_request_id: Mapped[str | None] = mapped_column(String(256), index=True)
    kms_operation: Mapped[str | None] = mapped_column(String(128))
    aws_principal_arn: Mapped[str | None] = mapped_column(String(2048))
    kms_key_arn: Mapped[str | None] = mapped_column(String(2048))
    response_time_us: Mapped[int | None] = mapped_column(BigInteger)
    key_term: Mapped[int] = mapped_column(Integer)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary)
    row_hash: Mapped[bytes] = mapped_column(LargeBinary)


class AuditCheckpoint(Base):
    """How far ``xkslab audit verify`` last found a chain intact: its row ``seq`` had hash ``row_hash``.
    ``mac`` = HMAC(audit-checkpoint key of ``key_term``, chain, seq, row_hash, verified_at), a key derived
    from the sealed keyring, so a checkpoint cannot be forged or moved with the database alone (reader.py)."""

    __tablename__ = "audit_checkpoints"
    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    row_hash: Mapped[bytes] = mapped_column(LargeBinary)
    verified_at: Mapped[datetime]
    key_term: Mapped[int] = mapped_column(Integer)
    mac: Mapped[bytes] = mapped_column(LargeBinary)


class XksPathPrefix(Base):
    """An alias URI path prefix for an awsxks app, in addition to its Fortanix-style
    ``/crypto/v1/apps/<app_id>/aws``, so a key store can keep a path of the customer's choosing."""

    __tablename__ = "xks_path_prefixes"
    prefix: Mapped[str] = mapped_column(String(128), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.app_id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime]


class SessionRevocation(Base):
    """A terminated session: every token of the reauth chain that shares ``sid`` is refused. Kept until
    the session's absolute expiry, after which no token of it verifies anyway and the row may be pruned."""

    __tablename__ = "session_revocations"
    sid: Mapped[str] = mapped_column(Uuid, primary_key=True)
    revoked_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(Timestamp, index=True)


class SessionAccount(Base):
    """The account a user's token selected (``select_account``): in the database, so that every node of
    a fleet and every worker of a node knows it (a client's next connection may reach any of them).
    Kept until the token expires, then pruned by the next selection."""

    __tablename__ = "session_accounts"
    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    acct_id: Mapped[str] = mapped_column(Uuid)
    expires_at: Mapped[datetime] = mapped_column(Timestamp, index=True)


class ApprovalRequest(Base):
    """A request for a quorum to approve one protected operation (Fortanix ``ApprovalRequest``). The
    operation's body may hold plaintext or key material, so it is kept sealed by the keyring (bound to the
    request id); the operation's result is never stored: it is produced once, for the requester, when the
    result is fetched. The one exception is an export by key components, whose custodians each fetch their
    own component: the split is made once, at the first fetch, and kept sealed (``sealed_result``) only
    until the last custodian has fetched theirs."""

    __tablename__ = "approval_requests"
    __table_args__ = (Index("ix_approval_requests_acct_status", "acct_id", "status"),)
    request_id: Mapped[str] = mapped_column(Uuid, primary_key=True)
    acct_id: Mapped[str] = mapped_column(ForeignKey("accounts.acct_id", ondelete="CASCADE"))
    requester_type: Mapped[str] = mapped_column(String(8))  # user | app
    requester_id: Mapped[str] = mapped_column(Uuid, index=True)
    method: Mapped[str] = mapped_column(String(8))
    operation: Mapped[str] = mapped_column(String(1024))
    sealed_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    description: Mapped[str | None] = mapped_column(Text)
    # PENDING | APPROVED | DENIED | FAILED (Fortanix ApprovalStatus)
    status: Mapped[str] = mapped_column(String(16))
    # [{"sobject": kid} | {"group": group_id}]: what the operation touches, and the groups whose policy
    # holds it (their quorums are the reviewers).
    subjects: Mapped[list[Any]] = mapped_column(JSON)
    group_ids: Mapped[list[str]]
    # [{"user": id} | {"app": id}] in the order they approved; the denier likewise.
    approvers: Mapped[list[Any]] = mapped_column(JSON)
    denier: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]
    expiry: Mapped[datetime]
    result_viewed: Mapped[bool] = mapped_column(Boolean, default=False)
    # Export by components: the whole answer sealed by the keyring, and the custodians who fetched theirs.
    sealed_result: Mapped[bytes | None] = mapped_column(LargeBinary)
    result_viewers: Mapped[list[Any] | None] = mapped_column(JSON)
