"""A data directory made ready for the services: config file, sealing key, schema, keyring, and the first
account with its administrator and default group. Shared by ``xkslab init`` and ``xkslab up``; every step
keeps what exists, so it is safe to run again."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dsm_emulator import store
from dsm_emulator.core import DsmCore, open_configured_sealer, seal_config
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import Account
from dsm_emulator.sealing import SealConfig, SealError, SoftwareSealConfig, create_sealing_key, open_sealer
from xkslab_shared.config import CONFIG_FILE_NAME, Settings, render_toml

CONFIG_HEADER = "# xkslab settings; XKSLAB_* variables and flags override these.\n"


def write_config_if_missing(data_dir: Path, values: dict[str, Any] | None = None) -> bool:
    """Create the data directory (0700) and its config file; False when the file was there already."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    config_file = data_dir / CONFIG_FILE_NAME
    if config_file.exists():
        return False
    config_file.write_text(CONFIG_HEADER + render_toml(values or {"seal.backend": "software"}))
    return True


def create_key_if_absent(config: SealConfig) -> None:
    """Create the sealing key on first use; an existing key is reused, never replaced."""
    if isinstance(config, SoftwareSealConfig):
        if config.key_file is None or not config.key_file.exists():
            create_sealing_key(config)
        return
    try:
        open_sealer(config).close()
    except SealError:
        create_sealing_key(config)


async def init_data_dir(
    settings: Settings, account_name: str, admin_email: str, password: str
) -> dict[str, Any]:
    """Sealing key, schema, keyring and (on first run) the account; returns what was found or made."""
    create_key_if_absent(seal_config(settings))
    await store.upgrade_async(settings.database_url)
    engine = store.create_engine(settings.database_url)
    try:
        sealer = open_configured_sealer(settings)
        try:
            await Keyring.initialize(store.session_factory(engine), sealer)
        finally:
            sealer.close()
    finally:
        await engine.dispose()
    async with await DsmCore.open(settings) as core:
        async with core.sessions() as session:
            existing = await session.scalar(select(Account).limit(1))
        created = existing is None
        if existing is None:
            account, _user, group = await core.admin.bootstrap(account_name, admin_email, password)
        else:
            account, group = existing, None
    return {
        "data_dir": str(settings.data_dir.resolve()),
        "config_file": str(settings.config_file.resolve()),
        "database": settings.redacted()["database"]["url"] or settings.database_url,
        "seal_backend": settings.seal.backend,
        "created": created,
        "acct_id": account.acct_id,
        "admin_email": admin_email if created else None,
        "default_group_id": group.group_id if group is not None else None,
    }


def set_config_value(config_file: Path, section: str, key: str, value: str) -> None:
    """Change one setting in the config file, keeping the others."""
    tree: dict[str, Any] = tomllib.loads(config_file.read_text()) if config_file.exists() else {}
    tree.setdefault(section, {})[key] = value
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(tree, "")
    config_file.write_text(CONFIG_HEADER + render_toml(flat))
