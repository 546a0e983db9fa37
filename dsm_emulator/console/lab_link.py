"""What the console's server side knows of the rest of the lab, and how it reaches it: ``up.json`` in the
data directory (written by ``xkslab up`` once the lab is ready: the KMS endpoint, its credentials, the key
store, the proxy's URL), the proxy's admin token file (``xks.admin_token_file``), and plain HTTP calls to
the KMS (JSON protocol, SigV4-signed with botocore as any AWS client) and to the proxy's ``/health``,
``/metrics`` and fault admin endpoint. Nothing of the other services is imported: they are reached over
their public HTTP interfaces, as a browser or ``xkslab faults`` would."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from dsm_emulator.errors import DsmError
from xkslab_shared.config import Settings
from xkslab_shared.faults_wire import FAULTS_PATH
from xkslab_shared.health import HEALTH_PATH
from xkslab_shared.proxy_link import read_token

UP_FILE = "up.json"  # xkslab.lab.files.UP_FILE: the lab's facts, present while it is ready
CALL_TIMEOUT_S = 30.0  # a bound for a stalled machine, not a budget
KMS_TARGET = "TrentService."


class LabUnavailable(DsmError):
    """The console needs the lab (``xkslab up``) and it is not there: no up.json, or a service down."""

    status = 503


@dataclass(frozen=True)
class KmsAnswer:
    status: int
    body: dict[str, Any]
    request_id: str | None
    elapsed_s: float

    @property
    def error(self) -> str | None:
        if self.status < 400:
            return None
        return str(self.body.get("__type", "error")).rpartition("#")[2]


class LabLink:
    """The lab as the console's routes reach it; one per application, its HTTP session opened on start."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._http: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise LabUnavailable("the console's HTTP client is not open")
        return self._http

    def facts(self) -> dict[str, Any]:
        """up.json, read at each call: the lab writes it once ready and removes it on stop."""
        path = self.settings.data_dir / UP_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            raise LabUnavailable("the lab is not running (no up.json): start it with `xkslab up`") from None
        if not isinstance(data, dict) or "kms" not in data or "xks" not in data:
            raise LabUnavailable("up.json is incomplete: the lab has not finished starting")
        return data

    async def get_text(self, url: str) -> tuple[int, str]:
        try:
            async with self.http.get(url) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LabUnavailable(f"cannot reach {url}: {type(exc).__name__}") from None

    async def health(self, base_url: str) -> dict[str, Any]:
        """A service's ``/health`` answer (status "ok" or "unavailable", and its checks), or why not."""
        try:
            status, text = await self.get_text(base_url.rstrip("/") + HEALTH_PATH)
            body = json.loads(text)
        except (LabUnavailable, ValueError) as exc:
            return {"status": "unreachable", "detail": str(exc) or type(exc).__name__}
        return {"status": body.get("status", "unknown"), "http_status": status, "checks": body.get("checks")}

    async def metrics(self, base_url: str) -> dict[str, float]:
        """A Prometheus page as ``{"name{label=value,...}": value}`` (samples, labels sorted)."""
        status, text = await self.get_text(base_url.rstrip("/") + "/metrics")
        if status != 200:
            raise LabUnavailable(f"{base_url}/metrics answered {status}")
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = float(sample.value)
        return samples

    async def kms(self, operation: str, body: dict[str, Any]) -> KmsAnswer:
        """One KMS API call (``TrentService.<operation>``) signed with the lab's AWS credentials."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        facts = self.facts()
        env, url = facts["aws_env"], facts["kms"]["endpoint_url"]
        request = AWSRequest(
            method="POST",
            url=url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": KMS_TARGET + operation},
        )
        credentials = Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        SigV4Auth(credentials, "kms", facts["kms"]["region"]).add_auth(request)
        started = time.perf_counter()
        try:
            async with self.http.post(
                url, data=request.body, headers=dict(request.headers.items())
            ) as answer:
                raw = await answer.read()
                elapsed = time.perf_counter() - started
                request_id = answer.headers.get("x-amzn-RequestId")
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LabUnavailable(f"cannot reach the KMS at {url}: {type(exc).__name__}") from None
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"__type": "NotJson"}
        return KmsAnswer(status, parsed if isinstance(parsed, dict) else {}, request_id, elapsed)

    def _admin_headers(self) -> dict[str, str]:
        path = self.settings.path(self.settings.xks.admin_token_file)
        try:
            token = read_token(Path(path))
        except (OSError, ValueError):
            raise LabUnavailable("the proxy's admin token file cannot be read") from None
        return {"Authorization": f"Bearer {token}"}

    async def faults(self, method: str, path: str = "", body: Any = None) -> dict[str, Any]:
        """One call of the proxy's fault admin endpoint (README: Breaking things on purpose)."""
        url = self.facts()["xks"]["url"].rstrip("/") + FAULTS_PATH + path
        try:
            async with self.http.request(method, url, json=body, headers=self._admin_headers()) as answer:
                status, data = answer.status, await answer.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LabUnavailable(f"cannot reach the proxy's fault endpoint: {type(exc).__name__}") from None
        if status >= 400:
            raise LabUnavailable(f"the proxy refused the faults: HTTP {status} {data.get('error', '')}")
        return dict(data)
