"""Properties of the intake API under any input: never a 5xx, and every 422 names fields the
client can find (a path of the intake schema, a key the client sent, or `body`)."""

from __future__ import annotations

import contextlib
import string
import warnings
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.http.api import openapi_document
from tests.api_support import (
    AUTH,
    Api,
    api_fixture,  # noqa: F401
    case_body,
    make_api_fixture,  # noqa: F401
)

# On a failure hypothesis imports libcst (to print the example as a patch), which trips a
# DeprecationWarning in mypy_extensions; under filterwarnings=error that import becomes an
# INTERNALERROR hiding the real failure. Import it now, with that warning silenced.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    with contextlib.suppress(ImportError):
        import hypothesis.extra._patching  # noqa: F401

PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


def schema_paths(document: dict[str, Any], name: str = "CaseIn", prefix: str = "") -> set[str]:
    """Every dotted field path of a schema of the OpenAPI document, nested objects included."""
    paths: set[str] = set()
    schema = document["components"]["schemas"][name]
    for field, spec in schema.get("properties", {}).items():
        path = prefix + field
        paths.add(path)
        refs = [spec.get("$ref")] + [option.get("$ref") for option in spec.get("oneOf", [])]
        for ref in filter(None, refs):
            paths |= schema_paths(document, ref.rsplit("/", 1)[1], path + ".")
    return paths


INTAKE_PATHS = schema_paths(openapi_document())


def sent_paths(value: object, prefix: str = "") -> set[str]:
    """Every dotted key path present in the client's JSON."""
    if not isinstance(value, dict):
        return set()
    paths: set[str] = set()
    for key, child in value.items():
        path = f"{prefix}{key}"
        paths.add(path)
        paths |= sent_paths(child, path + ".")
    return paths


async def assert_well_answered(api: Api, body: object, path: str = "/api/v1/cases") -> int:
    response = await api.post(body, path=path)
    payload = await response.json()
    assert response.status < 500, (body, payload)
    if response.status == 422:
        fields = payload["error"]["fields"]
        assert fields, payload
        known = INTAKE_PATHS | sent_paths(body) | {"body"}
        assert set(fields) <= known, (sorted(set(fields) - known), body)
        assert all(isinstance(message, str) and message for message in fields.values())
    return response.status


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

odd_dates = st.sampled_from(
    [
        "2026-02-30T08:00:00+07:00",
        "2026-11-20T24:00:00+07:00",
        "2026-11-20T08:05:00+25:00",
        "2026-11-20T08:05:00Z",
        "2026-11-20T08:05:00.123456789+07:00",
        "0001-01-01T00:00:00+00:00",
        "9999-12-31T23:59:59-23:59",
        "10000-01-01T00:00:00+00:00",
        "2026-11-20",
        "2026-11-20 08:05",
        "20261120T080500+0700",
        "2026-W47-1T08:00:00+07:00",
        "  2026-11-20T08:05:00+07:00  ",
        "2026-11-20T08:05:00+07:00\n",
        "1763600700",
    ]
)
aware_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).map(lambda moment: moment.astimezone(timezone(timedelta(hours=7))).isoformat())
junk = (
    json_values
    | odd_dates
    | aware_datetimes
    | st.text(min_size=256, max_size=600)
    | st.just("x" * 100_000)
    | st.text(alphabet=string.whitespace, max_size=5)
    | st.sampled_from(
        ["Đăng ký khai sinh", "Nguyễn Thị Ánh Tuyết", "👩‍👩‍👧", "\u202e", "a/b", "𝔘𝔫𝔦"]
    )
)

FIELD_PATHS = sorted(INTAKE_PATHS)


@st.composite
def mutated_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with a few fields replaced by junk, deleted, or unknown ones added."""
    body = case_body(f"P-{draw(st.integers(0, 10**9))}")
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(FIELD_PATHS)).split(".")
        parent: Any = body
        for key in path[:-1]:
            if not isinstance(parent.get(key), dict):
                parent[key] = {}
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "extra"]))
        if action == "replace":
            parent[path[-1]] = draw(junk)
        elif action == "delete":
            parent.pop(path[-1], None)
        else:
            parent[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    return body


@PROPERTY_SETTINGS
@given(body=json_values)
async def test_arbitrary_json_never_makes_a_5xx(api: Api, body: object) -> None:
    await assert_well_answered(api, body)
    await assert_well_answered(api, [body], path="/api/v1/cases:batch")


@PROPERTY_SETTINGS
@given(body=mutated_bodies())
async def test_mutated_bodies_never_make_a_5xx(api: Api, body: dict[str, Any]) -> None:
    status = await assert_well_answered(api, body)
    assert status in {200, 201, 409, 422}
    if status in {200, 201}:
        again = await api.get(f"/api/v1/cases/{quote(body['case_code'].strip(), safe='')}")
        assert again.status == 200


@PROPERTY_SETTINGS
@given(code=st.text(min_size=1, max_size=40))
async def test_any_case_code_in_the_path_is_a_404_not_a_5xx(api: Api, code: str) -> None:
    quoted = quote(code, safe="")
    for suffix in ("", "/qr.png"):
        response = await api.client.get(
            f"/api/v1/cases/{quoted}{suffix}",
            headers=AUTH,
        )
        assert response.status in {404, 405}, (code, response.status, await response.text())


async def test_text_no_database_can_store_is_refused_not_a_5xx(api: Api) -> None:
    for bad in ["A\x00B", "\ud800", "x\udfffy"]:
        body = case_body("Z-1", procedure={"code": "1.0", "name": bad})
        assert await assert_well_answered(api, body) == 422
        for field in ("case_code", "unit_code"):
            body = case_body("Z-2")
            body[field] = bad
            assert await assert_well_answered(api, body) == 422
        body = case_body("Z-3", citizen={"name": bad, "zalo_user_id": bad})
        assert await assert_well_answered(api, body) == 422


@pytest.mark.parametrize("bad", ["A\x00B", "\ud800", "x\udfffy"], ids=["nul", "lone", "inner"])
async def test_text_no_database_can_store_is_named_field_by_field(api: Api, bad: str) -> None:
    body = case_body(
        "Z-4",
        procedure={"code": bad, "name": bad, "field": bad},
        officer={"code": bad, "name": bad},
        citizen={"name": bad, "zalo_user_id": bad},
        status="delayed",
        delay={"new_due_at": "2026-11-28T17:00:00+07:00", "reason": bad},
    )
    body["unit_code"] = bad
    response = await api.post(body)
    assert response.status == 422
    fields = (await response.json())["error"]["fields"]
    named = {
        "unit_code",
        "procedure.code",
        "procedure.name",
        "procedure.field",
        "officer.code",
        "officer.name",
        "citizen.name",
        "citizen.zalo_user_id",
        "delay.reason",
    }
    assert {path: fields.get(path) for path in named} == dict.fromkeys(
        named, "contains a NUL character or a lone surrogate"
    )
