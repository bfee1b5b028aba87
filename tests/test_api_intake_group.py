"""Group commit of intake: concurrent posts share a transaction and each still gets its own
answer, after the commit that holds it; one request's failure is its own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiohttp import ClientResponse
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError

import bot.http.api
from bot.http.api import INTAKE
from handlers.intake import Outcome
from handlers.intake_schema import CaseIn
from storage.models import Case, Procedure
from storage.repositories import cases as case_repo
from tests.api_support import (
    Api,
    api_fixture,  # noqa: F401
    case_body,
    make_api_fixture,  # noqa: F401
)

PostsFn = Callable[..., Awaitable[list[Outcome]]]


def holding_the_first_group(
    api: Api, monkeypatch: pytest.MonkeyPatch, posts: int
) -> list[list[str]]:
    """Makes the first intake transaction wait until all `posts` have arrived (in it, or
    queued behind it), so that they are taken together; returns the codes of each call."""
    queue = api.client.app[INTAKE]
    real: PostsFn = bot.http.api.cases_posted
    calls: list[list[str]] = []

    async def cases_posted(session: Any, bodies: Sequence[CaseIn], *a: Any, **k: Any) -> Any:
        calls.append([body.case_code for body in bodies])
        if len(calls) == 1:
            for _ in range(2000):
                if len(bodies) + queue.waiting >= posts:
                    break
                await asyncio.sleep(0.005)
        return await real(session, bodies, *a, **k)

    monkeypatch.setattr(bot.http.api, "cases_posted", cases_posted)
    return calls


async def statuses(responses: list[ClientResponse]) -> list[int]:
    for response in responses:
        await response.read()
    return [response.status for response in responses]


async def test_concurrent_posts_are_answered_each_as_if_alone(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = holding_the_first_group(api, monkeypatch, posts=6)
    bodies = [
        case_body("G-0"),
        case_body("G-1"),
        case_body("G-2", unit_code="NOWHERE"),
        case_body("G-3"),
        case_body("G-3"),  # the same body twice: one creates, the other replays
        case_body("G-4", status="withdrawn"),
    ]
    responses = await asyncio.gather(*(api.post(body) for body in bodies))

    assert sorted(await statuses(responses)) == [200, 201, 201, 201, 201, 422]
    assert [r.status for r in responses[:4]] == [201, 201, 422, 201]
    # Taken together: at most two transactions, each in runs without a repeated code.
    assert sum(len(codes) for codes in calls) == 6
    assert max(len(codes) for codes in calls) >= 3
    views = [await r.json() for r in responses]
    assert views[3] == views[4]  # the replay answers the same view
    assert {v["case_code"] for v in views if "case_code" in v} == {"G-0", "G-1", "G-3", "G-4"}
    assert await api.count(Case) == 4


async def test_a_request_that_fails_its_group_fails_alone(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = holding_the_first_group(api, monkeypatch, posts=4)
    held: PostsFn = bot.http.api.cases_posted

    async def poisoned(session: Any, bodies: Sequence[CaseIn], *a: Any, **k: Any) -> Any:
        outcomes = await held(session, bodies, *a, **k)
        if any(body.case_code == "POISON" for body in bodies):
            raise RuntimeError("a bug that only this case trips")
        return outcomes

    monkeypatch.setattr(bot.http.api, "cases_posted", poisoned)
    bodies = [case_body("P-0"), case_body("P-1"), case_body("POISON"), case_body("P-2")]
    responses = await asyncio.gather(*(api.post(body) for body in bodies))

    assert await statuses(responses) == [201, 201, 500, 201]
    # POISON was in a group with others, then each of them went alone.
    assert any(len(codes) >= 2 and "POISON" in codes for codes in calls)
    assert ["POISON"] in calls
    async with api.services.sessions() as session:
        stored = set((await session.execute(select(Case.case_code))).scalars())
    assert stored == {"P-0", "P-1", "P-2"}


async def test_reference_ids_of_a_rolled_back_transaction_are_forgotten(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = case_repo.insert_link_tokens
    failures = [RuntimeError("the disk is full, say")]

    async def failing_once(session: Any, rows: Any) -> None:
        if failures:
            raise failures.pop()
        await real(session, rows)

    monkeypatch.setattr(case_repo, "insert_link_tokens", failing_once)
    body = case_body("R-1")
    body["procedure"] = {"code": "9.999999", "name": "Thủ tục mới"}
    body["officer"] = {"code": "CB-NEW", "name": "Cán bộ mới"}
    first = await api.post(body)
    assert first.status == 500  # its procedure and officer rows were rolled back with it

    await api.post_json(body, 201)  # so their ids must not be reused from memory
    assert await api.count(Procedure, Procedure.code == "9.999999") == 1


class _DeadlockVictim(Exception):
    sqlstate = "40P01"  # as the driver's error carries PostgreSQL's code


@pytest.mark.parametrize(
    "lost",
    [
        # Two processes taking some of the same new cases in crossing orders: PostgreSQL
        # rolls one transaction back to break the cycle and expects it to be run again.
        DBAPIError("INSERT INTO cases ...", None, _DeadlockVictim("deadlock detected")),
        # The same new case (or procedure, officer, chat) inserted by another transaction
        # first: run again, this one finds that row.
        IntegrityError("INSERT INTO cases ...", None, Exception("duplicate key value")),
    ],
    ids=["deadlock", "unique-key"],
)
async def test_a_transaction_that_lost_to_another_is_run_again(
    api: Api, monkeypatch: pytest.MonkeyPatch, lost: DBAPIError
) -> None:
    real = case_repo.insert_link_tokens
    victims = [lost]

    async def deadlocked_once(session: Any, rows: Any) -> None:
        if victims:
            raise victims.pop()
        await real(session, rows)

    monkeypatch.setattr(case_repo, "insert_link_tokens", deadlocked_once)
    answer = await api.post_json(case_body("D-1"), 201)
    assert answer["case_code"] == "D-1" and not victims
    assert await api.count(Case, Case.case_code == "D-1") == 1
