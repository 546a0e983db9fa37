"""What the command line reads of a lab without running one: the error a start-up step raises, and the
names of the files a lab keeps in its data directory (``up.json``, ``admin.password``) and what
``xkslab env`` makes of ``up.json``. Kept apart from ``up.py`` so that ``xkslab env``, ``wait`` and
``down`` import neither the services nor their database and HTTP libraries (a CLI that answers at once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

UP_FILE = "up.json"
LOCK_FILE = "up.lock"  # held (flock) by the running up: supervisor.py
PASSWORD_FILE = "admin.password"


class LabError(RuntimeError):
    """A start-up step failed; the message says which (the CLI prints it without a traceback)."""


def up_file_in(data_dir: Path) -> Path:
    return data_dir / UP_FILE


# `xkslab env` and the banner name the files with mTLS. Not setting names (XKSLAB_<SECTION>_<NAME>), so
# exporting them changes no xkslab command's settings.
MTLS_ENV = {
    "client_ca": "XKSLAB_MTLS_CA_FILE",
    "client_cert": "XKSLAB_MTLS_CLIENT_CERT",
    "client_key": "XKSLAB_MTLS_CLIENT_KEY",
}


def lab_env(data: dict[str, Any]) -> dict[str, str]:
    """What ``xkslab env`` prints: ``aws_env`` (boto3, the AWS CLI), what Fortanix's ``sdkms-cli`` reads
    (FORTANIX_API_ENDPOINT, HTTPS only, as it refuses plain HTTP; FORTANIX_API_KEY, the lab's client
    app, for ``app-login``), the local CA (XKSLAB_CA_FILE: sdkms-cli reads none from the environment, so
    it goes to ``--ssl-ca-cert``, and the sdkms SDK to ``Configuration.ssl_ca_cert``), and with mTLS the
    client certificate files."""
    dsm = data.get("dsm") or {}
    fortanix = {
        "FORTANIX_API_ENDPOINT": dsm.get("https_url") or dsm.get("url"),
        "FORTANIX_API_KEY": dsm.get("api_key"),
        "XKSLAB_CA_FILE": data.get("ca_file"),
    }
    mtls = data.get("mtls") or {}
    return {
        **data["aws_env"],
        **{name: value for name, value in fortanix.items() if value},
        **{var: mtls[key] for key, var in MTLS_ENV.items() if mtls.get(key)},
    }
