"""What a running lab is to its users, in or out of process: ``LabInfo``. Kept apart from the code that
runs a lab so that importing it (the pytest plugin does, in every pytest run where xkslab is installed)
does not import the three services."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xkslab.lab.faults import FaultsClient
    from xkslab_shared.config import Settings
    from xkslab_shared.faults_wire import Fault

__all__ = ["FREE_PORTS", "START_TIMEOUT_S", "STOP_TIMEOUT_S", "LabInfo"]

# Every port the lab binds, taken from the system: labs in parallel (pytest-xdist workers, CI jobs on one
# machine) never race for a port reserved in advance.
FREE_PORTS = {name: "0" for name in ("dsm.port", "dsm.https_port", "xks.port", "xks.https_port", "kms.port")}
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LabInfo:
    """A running lab: its data directory, its settings (as asked: ports may read 0) and ``data``, what
    ``up.json`` holds (the URLs with the ports really bound, credentials, key ids)."""

    data_dir: Path
    settings: Settings
    data: dict[str, Any]
    in_process: bool

    @property
    def kms_endpoint(self) -> str:
        return str(self.data["kms"]["endpoint_url"])

    @property
    def region(self) -> str:
        return str(self.data["kms"]["region"])

    @property
    def key_id(self) -> str:
        """The lab's own XKS-backed KMS key (``alias/xkslab-demo``)."""
        return str(self.data["kms"]["key_id"])

    @property
    def key_arn(self) -> str:
        return str(self.data["kms"]["key_arn"])

    @property
    def custom_key_store_id(self) -> str:
        return str(self.data["kms"]["custom_key_store_id"])

    @property
    def aws_env(self) -> dict[str, str]:
        """AWS_ENDPOINT_URL_KMS, the access key pair and the region, for a child process's environment."""
        return dict(self.data["aws_env"])

    @property
    def dsm_url(self) -> str:
        return str(self.data["dsm"]["url"])

    @property
    def api_key(self) -> str:
        """The client app's API key (``xkslab-client``, in the default group)."""
        return str(self.data["dsm"]["api_key"])

    @property
    def xks_uri_endpoint(self) -> str:
        """The proxy's HTTPS endpoint as the key store has it (``localhost``: what its certificate names)."""
        return str(self.data["xks"]["https_url"]).replace("127.0.0.1", "localhost")

    @property
    def xks_uri_path(self) -> str:
        """The proxy's URI path prefix (``/crypto/v1/apps/<app id>/aws/kms/xks/v1``)."""
        return str(self.data["xks"]["uri_path"])

    @property
    def xks_uri(self) -> str:
        return self.xks_uri_endpoint + self.xks_uri_path

    @property
    def xks_credential(self) -> tuple[str, str]:
        """The SigV4 pair (access key id, secret) the proxy accepts."""
        return str(self.data["xks"]["access_key_id"]), str(self.data["xks"]["secret_access_key"])

    @property
    def xks_url(self) -> str:
        """The proxy's plain HTTP listener (where its admin endpoint and ``/metrics`` are served too)."""
        return str(self.data["xks"]["url"])

    @property
    def admin_token_file(self) -> Path:
        """The bearer token file of the proxy's fault admin endpoint (``xks.admin_token_file``)."""
        return self.settings.path(self.settings.xks.admin_token_file)

    @property
    def ca_file(self) -> Path:
        """The local CA that signed the DSM's and the proxy's certificates."""
        return Path(self.data["ca_file"])

    def kms_client(self) -> Any:
        """A new boto3 KMS client pointed at this lab, with its region and credentials."""
        import boto3

        env = self.aws_env
        return boto3.client(
            "kms",
            endpoint_url=env["AWS_ENDPOINT_URL_KMS"],
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def faults_client(self) -> FaultsClient:
        """A client for the proxy's fault admin endpoint: ``list_faults()``, ``add(...)``, ``clear(id)``."""
        from xkslab.lab.faults import FaultsClient

        return FaultsClient(self.xks_url, self.admin_token_file)

    @contextlib.contextmanager
    def fault(self, kind: str, **fields: Any) -> Iterator[str]:
        """One fault on the proxy for the ``with`` block (fields as the admin API and scenario files name
        them: ``error_name``, ``latency_ms``, ``operation``, ``kms_operation``, ``key_id``, ``count``...);
        yields its id and clears exactly it on exit, however the block ends."""
        with self.faults({"kind": kind, **fields}) as ids:
            yield ids[0]

    @contextlib.contextmanager
    def faults(self, *specs: Fault | Mapping[str, Any]) -> Iterator[list[str]]:
        """Several faults (a schedule, by their ``start_s``) for the ``with`` block; yields their ids and
        clears exactly those on exit."""
        from xkslab.lab.faults import applied

        with applied(self.faults_client(), specs) as ids:
            yield ids
