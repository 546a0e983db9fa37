"""The services against their own OpenAPI documents, live: schemathesis generates requests for every
documented operation (bounded: a few examples each) and checks that none is answered
5xx and that every answer matches the document (status, content type, body schema). Then the Grafana
dashboard: every metric it queries is in the services' /metrics after some real traffic.

One in-process lab (real DSM, proxy and KMS on loopback, bootstrapped as ``xkslab up`` does) serves the
module; schemathesis' blocking requests run in the test thread while the lab runs on its own loop."""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dsm_emulator.api.not_emulated import NOT_EMULATED
from tests import deadlines
from xkslab.lab.info import LabInfo
from xkslab.lab.inprocess import lab_in_thread

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
NOT_EMULATED_OPERATIONS = {entry.operation for entry in NOT_EMULATED}
EXAMPLES = 12  # per operation
# A hang guard per request, not a budget: far above any answer on a loaded machine.
REQUEST_GUARD_S = 120
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "xkslab.json"


@schemathesis.serializer("application/x-amz-json-1.1")
def _amz_json(ctx: Any, value: Any) -> bytes:
    return json.dumps(value).encode()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabInfo]:
    with lab_in_thread(tmp_path_factory.mktemp("openapi") / "lab", deadlines.GENEROUS) as info:
        yield info


class SigV4(requests.auth.AuthBase):
    """Signs each request as KMS signs its proxy calls (service kms-xks-proxy)."""

    def __init__(self, akid: str, secret: str) -> None:
        self.credentials = Credentials(akid, secret)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        signed = AWSRequest(
            method=request.method,
            url=request.url,
            data=body,
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        )
        SigV4Auth(self.credentials, "kms-xks-proxy", "us-east-1").add_auth(signed)
        for name, value in signed.headers.items():
            request.headers[name] = value
        return request


def load(url: str) -> Any:
    return schemathesis.openapi.from_dict(json.loads(urllib.request.urlopen(url + "/openapi.json").read()))


SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)


def fuzz(strategy: Any, base_url: str, session: requests.Session, kwargs: dict[str, Any]) -> set[int]:
    """The statuses seen; fails on the first case a check refuses (hypothesis then shrinks it)."""
    statuses: set[int] = set()

    @SETTINGS
    @hypothesis.given(case=strategy)
    def check(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, timeout=REQUEST_GUARD_S, **kwargs)
        statuses.add(response.status_code)
        not_emulated = case.operation.definition.raw.get("operationId") in NOT_EMULATED_OPERATIONS
        # A route the lab does not emulate answers its documented 501; every other check still applies.
        case.validate_response(response, checks=CHECKS[1:] if not_emulated else CHECKS)

    check()
    return statuses


def run(
    schema: Any, base_url: str, strategy_for: Any, call_kwargs_for: Any, skip: set[str]
) -> dict[str, set[int]]:
    """Every operation of ``schema`` not in ``skip``, EXAMPLES cases each: the statuses each operation was
    answered with."""
    exercised: dict[str, set[int]] = {}
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.definition.raw.get("operationId") in skip:
            continue
        exercised[operation.label] = fuzz(
            strategy_for(operation), base_url, session, call_kwargs_for(operation)
        )
    return exercised


def test_dsm_matches_its_document(lab: LabInfo) -> None:
    dsm = lab.data["dsm"]
    basic = {"Authorization": "Basic " + lab.api_key}
    admin_basic = base64.b64encode(f"{dsm['admin_email']}:{dsm['admin_password']}".encode()).decode()
    admin = requests.post(
        lab.dsm_url + "/sys/v1/session/auth", headers={"Authorization": "Basic " + admin_basic}
    )
    app = requests.post(lab.dsm_url + "/sys/v1/session/auth", headers=basic)
    tokens = {"/sys": admin.json()["access_token"], "/crypto": app.json()["access_token"]}

    def headers(operation: Any) -> dict[str, Any]:
        if operation.path == "/sys/v1/session/auth":
            return {"headers": basic}
        token = tokens["/sys" if operation.path.startswith("/sys") else "/crypto"]
        return {"headers": {"Authorization": f"Bearer {token}"}}

    # terminate would end the sessions the other operations use (it is covered by test_dsm_sessions).
    done = run(load(lab.dsm_url), lab.dsm_url, lambda op: op.as_strategy(), headers, {"terminate"})
    assert len(done) >= 45
    assert sum(200 in statuses or 201 in statuses for statuses in done.values()) >= 15, done


def test_xks_proxy_matches_its_document(lab: LabInfo) -> None:
    xks = lab.data["xks"]
    auth = SigV4(xks["access_key_id"], xks["secret_access_key"])
    fixed = {"appId": xks["app_id"]}
    kek = lab.data["dsm"]["root_kek_id"]

    def strategy(operation: Any) -> Any:
        if "appId" not in operation.path:
            return operation.as_strategy()
        # Half the cases name the lab's root KEK, so successes are checked against the document too.
        with_key = {**fixed, "externalKeyId": kek} if "externalKeyId" in operation.path else fixed
        return st.one_of(
            operation.as_strategy(path_parameters=with_key), operation.as_strategy(path_parameters=fixed)
        )

    done = run(load(xks["url"]), xks["url"], strategy, lambda op: {"auth": auth}, set())
    # The four XKS operations, ping, health, metrics, this document and the fault endpoint's four.
    assert len(done) == 12
    assert done["GET /health"] == {200}, done
    # Without the admin token, the fault endpoint refuses every case.
    assert all(done[op] == {401} for op in done if "/xkslab/v1/faults" in op), done
    # Signed right, health succeeds (random key-operation bodies rarely carry valid metadata and base64).
    assert 200 in done["POST /crypto/v1/apps/{appId}/aws/kms/xks/v1/health"], done


def test_kms_matches_its_document(lab: LabInfo) -> None:
    url = lab.kms_endpoint
    done = run(load(url), url, lambda op: op.as_strategy(), lambda op: {}, set())
    assert len(done) >= 30
    # The pseudo-paths reach POST / (the fragment is not sent): operations that need no existing
    # resource succeed for some generated input.
    for name in ("ListKeys", "ListAliases", "GenerateRandom", "DescribeCustomKeyStores"):
        assert 200 in done[f"POST /#X-Amz-Target=TrentService.{name}"], done


def _queried_names(dashboard: dict[str, Any]) -> set[str]:
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(by|without)\s*\([^)]*\)", "", target["expr"])
            for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?!\s*\()", expr):
                if word.startswith(("kms_", "xks_", "dsm_")):
                    names.add(word)
    return names


def _exported(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
    return names


def test_the_dashboard_queries_only_metrics_the_services_export(lab: LabInfo) -> None:
    kms = lab.kms_client()
    blob = kms.encrypt(KeyId=lab.key_id, Plaintext=b"dashboard")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"dashboard"
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.describe_key(KeyId="alias/none")
    exported: set[str] = set()
    for base in (lab.dsm_url, lab.data["xks"]["url"], lab.kms_endpoint):
        exported |= _exported(urllib.request.urlopen(base + "/metrics").read().decode())
    queried = _queried_names(json.loads(DASHBOARD.read_text()))
    # Counters of events a healthy lab never has (errors, throttling, audit failures) have no sample yet:
    # their families are declared, which the exposition shows as # TYPE lines.
    declared = set()
    for base in (lab.dsm_url, lab.data["xks"]["url"], lab.kms_endpoint):
        for family in text_string_to_metric_families(
            urllib.request.urlopen(base + "/metrics").read().decode()
        ):
            if family.type == "counter":
                declared.add(family.name + "_total")
    assert len(queried) >= 15
    missing = queried - exported - declared
    assert not missing, f"the dashboard queries metrics no service exports: {sorted(missing)}"
    for name in (
        "kms_xks_proxy_latency_seconds_bucket",
        "kms_xks_external_key_manager_states",
        "kms_xks_proxy_certificate_days_to_expire",
        "kms_xks_proxy_credential_age_days",
    ):
        assert name in exported
