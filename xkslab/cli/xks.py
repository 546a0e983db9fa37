"""``xkslab xks ...``: serve the XKS proxy, manage alias URI path prefixes, and print what AWS's
CreateCustomKeyStore form asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from xkslab.cli.common import (
    emit,
    free_ports_option,
    json_option,
    log_options,
    overrides_of,
    pass_settings,
    ready_file_option,
    serve_service,
    with_core,
    workers_option,
)
from xkslab_shared.config import Settings


@click.group()
def xks() -> None:
    """The XKS proxy (XKS Proxy API v1) in front of the DSM."""


@xks.command("serve")
@ready_file_option
@log_options
@free_ports_option
@workers_option
@pass_settings
def xks_serve(settings: Settings, ready_file: Path | None, workers: int) -> None:
    """Serve the XKS proxy on xks.host:xks.port (HTTP), and on xks.https_port too when xks.tls_cert and
    xks.tls_key exist (mTLS when xks.client_ca is set); the DSM must be running (xks.dsm_urls)."""
    from xks_frontend.app import listener

    overrides = overrides_of(click.get_current_context())  # for the workers' command lines
    serve_service(settings, "xks", listener, ready_file, workers, overrides)


@xks.group("alias")
def alias() -> None:
    """Alias URI path prefixes of an awsxks app (besides /crypto/v1/apps/<app_id>/aws)."""


@alias.command("add")
@click.argument("app_id")
@click.argument("prefix")
@with_core
async def alias_add(core: Any, p: Any, app_id: str, prefix: str) -> None:
    """Serve APP_ID's key store under PREFIX too (its XksProxyUriPath is then PREFIX/kms/xks/v1)."""
    await core.xks.add_alias(p, app_id, prefix)
    click.echo(f"{prefix}/kms/xks/v1 -> app {app_id}")


@alias.command("remove")
@click.argument("prefix")
@with_core
async def alias_remove(core: Any, p: Any, prefix: str) -> None:
    await core.xks.remove_alias(p, prefix)
    click.echo(f"removed {prefix}")


@alias.command("list")
@click.argument("app_id")
@json_option
@with_core
async def alias_list(core: Any, p: Any, app_id: str, as_json: bool) -> None:
    emit(await core.xks.aliases(p, app_id), as_json, lambda prefixes: "\n".join(prefixes))


@xks.command("keystore")
@click.argument("app_id")
@click.option("--endpoint", default=None, help="XksProxyUriEndpoint (default: the proxy's HTTPS URL).")
@click.option("--prefix", default=None, help="One of the app's alias prefixes instead of the canonical one.")
@json_option
@with_core
async def keystore(
    core: Any, p: Any, app_id: str, endpoint: str | None, prefix: str | None, as_json: bool
) -> None:
    """What AWS's CreateCustomKeyStore (external key store, public endpoint) asks for, for APP_ID.
    Discloses the app's SigV4 secret, like `app credential`."""
    from dsm_emulator.xks import canonical_prefix

    if prefix is not None and prefix not in await core.xks.aliases(p, app_id):
        raise click.ClickException(f"{prefix} is not an alias prefix of app {app_id}")
    credential = (await core.admin.get_credential(p, app_id)).get("awsxks")
    if not credential:
        raise click.ClickException(f"app {app_id} has no awsxks credential")
    settings = core.settings
    data = {
        "CustomKeyStoreType": "EXTERNAL_KEY_STORE",
        "XksProxyConnectivity": "PUBLIC_ENDPOINT",
        "XksProxyUriEndpoint": endpoint or f"https://{settings.xks.host}:{settings.xks.https_port}",
        "XksProxyUriPath": f"{prefix or canonical_prefix(app_id)}/kms/xks/v1",
        "XksProxyAuthenticationCredential": {
            "AccessKeyId": credential["access_key_id"],
            "RawSecretAccessKey": credential["secret_key"],
        },
    }

    def text(d: dict[str, Any]) -> str:
        cred = d["XksProxyAuthenticationCredential"]
        return "\n".join(
            [
                f"Proxy URI endpoint:      {d['XksProxyUriEndpoint']}",
                f"Proxy URI path:          {d['XksProxyUriPath']}",
                f"Proxy credential ID:     {cred['AccessKeyId']}",
                f"Proxy credential secret: {cred['RawSecretAccessKey']}",
                f"Proxy connectivity:      {d['XksProxyConnectivity']}",
            ]
        )

    emit(data, as_json, text)
