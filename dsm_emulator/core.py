"""The key manager's resources, opened once from the settings and closed in reverse order.

Opening checks the schema revision, opens the sealer, unseals the keyring (once) and starts the audit
writer; everything the CLI and the REST API do goes through the services this holds. On SQLite the audit
writer gets an engine of its own whose transactions take the write lock first (see AuditLog).

Closing a core that changed something waits out the cache poll interval first: a CLI command that
disables a key returns only once every running lab honours it (xkslab_shared/generation.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dsm_emulator import store
from dsm_emulator.admin import AdminService
from dsm_emulator.approvals.gate import QuorumGate
from dsm_emulator.approvals.service import ApprovalService
from dsm_emulator.audit import AuditLog
from dsm_emulator.audit.raw import open_raw_writer
from dsm_emulator.errors import Sealed
from dsm_emulator.keyring import Keyring
from dsm_emulator.keyring_admin import KeyringAdmin
from dsm_emulator.keys import KeyService
from dsm_emulator.logins import LoginLimiter
from dsm_emulator.revocations import SessionRevocations
from dsm_emulator.sealing import (
    Pkcs11SealConfig,
    SealConfig,
    Sealer,
    SealError,
    SoftwareSealConfig,
    open_sealer,
)
from dsm_emulator.xks import XksService
from xkslab_shared.config import Settings
from xkslab_shared.generation import Generation
from xkslab_shared.wal import WalCheckpointer

log = logging.getLogger("dsm_emulator.core")


def seal_config(settings: Settings, backend: str | None = None) -> SealConfig:
    """The sealer configuration for ``backend`` (default: the configured one)."""
    seal = settings.seal
    if (backend or seal.backend) == "pkcs11":
        p = seal.pkcs11
        if not p.pin:
            raise Sealed("the pkcs11 sealer needs a PIN: set seal.pkcs11.pin or XKSLAB_SEAL_PKCS11_PIN")
        return Pkcs11SealConfig(
            library=p.library, token_label=p.token_label, key_label=p.key_label, pin=p.pin
        )
    if seal.passphrase:
        return SoftwareSealConfig(passphrase=seal.passphrase, salt_file=settings.path(seal.salt_file))
    return SoftwareSealConfig(key_file=settings.path(seal.key_file))


def open_configured_sealer(settings: Settings, backend: str | None = None) -> Sealer:
    try:
        return open_sealer(seal_config(settings, backend))
    except SealError as exc:
        raise Sealed(str(exc)) from None


@dataclass
class DsmCore:
    settings: Settings
    engine: AsyncEngine
    writer_engine: AsyncEngine | None
    generation: Generation
    sessions: async_sessionmaker[AsyncSession]
    sealer: Sealer
    keyring: Keyring
    keyring_admin: KeyringAdmin
    audit: AuditLog
    keys: KeyService
    admin: AdminService
    xks: XksService
    revocations: SessionRevocations
    approvals: ApprovalService
    checkpointer: WalCheckpointer | None = None

    @classmethod
    async def open(cls, settings: Settings) -> DsmCore:
        db = settings.database
        autocheckpoint = db.wal_checkpoint_ms == 0  # else a WalCheckpointer does it off the request path
        engine = store.create_engine(
            settings.database_url,
            busy_timeout_ms=db.busy_timeout_ms,
            pool_size=db.pool_size,
            wal_autocheckpoint=autocheckpoint,
        )
        writer_engine = None
        checkpointer = None
        if engine.dialect.name == "sqlite":
            writer_engine = store.create_engine(
                settings.database_url,
                busy_timeout_ms=db.busy_timeout_ms,
                write_lock_first=True,
                wal_autocheckpoint=autocheckpoint,
            )
            if not autocheckpoint and engine.url.database:
                checkpointer = WalCheckpointer(
                    engine.url.database,
                    db.wal_checkpoint_ms / 1000,
                    busy_timeout_ms=db.busy_timeout_ms,
                    restart_frames=db.wal_restart_frames,
                )
        sealer: Sealer | None = None
        try:
            await store.check_schema(engine)
            sessions = store.session_factory(engine)
            generation = Generation(sessions, db.cache_poll_ms / 1000)
            sealer = open_configured_sealer(settings)
            keyring = await Keyring.load(sessions, sealer)
            raw = None
            if settings.audit.writer == "raw":
                raw = open_raw_writer(
                    writer_engine or engine,
                    busy_timeout_ms=db.busy_timeout_ms,
                    wal_autocheckpoint=autocheckpoint,
                )
            audit = AuditLog(
                store.session_factory(writer_engine or engine), keyring, settings.audit, generation, raw=raw
            )
            await audit.start()
            if checkpointer is not None:
                checkpointer.start()
        except BaseException:
            if sealer is not None:
                sealer.close()
            await engine.dispose()
            if writer_engine is not None:
                await writer_engine.dispose()
            raise
        gate = QuorumGate(sessions, generation, db.cache_max_age_s)
        keys = KeyService(
            sessions, keyring, audit, max_age_s=db.cache_max_age_s, generation=generation, gate=gate
        )
        keys.usage.start()
        limiter = LoginLimiter(
            settings.dsm.login_max_failures,
            settings.dsm.login_window_s,
            max_failures_per_source=settings.dsm.login_max_failures_per_source,
            max_failing_hashes=settings.dsm.login_max_failing_hashes,
        )
        admin = AdminService(sessions, keyring, audit, limiter, gate)
        xks = XksService(
            sessions,
            keyring,
            audit,
            admin,
            keys,
            node_id=settings.audit.node_id,
            model=f"xkslab DSM emulator 0.1 ({sealer.kind} sealing, {engine.dialect.name})",
            health_cache_s=settings.dsm.health_cache_s,
            generation=generation,
            cache_max_age_s=db.cache_max_age_s,
        )
        return cls(
            settings=settings,
            engine=engine,
            writer_engine=writer_engine,
            generation=generation,
            sessions=sessions,
            sealer=sealer,
            keyring=keyring,
            keyring_admin=KeyringAdmin(keyring, audit),
            audit=audit,
            keys=keys,
            admin=admin,
            xks=xks,
            revocations=SessionRevocations(sessions, settings.dsm.revocation_refresh_ms),
            approvals=ApprovalService(
                sessions, keyring, audit, admin, expiry=timedelta(seconds=settings.dsm.approval_expiry_s)
            ),
            checkpointer=checkpointer,
        )

    async def close(self) -> None:
        try:
            try:
                await self.keys.usage.close()
            except Exception:
                log.exception("could not write the last-use times of keys at close")
            await self.audit.close()
            if self.audit.last_mutation is not None:
                loop = asyncio.get_running_loop()
                await asyncio.sleep(self.audit.last_mutation + self.generation.poll_s - loop.time())
        finally:
            if self.checkpointer is not None:
                await self.checkpointer.close()
            self.sealer.close()
            await self.engine.dispose()
            if self.writer_engine is not None:
                await self.writer_engine.dispose()

    async def __aenter__(self) -> DsmCore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
