"""``xkslab certs``: a local CA, the HTTPS certificates of the DSM and the proxy, and the client certificate
the KMS presents to proxies (mTLS); ``xkslab certs rotate`` reissues the three under the same CA."""

from __future__ import annotations

import json
from pathlib import Path

import click

from xkslab.cli.common import json_option, pass_settings_creating
from xkslab_shared.config import Settings, kms_client_subject


def _tls_dir(settings: Settings, out: Path | None) -> Path:
    return out if out is not None else settings.data_dir / "tls"


out_option = click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory [default: <data-dir>/tls].",
)


@click.group("certs", invoke_without_command=True)
@click.option(
    "--hosts",
    default="",
    help="Extra DNS names or IP addresses for the server certificates, comma-separated "
    "(localhost, 127.0.0.1 and ::1 are always included).",
)
@out_option
@click.pass_context
def certs_command(ctx: click.Context, hosts: str, out: Path | None) -> None:
    """Create a local CA (reused if present), HTTPS certificates for the DSM and XKS endpoints, and the
    client certificate KMS presents to proxies (cks.kms.<region>.amazonaws.com)."""
    if ctx.invoked_subcommand is None:
        _make(hosts, out)


@pass_settings_creating
def _make(settings: Settings, hosts: str, out: Path | None) -> None:
    from xkslab_shared import certs

    out = _tls_dir(settings, out)
    names = [h.strip() for h in hosts.split(",") if h.strip()]
    try:
        ca_cert, ca_key = certs.make_local_ca(out)
        dsm = certs.make_server_cert(out, ca_cert, ca_key, "dsm", names)
        xks = certs.make_server_cert(out, ca_cert, ca_key, "xks", names)
        client = certs.ensure_kms_client_cert(out, ca_cert, ca_key, kms_client_subject(settings.kms.region))
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    made = (("CA", (ca_cert, ca_key)), ("DSM", dsm), ("XKS", xks), ("KMS client", client))
    for label, (crt, key) in made:
        click.echo(f"{label + ':':12} {crt}  (key {key})")
    ca = ca_cert.resolve()
    click.echo("")
    click.echo("Trust the CA (never install ca.key anywhere else):")
    click.echo(f"  export SSL_CERT_FILE={ca}          # Python ssl, OpenSSL-based tools")
    click.echo(f"  export REQUESTS_CA_BUNDLE={ca}     # requests (sdkms, boto3)")
    click.echo(f"  sdkms-cli --ssl-ca-cert {ca} ...")
    click.echo(f"  curl --cacert {ca} https://localhost:<port>/...")


@certs_command.command("rotate")
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=None,
    help="Validity of the new certificates (a short one rehearses expiry) [default and most: 825].",
)
@out_option
@json_option
@pass_settings_creating
def rotate(settings: Settings, days: int | None, out: Path | None, as_json: bool) -> None:
    """Reissue the DSM's and the proxy's server certificates and KMS's client certificate under the same
    CA, with new keys. Running services use them from their next TLS handshake, without a restart."""
    from xkslab_shared import certs

    if days is None:
        days = certs.LEAF_DAYS
    elif days > certs.LEAF_DAYS:
        raise click.BadParameter(f"{days} is longer than {certs.LEAF_DAYS} days", param_hint="'--days'")
    directory = _tls_dir(settings, out)
    try:
        made = certs.rotate(directory, kms_client_subject(settings.kms.region), days=days)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    rows = {
        name: {"cert": str(crt), "key": str(key), "not_after": certs.not_after(crt).isoformat()}
        for name, (crt, key) in made.items()
    }
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    for name, row in rows.items():
        click.echo(f"{name + ':':12} {row['cert']}  (key {row['key']}), valid until {row['not_after']}")
    click.echo("Running services present the new certificates from their next TLS handshake.")
