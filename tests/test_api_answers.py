"""A 2xx answer shows what was committed, and a 4xx says what is wrong in the project's words:
a case moved to another unit, times that cannot have happened yet, long codes in a 404."""

from __future__ import annotations

from typing import Any

from tests.api_support import (
    Api,
    api_fixture,  # noqa: F401
    case_body,
    make_api_fixture,  # noqa: F401
    resolved_body,
)


async def test_a_case_moved_to_another_unit_answers_with_the_new_unit(api: Api) -> None:
    await api.post_json(case_body("MOVE-1"), 201)
    view = await api.post_json(case_body("MOVE-1", unit_code="HN-BD"), 200)
    assert view["unit_code"] == "HN-BD"
    response = await api.get("/api/v1/cases/MOVE-1")
    assert (await response.json())["unit_code"] == "HN-BD"


async def test_times_in_the_future_are_refused(api: Api) -> None:
    # The fake clock stands at Monday 23/11/2026 08:00 in Hà Nội.
    body = resolved_body("FUTURE-1", resolved_at="2031-11-23T08:00:00+07:00")
    fields = (await api.post_json(body, 422))["error"]["fields"]
    assert set(fields) == {"resolved_at"}
    assert "in the future" in fields["resolved_at"]
    body = case_body("FUTURE-2", received_at="2026-11-24T08:05:00+07:00")
    body["due_at"] = "2026-11-30T17:00:00+07:00"
    assert set((await api.post_json(body, 422))["error"]["fields"]) == {"received_at"}
    # A clock a little ahead is tolerated.
    await api.post_json(resolved_body("SKEW-1", resolved_at="2026-11-23T08:03:00+07:00"), 201)
    response = await api.get("/api/v1/cases/FUTURE-1")
    assert response.status == 404  # nothing was stored


async def test_bad_fields_are_explained_with_what_is_allowed(api: Api) -> None:
    body = case_body(
        "has space",
        unit_code="HN/LB",
        citizen={"telegram_chat_id": "me", "locale": "fr"},
        received_at="20/11/2026",
    )
    fields: dict[str, Any] = (await api.post_json(body, 422))["error"]["fields"]
    assert fields["case_code"] == ("must not contain spaces or '/', e.g. 000.00.12.H26-261122-0001")
    assert fields["unit_code"] == "must not contain spaces or '/', e.g. HN-LB"
    assert fields["citizen.telegram_chat_id"].startswith("must be a number")
    assert fields["citizen.locale"] == "must be vi or en"
    assert "2026-11-20T08:05:00+07:00" in fields["received_at"]
    for message in fields.values():
        assert "should" not in message.lower() and "pattern" not in message


async def test_a_404_quotes_a_long_case_code_cut_short(api: Api) -> None:
    code = "X" * 5000
    for path in (f"/api/v1/cases/{code}", f"/api/v1/cases/{code}/qr.png"):
        response = await api.get(path)
        assert response.status == 404
        message = (await response.json())["error"]["message"]
        assert len(message) < 200
        assert "5000 characters" in message
