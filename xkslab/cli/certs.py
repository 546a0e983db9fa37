"""``xkslab certs``: a local CA and the HTTPS certificates of the DSM and the proxy."""

from __future__ import annotations

from pathlib import Path

import click

from xkslab.cli.common import pass_settings_creating
from xkslab_shared.certs import make_local_ca, make_server_cert


@click.command("certs")
@click.option(
    "--hosts",
    default="",
    help="Extra DNS names or IP addresses for the server certificates, comma-separated "
    "(localhost, 127.0.0.1 and ::1 are always included).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory [default: <data-dir>/tls].",
)
@pass_settings_creating
def certs_command(settings: object, hosts: str, out: Path | None) -> None:
    """Create a local CA (reused if present) and HTTPS certificates for the DSM and XKS endpoints."""
    if out is None:
        # obj is xkslab_shared.config.Settings under the main CLI (a bare Path is accepted too)
        data_dir = settings if isinstance(settings, Path) else getattr(settings, "data_dir", None)
        if data_dir is None:
            raise click.UsageError("--out is required when no data directory is configured")
        out = Path(data_dir) / "tls"
    names = [h.strip() for h in hosts.split(",") if h.strip()]
    try:
        ca_cert, ca_key = make_local_ca(out)
        dsm = make_server_cert(out, ca_cert, ca_key, "dsm", names)
        xks = make_server_cert(out, ca_cert, ca_key, "xks", names)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for label, (crt, key) in (("CA", (ca_cert, ca_key)), ("DSM", dsm), ("XKS", xks)):
        click.echo(f"{label + ':':5} {crt}  (key {key})")
    ca = ca_cert.resolve()
    click.echo("")
    click.echo("Trust the CA (never install ca.key anywhere else):")
    click.echo(f"  export SSL_CERT_FILE={ca}          # Python ssl, OpenSSL-based tools")
    click.echo(f"  export REQUESTS_CA_BUNDLE={ca}     # requests (sdkms, boto3)")
    click.echo(f"  sdkms-cli --ssl-ca-cert {ca} ...")
    click.echo(f"  curl --cacert {ca} https://localhost:<port>/...")
