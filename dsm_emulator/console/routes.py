"""The console's own routes (``/console/api/...``): what the browser cannot ask the DSM's REST API for,
because it lives in the other two services: their health and metrics, the key store's state, KMS keys,
a run of the demo through KMS, and the prepared fault scenarios. Each is authenticated like every DSM
route (the session's bearer token); reading needs a signed-in user or app, changing the lab (faults, KMS
keys, the demo) needs an account administrator, and each change is written to the DSM's audit log."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import func, select

from dsm_emulator.api.context import core_of, field, json_response, principal_of, read_json
from dsm_emulator.audit import verify as audit_verify
from dsm_emulator.audit.events import AuditEvent
from dsm_emulator.authz import Principal
from dsm_emulator.console.lab_link import KmsAnswer, LabLink, LabUnavailable
from dsm_emulator.errors import AccessDenied, BadRequest, DsmError, NotFound
from dsm_emulator.models import AuditRow
from xkslab_shared.faults_wire import FaultSpecError, parse_scenario

LINK_KEY = web.AppKey("console_lab_link", LabLink)
ACTIVE_KEY = web.AppKey("console_active_scenarios", dict)  # scenario file stem -> fault ids it set
API = "/console/api"
MAX_KMS_KEYS = 100
# The XKS operation behind each KMS operation the demo makes.
XKS_OPERATION = {"GenerateDataKey": "Encrypt", "Decrypt": "Decrypt", "Encrypt": "Encrypt"}

routes = web.RouteTableDef()


def _link(request: web.Request) -> LabLink:
    return request.app[LINK_KEY]


@contextlib.asynccontextmanager
async def _change(request: web.Request, operation: str, message: str) -> AsyncIterator[Principal]:
    """Around a change of the lab: the caller must be an account administrator; the change is audited
    once it is done, and a refusal (the caller's, KMS's, a service unreachable) as refused."""
    principal = principal_of(request)
    event = AuditEvent.by(principal, operation, message)
    audit = core_of(request).audit
    if not principal.is_admin:
        error = AccessDenied("the console's lab controls need an account administrator")
        await audit.record(event.refused(error))
        raise error
    try:
        yield principal
    except DsmError as exc:
        await audit.record(event.refused(exc))
        raise
    await audit.record(event)


def _sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    want = [f"{k}={v}" for k, v in labels.items()]
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base == name and all(w in rest.rstrip("}").split(",") for w in want):
            total += value
    return total


@routes.get(API + "/lab")
async def lab(request: web.Request) -> web.Response:
    """The three services' health, the key store's connection state and the XKS metrics (KMS side,
    CloudWatch names, and the proxy's own) as running totals: the page computes rates between polls."""
    principal_of(request)
    link = _link(request)
    facts = link.facts()
    store_id = facts["kms"]["custom_key_store_id"]
    dsm, xks, kms = await asyncio.gather(
        link.health(facts["dsm"]["url"]),
        link.health(facts["xks"]["url"]),
        link.health(facts["kms"]["endpoint_url"]),
    )
    described = await link.kms("DescribeCustomKeyStores", {"CustomKeyStoreId": store_id})
    stores = described.body.get("CustomKeyStores") or [{}]
    kms_samples = await link.metrics(facts["kms"]["endpoint_url"])
    xks_samples = await link.metrics(facts["xks"]["url"])
    states = {
        state: _sum(kms_samples, "kms_xks_external_key_manager_states", key_store_id=store_id, state=state)
        for state in ("ACTIVE", "DEGRADED", "UNAVAILABLE")
    }
    return json_response(
        {
            "services": {"dsm": dsm, "xks": xks, "kms": kms},
            "key_store": {
                "id": store_id,
                "name": stores[0].get("CustomKeyStoreName"),
                "state": stores[0].get("ConnectionState", described.error),
                "error_code": stores[0].get("ConnectionErrorCode"),
            },
            "kms": {
                "XksProxyLatency_sum_s": _sum(
                    kms_samples, "kms_xks_proxy_latency_seconds_sum", key_store_id=store_id
                ),
                "XksProxyLatency_count": _sum(
                    kms_samples, "kms_xks_proxy_latency_seconds_count", key_store_id=store_id
                ),
                "XksProxyErrors": _sum(kms_samples, "kms_xks_proxy_errors_total", key_store_id=store_id),
                "XksExternalKeyManagerStates": states,
                "XksProxyCredentialAge_days": _sum(
                    kms_samples, "kms_xks_proxy_credential_age_days", key_store_id=store_id
                ),
            },
            "xks": {
                # What CreateCustomKeyStore asks for: the endpoint as its certificate names it.
                "uri_endpoint": (facts["xks"].get("https_url") or facts["xks"]["url"]).replace(
                    "127.0.0.1", "localhost"
                ),
                "uri_path": facts["xks"]["uri_path"],
                "app_id": facts["xks"]["app_id"],
            },
            "proxy": {
                "requests": _sum(xks_samples, "xks_proxy_requests_total"),
                "errors": _sum(xks_samples, "xks_proxy_errors_total"),
                "latency_sum_s": _sum(xks_samples, "xks_proxy_latency_seconds_sum"),
            },
        }
    )


@routes.get(API + "/kms-keys")
async def kms_keys(request: web.Request) -> web.Response:
    """The KMS keys on the lab's external key store, with the DSM key (XksKeyId) behind each."""
    principal_of(request)
    link = _link(request)
    store_id = link.facts()["kms"]["custom_key_store_id"]
    listed = await link.kms("ListKeys", {"Limit": MAX_KMS_KEYS})
    keys = []
    for entry in listed.body.get("Keys", []):
        meta = (await link.kms("DescribeKey", {"KeyId": entry["KeyId"]})).body.get("KeyMetadata") or {}
        if meta.get("CustomKeyStoreId") != store_id:
            continue
        keys.append(
            {
                "key_id": meta.get("KeyId"),
                "state": meta.get("KeyState"),
                "description": meta.get("Description"),
                "xks_key_id": (meta.get("XksKeyConfiguration") or {}).get("Id"),
            }
        )
    return json_response({"key_store_id": store_id, "keys": keys})


@routes.post(API + "/kms-keys")
async def create_kms_key(request: web.Request) -> web.Response:
    """A KMS key on the lab's key store backed by the DSM key ``xks_key_id`` (KMS CreateKey)."""
    body = await read_json(request)
    xks_key_id = field(body, "xks_key_id", str, required=True)
    async with _change(request, "console.kms_key", f"console: KMS CreateKey on DSM key {xks_key_id[:64]}"):
        link = _link(request)
        answer = await link.kms(
            "CreateKey",
            {
                "Origin": "EXTERNAL_KEY_STORE",
                "CustomKeyStoreId": link.facts()["kms"]["custom_key_store_id"],
                "XksKeyId": xks_key_id,
                "Description": f"made in the xkslab console for DSM key {xks_key_id}",
            },
        )
        _refused_by_kms(answer, "CreateKey")
    return json_response(_answer(answer, "CreateKey"))


@routes.post(API + "/demo")
async def demo(request: web.Request) -> web.Response:
    """``xkslab demo`` from the browser: GenerateDataKey under a KMS key (the lab's alias unless
    ``key_id`` names another), then Decrypt of the data key it wrapped; for each call its kmsRequestId,
    KMS's time, the proxy round trip KMS measured (XksProxyLatency) and the proxy's own time, read as
    the change in the two services' metrics around the call (exact while nothing else runs; health
    checks are not counted). The plaintext data key never leaves the server: only its length."""
    body = await read_json(request, allow_empty=True)
    key_id = field(body, "key_id", str)
    named = (key_id or "the lab's alias")[:80]
    async with _change(request, "console.demo", f"console: run the demo with KMS key {named}"):
        result = await _demo(_link(request), key_id)
    return json_response(result)


async def _demo(link: LabLink, key_id: str | None) -> dict[str, Any]:
    facts = link.facts()
    key_id = key_id or facts["kms"]["alias"]
    context = {"purpose": "xkslab-console-demo"}
    steps = []
    generated = await _timed(
        link, facts, "GenerateDataKey", {"KeyId": key_id, "KeySpec": "AES_256", "EncryptionContext": context}
    )
    steps.append(generated)
    if generated["error"] is None:
        blob = generated.pop("_blob")
        steps.append(
            await _timed(link, facts, "Decrypt", {"CiphertextBlob": blob, "EncryptionContext": context})
        )
    for step in steps:
        step.pop("_blob", None)
    return {"key_id": key_id, "steps": steps}


async def _timed(
    link: LabLink, facts: dict[str, Any], operation: str, body: dict[str, Any]
) -> dict[str, Any]:
    kms_url, xks_url = facts["kms"]["endpoint_url"], facts["xks"]["url"]
    xks_op = XKS_OPERATION[operation]
    before = await asyncio.gather(link.metrics(kms_url), link.metrics(xks_url))
    answer = await link.kms(operation, body)
    after = await asyncio.gather(link.metrics(kms_url), link.metrics(xks_url))

    def delta(index: int, name: str, **labels: str) -> float:
        return _sum(after[index], name, **labels) - _sum(before[index], name, **labels)

    calls = delta(0, "kms_xks_proxy_latency_seconds_count", kms_operation=operation, xks_operation=xks_op)
    step = _answer(answer, operation)
    step.update(
        {
            "xks_operation": xks_op,
            "proxy_calls": int(calls),
            "kms_to_proxy_ms": 1000
            * delta(0, "kms_xks_proxy_latency_seconds_sum", kms_operation=operation, xks_operation=xks_op),
            "proxy_ms": 1000 * delta(1, "xks_proxy_latency_seconds_sum", operation=xks_op),
        }
    )
    blob = answer.body.get("CiphertextBlob")
    if isinstance(blob, str):
        step["ciphertext_bytes"] = len(blob) * 3 // 4 - blob.count("=")
        step["_blob"] = blob
    plaintext = answer.body.get("Plaintext")
    if isinstance(plaintext, str):
        step["plaintext_bytes"] = len(plaintext) * 3 // 4 - plaintext.count("=")
    return step


def _answer(answer: KmsAnswer, operation: str) -> dict[str, Any]:
    """What the page shows of a KMS answer: never the plaintext, never the ciphertext itself."""
    meta = answer.body.get("KeyMetadata") or {}
    return {
        "operation": operation,
        "status": answer.status,
        "kms_request_id": answer.request_id,
        "caller_ms": 1000 * answer.elapsed_s,
        "error": answer.error,
        "message": answer.body.get("message") or answer.body.get("Message"),
        "key_id": answer.body.get("KeyId") or meta.get("KeyId"),
    }


@routes.get(API + "/audit-chain")
async def audit_chain(request: web.Request) -> web.Response:
    """``xkslab audit verify`` for the Audit page: every hash chain walked, the first bad row of each
    named (an account administrator's, as the whole log is)."""
    if not principal_of(request).is_admin:
        raise AccessDenied("verifying the audit chain needs an account administrator")
    core = core_of(request)
    problems = await audit_verify(core.sessions, core.keyring)
    async with core.sessions() as session:
        rows = await session.scalar(select(func.count()).select_from(AuditRow))
    found = [{"chain": p.chain, "seq": p.seq, "row_id": p.row_id, "reason": p.reason} for p in problems]
    return json_response({"ok": not problems, "rows": rows or 0, "problems": found})


# ------------------------------------------------------------------------------------- faults


def scenario_dir(link: LabLink) -> Path:
    """``<data dir>/scenarios`` when it exists, else the checkout's ``docs/scenarios``."""
    own = link.settings.data_dir / "scenarios"
    return own if own.is_dir() else Path(__file__).resolve().parents[2] / "docs" / "scenarios"


def _scenarios(link: LabLink) -> dict[str, tuple[str, list[Any]]]:
    found: dict[str, tuple[str, list[Any]]] = {}
    where = scenario_dir(link)
    for path in sorted(where.glob("*.toml")) if where.is_dir() else []:
        text = path.read_text()
        try:
            faults = parse_scenario(text)
        except FaultSpecError:
            continue
        description = " ".join(
            line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")
        )
        found[path.stem] = (description, faults)
    return found


@routes.get(API + "/faults")
async def list_scenarios(request: web.Request) -> web.Response:
    principal_of(request)
    link = _link(request)
    current = {f["id"] for f in (await link.faults("GET")).get("faults", [])}
    active: dict[str, list[str]] = request.app[ACTIVE_KEY]
    for name in list(active):
        active[name] = [i for i in active[name] if i in current]
        if not active[name]:
            del active[name]
    scenarios = [
        {"name": name, "description": description, "faults": len(faults), "active": name in active}
        for name, (description, faults) in _scenarios(link).items()
    ]
    return json_response({"scenarios": scenarios, "faults_set": len(current)})


@routes.post(API + "/faults/{name}")
async def scenario_on(request: web.Request) -> web.Response:
    link = _link(request)
    name = request.match_info["name"]
    scenario = _scenarios(link).get(name)
    if scenario is None:
        raise NotFound(f"no scenario named {name[:64]}")
    async with _change(request, "console.faults", f"console: scenario {name} on"):
        answer = await link.faults("POST", body={"faults": [fault.to_json() for fault in scenario[1]]})
        request.app[ACTIVE_KEY].setdefault(name, []).extend(answer.get("ids", []))
    return json_response({"name": name, "active": True})


@routes.delete(API + "/faults/{name}")
async def scenario_off(request: web.Request) -> web.Response:
    link = _link(request)
    name = request.match_info["name"]
    if name not in _scenarios(link):
        raise NotFound(f"no scenario named {name[:64]}")
    async with _change(request, "console.faults", f"console: scenario {name} off"):
        for fault_id in request.app[ACTIVE_KEY].pop(name, []):
            try:
                await link.faults("DELETE", f"/{fault_id}")
            except LabUnavailable:
                pass  # one that ran its course is gone already
    return json_response({"name": name, "active": False})


@routes.post(API + "/key-store/connect")
async def connect_key_store(request: web.Request) -> web.Response:
    """Reconnect the lab's key store as an operator does after a failure: DisconnectCustomKeyStore
    (unless it is disconnected already), then ConnectCustomKeyStore; KMS's refusal is the answer."""
    async with _change(request, "console.key_store", "console: reconnect the key store"):
        link = _link(request)
        store = {"CustomKeyStoreId": link.facts()["kms"]["custom_key_store_id"]}
        described = await link.kms("DescribeCustomKeyStores", store)
        state = (described.body.get("CustomKeyStores") or [{}])[0].get("ConnectionState")
        steps = ["ConnectCustomKeyStore"]
        if state != "DISCONNECTED":
            steps.insert(0, "DisconnectCustomKeyStore")
        for operation in steps:
            _refused_by_kms(await link.kms(operation, store), operation)
    return json_response({"connecting": True})


def _refused_by_kms(answer: KmsAnswer, operation: str) -> None:
    if answer.error is not None:
        message = answer.body.get("message") or answer.body.get("Message") or ""
        raise BadRequest(f"KMS refused {operation}: {answer.error} {message}".strip())
