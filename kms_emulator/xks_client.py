"""The KMS emulator's only caller of XKS proxies: sign as KMS signs, send within KMS's budget, trust nothing.

Every proxy call reads in one line: build the body -> sign it with SigV4 (service ``kms-xks-proxy``) ->
POST it on a kept-alive connection (xks_http) within KMS's 250 ms (connect, TLS handshake and answer,
spec §1.13) -> classify the outcome -> validate a 200 body field by field (spec §1.4-§1.7). Whatever
goes wrong leaves as one :class:`XksProxyError` carrying KMS's ``ConnectionErrorCode``, so the key-store and
CreateKey code paths only choose a KMS exception name (:func:`key_store_exception`,
:func:`create_key_exception`) and never look at HTTP or sockets.

Nothing here logs or puts into an error a body, the plaintext or the secret: log lines and messages are
built from field names, HTTP statuses and exception class names only.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson

from kms_emulator import xks_answers as answers
from kms_emulator.xks_answers import EncryptResult
from kms_emulator.xks_errors import (
    Code,
    ConnectionErrorCode,
    XksProxyError,
    create_key_exception,
    error_answer,
    key_store_exception,
    transport_error,
)
from kms_emulator.xks_http import AnswerTooLarge, HttpPool, MalformedAnswer
from xkslab_shared import tls
from xkslab_shared.sigv4_sign import sign

__all__ = [
    "ConnectionErrorCode",
    "EncryptResult",
    "ProxyCall",
    "XksProxyClient",
    "XksProxyConfig",
    "XksProxyError",
    "create_key_exception",
    "key_store_exception",
    "request_metadata",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE = "kms-xks-proxy"
ALGORITHM = "AES_GCM"
# Far above any answer to a KMS-sized request, so a misbehaving proxy cannot make us buffer without end.
MAX_RESPONSE_BYTES = 1 << 20
CLIENT_CERT_CHECK_S = 1.0
_CONTENT_TYPE = {"Content-Type": "application/json"}
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Only characters that need no URI-encoding, so the signed path is the sent path.
_URI_PATH = re.compile(r"/[A-Za-z0-9/_-]*")


@dataclass(frozen=True)
class XksProxyConfig:
    """Where a key store's proxy is and how KMS signs for it; validated here so that a config that could
    never be signed and sent correctly fails when it is built, not on its first call."""

    uri_endpoint: str  # "https://host[:port]" or "http://127.0.0.1:8600" (loopback proxies)
    uri_path: str  # "/crypto/v1/apps/<id>/aws/kms/xks/v1"
    access_key_id: str
    secret: str = field(repr=False)
    region: str = "us-east-1"
    key_store_id: str = ""  # labels the call's metrics (empty: a proxy not yet part of a key store)

    def __post_init__(self) -> None:
        parts = urlsplit(self.uri_endpoint)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or not parts.hostname.isascii()
            or parts.username is not None
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise ValueError(
                "uri_endpoint must be http(s)://host[:port] (an ASCII host) with no path, query or user"
            )
        _ = parts.port  # raises ValueError for a port that is not 0-65535
        if _URI_PATH.fullmatch(self.uri_path) is None:
            raise ValueError("uri_path must start with / and use only A-Z a-z 0-9 / - _")

    def url(self, tail: str) -> str:
        return f"{self.uri_endpoint.rstrip('/')}{self.path(tail)}"

    def path(self, tail: str) -> str:
        return f"{self.uri_path.rstrip('/')}/{tail}"

    @functools.cached_property
    def target(self) -> tuple[str, str, int]:
        """Where to connect: the scheme, the host name (IPv6 without brackets) and the port."""
        parts = urlsplit(self.uri_endpoint)
        return parts.scheme, parts.hostname or "", parts.port or {"http": 80, "https": 443}[parts.scheme]

    @functools.cached_property
    def host(self) -> str:
        """The Host header sent and signed: lower case, IPv6 in brackets, the port unless the default."""
        parts = urlsplit(self.uri_endpoint)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None and parts.port != {"http": 80, "https": 443}[parts.scheme]:
            host = f"{host}:{parts.port}"
        return host


def request_metadata(
    *,
    kms_operation: str,
    kms_request_id: str,
    aws_principal_arn: str | None = None,
    kms_key_arn: str | None = None,
) -> dict[str, str]:
    """The requestMetadata KMS sends (§1.3), with only the fields that are set: GetKeyMetadata has no
    kmsKeyArn since v1.0.3, and the proxy logs and authorizes on exactly what it receives."""
    meta = {"kmsOperation": kms_operation, "kmsRequestId": kms_request_id}
    if aws_principal_arn is not None:
        meta["awsPrincipalArn"] = aws_principal_arn
    if kms_key_arn is not None:
        meta["kmsKeyArn"] = kms_key_arn
    return meta


@dataclass(frozen=True)
class ProxyCall:
    """What one proxy call was, for the metrics KMS keeps of it (never a body or a secret)."""

    key_store_id: str
    kms_operation: str
    xks_operation: str  # health | metadata | encrypt | decrypt
    seconds: float
    error: XksProxyError | None
    cert_not_after: float | None  # the proxy certificate's notAfter (epoch seconds), over HTTPS
    health_states: list[str] | None  # GetHealthStatus: each key manager's healthStatus


class XksProxyClient:
    """One pool of kept-alive connections for every proxy of every key store, as KMS keeps connections
    warm (kms_emulator.xks_http)."""

    def __init__(
        self,
        *,
        timeout_s: float = 0.25,
        ca_file: Path | None = None,
        client_cert: tuple[Path, Path] | None = None,
    ) -> None:
        """``ca_file``: the CA bundle trusted for https endpoints; None trusts the system store, as real
        KMS trusts the public CAs. ``client_cert``: the (certificate, key) files presented to every https
        proxy, as KMS presents ``cks.kms.<region>.amazonaws.com`` (spec 1.10), when both exist; reread
        when they change, for new connections. ``timeout_s`` bounds connect, TLS handshake and answer
        together."""
        self.timeout_s = timeout_s
        self.ca_file = ca_file
        self.client_cert = client_cert
        self._certificate: tls.ClientCertificate | None = None
        self._pool: HttpPool | None = None
        # Told about every call once it ends (the KMS metrics); must not raise.
        self.observer: Callable[[ProxyCall], None] | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        context = tls.client_context(self.ca_file)
        if self.client_cert is not None:
            self._certificate = tls.ClientCertificate(context, *self.client_cert)
        self._pool = HttpPool(context, MAX_RESPONSE_BYTES)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def __aenter__(self) -> XksProxyClient:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def health(self, cfg: XksProxyConfig, *, kms_operation: str, kms_request_id: str) -> dict[str, Any]:
        """GetHealthStatus (§1.7): the validated answer, for Create/Update/ConnectCustomKeyStore and the
        periodic KmsHealthCheck."""
        meta = request_metadata(kms_operation=kms_operation, kms_request_id=kms_request_id)
        return await self._call(cfg, "health", "health", {"requestMetadata": meta}, answers.check_health)

    async def key_metadata(
        self, cfg: XksProxyConfig, xks_key_id: str, metadata: dict[str, str]
    ) -> dict[str, Any]:
        """GetKeyMetadata (§1.4): the validated answer; whether it suits a KMS key is CreateKey's call."""
        _require(metadata, "kmsOperation", "kmsRequestId", "awsPrincipalArn")
        body = {"requestMetadata": metadata}
        return await self._call(
            cfg, "metadata", _key_path(xks_key_id, "metadata"), body, answers.check_metadata
        )

    async def encrypt(
        self,
        cfg: XksProxyConfig,
        xks_key_id: str,
        plaintext: bytes,
        aad: bytes | None,
        metadata: dict[str, str],
    ) -> EncryptResult:
        """Encrypt (§1.5): the outer layer of the double envelope. The ciphertext must be exactly as long
        as the plaintext, since AES-GCM is a stream mode; anything else cannot be the proxy's GCM output."""
        _require(metadata, "kmsOperation", "kmsRequestId", "awsPrincipalArn", "kmsKeyArn")
        body: dict[str, Any] = {
            "requestMetadata": metadata,
            "plaintext": _b64(plaintext),
            "encryptionAlgorithm": ALGORITHM,
        }
        if aad is not None:
            body["additionalAuthenticatedData"] = _b64(aad)

        def check(data: dict[str, Any]) -> EncryptResult:
            return answers.check_encrypt(data, len(plaintext))

        return await self._call(cfg, "encrypt", _key_path(xks_key_id, "encrypt"), body, check)

    async def decrypt(
        self,
        cfg: XksProxyConfig,
        xks_key_id: str,
        result: EncryptResult,
        aad: bytes | None,
        metadata: dict[str, str],
    ) -> bytes:
        """Decrypt (§1.6): the plaintext, which must be exactly as long as the ciphertext."""
        _require(metadata, "kmsOperation", "kmsRequestId", "awsPrincipalArn", "kmsKeyArn")
        body: dict[str, Any] = {
            "requestMetadata": metadata,
            "ciphertext": _b64(result.ciphertext),
            "encryptionAlgorithm": ALGORITHM,
            "initializationVector": _b64(result.iv),
            "authenticationTag": _b64(result.tag),
        }
        if result.ciphertext_metadata is not None:
            body["ciphertextMetadata"] = _b64(result.ciphertext_metadata)
        if aad is not None:
            body["additionalAuthenticatedData"] = _b64(aad)

        def check(data: dict[str, Any]) -> bytes:
            return answers.check_decrypt(data, len(result.ciphertext))

        return await self._call(cfg, "decrypt", _key_path(xks_key_id, "decrypt"), body, check)

    async def _call(
        self,
        cfg: XksProxyConfig,
        operation: str,
        tail: str,
        body: dict[str, Any],
        check: Callable[[dict[str, Any]], T],
    ) -> T:
        """Sign, send, classify, validate; and one log line per call, without bodies or secrets."""
        if self._pool is None:
            raise RuntimeError("XksProxyClient.open() was not called")
        meta = body["requestMetadata"]
        started = time.perf_counter()
        outcome = "failed"  # replaced on success or by the error's codes; stays for a cancellation
        not_after: list[float] = []
        failure: XksProxyError | None = None
        states: list[str] | None = None
        try:
            payload = orjson.dumps(body)  # compact, one line
            status, raw = await self._post(cfg, tail, payload, not_after)
            if status != 200:
                raise error_answer(operation, status, raw)
            try:
                answer = check(answers.json_object(raw))
            except answers.Malformed as exc:
                raise XksProxyError(
                    Code.XKS_PROXY_INVALID_RESPONSE,
                    f"the XKS proxy's {operation} answer is malformed: {exc}",
                    http_status=status,
                ) from None
            outcome = "success"
            if operation == "health" and isinstance(answer, dict):
                states = [str(node.get("healthStatus")) for node in answer["ekmFleetDetails"]]
            return answer
        except XksProxyError as exc:
            outcome = f"{exc.connection_error_code}/{exc.error_name or '-'}"
            failure = exc
            raise
        finally:
            if self.observer is not None:
                self.observer(
                    ProxyCall(
                        cfg.key_store_id,
                        str(meta.get("kmsOperation", "")),
                        operation,
                        time.perf_counter() - started,
                        failure,
                        not_after[0] if not_after else None,
                        states,
                    )
                )
            # At debug: the request's own access line (info) carries its kmsRequestId and outcome.
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s",
                    json.dumps(
                        {
                            "event": "xks_proxy_call",
                            "operation": operation,
                            "endpoint": cfg.uri_endpoint,
                            "uriPath": cfg.uri_path,
                            "kmsOperation": meta.get("kmsOperation"),
                            "kmsRequestId": meta.get("kmsRequestId"),
                            "outcome": outcome,
                            "ms": round((time.perf_counter() - started) * 1000, 3),
                        }
                    ),
                )

    async def _post(
        self, cfg: XksProxyConfig, tail: str, payload: bytes, not_after: list[float]
    ) -> tuple[int, bytes]:
        """One signed POST; every transport failure becomes an XksProxyError here and nowhere else.
        Over HTTPS, the proxy certificate's notAfter is appended to ``not_after``."""
        assert self._pool is not None
        path = cfg.path(tail)
        headers = sign(
            method="POST",
            host=cfg.host,
            path=path,
            headers=_CONTENT_TYPE,
            body=payload,
            access_key_id=cfg.access_key_id,
            secret=cfg.secret,
            region=cfg.region,
            service=SERVICE,
        )
        scheme, hostname, port = cfg.target
        if self._certificate is not None and scheme == "https":
            # A reissued client certificate goes out on the connections made from a second later on.
            self._certificate.refresh(at_most_every_s=CLIENT_CERT_CHECK_S)
        try:
            async with asyncio.timeout(self.timeout_s):  # connect, TLS handshake and answer together
                status, raw, expiry = await self._pool.post(
                    scheme, hostname, port, _request(path, headers, payload)
                )
        except TimeoutError:
            raise XksProxyError(
                Code.XKS_PROXY_TIMED_OUT, f"the XKS proxy did not answer within {self.timeout_s:g} s"
            ) from None
        except AnswerTooLarge as exc:
            raise XksProxyError(
                Code.XKS_PROXY_INVALID_RESPONSE,
                f"the XKS proxy's answer is larger than {MAX_RESPONSE_BYTES} bytes",
                http_status=exc.status,
            ) from None
        except (MalformedAnswer, OSError) as exc:
            raise transport_error(exc) from None
        if expiry is not None:
            not_after.append(expiry)
        return status, raw


def _request(path: str, headers: Mapping[str, str], payload: bytes) -> bytes:
    """The request as sent: the path as signed (unreserved characters only), the signed headers."""
    lines = [f"POST {path} HTTP/1.1"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"the {name} header holds a line break")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(payload)}\r\n\r\n")
    return "\r\n".join(lines).encode() + payload


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key_path(xks_key_id: str, operation: str) -> str:
    if _KEY_ID.fullmatch(xks_key_id) is None:
        raise ValueError("an XKS key id is 1-128 characters of A-Z a-z 0-9 . - _")
    return f"keys/{xks_key_id}/{operation}"


def _require(metadata: Mapping[str, str], *keys: str) -> None:
    """A missing field is our bug; sent anyway, the proxy's 400 would be blamed on the proxy."""
    missing = [key for key in keys if not isinstance(metadata.get(key), str)]
    if missing:
        raise ValueError(f"requestMetadata lacks {', '.join(missing)}")
