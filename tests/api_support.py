"""Fixtures and helpers for the HTTP API tests: the real aiohttp app on a real server, on
SQLite and PostgreSQL (conftest's `migrated_database_url`, a fresh migrated copy per test),
with an injected `FakeClock`.

Test modules register the fixtures by importing `api_fixture` and `make_api_fixture` (they
are registered as `api` and `make_api`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.app import Services, build_services, prepare_database
from bot.config import load_settings
from bot.http.api import create_web_app
from handlers.clock import FakeClock
from handlers.units import load_units, parse_units_file
from storage.db import create_session_factory
from tests.conftest import engine_for
from tests.contract_data import API_TOKEN, AUTH, HN_BD, case_body, units_yaml

TOKEN = API_TOKEN
BOT_USERNAME = "sipas_test_bot"
UNITS_YAML = units_yaml(HN_BD)


def resolved_body(case_code: str, resolved_at: str = "2026-11-23T08:00:00+07:00") -> dict[str, Any]:
    return case_body(case_code, status="resolved", resolved_at=resolved_at)


def delayed_body(case_code: str, new_due_at: str = "2026-11-28T17:00:00+07:00") -> dict[str, Any]:
    return case_body(
        case_code,
        status="delayed",
        delay={"new_due_at": new_due_at, "reason": "Chờ xác minh của công an phường"},
    )


def telegram_link(token: str) -> str:
    return f"https://t.me/{BOT_USERNAME}?start={token}"


def web_link(token: str) -> str:
    return f"http://127.0.0.1:8080/s/{token}"


@dataclass
class Api:
    """The running app and what a test needs to drive and inspect it."""

    client: TestClient[web.Request, web.Application]
    services: Services
    clock: FakeClock
    backend: str

    async def post(self, body: object, *, path: str = "/api/v1/cases") -> ClientResponse:
        return await self.client.post(path, json=body, headers=AUTH)

    async def post_raw(self, data: bytes, *, path: str = "/api/v1/cases") -> ClientResponse:
        headers = {**AUTH, "Content-Type": "application/json"}
        return await self.client.post(path, data=data, headers=headers)

    async def get(self, path: str) -> ClientResponse:
        return await self.client.get(path, headers=AUTH)

    async def post_json(self, body: object, expected: int) -> Any:
        """Posts a case and returns the JSON answer, failing unless the status is `expected`."""
        response = await self.post(body)
        payload = await response.json()
        assert response.status == expected, payload
        return payload

    async def count(self, model: type[Any], *criteria: Any) -> int:
        async with self.services.sessions() as session:
            query = select(func.count()).select_from(model).where(*criteria)
            return int((await session.execute(query)).scalar_one())

    async def scalar(self, query: Any) -> Any:
        async with self.services.sessions() as session:
            return (await session.execute(query)).scalar_one_or_none()


def use_engine(services: Services, engine: AsyncEngine) -> None:
    """Points the services at another engine (the fixture URL carries the test's schema)."""
    services.engine = engine
    services.sessions = create_session_factory(engine)


async def load_test_units(services: Services, text: str = UNITS_YAML) -> None:
    async with services.sessions.begin() as session:
        await load_units(session, parse_units_file(text))


AiohttpClient = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


MakeApi = Callable[..., Awaitable[Api]]


@pytest.fixture(name="make_api")
async def make_api_fixture(
    migrated_database_url: str, clock: FakeClock, aiohttp_client: AiohttpClient
) -> AsyncIterator[MakeApi]:
    """Builds the app from settings overrides (e.g. `survey_delay="2h"`) on a fresh database,
    with the test units loaded and a Telegram link builder registered."""
    built: list[Services] = []

    async def make(*, url: str | None = None, **overrides: Any) -> Api:
        """`url` replaces the fixture's database URL (e.g. to reach it through a proxy)."""
        url = url or migrated_database_url
        settings = load_settings(database_url=url.split("?")[0], api_tokens=TOKEN, **overrides)
        services = build_services(settings, clock=clock)
        await services.engine.dispose()
        use_engine(services, engine_for(url))
        built.append(services)
        await prepare_database(services)
        await load_test_units(services)
        services.link_builders["telegram"] = telegram_link
        client = await aiohttp_client(create_web_app(services))
        backend = services.engine.dialect.name
        return Api(client=client, services=services, clock=clock, backend=backend)

    try:
        yield make
    finally:
        for services in built:
            await services.engine.dispose()


@pytest.fixture(name="api")
async def api_fixture(make_api: MakeApi) -> Api:
    """The app with default settings."""
    return await make_api()


# --- the OpenAPI document --------------------------------------------------------------------

OPENAPI_URN = "urn:sipas-bot:openapi"


def _pointer_escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _follow(document: dict[str, Any], pointer: str) -> Any:
    node: Any = document
    for part in pointer.lstrip("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def response_spec(
    document: dict[str, Any], method: str, template: str, status: int
) -> tuple[str, dict[str, Any]]:
    """The documented response (its JSON pointer and object) for a route and status code;
    fails the test when the document does not list that status for that route."""
    responses = document["paths"][template][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {template} answered {status}, undocumented"
    pointer = "#/" + "/".join(
        _pointer_escape(p) for p in ["paths", template, method.lower(), "responses", str(status)]
    )
    spec: dict[str, Any] = responses[str(status)]
    while "$ref" in spec:
        pointer = spec["$ref"]
        spec = _follow(document, pointer)
    return pointer, spec


def schema_errors(document: dict[str, Any], pointer: str, instance: object) -> list[str]:
    """Where `instance` breaks the document's schema at `pointer` (e.g.
    `#/components/schemas/CaseView`). jsonschema (draft 2020-12, formats checked) when it is
    installed; otherwise a small checker of the keywords the document uses."""
    try:
        from jsonschema import Draft202012Validator, FormatChecker
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012
    except ImportError:
        return _subset_errors(document, {"$ref": pointer}, instance, "")
    registry: Registry[Any] = Registry().with_resource(
        OPENAPI_URN, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    validator = Draft202012Validator(
        {"$ref": OPENAPI_URN + pointer}, registry=registry, format_checker=FormatChecker()
    )
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]


_JSON_TYPES: dict[str, Callable[[object], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _subset_errors(
    document: dict[str, Any], schema: dict[str, Any], value: object, at: str
) -> list[str]:
    """type, enum, pattern, minLength, maxLength, minimum, required, properties,
    additionalProperties, items, oneOf and $ref: the keywords the document uses."""
    if "$ref" in schema:
        return _subset_errors(document, _follow(document, schema["$ref"]), value, at)
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_JSON_TYPES[name](value) for name in names):
            return [f"{at or '/'}: {value!r} is not of type {types}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at or '/'}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and isinstance(value, int | float) and value < schema["minimum"]:
        errors.append(f"{at or '/'}: {value!r} is below {schema['minimum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{at or '/'}: {value!r} does not match {schema['pattern']}")
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            errors.append(f"{at or '/'}: {value!r} has the wrong length")
    if "oneOf" in schema:
        matching = [o for o in schema["oneOf"] if not _subset_errors(document, o, value, at)]
        if len(matching) != 1:
            errors.append(f"{at or '/'}: matches {len(matching)} of oneOf, not exactly one")
    if isinstance(value, dict):
        errors += [f"{at}/{k}: is required" for k in schema.get("required", []) if k not in value]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, child in value.items():
            if key in properties:
                errors += _subset_errors(document, properties[key], child, f"{at}/{key}")
            elif extra is False:
                errors.append(f"{at}/{key}: is not allowed")
            elif isinstance(extra, dict):
                errors += _subset_errors(document, extra, child, f"{at}/{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, child in enumerate(value):
            errors += _subset_errors(document, schema["items"], child, f"{at}/{index}")
    return errors


async def assert_documented(
    document: dict[str, Any], response: ClientResponse, method: str, template: str
) -> None:
    """The response's status, content type, headers and JSON body are as the document says."""
    pointer, spec = response_spec(document, method, template, response.status)
    for header in spec.get("headers", {}):
        if header != "WWW-Authenticate" or response.status == 401:
            assert header in response.headers, (method, template, response.status, header)
    content = spec.get("content", {})
    assert response.content_type in content, (method, template, response.content_type)
    if response.content_type != "application/json":
        return
    schema_pointer = "/".join(
        [pointer, "content", _pointer_escape(response.content_type), "schema"]
    )
    payload = await response.json()
    errors = schema_errors(document, schema_pointer, payload)
    assert not errors, (method, template, response.status, errors, payload)
    # The fallback checker must agree where jsonschema is installed, too.
    assert not _subset_errors(document, {"$ref": schema_pointer}, payload, ""), payload
