"""UTC datetimes on SQLite (storage/types.py): written as the same text SQLite's dialect
writes, so that values stored before and after compare and sort alike, and read back aware."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.dialects import sqlite

from handlers.intake import case_posted
from handlers.intake_schema import parse_case
from handlers.policy import SurveyPolicy
from handlers.units import load_units, parse_units_file
from storage.db import SessionFactory
from storage.models import Case
from storage.types import UTCDateTime
from tests.api_support import UNITS_YAML, case_body

_SQLITE = sqlite.dialect()


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), timezones=st.sampled_from([UTC, timezone(timedelta(hours=7))])
    )
)
def test_sqlite_text_is_what_the_dialect_itself_writes(moment: datetime) -> None:
    ours = UTCDateTime().dialect_impl(_SQLITE).bind_processor(_SQLITE)
    dialects_own = sqlite.DATETIME().bind_processor(_SQLITE)
    assert ours is not None and dialects_own is not None
    assert ours(moment) == dialects_own(moment.astimezone(UTC).replace(tzinfo=None))


def test_a_naive_datetime_is_refused() -> None:
    write = UTCDateTime().dialect_impl(_SQLITE).bind_processor(_SQLITE)
    assert write is not None
    with pytest.raises(ValueError, match="naive"):
        write(datetime(2026, 12, 1))
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(datetime(2026, 12, 1), _SQLITE)


async def test_a_stored_time_reads_back_aware_and_equal(sessions: SessionFactory) -> None:
    now = datetime(2026, 12, 1, 3, 4, 5, 678901, tzinfo=UTC)
    async with sessions.begin() as session:
        await load_units(session, parse_units_file(UNITS_YAML))
        await case_posted(session, parse_case(case_body("T-1")), now, SurveyPolicy())
    async with sessions() as session:
        received = await session.scalar(select(Case.received_at).where(Case.case_code == "T-1"))
        later = await session.scalar(
            select(Case.case_code).where(Case.received_at < now, Case.case_code == "T-1")
        )
    assert received == parse_case(case_body("T-1")).received_at
    assert received is not None and received.tzinfo is not None
    assert later == "T-1"
