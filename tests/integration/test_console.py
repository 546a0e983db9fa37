"""The web console (README: Console) in a real browser: Debian's Chromium driven by Playwright, against a
real ``xkslab up`` (three service processes) on SQLite and on PostgreSQL. Every test saves a screenshot
under its temporary directory. Waits are Playwright's, with generous timeouts: a stalled machine makes
a test slower, never wrong."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api as playwright_api

from tests import deadlines
from tests.conftest import pg_url
from xkslab.lab.info import FREE_PORTS, START_TIMEOUT_S, STOP_TIMEOUT_S, LabInfo
from xkslab.lab.process import fresh_database, lab_process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 60_000  # a bound for a stalled machine, not a budget
# Each page, and what shows it has drawn what it fetched.
PAGES = {
    "overview": ".stat",
    "keys": "tr[data-kid]",
    "apps": "tr[data-app]",
    "audit": "tbody tr[data-id]",
    "flow": "table caption",
    "approvals": "table caption",
    "faults": "tr[data-scenario]",
}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabInfo]:
    base = tmp_path_factory.mktemp(f"console-{request.param}")
    # Repeated failures turn the key store FAILED (the Faults page shows it), KmsHealthCheck every 0.5 s.
    overrides = {**deadlines.GENEROUS, "kms.xks_failure_threshold": "3", "kms.xks_health_check_s": "0.5"}
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":
            overrides["database.url"] = stack.enter_context(fresh_database(pg_url("test"), tag="console"))
        yield stack.enter_context(lab_process(base / "data", overrides, log_file=base / "up.log"))


@pytest.fixture
def browser(lab: LabInfo) -> Iterator[Any]:
    """Chromium for one test. Started after the lab and stopped before it: Playwright's synchronous API
    runs an event loop on this thread while it is open, and the PostgreSQL lab's set-up and tear-down
    run their own (asyncio.run)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (scripts/test does)")
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture
def page(lab: LabInfo, browser: Any, tmp_path: Path) -> Iterator[Any]:
    """A fresh browser context (its own session storage) on the console; errors in the page fail the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    # A script, style or connection the Content-Security-Policy blocked is a console error naming it.
    opened.on(
        "console",
        lambda message: errors.append(message.text) if "Content Security Policy" in message.text else None,
    )
    yield opened
    opened.screenshot(path=str(tmp_path / "console.png"), full_page=True)
    context.close()
    assert errors == []


def console_url(lab: LabInfo) -> str:
    return str(lab.data["console"]["url"])


def sign_in(page: Any, lab: LabInfo, email: str | None = None, password: str | None = None) -> None:
    page.goto(console_url(lab))
    page.fill("#email", email or lab.data["dsm"]["admin_email"])
    page.fill("#password", password or lab.data["dsm"]["admin_password"])
    page.keyboard.press("Enter")  # the form is usable with the keyboard
    page.wait_for_selector("nav a[aria-current=page]")


def dsm_admin(lab: LabInfo, method: str, path: str, body: Any = None) -> Any:
    """One REST call as the lab's administrator (session auth, then bearer), as the console makes it."""
    dsm = lab.data["dsm"]
    auth = urllib.request.Request(dsm["url"] + "/sys/v1/session/auth", method="POST")
    pair = f"{dsm['admin_email']}:{dsm['admin_password']}".encode()
    auth.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    with urllib.request.urlopen(auth, timeout=60) as answer:
        token = json.loads(answer.read())["access_token"]
    call = urllib.request.Request(
        dsm["url"] + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(call, timeout=60) as answer:
        raw = answer.read()
    return json.loads(raw) if raw else None


def test_sign_in_shows_the_three_services_and_the_key_store(page: Any, lab: LabInfo) -> None:
    sign_in(page, lab)
    page.wait_for_selector("text=CONNECTED")
    stats = page.locator(".stat").all_inner_texts()
    assert any(s.startswith("DSM\nok") for s in stats), stats
    assert any(s.startswith("XKS proxy\nok") for s in stats), stats
    assert any(s.startswith("KMS\nok") for s in stats), stats
    assert lab.custom_key_store_id in page.inner_text("main")


def test_a_wrong_password_is_refused(page: Any, lab: LabInfo) -> None:
    page.goto(console_url(lab))
    page.fill("#email", lab.data["dsm"]["admin_email"])
    page.fill("#password", "not the password")
    page.click("button[type=submit]")
    page.wait_for_selector(".notice[data-kind=error]")
    assert page.locator("nav").is_hidden()


def test_create_a_key_disable_it_and_kms_refuses_it_in_the_flow(page: Any, lab: LabInfo) -> None:
    name = f"console-{uuid.uuid4().hex[:8]}"
    sign_in(page, lab)
    page.click("nav >> text=Keys")
    page.fill("#key-name", name)
    page.click("text=Create key")
    row = page.locator("tr", has=page.locator(f"td:text-is('{name}')"))
    row.wait_for()
    kid = row.get_attribute("data-kid")
    assert kid
    row.locator("text=Use in KMS").click()
    row.locator("td[data-label='Used by KMS'] code").wait_for()
    kms_key_id = row.locator("td[data-label='Used by KMS'] code").inner_text()
    assert lab.kms_client().describe_key(KeyId=kms_key_id)["KeyMetadata"]["XksKeyConfiguration"]["Id"] == kid

    row.locator("button", has_text="Disable").click()
    row.locator("text=disabled").wait_for()
    assert not dsm_admin(lab, "GET", f"/crypto/v1/keys/{kid}")["enabled"]

    page.click("nav >> text=The flow")
    page.wait_for_selector(f"#kms-key option[value='{kms_key_id}']", state="attached")
    page.select_option("#kms-key", kms_key_id)
    page.click("#run-demo")
    refusal = page.locator(".refusal")
    refusal.wait_for()
    assert refusal.inner_text().startswith("KMS refused: KMSInvalidStateException")
    figure = page.locator("figure.flow")
    assert figure.get_attribute("data-operation") == "GenerateDataKey"
    assert figure.count() == 1  # no Decrypt after a refused GenerateDataKey


def test_revoke_destroy_and_undo_under_a_key_history_policy(page: Any, lab: LabInfo) -> None:
    group = dsm_admin(
        lab,
        "POST",
        "/sys/v1/groups",
        {"name": f"history-{uuid.uuid4().hex[:8]}", "key_history_policy": {"undo_time_window": 604800}},
    )
    name = f"undoable-{uuid.uuid4().hex[:8]}"
    kid = dsm_admin(
        lab,
        "POST",
        "/crypto/v1/keys",
        {
            "name": name,
            "obj_type": "AES",
            "key_size": 256,
            "key_ops": ["ENCRYPT"],
            "group_id": group["group_id"],
        },
    )["kid"]
    sign_in(page, lab)
    page.click("nav >> text=Keys")
    page.select_option("#group", group["group_id"])
    row = page.locator(f"tr[data-kid='{kid}']")
    row.locator("button", has_text="Revoke").click()
    page.locator(".notice[data-kind=ok]", has_text=f"Revoke {name}: done").wait_for()
    row.locator("button", has_text="Destroy").click()
    row.locator(".badge", has_text="Destroyed").wait_for()
    assert row.locator("button").all_inner_texts() == ["Undo"]
    row.locator("button", has_text="Undo").click()
    page.locator(".notice[data-kind=ok]", has_text=f"Undo {name}: done").wait_for()
    row.locator(".badge", has_text="Destroyed").wait_for(state="detached")
    assert dsm_admin(lab, "GET", f"/crypto/v1/keys/{kid}")["state"] != "Destroyed"


def test_run_the_demo_from_the_button(page: Any, lab: LabInfo) -> None:
    sign_in(page, lab)
    page.click("nav >> text=The flow")
    page.click("#run-demo")
    page.wait_for_selector("figure.flow[data-operation=Decrypt] caption")  # its audit row has arrived
    generate = page.locator("figure.flow[data-operation=GenerateDataKey]")
    generate.locator("caption").wait_for()
    text = generate.inner_text()
    assert "Data key: 32 bytes" in text
    assert "CiphertextBlob" in text
    request_id = text.split("kmsRequestId ")[1].split()[0]
    # The audit row shown is the DSM's own for this kmsRequestId, a success.
    assert generate.locator("td[data-label=Outcome]").inner_text() == "success"
    hits = dsm_admin(lab, "GET", "/sys/v1/logs?size=500")["hits"]
    assert any(request_id in (h["_source"]["client_provided_context"] or "") for h in hits)
    # Each hop has a time: caller-KMS, KMS-proxy, and the DSM's response time.
    times = generate.locator(".arrow strong").all_inner_texts()
    assert len(times) == 3 and all(t.endswith(" ms") for t in times), times
    # Picked again from the recent requests: the same DSM audit row, from the log alone.
    page.locator("button", has_text=request_id).click()
    picked = page.locator("figure.flow[data-operation=GenerateDataKey]")
    page.locator("#flow-output", has_text="From the audit log").wait_for()
    assert picked.count() == 1 and request_id in picked.inner_text()
    assert picked.locator("td[data-label=Outcome]").inner_text() == "success"


def test_rotating_the_xks_credential_keeps_the_previous_one(page: Any, lab: LabInfo) -> None:
    sign_in(page, lab)
    page.click("nav >> text=Apps")
    page.click("button[aria-label='Credential of xkslab-kms-xks']")
    before = page.locator("input[aria-label=AccessKeyId]").input_value()
    assert page.locator("input[aria-label=XksProxyUriPath]").input_value() == lab.xks_uri_path
    page.click("#rotate")
    page.wait_for_selector("#previous-key-id")
    assert page.inner_text("#previous-key-id") == before
    after = page.locator("input[aria-label=AccessKeyId]").input_value()
    assert after and after != before
    # KMS still holds the previous pair: the proxy accepts it until the next rotation.
    blob = lab.kms_client().encrypt(KeyId=lab.key_id, Plaintext=b"after rotation")["CiphertextBlob"]
    assert lab.kms_client().decrypt(CiphertextBlob=blob)["Plaintext"] == b"after rotation"


def test_an_audit_row_appears_live(page: Any, lab: LabInfo) -> None:
    sign_in(page, lab)
    page.click("nav >> text=Audit")
    page.wait_for_selector("text=Live:")
    request_id = lab.kms_client().encrypt(KeyId=lab.key_id, Plaintext=b"watched")["ResponseMetadata"][
        "RequestId"
    ]
    row = page.locator("tr.fresh", has_text=request_id)
    row.wait_for()  # without a reload
    assert "Encrypt" in row.inner_text()
    page.locator("#chain", has_text="Chain: verified").wait_for()
    page.fill("#f-request", request_id)
    assert page.locator("tbody tr").count() == 1
    with page.expect_download() as download:
        page.click("#export")
    exported = json.loads(Path(download.value.path()).read_text())
    assert [json.loads(row["client_provided_context"])["kmsRequestId"] for row in exported] == [request_id]
    page.select_option("#f-outcome", "refused")
    page.locator("td.muted", has_text="none").wait_for()


def test_an_auditor_is_refused_what_needs_an_administrator(page: Any, lab: LabInfo) -> None:
    email, password = f"auditor-{uuid.uuid4().hex[:8]}@xkslab.local", "auditor password 1!"
    dsm_admin(
        lab,
        "POST",
        "/sys/v1/users/invite",
        {"user_email": email, "user_password": password, "account_role": ["ACCOUNTAUDITOR"]},
    )
    sign_in(page, lab, email, password)
    page.click("nav >> text=Keys")
    page.fill("#key-name", "auditor-wants-a-key")
    page.click("text=Create key")
    refused = page.locator(".notice[data-kind=error]")
    refused.wait_for()
    assert "refused" in refused.inner_text()
    page.click("nav >> text=The flow")
    page.click("#run-demo")
    page.locator(".notice[data-kind=error]", has_text="account administrator").wait_for()
    # The DSM's audit log has both refusals, with the auditor as the actor.
    hits = [h["_source"] for h in dsm_admin(lab, "GET", "/sys/v1/logs?size=500")["hits"]]
    assert any("console: run the demo" in h["message"] and ": refused:" in h["message"] for h in hits)


def test_a_fault_scenario_turns_the_key_store_failed_and_back(page: Any, lab: LabInfo) -> None:
    sign_in(page, lab)
    page.click("nav >> text=Faults")
    row = page.locator("tr[data-scenario=credential-rejected]")
    try:
        row.locator("button", has_text="Switch on").click()
        row.locator(".badge", has_text="on").wait_for()
        page.locator("#store-state", has_text="INVALID_CREDENTIALS").wait_for()
        assert page.inner_text("#connection-state") == "FAILED"
        assert (
            lab.kms_client().describe_custom_key_stores(CustomKeyStoreId=lab.custom_key_store_id)[
                "CustomKeyStores"
            ][0]["ConnectionErrorCode"]
            == "INVALID_CREDENTIALS"
        )
        row.locator("button", has_text="Switch off").click()
        row.locator(".badge", has_text="off").wait_for()
        assert lab.faults_client().list_faults() == []
        page.click("#reconnect")
        page.locator("#connection-state", has_text="CONNECTED").wait_for()
    finally:
        lab.faults_client().clear()
        kms = lab.kms_client()
        state = kms.describe_custom_key_stores(CustomKeyStoreId=lab.custom_key_store_id)["CustomKeyStores"][0]
        if state["ConnectionState"] != "CONNECTED":
            if state["ConnectionState"] != "DISCONNECTED":
                kms.disconnect_custom_key_store(CustomKeyStoreId=lab.custom_key_store_id)
            kms.connect_custom_key_store(CustomKeyStoreId=lab.custom_key_store_id)
    blob = lab.kms_client().encrypt(KeyId=lab.key_id, Plaintext=b"healthy again")["CiphertextBlob"]
    assert lab.kms_client().decrypt(CiphertextBlob=blob)["Plaintext"] == b"healthy again"


def test_a_destroy_held_for_quorum_is_asked_approved_in_another_browser_and_run(
    browser: Any, lab: LabInfo, tmp_path: Path
) -> None:
    bob, bob_password = f"bob-{uuid.uuid4().hex[:8]}@xkslab.local", "bob password 1!"
    bob_id = dsm_admin(
        lab,
        "POST",
        "/sys/v1/users/invite",
        {"user_email": bob, "user_password": bob_password, "account_role": ["ACCOUNTADMINISTRATOR"]},
    )["user_id"]
    admin_id = next(
        u["user_id"]
        for u in dsm_admin(lab, "GET", "/sys/v1/users")
        if u["user_email"] == lab.data["dsm"]["admin_email"]
    )
    group = dsm_admin(
        lab,
        "POST",
        "/sys/v1/groups",
        {
            "name": f"quorum-{uuid.uuid4().hex[:8]}",
            "approval_policy": {
                "quorum": {"n": 1, "members": [{"user": admin_id}, {"user": bob_id}]},
                "protect_permissions": ["DESTROY_SOBJECTS"],
            },
        },
    )
    name = f"held-{uuid.uuid4().hex[:8]}"
    kid = dsm_admin(
        lab,
        "POST",
        "/crypto/v1/keys",
        {
            "name": name,
            "obj_type": "AES",
            "key_size": 256,
            "key_ops": ["ENCRYPT"],
            "group_id": group["group_id"],
        },
    )["kid"]
    contexts = []
    try:
        pages = []
        for _ in range(2):  # two browsers: two people
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.set_default_timeout(WAIT_MS)
            contexts.append(context)
            pages.append(context.new_page())
        asker, approver = pages
        sign_in(asker, lab, bob, bob_password)
        asker.click("nav >> text=Keys")
        asker.select_option("#group", group["group_id"])
        row = asker.locator(f"tr[data-kid='{kid}']")
        row.locator("button", has_text="Revoke").click()
        asker.locator(".notice[data-kind=ok]", has_text=f"Revoke {name}: done").wait_for()
        row.locator("button", has_text="Destroy").click()
        asker.locator(".notice", has_text="quorum approval").wait_for()
        asker.click("#ask-approval")
        asker.locator(".notice", has_text="is waiting for the quorum").wait_for()

        sign_in(approver, lab)
        approver.click("nav >> text=Approvals")
        pending = approver.locator("tr[data-status=PENDING]", has_text=f"/crypto/v1/keys/{kid}/destroy")
        pending.locator("button", has_text="Approve").click()
        approver.locator("tr[data-status=APPROVED]", has_text=f"/crypto/v1/keys/{kid}/destroy").wait_for()
        approver.screenshot(path=str(tmp_path / "approver.png"), full_page=True)

        asker.click("nav >> text=Approvals")
        approved = asker.locator("tr[data-status=APPROVED]", has_text=f"/crypto/v1/keys/{kid}/destroy")
        approved.locator("button", has_text="Run it").click()
        asker.locator(".notice[data-kind=ok]", has_text="done").wait_for()
        asker.screenshot(path=str(tmp_path / "asker.png"), full_page=True)
    finally:
        for context in contexts:
            context.close()
    assert dsm_admin(lab, "GET", f"/crypto/v1/keys/{kid}")["state"] == "Destroyed"


def test_readable_on_a_phone(browser: Any, lab: LabInfo, tmp_path: Path) -> None:
    """At a phone's width every page fits the screen (no sideways scrolling), the flow diagram included."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    context.set_default_timeout(WAIT_MS)
    phone = context.new_page()
    try:
        sign_in(phone, lab)
        for name, drawn in PAGES.items():
            phone.goto(f"{console_url(lab)}#/{name}")
            phone.wait_for_selector(drawn)
            if name == "flow":
                phone.click("#run-demo")
                phone.wait_for_selector("figure.flow[data-operation=Decrypt] caption")
            overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            phone.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
            assert overflow <= 0, f"the {name} page is {overflow}px wider than the phone"
    finally:
        context.close()


def test_no_page_loads_anything_from_elsewhere(page: Any, lab: LabInfo) -> None:
    origin = urllib.parse.urlsplit(console_url(lab)).netloc
    seen: list[str] = []

    def record(route: Any) -> None:
        seen.append(route.request.url)
        route.continue_()

    page.context.route("**/*", record)
    sign_in(page, lab)
    for name, drawn in PAGES.items():
        page.goto(f"{console_url(lab)}#/{name}")
        page.wait_for_selector(drawn)
        page.wait_for_load_state("networkidle")
    hosts = {urllib.parse.urlsplit(url).netloc for url in seen}
    assert hosts == {origin}, sorted(set(seen))
    assert any(url.endswith("/console/app.js") for url in seen)


def test_console_files_carry_a_strict_csp_and_the_api_needs_a_session(lab: LabInfo) -> None:
    with urllib.request.urlopen(console_url(lab), timeout=60) as answer:
        csp = answer.headers["Content-Security-Policy"]
        html = answer.read().decode()
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert '<script type="module" src="/console/app.js">' in html and "<style" not in html
    # The same console on the DSM's HTTPS port (the lab's local CA).
    https = ssl.create_default_context(cafile=str(lab.ca_file))
    with urllib.request.urlopen(
        lab.data["console"]["https_url"].replace("127.0.0.1", "localhost"), context=https, timeout=60
    ) as answer:
        assert answer.headers["Content-Security-Policy"] == csp and answer.read().decode() == html
    for path, status in (
        ("/console/nothing.js", 404),
        ("/console/..%2fapi%2fapp.py", 404),
        ("/console/api/lab", 401),
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(lab.dsm_url + path, timeout=60)
        assert refused.value.code == status, path
        refused.value.close()


def test_up_open_opens_the_console_in_a_browser(tmp_path: Path) -> None:
    """``xkslab up --open`` hands the console's URL to the user's browser ($BROWSER, which the standard
    library's webbrowser honours; here a script that writes down what it was given) once the lab is ready."""
    opened = tmp_path / "opened"
    browser = tmp_path / "browser.py"
    browser.write_text(f"import pathlib, sys\npathlib.Path({str(opened)!r}).write_text(sys.argv[1])\n")
    sets = [
        a
        for name, value in {**FREE_PORTS, **deadlines.GENEROUS}.items()
        for a in ("--set", f"{name}={value}")
    ]
    env = {**os.environ, "BROWSER": f"{sys.executable} {browser} %s"}
    data_dir = tmp_path / "data"
    with (tmp_path / "up.log").open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), *sets, "up", "--open"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        for _ in range(int(START_TIMEOUT_S * 10)):
            if (opened.exists() and opened.read_text()) or up.poll() is not None:
                break
            time.sleep(0.1)
        url = opened.read_text()
        assert url == json.loads((data_dir / "up.json").read_text())["console"]["url"]
        with urllib.request.urlopen(url, timeout=60) as answer:
            assert b'src="/console/app.js"' in answer.read()
        assert f"Console           {url}" in (tmp_path / "up.log").read_text()
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=STOP_TIMEOUT_S) == 0
