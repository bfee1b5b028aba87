"""`POST /api/v1/cases:batch`: up to 1000 cases, each judged alone and answered per item."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bot.http.api import openapi_document
from storage.models import Case, CaseEvent, Survey
from tests.api_support import (
    Api,
    api_fixture,  # noqa: F401
    assert_documented,
    case_body,
    delayed_body,
    make_api_fixture,  # noqa: F401
    resolved_body,
)

BATCH = "/api/v1/cases:batch"


async def post_batch(api: Api, items: object, expected: int = 200) -> Any:
    response = await api.post(items, path=BATCH)
    await assert_documented(openapi_document(), response, "POST", BATCH)
    payload = await response.json()
    assert response.status == expected, payload
    return payload


async def stored_codes(api: Api) -> set[str]:
    async with api.services.sessions() as session:
        return set((await session.execute(select(Case.case_code))).scalars())


async def test_mixed_items_are_answered_one_by_one(api: Api) -> None:
    await api.post_json(resolved_body("B-OLD"), 201)
    bad = case_body("B-BAD", unit_code="NOWHERE")
    bad["citizen"] = {"phone": "123"}
    items: list[object] = [
        case_body("B-NEW"),  # 0: created
        bad,  # 1: invalid, two fields named
        resolved_body("B-OLD"),  # 2: a replay
        case_body("B-OLD"),  # 3: resolved -> received is impossible
        7,  # 4: not an object
        delayed_body("B-NEW"),  # 5: a later item may update an earlier one
        {"case_code": ["not", "text"]},  # 6: invalid, its case_code is not echoed
    ]
    payload = await post_batch(api, items)
    results = payload["results"]

    assert [r["index"] for r in results] == list(range(len(items)))
    assert [r["status"] for r in results] == [201, 422, 200, 409, 422, 200, 422]
    assert [r["case_code"] for r in results] == [
        "B-NEW",
        "B-BAD",
        "B-OLD",
        "B-OLD",
        None,
        "B-NEW",
        None,
    ]
    assert results[0]["case"]["status"] == "received"
    assert results[5]["case"]["status"] == "delayed"
    assert results[2]["case"]["survey"]["status"] == "scheduled"
    assert set(results[1]["error"]["fields"]) == {"citizen.phone"}
    assert results[3]["error"]["code"] == "invalid_transition"
    assert results[4]["error"]["fields"] == {"body": "must be a JSON object"}
    assert "case_code" in results[6]["error"]["fields"]
    assert payload["summary"] == {"created": 1, "updated": 2, "rejected": 4}

    assert await stored_codes(api) == {"B-OLD", "B-NEW"}
    old_status = await api.scalar(select(Case.status).where(Case.case_code == "B-OLD"))
    assert old_status == "resolved"
    assert await api.count(Survey) == 1


async def test_an_item_failing_after_its_changes_began_leaves_nothing_behind(api: Api) -> None:
    # The unknown unit is found inside the intake (not by the schema), in the item's savepoint.
    items = [case_body("B-1"), case_body("B-2", unit_code="NOWHERE"), case_body("B-3")]
    payload = await post_batch(api, items)
    assert [r["status"] for r in payload["results"]] == [201, 422, 201]
    assert set(payload["results"][1]["error"]["fields"]) == {"unit_code"}
    assert await stored_codes(api) == {"B-1", "B-3"}
    assert await api.count(CaseEvent) == 2


async def test_a_replayed_batch_changes_nothing(api: Api) -> None:
    items = [case_body("B-1"), resolved_body("B-2"), delayed_body("B-3")]
    first = await post_batch(api, items)
    assert [r["status"] for r in first["results"]] == [201, 201, 201]
    events = await api.count(CaseEvent)

    second = await post_batch(api, items)
    assert [r["status"] for r in second["results"]] == [200, 200, 200]
    assert [r["case"] for r in second["results"]] == [r["case"] for r in first["results"]]
    assert await api.count(CaseEvent) == events
    assert await api.count(Survey) == 1


async def test_an_object_with_a_cases_list_is_a_batch_too(api: Api) -> None:
    payload = await post_batch(api, {"cases": [case_body("B-1")]})
    assert [r["status"] for r in payload["results"]] == [201]


async def test_an_empty_batch_answers_no_results(api: Api) -> None:
    payload = await post_batch(api, [])
    assert payload == {"results": [], "summary": {"created": 0, "updated": 0, "rejected": 0}}


async def test_a_thousand_items_are_answered_and_more_are_refused(api: Api) -> None:
    payload = await post_batch(api, [{}] * 1000)
    assert len(payload["results"]) == 1000
    assert {r["status"] for r in payload["results"]} == {422}
    assert payload["results"][-1]["index"] == 999

    items = [case_body(f"B-{n}") for n in range(1001)]
    refused = await post_batch(api, items, expected=422)
    assert set(refused["error"]["fields"]) == {"body"}
    assert "1000" in refused["error"]["fields"]["body"]
    assert await api.count(Case) == 0


async def test_a_batch_that_is_not_a_list_is_refused(api: Api) -> None:
    for body in [case_body("B-1"), "cases", 1, None, {"cases": "x"}, {"items": []}]:
        payload = await post_batch(api, body, expected=422)
        assert set(payload["error"]["fields"]) == {"body"}, body
    response = await api.post_raw(b"[{", path=BATCH)
    assert response.status == 422
    assert set((await response.json())["error"]["fields"]) == {"body"}
    assert await api.count(Case) == 0


async def test_json_only_the_standard_reader_takes_is_still_judged_item_by_item(api: Api) -> None:
    """The fast JSON reader refuses a lone surrogate and an integer beyond 64 bits; such a
    batch is still read whole, and only the item whose field cannot be stored is refused."""
    big_chat = case_body("B-BIG")
    big_chat["citizen"] = {"telegram_chat_id": 99999999999999999999}  # 20 digits, > 2**64
    lone = case_body("B-LONE")
    lone["citizen"] = {"name": "\ud800"}
    payload = await post_batch(api, [big_chat, lone, case_body("B-PLAIN")])

    assert [r["status"] for r in payload["results"]] == [201, 422, 201]
    assert payload["results"][1]["error"]["fields"] == {
        "citizen.name": "contains a NUL character or a lone surrogate"
    }
    assert await stored_codes(api) == {"B-BIG", "B-PLAIN"}
