"""The HTTP API of docs/contract.md section 4, through a real aiohttp server on both databases."""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote

import segno
from sqlalchemy import select

from storage.models import (
    Case,
    CaseEvent,
    Citizen,
    LinkToken,
    OutboxMessage,
    Procedure,
    Survey,
)
from tests.api_support import (
    AUTH,
    Api,
    MakeApi,
    api_fixture,  # noqa: F401
    case_body,
    delayed_body,
    make_api_fixture,  # noqa: F401
    resolved_body,
    telegram_link,
    web_link,
)

TOKEN_FORMAT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def start_token(view: dict[str, Any]) -> str:
    link = view["links"]["telegram"]
    assert link.startswith("https://t.me/sipas_test_bot?start=")
    return str(link.split("?start=", 1)[1])


def error_fields(payload: dict[str, Any]) -> dict[str, str]:
    error = payload["error"]
    assert isinstance(error["code"], str)
    assert isinstance(error["message"], str)
    fields: dict[str, str] = error["fields"]  # always present, empty when no field is to blame
    assert isinstance(fields, dict)
    return fields


# --- 201 / 200 -------------------------------------------------------------------------------


async def test_a_new_case_is_created_with_201_and_its_view(api: Api) -> None:
    view = await api.post_json(case_body(), 201)

    assert view["case_code"] == "000.00.12.H26-261122-0001"
    assert view["unit_code"] == "HN-LB"
    assert view["status"] == "received"
    assert view["survey"] == {
        "status": "not_due",
        "channel": None,
        "completed_at": None,
        "answers": {},
    }
    assert view["escalations"] == []
    assert set(view["links"]) == {"telegram", "web"}
    # A 2xx answer means committed: a fresh session sees the case.
    assert await api.count(Case, Case.case_code == view["case_code"]) == 1
    response = await api.get(f"/api/v1/cases/{view['case_code']}")
    assert response.status == 200
    assert await response.json() == view


async def test_the_same_body_twice_is_a_200_replay_that_changes_nothing(api: Api) -> None:
    body = resolved_body("R-1")
    first = await api.post_json(body, 201)
    case_id = await api.scalar(select(Case.id).where(Case.case_code == "R-1"))
    updated_at = await api.scalar(select(Case.updated_at).where(Case.id == case_id))
    events = await api.count(CaseEvent, CaseEvent.case_id == case_id)
    messages = await api.count(OutboxMessage)
    assert await api.count(Survey, Survey.case_id == case_id) == 1

    api.clock.advance(timedelta(hours=1))
    second = await api.post_json(body, 200)

    assert second == first
    assert await api.count(CaseEvent, CaseEvent.case_id == case_id) == events
    assert await api.count(Survey) == 1
    assert await api.count(OutboxMessage) == messages  # nothing is sent twice
    assert await api.scalar(select(Case.updated_at).where(Case.id == case_id)) == updated_at


async def test_a_changed_body_is_a_200_update(api: Api) -> None:
    await api.post_json(case_body("U-1"), 201)
    view = await api.post_json(delayed_body("U-1"), 200)

    assert view["status"] == "delayed"
    case = await api.scalar(select(Case).where(Case.case_code == "U-1"))
    assert case.delay_reason == "Chờ xác minh của công an phường"
    assert case.delay_new_due_at == datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    statuses = (
        await api.count(CaseEvent, CaseEvent.case_id == case.id, CaseEvent.status == "received"),
        await api.count(CaseEvent, CaseEvent.case_id == case.id, CaseEvent.status == "delayed"),
    )
    assert statuses == (1, 1)


# --- 401 -------------------------------------------------------------------------------------


BAD_AUTHORIZATIONS: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": "Basic dGVzdC10b2tlbg=="},
    {"Authorization": "test-token"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer test-token-and-more"},
]


async def test_api_routes_need_a_valid_bearer_token(api: Api) -> None:
    for headers in BAD_AUTHORIZATIONS:
        for method, path in [
            ("POST", "/api/v1/cases"),
            ("POST", "/api/v1/cases:batch"),
            ("GET", "/api/v1/cases/X-1"),
            ("GET", "/api/v1/cases/X-1/qr.png"),
        ]:
            response = await api.client.request(method, path, json=case_body(), headers=headers)
            payload = await response.json()
            assert response.status == 401, (method, path, headers)
            assert payload["error"]["code"] == "unauthorized"
            assert error_fields(payload) == {}
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await api.count(Case) == 0


# --- 404 -------------------------------------------------------------------------------------


async def test_unknown_cases_and_routes_are_404_in_the_error_shape(api: Api) -> None:
    for path in ["/api/v1/cases/NO-SUCH-CASE", "/api/v1/cases/NO-SUCH-CASE/qr.png"]:
        response = await api.get(path)
        assert response.status == 404, path
        payload = await response.json()
        assert payload["error"]["code"] == "not_found"
        assert "NO-SUCH-CASE" in payload["error"]["message"]
        assert error_fields(payload) == {}
    response = await api.client.get("/api/v1/nothing-here", headers=AUTH)
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "http_error"
    response = await api.client.get("/api/v1/cases", headers=AUTH)
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "http_error"


# --- 409 and the transition rules ------------------------------------------------------------

RECEIVED = "received"
DELAYED = "delayed"
RESOLVED = "resolved"
REJECTED = "rejected"
WITHDRAWN = "withdrawn"
STATUSES = (RECEIVED, DELAYED, RESOLVED, REJECTED, WITHDRAWN)
# docs/contract.md: received -> (delayed)* -> resolved | rejected | withdrawn; the end is final.
ALLOWED = {
    RECEIVED: {RECEIVED, DELAYED, RESOLVED, REJECTED, WITHDRAWN},
    DELAYED: {DELAYED, RESOLVED, REJECTED, WITHDRAWN},
    RESOLVED: {RESOLVED},
    REJECTED: {REJECTED},
    WITHDRAWN: {WITHDRAWN},
}


def body_in(status: str, case_code: str, variant: int = 0) -> dict[str, Any]:
    """A body in `status`; `variant` changes a detail so the body differs from a replay."""
    if status == RESOLVED:
        body = resolved_body(case_code)
    elif status == DELAYED:
        body = delayed_body(case_code)
    else:
        body = case_body(case_code, status=status)
    if variant:
        body["officer"] = {"code": "CB-018", "name": "Phạm Văn Hùng"}
    return body


async def test_status_transitions_follow_the_contract(api: Api) -> None:
    for before, after in itertools.product(STATUSES, STATUSES):
        code = f"T-{before}-{after}"
        await api.post_json(body_in(before, code), 201)
        events_before = await api.count(CaseEvent)

        response = await api.post(body_in(after, code, variant=1))
        payload = await response.json()

        if after in ALLOWED[before]:
            assert response.status == 200, (before, after, payload)
            assert payload["status"] == after
        else:
            assert response.status == 409, (before, after, payload)
            assert payload["error"]["code"] == "invalid_transition"
            assert before in payload["error"]["message"]
            assert after in payload["error"]["message"]
            assert await api.count(CaseEvent) == events_before
            stored = await api.scalar(select(Case.status).where(Case.case_code == code))
            assert stored == before


async def test_a_case_may_be_delayed_more_than_once(api: Api) -> None:
    await api.post_json(case_body("D-1"), 201)
    await api.post_json(delayed_body("D-1", "2026-11-28T17:00:00+07:00"), 200)
    view = await api.post_json(delayed_body("D-1", "2026-12-02T17:00:00+07:00"), 200)
    assert view["status"] == "delayed"
    new_due = await api.scalar(select(Case.delay_new_due_at).where(Case.case_code == "D-1"))
    assert new_due == datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


# --- 422 -------------------------------------------------------------------------------------


async def assert_422(api: Api, body: object, *expected_fields: str) -> dict[str, str]:
    response = await api.post(body)
    payload = await response.json()
    assert response.status == 422, payload
    assert payload["error"]["code"] == "invalid_input"
    fields = error_fields(payload)
    for name in expected_fields:
        assert name in fields, (name, fields)
        assert fields[name]
    assert await api.count(Case) == 0
    return fields


# Each change to the contract's example body, and the field the 422 must name.
BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"procedure": {"code": "1.001193"}}, "procedure.name"),
    ({"procedure": {"code": "1.001193", "name": "x" * 501}}, "procedure.name"),
    ({"procedure": "Đăng ký khai sinh"}, "procedure"),
    ({"citizen": {"phone": "0912"}}, "citizen.phone"),
    ({"citizen": {"phone": 912345678}}, "citizen.phone"),
    ({"citizen": {"telegram_chat_id": "abc"}}, "citizen.telegram_chat_id"),
    ({"citizen": {"telegram_chat_id": True}}, "citizen.telegram_chat_id"),
    ({"citizen": {"nickname": "Minh"}}, "citizen.nickname"),
    ({"officer": {"name": "Nguyễn Thị Lan"}}, "officer.code"),
    ({"case_code": "has space"}, "case_code"),
    ({"case_code": "a/b"}, "case_code"),
    ({"case_code": ".."}, "case_code"),
    ({"case_code": None}, "case_code"),
    ({"unit_code": "NOWHERE"}, "unit_code"),
    ({"status": None}, "status"),
    ({"received_at": "2026-11-20T08:05:00"}, "received_at"),
    ({"due_at": "2026-11-25 17:00"}, "due_at"),
    ({"received_at": 1763600700}, "received_at"),
    ({"due_at": "2026-11-19T17:00:00+07:00"}, "due_at"),
    ({"status": "delayed"}, "delay"),
    ({"status": "resolved"}, "resolved_at"),
    ({"status": "resolved", "resolved_at": "2026-11-23T08:00:00"}, "resolved_at"),
    ({"status": "resolved", "resolved_at": "2026-11-19T08:00:00+07:00"}, "resolved_at"),
    (
        {"status": "delayed", "delay": {"new_due_at": "2026-11-28T17:00:00", "reason": "x"}},
        "delay.new_due_at",
    ),
    (
        {"status": "delayed", "delay": {"new_due_at": "2026-11-28T17:00:00+07:00"}},
        "delay.reason",
    ),
    (
        {
            "status": "delayed",
            "delay": {"new_due_at": "2026-11-24T17:00:00+07:00", "reason": "x"},
        },
        "delay.new_due_at",
    ),
    ({"extra": 1}, "extra"),
]


async def test_every_bad_field_is_named(api: Api) -> None:
    for change, field in BAD_FIELDS:
        body = case_body()
        body.update(change)
        await assert_422(api, body, field)

    # Many at once, nested ones and unknown ones included.
    body = case_body(
        unit_code="",
        status="lost",
        received_at="yesterday",
        procedure={"code": "1.001193", "name": ""},
        citizen={"name": "Trần Văn Minh", "phone": "12345", "locale": "fr"},
        colour="blue",
    )
    fields = await assert_422(
        api,
        body,
        "unit_code",
        "status",
        "received_at",
        "procedure.name",
        "citizen.phone",
        "citizen.locale",
        "colour",
    )
    assert "received" in fields["status"]  # the message lists the allowed values

    # Timestamps without offset are named beside other errors.
    body = case_body(
        status="delayed",
        received_at="2026-11-20T08:05:00",
        due_at="2026-11-25T17:00:00",
        delay={"new_due_at": "2026-11-28T17:00:00", "reason": "Chờ bổ sung"},
        unit_code="",
    )
    fields = await assert_422(api, body, "received_at", "due_at", "delay.new_due_at", "unit_code")
    assert "offset" in fields["received_at"]

    # What a status requires is named beside other bad fields.
    body = case_body(status="resolved", unit_code="")
    await assert_422(api, body, "unit_code", "resolved_at")
    body = case_body(status="delayed", citizen={"phone": "123"})
    await assert_422(api, body, "citizen.phone", "delay")

    # Missing fields are named.
    body = case_body()
    for name in ("case_code", "unit_code", "procedure", "status", "received_at", "due_at"):
        del body[name]
    await assert_422(
        api, body, "case_code", "unit_code", "procedure", "status", "received_at", "due_at"
    )


async def test_bad_json_or_a_non_object_is_a_422_on_body(api: Api) -> None:
    for raw in [b"{not json", b"", b"\xff\xfe", b'{"case_code": "A"', b"[1, 2", b"NaN x"]:
        response = await api.post_raw(raw)
        payload = await response.json()
        assert response.status == 422, (raw, payload)
        assert set(error_fields(payload)) == {"body"}
    too_large = io.BytesIO(b'{"case_code": "' + b"x" * (9 * 1024 * 1024) + b'"}')
    response = await api.client.post(
        "/api/v1/cases", data=too_large, headers={**AUTH, "Content-Type": "application/json"}
    )
    payload = await response.json()
    assert response.status == 422, payload
    assert "larger than" in error_fields(payload)["body"]
    for body in [[], [case_body()], "case", 42, None, True]:
        fields = await assert_422(api, body, "body")
        assert set(fields) == {"body"}


# --- surveys ---------------------------------------------------------------------------------


async def survey_of(api: Api, case_code: str) -> Survey:
    query = select(Survey).join(Case, Case.id == Survey.case_id).where(Case.case_code == case_code)
    survey: Survey = await api.scalar(query)
    return survey


async def test_a_resolution_schedules_exactly_one_survey_after_the_delay(
    make_api: MakeApi,
) -> None:
    api = await make_api(survey_delay="2h")
    for code, final in [("S-1", RESOLVED), ("S-2", REJECTED)]:
        # 01:00 UTC = 08:00 local; two hours later is 10:00 local, outside quiet hours.
        view = await api.post_json(body_in(final, code), 201)

        assert view["survey"]["status"] == "scheduled"
        survey = await survey_of(api, code)
        assert survey.due_at == api.clock.now() + timedelta(hours=2)
        api.clock.advance(timedelta(minutes=5))
        await api.post_json(body_in(final, code, variant=1), 200)
        assert (await survey_of(api, code)).due_at == survey.due_at
    assert await api.count(Survey) == 2


async def test_a_survey_due_in_quiet_hours_moves_to_their_end(make_api: MakeApi) -> None:
    api = await make_api(survey_delay="30m")
    # 14:00 UTC = 21:00 local; plus 30 minutes is in the 21:00-07:00 quiet hours.
    api.clock.set(datetime(2026, 11, 23, 14, 0, tzinfo=UTC))
    view = await api.post_json(resolved_body("S-2", "2026-11-23T20:55:00+07:00"), 201)

    assert view["survey"]["status"] == "scheduled"
    survey = await survey_of(api, "S-2")
    assert survey.due_at == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)  # 07:00 local


async def test_only_resolved_and_rejected_cases_are_surveyed(api: Api) -> None:
    view = await api.post_json(case_body("S-3"), 201)
    assert view["survey"]["status"] == "not_due"
    view = await api.post_json(delayed_body("S-3"), 200)
    assert view["survey"]["status"] == "not_due"
    view = await api.post_json(case_body("S-4", status="withdrawn"), 201)
    assert view["survey"]["status"] == "not_due"
    assert await api.count(Survey) == 0

    view = await api.post_json(resolved_body("S-3"), 200)
    assert view["survey"]["status"] == "scheduled"
    assert await api.count(Survey) == 1


# --- text, links, QR -------------------------------------------------------------------------


async def test_vietnamese_text_is_stored_byte_exact(api: Api) -> None:
    forms: list[Literal["NFC", "NFD"]] = ["NFC", "NFD"]
    for number, form in enumerate(forms):
        procedure = unicodedata.normalize(form, "Cấp đổi giấy phép lái xe — hạng A1 «ưu tiên»")
        name = unicodedata.normalize(form, "Nguyễn Thị Ánh Tuyết")
        phone = f"098765432{number}"
        body = case_body(
            f"V-{form}",
            procedure={"code": f"2.00000{number}", "name": procedure, "field": "Đường bộ"},
            citizen={"name": name, "phone": phone},
        )
        await api.post_json(body, 201)

        stored_procedure = await api.scalar(
            select(Procedure).where(Procedure.code == f"2.00000{number}")
        )
        stored_citizen = await api.scalar(select(Citizen).where(Citizen.phone == phone))
        assert stored_procedure.name.encode() == procedure.encode(), form
        assert stored_procedure.field == "Đường bộ"
        assert stored_citizen.name.encode() == name.encode(), form
        # The same body is recognised as a replay: the stored text hashes the same.
        await api.post_json(body, 200)
    assert await api.count(CaseEvent) == 2


async def test_links_are_those_of_the_registered_link_builders(api: Api) -> None:
    view = await api.post_json(case_body("L-1"), 201)
    token = start_token(view)
    # The web survey page is always there; a chat's link while its channel is configured.
    assert view["links"] == {"telegram": telegram_link(token), "web": web_link(token)}

    api.services.link_builders.pop("telegram")
    response = await api.get("/api/v1/cases/L-1")
    assert (await response.json())["links"] == {"web": web_link(token)}

    api.services.link_builders.clear()
    view = await api.post_json(case_body("L-2"), 201)
    assert view["links"] == {}
    response = await api.get("/api/v1/cases/L-2/qr.png")
    assert response.status == 404  # nothing to encode


async def test_link_tokens_are_opaque_unique_and_stable(api: Api) -> None:
    codes = [f"000.00.12.H26-261122-{n:04d}" for n in range(1, 6)]
    tokens = []
    for code in codes:
        view = await api.post_json(case_body(code), 201)
        token = start_token(view)
        assert TOKEN_FORMAT.fullmatch(token), token
        assert code not in token
        tokens.append(token)
        replay = await api.post_json(case_body(code), 200)
        assert start_token(replay) == token
        update = await api.post_json(resolved_body(code), 200)
        assert start_token(update) == token
    assert len(set(tokens)) == len(tokens)
    assert await api.count(LinkToken) == len(codes)


async def test_case_codes_with_url_characters_can_be_read_back(api: Api) -> None:
    for code in ["a.b", "?x", "%zz", "#1", "x?y#z", "Đ-1", "a%2Fb", "cases:batch", "qr.png"]:
        await api.post_json(case_body(code), 201)
        path = f"/api/v1/cases/{quote(code, safe='')}"
        response = await api.get(path)
        assert response.status == 200, code
        assert (await response.json())["case_code"] == code
        assert (await api.get(f"{path}/qr.png")).status == 200, code


def qr_png(link: str) -> bytes:
    expected = io.BytesIO()
    segno.make(link, error="m").save(expected, kind="png", scale=8, border=2)
    return expected.getvalue()


async def test_qr_code_encodes_the_web_page_by_default(api: Api) -> None:
    view = await api.post_json(case_body("Q-1"), 201)
    response = await api.get("/api/v1/cases/Q-1/qr.png")
    assert response.status == 200
    assert response.content_type == "image/png"
    png = await response.read()
    assert png.startswith(PNG_SIGNATURE)
    # SIPAS_QR_TARGET=web (the default): anyone can answer, with or without a chat app.
    assert png == qr_png(view["links"]["web"])


# --- health, metrics, the document -----------------------------------------------------------


async def test_health_metrics_and_the_document_need_no_token(api: Api) -> None:
    await api.post_json(case_body("M-1"), 201)

    response = await api.client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "database": "ok"}

    response = await api.client.get("/api/v1/openapi.json")
    assert response.status == 200
    assert (await response.json())["openapi"].startswith("3.1")

    response = await api.client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    line = re.search(
        r'^sipas_http_requests_total\{method="POST",route="/api/v1/cases",status="201"\} (\S+)$',
        text,
        re.MULTILINE,
    )
    assert line is not None, text[:2000]
    assert float(line[1]) >= 1
    assert "sipas_cases_posted_total" in text


# --- concurrency -----------------------------------------------------------------------------


async def test_concurrent_posts_of_one_new_case_create_it_once(api: Api) -> None:
    # The one-stop system retries a request that timed out while the first is still running.
    body = case_body("RACE-1")
    responses = await asyncio.gather(*(api.post(body) for _ in range(6)))
    assert sorted(r.status for r in responses) == [200, 200, 200, 200, 200, 201]
    views = [await r.json() for r in responses]
    assert all(view == views[0] for view in views)
    assert await api.count(Case) == 1
    assert await api.count(CaseEvent) == 1
    assert await api.count(LinkToken) == 1


async def test_concurrent_new_cases_sharing_new_reference_data_all_succeed(api: Api) -> None:
    # Same new procedure, officer and citizen chat id in every case, all posted at once.
    bodies = [
        case_body(
            f"RACE-{n}",
            procedure={"code": "9.999999", "name": "Thủ tục mới"},
            officer={"code": "CB-NEW"},
            citizen={"telegram_chat_id": 4242, "phone": "0933333333"},
        )
        for n in range(5)
    ]
    responses = await asyncio.gather(*(api.post(body) for body in bodies))
    assert [r.status for r in responses] == [201] * 5
    batch = await api.client.post(
        "/api/v1/cases:batch",
        json=[case_body("RACE-9", procedure={"code": "9.000009", "name": "Khác"})],
        headers=AUTH,
    )
    assert batch.status == 200
    assert await api.count(Case) == 6
    assert await api.count(Procedure, Procedure.code == "9.999999") == 1
