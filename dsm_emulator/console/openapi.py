"""OpenAPI shapes of the console's routes (pages.py: its static files; routes.py: ``/console/api``),
beside the DSM document's other paths (dsm_emulator.api.openapi)."""

from __future__ import annotations

from typing import Any, Protocol

from xkslab_shared.openapi import Schema, array, content, nullable, obj, string

ANY = {"type": "object"}


class OperationBuilder(Protocol):
    def __call__(
        self,
        name: str,
        response: Schema | None,
        request: Schema | None = None,
        status: str = "200",
        *,
        public: bool = False,
        summary: str = "",
    ) -> dict[str, Any]: ...


def _file(op: OperationBuilder, name: str, summary: str) -> dict[str, Any]:
    operation = op(name, None, public=True, summary=summary)
    operation["responses"] = {
        "200": {"description": "the file", "content": content(string(), "text/html")},
        **{k: v for k, v in operation["responses"].items() if k == "default"},
    }
    return operation


def console_paths(op: OperationBuilder) -> dict[str, dict[str, Any]]:
    step = obj(
        ["operation", "status"],
        operation=string(),
        status={"type": "integer"},
        kms_request_id=nullable(string()),
        error=nullable(string()),
    )
    scenario = obj(["name", "active"], name=string(), description=string(), active={"type": "boolean"})
    return {
        "/console": {"get": _file(op, "console", "The web console (README: Console)")},
        "/console/": {"get": _file(op, "consoleSlash", "The web console")},
        "/console/{name}": {"get": _file(op, "consoleFile", "One of the console's static files")},
        "/console/api/lab": {
            "get": op("consoleLab", ANY, summary="Health of the three services, key store state, XKS metrics")
        },
        "/console/api/kms-keys": {
            "get": op("consoleKmsKeys", obj(["keys"], key_store_id=string(), keys=array(ANY))),
            "post": op(
                "consoleCreateKmsKey",
                ANY,
                obj(["xks_key_id"], xks_key_id=string()),
                summary="KMS CreateKey on the lab's key store (account administrators)",
            ),
        },
        "/console/api/demo": {
            "post": op(
                "consoleDemo",
                obj(["key_id", "steps"], key_id=string(), steps=array(step)),
                obj(key_id=string()),
                summary="GenerateDataKey then Decrypt through KMS, timed per hop (account administrators)",
            )
        },
        "/console/api/audit-chain": {
            "get": op(
                "consoleAuditChain",
                obj(
                    ["ok", "rows", "problems"],
                    ok={"type": "boolean"},
                    rows={"type": "integer"},
                    problems=array(ANY),
                ),
                summary="Verify the audit log's hash chains (account administrators)",
            )
        },
        "/console/api/faults": {
            "get": op(
                "consoleFaults", obj(["scenarios"], scenarios=array(scenario), faults_set={"type": "integer"})
            )
        },
        "/console/api/faults/{name}": {
            "post": op("consoleScenarioOn", ANY, summary="Set a scenario's faults on the proxy"),
            "delete": op("consoleScenarioOff", ANY, summary="Clear the faults a scenario set"),
        },
        "/console/api/key-store/connect": {
            "post": op("consoleConnectKeyStore", ANY, summary="KMS ConnectCustomKeyStore")
        },
    }
