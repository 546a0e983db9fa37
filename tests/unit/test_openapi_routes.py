"""Each service's OpenAPI document against the routes it really has: every aiohttp route is described,
every description has a route, and KMS documents exactly the operations of its OPERATIONS table."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from dsm_emulator.api import openapi as dsm_openapi
from dsm_emulator.api.app import create_app as create_dsm_app
from kms_emulator import openapi as kms_openapi
from kms_emulator.app import OPERATIONS
from kms_emulator.app import create_app as create_kms_app
from xks_frontend import openapi as xks_openapi
from xks_frontend.app import create_app as create_xks_app
from xkslab_shared.config import load_settings
from xkslab_shared.openapi import described_routes, served_routes


def apps(tmp_path: Path) -> dict[str, tuple[web.Application, dict]]:
    settings = load_settings(tmp_path, environ={})
    dsm = create_dsm_app(settings)  # makes proxy.token, which the proxy reads
    return {
        "dsm": (dsm, dsm_openapi.build()),
        "xks": (create_xks_app(settings), xks_openapi.build()),
        "kms": (create_kms_app(settings), kms_openapi.build()),
    }


@pytest.mark.parametrize("service", ["dsm", "xks", "kms"])
def test_every_route_is_described_and_every_description_has_a_route(tmp_path: Path, service: str) -> None:
    app, doc = apps(tmp_path)[service]
    served = served_routes(app)
    described = described_routes(doc)
    assert sorted(served - described.keys()) == [], "routes without a description"
    assert sorted(described.keys() - served) == [], "descriptions without a route"
    assert doc["openapi"] == "3.1.0"


def test_kms_documents_exactly_its_operations(tmp_path: Path) -> None:
    doc = kms_openapi.build()
    via_post = described_routes(doc)[("POST", "/")]
    documented = {path.removeprefix("/#X-Amz-Target=TrentService.") for _, path in via_post}
    assert documented == set(OPERATIONS)
    for name in OPERATIONS:
        (header,) = doc["paths"][kms_openapi.pseudo_path(name)]["post"]["parameters"]
        assert header["name"] == "X-Amz-Target" and header["schema"]["enum"] == [f"TrentService.{name}"]


def test_every_operation_answers_an_error_shape_and_has_an_id() -> None:
    for doc in (dsm_openapi.build(), xks_openapi.build(), kms_openapi.build()):
        ids = []
        for item in doc["paths"].values():
            for method in ("get", "put", "post", "patch", "delete"):
                if method in item:
                    ids.append(item[method]["operationId"])
                    assert item[method]["responses"]
        assert len(ids) == len(set(ids))
