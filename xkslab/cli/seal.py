"""``xkslab seal``: the sealing key and the keyring (status, a new term, a move to another backend)."""

from __future__ import annotations

from typing import Any

import click

from xkslab.cli.common import emit, json_option, pass_settings, run, with_core
from xkslab_shared.config import Settings


@click.group()
def seal() -> None:
    """The sealing key and the keyring."""


@seal.command("status")
@json_option
@with_core
async def seal_status(core: Any, _p: Any, as_json: bool) -> None:
    """Show the sealing backend, key id and keyring terms."""
    s = core.keyring.status()
    data = {
        "backend": s.sealer_kind,
        "sealer_key_id": s.sealer_key_id,
        "terms": s.terms,
        "active_term": s.active_term,
        "sealed": False,
    }
    emit(data, as_json, lambda d: "\n".join(f"{k}: {v}" for k, v in d.items()))


@seal.command("rotate")
@json_option
@with_core
async def seal_rotate(core: Any, _p: Any, as_json: bool) -> None:
    """Start a new keyring term: new material is sealed under it; old material stays readable."""
    term = await core.keyring_admin.rotate()
    emit({"active_term": term}, as_json, lambda d: f"keyring rotated: active term {d['active_term']}")


@seal.command("rewrap")
@click.option("--to", "target", type=click.Choice(["software", "pkcs11"]), required=True)
@json_option
@pass_settings
def seal_rewrap(settings: Settings, target: str, as_json: bool) -> None:
    """Move the keyring to another sealing backend (creating its key if needed) and record the new backend
    in the config file. Objects are not touched."""
    from dsm_emulator.core import DsmCore, open_configured_sealer, seal_config
    from xkslab.lab.datadir import create_key_if_absent, set_config_value

    async def rewrap() -> int:
        create_key_if_absent(seal_config(settings, target))
        async with await DsmCore.open(settings) as core:
            new_sealer = open_configured_sealer(settings, target)
            try:
                count = await core.keyring_admin.rewrap(new_sealer)
            finally:
                new_sealer.close()
        return count

    count = run(rewrap())
    set_config_value(settings.config_file, "seal", "backend", target)
    emit(
        {"terms": count, "backend": target},
        as_json,
        lambda d: f"rewrapped {d['terms']} keyring term(s) to {d['backend']}; {settings.config_file} updated",
    )
