"""Every API class of Fortanix's ``sdkms`` SDK (5.6) against the DSM's own routes: each method's route,
read from the SDK's source (its ``call_api`` path and verb), is either served by a handler or answers the
501 of ``dsm_emulator/api/not_emulated.py``; none falls through to a 404. From that, each class is
**works** (every method served), **partial** (some 501) or **not emulated** (all 501), which must be
what ``SDK_CLASSES`` and the README's table say. That a served route does what Fortanix's does is for the
per-class tests (tests/integration/test_sdkms_sdk*.py); this table catches a route that goes missing, a
501 that is built without leaving the table, and an SDK class nobody has classified."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import sdkms.v1 as sdk

from dsm_emulator.api.app import create_app
from dsm_emulator.api.not_emulated import NOT_EMULATED
from xkslab_shared.config import load_settings
from xkslab_shared.openapi import served_routes

REPO = Path(__file__).resolve().parents[2]

SDK_CLASSES: dict[str, str] = {
    "AWSApi": "not emulated",
    "AccountsApi": "partial",
    "ApprovalRequestsApi": "works",
    "AppsApi": "works",
    "AuthenticationApi": "partial",
    "ChildAccountUsersApi": "not emulated",
    "ChildAccountsApi": "not emulated",
    "DigestApi": "works",
    "EncryptionAndDecryptionApi": "partial",
    "GroupsApi": "partial",
    "LogsApi": "works",
    "PluginsApi": "partial",
    "SecurityObjectsApi": "partial",
    "SignAndVerifyApi": "works",
    "StatsApi": "not emulated",
    "TwoFactorAuthenticationApi": "not emulated",
    "UsersApi": "partial",
    "WrappingAndUnwrappingApi": "works",
}


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def sdk_routes(cls: type) -> dict[str, tuple[str, str]]:
    """Each public method of an SDK API class -> (verb, path shape), from its ``*_with_http_info`` source."""
    routes = {}
    for name, _ in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_") or name.endswith("_with_http_info"):
            continue
        source = inspect.getsource(getattr(cls, f"{name}_with_http_info"))
        match = re.search(r"call_api\(\s*'([^']+)',\s*'(\w+)'", source)
        assert match, (cls.__name__, name)
        routes[name] = (match.group(2), _shape(match.group(1)))
    return routes


def classify(tmp_path: Path) -> dict[str, dict[str, str]]:
    """class -> method -> "served" | "501" | "missing"."""
    served = {
        (method, _shape(path))
        for method, path in served_routes(create_app(load_settings(tmp_path, environ={})))
    }
    refused = {(entry.method, _shape(entry.path)) for entry in NOT_EMULATED}
    result: dict[str, dict[str, str]] = {}
    for name in dir(sdk):
        cls = getattr(sdk, name)
        if not (name.endswith("Api") and inspect.isclass(cls)):
            continue
        result[name] = {
            method: "501" if route in refused else "served" if route in served else "missing"
            for method, route in sdk_routes(cls).items()
        }
    return result


def status(methods: dict[str, str]) -> str:
    kinds = set(methods.values())
    return "works" if kinds == {"served"} else "not emulated" if kinds == {"501"} else "partial"


def test_every_sdk_method_is_served_or_answers_501_and_each_class_is_classified(tmp_path: Path) -> None:
    found = classify(tmp_path)
    assert len(found) >= 18
    missing = sorted(
        f"{cls}.{method}"
        for cls, methods in found.items()
        for method, kind in methods.items()
        if kind == "missing"
    )
    assert missing == [], "SDK methods whose route would be a 404"
    assert {cls: status(methods) for cls, methods in found.items()} == SDK_CLASSES


def test_readme_table_of_sdk_classes_says_the_same() -> None:
    text = (REPO / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+Api)` \| (works|partial|not emulated) \|", text, re.M))
    assert rows == SDK_CLASSES
