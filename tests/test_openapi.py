"""The OpenAPI document (bot/http/openapi.json) is valid, lists exactly the app's routes, and the
running app's real answers match it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.app import build_services
from bot.config import load_settings
from bot.http.api import create_web_app, openapi_document
from tests.api_support import (
    _JSON_TYPES,
    AUTH,
    Api,
    api_fixture,  # noqa: F401
    assert_documented,
    case_body,
    delayed_body,
    make_api_fixture,  # noqa: F401
    resolved_body,
    schema_errors,
)
from tests.api_support import _follow as follow
from tests.api_support import _subset_errors as subset_errors

DOCUMENT_FILE = Path(__file__).parent.parent / "bot" / "http" / "openapi.json"
METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


@pytest.fixture(name="document")
def document_fixture() -> dict[str, Any]:
    return openapi_document()


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


async def app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    settings = load_settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    services = build_services(settings)
    try:
        app: web.Application = create_web_app(services)
        return {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None
        }
    finally:
        await services.engine.dispose()


def test_the_packaged_document_is_the_file_in_the_repo(document: dict[str, Any]) -> None:
    assert document == json.loads(DOCUMENT_FILE.read_text(encoding="utf-8"))


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    try:
        from openapi_spec_validator import validate
    except ImportError:
        pytest.skip("openapi-spec-validator is not installed; see the structural test")
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


def refs_in(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for child in node.values() for ref in refs_in(child)]
    if isinstance(node, list):
        return [ref for child in node for ref in refs_in(child)]
    return []


def test_the_document_is_structurally_sound(document: dict[str, Any]) -> None:
    """What the validator checks that matters most here, without needing it installed."""
    assert {"title", "version"} <= set(document["info"])
    for ref in refs_in(document):
        assert ref.startswith("#/"), ref
        follow(document, ref)  # raises KeyError when the target is missing
    for path, item in document["paths"].items():
        assert path.startswith("/"), path
        for method, operation in item.items():
            assert method in METHODS, (path, method)
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)
            assert operation["responses"], (path, method)
            for status, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", status), (path, method, status)
                response = follow(document, response["$ref"]) if "$ref" in response else response
                assert response["description"], (path, method, status)
    for name, schema in document["components"]["schemas"].items():
        types = schema.get("type", [])
        for kind in [types] if isinstance(types, str) else types:
            assert kind in _JSON_TYPES, (name, kind)


async def test_the_document_lists_exactly_the_apps_routes(
    document: dict[str, Any], tmp_path: Path
) -> None:
    assert documented_operations(document) == await app_routes(tmp_path)


def test_api_routes_need_the_bearer_token_and_open_routes_do_not(
    document: dict[str, Any],
) -> None:
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    assert document["security"] == [{"bearerAuth": []}]
    # The web survey page is a human page whose link token is the credential; the dashboard's
    # pages are human pages whose credential is a session cookie.
    open_paths = {"/api/v1/openapi.json", "/healthz", "/metrics", "/s/{token}"}
    open_paths |= {path for path in document["paths"] if path.startswith("/dashboard")}
    for method, path in documented_operations(document):
        operation = document["paths"][path][method.lower()]
        if path in open_paths:
            assert operation.get("security") == [], (method, path)
        else:
            assert "security" not in operation, (method, path)
            assert {"401", "503"} <= set(operation["responses"]), (method, path)


def test_the_routes_document_every_status_they_answer(document: dict[str, Any]) -> None:
    expected = {
        ("POST", "/api/v1/cases"): {"200", "201", "401", "409", "422", "503"},
        ("POST", "/api/v1/cases:batch"): {"200", "401", "422", "503"},
        ("GET", "/api/v1/cases/{case_code}"): {"200", "401", "404", "503"},
        ("GET", "/api/v1/cases/{case_code}/qr.png"): {"200", "401", "404", "503"},
        ("GET", "/api/v1/reports/weekly"): {"200", "401", "404", "422", "503"},
        ("GET", "/api/v1/openapi.json"): {"200"},
        ("GET", "/healthz"): {"200", "503"},
        ("GET", "/metrics"): {"200"},
    }
    for (method, path), statuses in expected.items():
        assert set(document["paths"][path][method.lower()]["responses"]) == statuses
    unavailable = document["components"]["responses"]["Unavailable"]
    assert "Retry-After" in unavailable["headers"]
    assert "Retry-After" in document["paths"]["/healthz"]["get"]["responses"]["503"]["headers"]


def test_the_intake_schema_accepts_the_contracts_example_and_names_its_fields(
    document: dict[str, Any],
) -> None:
    pointer = "#/components/schemas/CaseIn"
    for body in (case_body(), resolved_body("X-1"), delayed_body("X-2")):
        assert schema_errors(document, pointer, body) == []
        assert subset_errors(document, {"$ref": pointer}, body, "") == []
    schema = document["components"]["schemas"]["CaseIn"]
    assert set(schema["properties"]) == set(case_body())
    assert schema["properties"]["status"]["enum"] == [
        "received",
        "delayed",
        "resolved",
        "rejected",
        "withdrawn",
    ]
    for bad in (
        case_body(colour="blue"),
        case_body(status="lost"),
        case_body(procedure={"code": "1.001193"}),
        case_body(citizen={"locale": "fr"}),
        case_body(".."),
    ):
        assert schema_errors(document, pointer, bad), bad
        assert subset_errors(document, {"$ref": pointer}, bad, ""), bad


def test_the_case_view_schema_has_the_contracts_fields(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert set(schemas["CaseView"]["required"]) == {
        "case_code",
        "unit_code",
        "status",
        "links",
        "survey",
        "escalations",
    }
    assert schemas["Survey"]["properties"]["status"]["enum"] == [
        "not_due",
        "scheduled",
        "invited",
        "in_progress",
        "completed",
        "expired",
        "opted_out",
        "unreachable",
    ]
    assert set(schemas["Escalation"]["required"]) == {
        "id",
        "status",
        "level",
        "unit_code",
        "reason",
        "opened_at",
        "acknowledged_at",
        "resolved_at",
    }
    assert set(schemas["ErrorBody"]["required"]) == {"code", "message", "fields"}


async def test_the_served_document_is_the_packaged_one(api: Api, document: dict[str, Any]) -> None:
    response = await api.client.get("/api/v1/openapi.json")
    assert response.status == 200
    assert await response.json() == document


async def test_real_answers_match_the_document(api: Api, document: dict[str, Any]) -> None:
    cases = "/api/v1/cases"
    one = "/api/v1/cases/{case_code}"
    qr = "/api/v1/cases/{case_code}/qr.png"
    batch = "/api/v1/cases:batch"
    client = api.client

    async def check(method: str, template: str, path: str, **kwargs: Any) -> int:
        response = await client.request(method, path, **kwargs)
        await assert_documented(document, response, method, template)
        return response.status

    body = case_body("O-1")
    assert await check("POST", cases, cases, json=body, headers=AUTH) == 201
    assert await check("POST", cases, cases, json=body, headers=AUTH) == 200
    assert await check("POST", cases, cases, json=resolved_body("O-1"), headers=AUTH) == 200
    assert await check("POST", cases, cases, json=case_body("O-1"), headers=AUTH) == 409
    assert await check("POST", cases, cases, json=case_body(status="x"), headers=AUTH) == 422
    assert await check("POST", cases, cases, data=b"{", headers=AUTH) == 422
    assert await check("POST", cases, cases, json=body) == 401
    assert await check("POST", cases, cases, json=delayed_body("O-2"), headers=AUTH) == 201

    items = [case_body("O-3"), case_body("O-1"), {"case_code": "O-4"}, 7]
    assert await check("POST", batch, batch, json=items, headers=AUTH) == 200
    assert await check("POST", batch, batch, json={"cases": []}, headers=AUTH) == 200
    assert await check("POST", batch, batch, json="x", headers=AUTH) == 422
    assert await check("POST", batch, batch, json=[]) == 401

    assert await check("GET", one, "/api/v1/cases/O-1", headers=AUTH) == 200
    assert await check("GET", one, "/api/v1/cases/NOPE", headers=AUTH) == 404
    assert await check("GET", one, "/api/v1/cases/O-1") == 401
    assert await check("GET", qr, "/api/v1/cases/O-1/qr.png", headers=AUTH) == 200
    assert await check("GET", qr, "/api/v1/cases/NOPE/qr.png", headers=AUTH) == 404
    assert await check("GET", qr, "/api/v1/cases/O-1/qr.png") == 401

    weekly = "/api/v1/reports/weekly"
    assert await check("GET", weekly, weekly + "?week=2026-W48", headers=AUTH) == 200
    assert await check("GET", weekly, weekly + "?week=2026-W48&unit=HN-LB", headers=AUTH) == 200
    assert await check("GET", weekly, weekly + "?unit=NOPE", headers=AUTH) == 404
    assert await check("GET", weekly, weekly + "?week=2026-48", headers=AUTH) == 422
    assert await check("GET", weekly, weekly) == 401

    assert await check("GET", "/api/v1/openapi.json", "/api/v1/openapi.json") == 200
    assert await check("GET", "/healthz", "/healthz") == 200
    assert await check("GET", "/metrics", "/metrics") == 200
