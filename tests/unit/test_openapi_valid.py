"""Each service's OpenAPI document is valid OpenAPI 3.1, as openapi-spec-validator reads it: a document
that declares a path template's ``{name}`` nowhere (the DSM's did, on some twenty operations) is refused by
code generators and by validating proxies, whatever the live check (test_openapi_live.py) says."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from dsm_emulator.api import openapi as dsm_openapi
from kms_emulator import openapi as kms_openapi
from xks_frontend import openapi as xks_openapi
from xkslab_shared.openapi import document, with_path_parameters

DOCUMENTS = {"dsm": dsm_openapi.build, "xks": xks_openapi.build, "kms": kms_openapi.build}


@pytest.mark.parametrize("service", list(DOCUMENTS))
def test_the_document_is_valid_openapi_3_1(service: str) -> None:
    errors = [error.message for error in OpenAPIV31SpecValidator(DOCUMENTS[service]()).iter_errors()]
    assert errors == []


@pytest.mark.parametrize("service", list(DOCUMENTS))
def test_every_template_name_is_a_declared_path_parameter(service: str) -> None:
    for path, item in DOCUMENTS[service]()["paths"].items():
        names = {part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")}
        for method in ("get", "put", "post", "patch", "delete"):
            if method not in item:
                continue
            declared = {
                p["name"]
                for p in [*item.get("parameters", []), *item[method].get("parameters", [])]
                if p["in"] == "path"
            }
            assert names <= declared, (path, method, names - declared)


def test_the_validator_refuses_an_undeclared_path_parameter() -> None:
    """The check above can fail: a path parameter left out, as the DSM's document had it, is an error."""
    item: dict[str, Any] = {"get": {"operationId": "getThing", "responses": {"200": {"description": "ok"}}}}
    raw = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {"/things/{thing_id}": item},
    }
    errors = [error.message for error in OpenAPIV31SpecValidator(raw).iter_errors()]
    assert any("thing_id" in message for message in errors), errors
    assert list(OpenAPIV31SpecValidator(document("t", "d", raw["paths"], {})).iter_errors()) == []


def test_a_parameter_already_declared_is_not_declared_twice() -> None:
    declared = {"name": "kid", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    item = {"get": {"parameters": [declared], "responses": {}}}
    assert with_path_parameters("/keys/{kid}", item) == item
    both = with_path_parameters("/a/{x}/b/{kid}", item)
    assert [p["name"] for p in both["parameters"]] == ["x"]
