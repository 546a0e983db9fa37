"""The AWS KMS side's tables: custom key stores, KMS keys (with their key policy and rotation schedule),
rotated key material, grants, aliases and callers' access keys. Alembic migrations in ``migrations/`` are
the only way they are created (revisions 0003, 0006, 0010 and 0017).

The KMS emulator owns its own metadata (it never imports the key manager's models) but follows the same
naming convention, so constraint names read alike across the schema. Nothing here holds a secret in the
clear: each key's backing key, each key store's proxy secret and each access key's secret are sealed
(``kms_emulator.sealing``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from xkslab_shared.db import NAMING

Timestamp = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: Timestamp}


class CustomKeyStore(Base):
    """An EXTERNAL_KEY_STORE custom key store: where its XKS proxy is and how KMS signs requests to it.
    Endpoint and path together are unique, as in AWS (XksProxyUriInUseException)."""

    __tablename__ = "kms_custom_key_stores"
    __table_args__ = (UniqueConstraint("uri_endpoint", "uri_path"),)
    id: Mapped[str] = mapped_column(String(21), primary_key=True)  # "cks-" + 17 hex digits
    name: Mapped[str] = mapped_column(String(256), unique=True)
    # CONNECTED | CONNECTING | FAILED | DISCONNECTED | DISCONNECTING
    connection_state: Mapped[str] = mapped_column(String(16))
    connection_error_code: Mapped[str | None] = mapped_column(String(64))
    # The proxy's consecutive failures while CONNECTED, counted by every KMS process (store_health.py).
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    creation_date: Mapped[datetime]
    uri_endpoint: Mapped[str] = mapped_column(String(128))
    uri_path: Mapped[str] = mapped_column(String(128))
    connectivity: Mapped[str] = mapped_column(String(32))  # PUBLIC_ENDPOINT | VPC_ENDPOINT_SERVICE
    access_key_id: Mapped[str] = mapped_column(String(30))
    # The proxy's SigV4 secret, sealed with AAD (store id, purpose).
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    vpc_endpoint_service_name: Mapped[str | None] = mapped_column(String(64))
    vpc_endpoint_service_owner: Mapped[str | None] = mapped_column(String(12))


class KmsKey(Base):
    """A symmetric KMS key. ``key_state`` is the stored state (Enabled, Disabled, PendingDeletion); an
    XKS key reads as Unavailable while its key store is not CONNECTED, without that being stored.
    An external key backs at most one KMS key per key store (XksKeyAlreadyInUseException)."""

    __tablename__ = "kms_keys"
    __table_args__ = (UniqueConstraint("custom_key_store_id", "xks_key_id"),)
    key_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    key_state: Mapped[str] = mapped_column(String(32))
    origin: Mapped[str] = mapped_column(String(32))  # AWS_KMS | EXTERNAL_KEY_STORE
    # No separate index: the unique (custom_key_store_id, xks_key_id) constraint leads with it.
    custom_key_store_id: Mapped[str | None] = mapped_column(ForeignKey("kms_custom_key_stores.id"))
    xks_key_id: Mapped[str | None] = mapped_column(String(128))
    # The inner envelope layer's AES-256 key, sealed with AAD (key id, purpose).
    sealed_backing_key: Mapped[bytes] = mapped_column(LargeBinary)
    creation_date: Mapped[datetime]
    deletion_date: Mapped[datetime | None]
    pending_window_days: Mapped[int | None] = mapped_column(Integer)
    # [{"TagKey": ..., "TagValue": ...}] in the order they were first set.
    tags: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # The key policy document exactly as given (or AWS's default one); None only for keys made before
    # revision 0010, which read as the default policy.
    policy: Mapped[str | None] = mapped_column(Text)
    # Automatic rotation: the period while enabled (None: disabled) and when it next falls due.
    rotation_period_days: Mapped[int | None] = mapped_column(Integer)
    next_rotation_date: Mapped[datetime | None]


class KmsKeyMaterial(Base):
    """Key material that a rotation made current (the key's first material is its ``sealed_backing_key``).
    Older material stays, so ciphertexts made under it still decrypt. ``sequence`` orders a key's
    rotations: the highest is current."""

    __tablename__ = "kms_key_materials"
    __table_args__ = (PrimaryKeyConstraint("key_id", "sequence"),)
    key_id: Mapped[str] = mapped_column(ForeignKey("kms_keys.key_id", ondelete="CASCADE"))
    sequence: Mapped[int] = mapped_column(Integer)
    material_id: Mapped[str] = mapped_column(String(64), unique=True)  # 64 hex digits, as AWS's
    # The AES-256 material, sealed with AAD (material id, purpose).
    sealed_material: Mapped[bytes] = mapped_column(LargeBinary)
    rotation_date: Mapped[datetime]
    rotation_type: Mapped[str] = mapped_column(String(16))  # AUTOMATIC | ON_DEMAND


class KmsGrant(Base):
    """A grant on a KMS key, as CreateGrant made it. Grant tokens are not stored: a token is the grant id
    sealed under the KMS sealing key, so any token this KMS issued opens and names its grant."""

    __tablename__ = "kms_grants"
    grant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("kms_keys.key_id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(256))
    grantee_principal: Mapped[str | None] = mapped_column(String(256))
    grantee_service_principal: Mapped[str | None] = mapped_column(String(128))
    retiring_principal: Mapped[str | None] = mapped_column(String(256), index=True)
    retiring_service_principal: Mapped[str | None] = mapped_column(String(128))
    issuing_account: Mapped[str] = mapped_column(String(256))
    operations: Mapped[list[str]] = mapped_column(JSON)
    # {"EncryptionContextSubset": {...}} or {"EncryptionContextEquals": {...}}, and/or "SourceArn".
    constraints: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    creation_date: Mapped[datetime]


class KmsAlias(Base):
    __tablename__ = "kms_aliases"
    alias_name: Mapped[str] = mapped_column(String(256), primary_key=True)
    target_key_id: Mapped[str] = mapped_column(ForeignKey("kms_keys.key_id", ondelete="CASCADE"), index=True)
    creation_date: Mapped[datetime]
    last_updated_date: Mapped[datetime]


class KmsAccessKey(Base):
    """An IAM-style access key of a caller, for ``kms.verify_sigv4``: ``user_name`` names the caller in
    awsPrincipalArn (``arn:aws:iam::<account>:user/<user_name>``)."""

    __tablename__ = "kms_access_keys"
    access_key_id: Mapped[str] = mapped_column(String(20), primary_key=True)  # "AKIA" + 16 of A-Z2-7
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    # The SigV4 secret access key, sealed with AAD (access key id, purpose).
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    creation_date: Mapped[datetime]
