"""Two processes taking cases of the same new citizen at once (storage/repositories/citizens.py,
`lock_phones`): nothing makes a phone unique in the database, so without a lock each
transaction would find no citizen with the phone and create one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

import handlers.intake
from handlers.intake import cases_posted
from handlers.intake_schema import parse_case
from handlers.policy import SurveyPolicy
from handlers.units import load_units, parse_units_file
from storage.db import SessionFactory, create_session_factory
from storage.models import Case, Citizen
from storage.repositories import citizens as citizen_repo
from tests.api_support import UNITS_YAML, case_body
from tests.conftest import engine_for

NOW = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
PHONE = "0912000111"


@pytest.fixture
async def two_processes(migrated_database_url: str) -> AsyncIterator[list[SessionFactory]]:
    if migrated_database_url.startswith("sqlite"):
        pytest.skip("SQLite's writers take turns (BEGIN IMMEDIATE): no two intakes at once")
    engines = [engine_for(migrated_database_url) for _ in range(2)]
    factories = [create_session_factory(engine) for engine in engines]
    async with factories[0].begin() as session:
        await load_units(session, parse_units_file(UNITS_YAML))
    yield factories
    for engine in engines:
        await engine.dispose()


async def test_the_same_new_citizen_posted_by_two_processes_at_once_is_one_citizen(
    two_processes: list[SessionFactory], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each transaction, once it has read the citizens, waits (up to a deadline) until the
    # other has read them too: both read before either writes, unless one of them must
    # wait for the other before reading (the lock), which is the point.
    arrived = [asyncio.Event(), asyncio.Event()]
    read = citizen_repo.citizens_for_intake

    async def citizens_for_intake(
        session: AsyncSession, ids: Collection[int], phones: Collection[str], **options: Any
    ) -> Any:
        found = await read(session, ids, phones, **options)
        me = int(session.info["process"])
        arrived[me].set()
        # A timeout means the other is waiting for this transaction: go on and commit.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived[1 - me].wait(), timeout=1.0)
        return found

    monkeypatch.setattr(handlers.intake.citizen_repo, "citizens_for_intake", citizens_for_intake)

    async def post(process: int) -> None:
        body = case_body(f"TWIN-{process}")
        body["citizen"] = {"name": "Trần Thị Mai", "phone": PHONE}
        async with two_processes[process].begin() as session:
            session.info["process"] = process
            [outcome] = await cases_posted(session, [parse_case(body)], NOW, SurveyPolicy())
            assert not isinstance(outcome, Exception), outcome

    await asyncio.gather(post(0), post(1))
    async with two_processes[0]() as session:
        citizens = await session.scalar(
            select(func.count()).select_from(Citizen).where(Citizen.phone == PHONE)
        )
        owners = set(
            await session.scalars(select(Case.citizen_id).where(Case.case_code.like("TWIN-%")))
        )
    assert citizens == 1
    assert len(owners) == 1
