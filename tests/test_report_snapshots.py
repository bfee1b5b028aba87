"""Stored weeks (`report_snapshots`): a closed week's counts are stored once and give exactly the
live report; every write that could change a stored week makes it counted again (triggers),
whoever writes; the current week is never stored; two first counts at once both succeed; the
digest sweep stores last week. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

import bot.digest.snapshots as snapshots_module
from bot.digest.snapshots import StoredWeeks
from bot.jobs.digests import send_due_digests
from handlers.clock import FakeClock
from handlers.digest import (
    CLOSED_AFTER,
    Counts,
    Week,
    build_report,
    history_points,
    load_tree,
    part_counts,
    scope_history,
)
from storage.db import SessionFactory
from storage.models import (
    Apology,
    Case,
    CaseStatus,
    Citizen,
    Escalation,
    EscalationEvent,
    EscalationStatus,
    ReportSnapshot,
    Survey,
    Unit,
)
from storage.repositories import cases as case_repo
from storage.repositories import citizens as citizen_repo
from storage.repositories.reports import begin_reading
from tests.api_support import Api, api_fixture, make_api_fixture
from tests.contract_data import case_body
from tests.digest_support import add_case, add_invitation, add_response
from tests.digest_support import load_tree as seed_tree
from tests.telegram_support import Rig, make_rig, rig

__all__ = ["api_fixture", "make_api_fixture", "make_rig", "rig"]  # fixtures

HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
W46, W47, W48 = Week(2026, 46), Week(2026, 47), Week(2026, 48)
MID_W47 = datetime(2026, 11, 18, 3, 0, tzinfo=UTC)  # Wednesday, 10:00 in Hà Nội
MID_W46 = MID_W47 - timedelta(days=7)
LATER = datetime(2026, 12, 9, 3, 0, tzinfo=UTC)  # week 50: weeks 46-49 are closed

Report = dict[str, Any]


async def seed(sessions: SessionFactory) -> None:
    """Two weeks of everything a report counts: ratings, comments, informal payments,
    invitations, escalations with events, a late case, a case still open past its date, an
    apology, officers; HN-BD with fewer responses than the minimum of 5."""
    async with sessions.begin() as session:
        await seed_tree(session)
        for week_mid in (MID_W46, MID_W47):
            for index in range(6):
                await add_response(
                    session,
                    "HN-LB",
                    week_mid,
                    (5, 4, 4, 2 + index % 3, 5),
                    officer_code="CB-1" if index < 5 else "CB-2",
                    comment="Phải chờ lâu quá" if index == 0 else None,
                    informal_payment=index == 1,
                )
                await add_response(session, "HN-LB-BD", week_mid, (3, 3, 4, 4, None))
            await add_response(session, "HN-BD", week_mid, (1, 2, 3, 4, 5))
            await add_invitation(session, "HN-BD", week_mid)
        unit_id = await session.scalar(select(Unit.id).where(Unit.code == "HN-LB"))
        assert unit_id is not None
        survey = await add_response(session, "HN-LB", MID_W47, (1, 1, 1, 1, 1))
        escalation = Escalation(
            ref="e1",
            case_id=survey.case_id,
            survey_id=survey.id,
            reason="low_rating",
            severity="high",
            unit_id=unit_id,
            origin_unit_id=unit_id,
            status=EscalationStatus.ACKNOWLEDGED,
            opened_at=MID_W47,
            acknowledged_at=MID_W47 + timedelta(hours=3),
            ack_due_at=MID_W47 + timedelta(hours=8),
            resolve_due_at=MID_W47 + timedelta(days=2),
        )
        session.add(escalation)
        await session.flush()
        session.add(
            EscalationEvent(
                escalation_id=escalation.id, kind="skipped", level=1, unit_id=unit_id, at=MID_W47
            )
        )
        late = await add_case(
            session,
            "HN-LB",
            received_at=MID_W47 - timedelta(days=10),
            due_at=MID_W47 - timedelta(days=3),
            resolved_at=MID_W47,
        )
        session.add(
            Apology(
                case_id=late.id,
                unit_id=unit_id,
                kind="late_resolution",
                old_due_at=late.due_at,
                new_due_at=MID_W47,
                created_at=MID_W47,
            )
        )
        await add_case(
            session,
            "HN-LB-BD",
            received_at=MID_W46,
            due_at=MID_W47 - timedelta(days=1),
            status=CaseStatus.RECEIVED,
        )


async def live(sessions: SessionFactory, unit: str | None = None, **options: Any) -> Report:
    async with sessions() as session:
        report = await build_report(session, W47, HANOI, 5, unit, **options)
    return report.as_json()


async def stored(
    sessions: SessionFactory, clock: FakeClock, unit: str | None = None, **options: Any
) -> Report:
    async with sessions() as session, sessions() as side:
        report = await build_report(
            session,
            W47,
            HANOI,
            5,
            unit,
            side_session=side,
            closed=StoredWeeks(sessions, clock),
            **options,
        )
    return report.as_json()


async def stored_labels(sessions: SessionFactory) -> set[str]:
    """The parts stored, as "2026-W47" (the responses' part) and "2026-W47 cases"."""
    async with sessions() as session:
        rows = await session.execute(
            select(ReportSnapshot.week, ReportSnapshot.part).where(
                ReportSnapshot.counts.is_not(None)
            )
        )
    return {week if part == "surveys" else f"{week} cases" for week, part in rows}


STORED = {"2026-W46", "2026-W47", "2026-W47 cases"}  # what last week's report stores


def counting_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on a stored week must be read, not counted."""

    async def refuse(*_args: Any, **_kwargs: Any) -> dict[int, Counts]:
        raise AssertionError("a stored week was counted again")

    monkeypatch.setattr(snapshots_module, "part_counts", refuse)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(LATER)


@pytest.fixture(autouse=True)
def _patient_with_writers(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check what gets stored. On PostgreSQL a count waits for every write in
    flight on the server (`wait_for_writers`), and on a loaded machine, or beside another
    suite on the same server, one may last past the service's 2 s, when the week is counted
    but not stored. Waiting longer keeps what these tests check from hanging on the load."""
    monkeypatch.setattr(snapshots_module, "WRITERS_PATIENCE", 60.0)


async def test_a_stored_week_gives_exactly_the_live_report(
    sessions: SessionFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(sessions)
    expected = {
        "tree": await live(sessions),
        "scope": await live(sessions, "HN-LB"),
        "few": await live(sessions, "HN-BD"),
        "officers": await live(sessions, "HN-LB", with_officers=True),
    }
    assert expected["few"]["overall"]["too_few_responses"] is True
    assert expected["officers"]["units"][0]["officers"]
    assert expected["tree"]["overall"]["escalations"]["opened"] == 1
    assert expected["tree"]["overall"]["cases_overdue"] == 2

    first = await stored(sessions, clock)  # counts weeks 46 and 47, and stores them
    assert await stored_labels(sessions) == STORED
    assert first == expected["tree"]
    counting_forbidden(monkeypatch)
    assert await stored(sessions, clock) == expected["tree"]
    assert await stored(sessions, clock, "HN-LB") == expected["scope"]
    assert await stored(sessions, clock, "HN-BD") == expected["few"]
    assert await stored(sessions, clock, "HN-LB", with_officers=True) == expected["officers"]


async def test_a_stored_history_gives_the_live_points(
    sessions: SessionFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(sessions)

    async def points(closed: StoredWeeks | None) -> list[Any]:
        async with sessions() as session:
            await begin_reading(session)  # as every reader does: SQLite's write lock stays free
            tree = await load_tree(session)
            ids = tree.subtree(tree.find("HN-LB").id)
            history = await scope_history(session, W48, HANOI, ids, closed=closed)
        return history_points(history, ids, 5)

    expected = await points(None)
    # HN-LB and its ward: 6 + 6 in week 46, one more in week 47, none in the current week.
    assert [point.responses for point in expected][-3:] == [12, 13, 0]
    assert await points(StoredWeeks(sessions, clock)) == expected
    counting_forbidden(monkeypatch)
    assert await points(StoredWeeks(sessions, clock)) == expected


async def test_the_current_week_is_never_stored(sessions: SessionFactory) -> None:
    await seed(sessions)
    during = FakeClock(MID_W47 + timedelta(days=1))
    assert await stored(sessions, during) == await live(sessions)
    assert await stored_labels(sessions) == {"2026-W46"}  # the previous week had ended
    # Nor a week that ended a moment ago: a response of Sunday 23:59 may still be committing.
    just_after = FakeClock(W47.end(HANOI) + CLOSED_AFTER - timedelta(seconds=1))
    assert await stored(sessions, just_after) == await live(sessions)
    assert await stored_labels(sessions) == {"2026-W46"}
    assert await stored(sessions, FakeClock(W47.end(HANOI) + CLOSED_AFTER)) == await live(sessions)
    assert await stored_labels(sessions) == STORED


Write = Callable[[AsyncSession], Awaitable[None]]


async def _response_written_into_the_past_week(session: AsyncSession) -> None:
    await add_response(session, "HN-BD", MID_W47, (5, 5, 5, 5, 5))


async def _case_posted_late_with_a_past_resolution(session: AsyncSession) -> None:
    await add_case(
        session,
        "HN-BD",
        received_at=MID_W47 - timedelta(days=9),
        due_at=MID_W47 - timedelta(days=2),
        resolved_at=MID_W47 + timedelta(hours=1),
    )


async def _late_open_case_resolved_now(session: AsyncSession) -> None:
    # Drift of `cases_overdue`: a case still open past its date counts in every week after
    # that date until it is resolved; resolving it today changes week 47's figure.
    await session.execute(
        update(Case)
        .where(Case.status == CaseStatus.RECEIVED)
        .values(status=CaseStatus.RESOLVED, resolved_at=LATER)
    )


async def _old_escalation_rewritten(session: AsyncSession) -> None:
    # An escalation of week 47 changed today (its deadlines are rewritten as it climbs or is
    # reminded): whether it was past its SLA at the week's end is read from them.
    escalation = await session.scalar(select(Escalation).where(Escalation.ref == "e1"))
    assert escalation is not None
    escalation.status = EscalationStatus.OPEN
    escalation.acknowledged_at = None
    escalation.ack_due_at = MID_W47 + timedelta(hours=1)


async def _event_backdated(session: AsyncSession) -> None:
    escalation_id = await session.scalar(select(Escalation.id).where(Escalation.ref == "e1"))
    assert escalation_id is not None
    session.add(EscalationEvent(escalation_id=escalation_id, kind="unrouted", level=2, at=MID_W47))


async def _case_moved_to_another_unit(session: AsyncSession) -> None:
    # A bulk statement, not the ORM: intake re-posting a case under another unit.
    bd = await session.scalar(select(Unit.id).where(Unit.code == "HN-BD"))
    case_id = await session.scalar(
        select(Survey.case_id).where(Survey.completed_at == MID_W47).limit(1)
    )
    await session.execute(update(Case).where(Case.id == case_id).values(unit_id=bd))


async def _response_deleted(session: AsyncSession) -> None:
    case_id = await session.scalar(
        select(Survey.case_id).where(Survey.completed_at == MID_W47).limit(1)
    )
    await session.execute(delete(Case).where(Case.id == case_id))


async def _erasure(session: AsyncSession) -> None:
    # `/delete` (handlers.citizens.delete_confirmed): the citizen's cases lose their person;
    # the answers stay as anonymous statistics, so the figures stay too, and still match.
    citizen = Citizen(locale="vi", name="Nguyễn Văn A", phone="0912345678")
    session.add(citizen)
    await session.flush()
    await session.execute(
        update(Case).where(Case.unit_id.is_not(None)).values(citizen_id=citizen.id)
    )
    await case_repo.detach_citizen(session, citizen.id)
    await citizen_repo.forget_contacts(session, citizen.id)
    await session.delete(citizen)


# Each write, and the stored parts it leaves (it deletes those it could change, no more).
WRITES: dict[str, tuple[Write, set[str]]] = {
    "response written into the past week": (_response_written_into_the_past_week, {"2026-W46"}),
    "case posted late with a past resolution": (
        _case_posted_late_with_a_past_resolution,
        {"2026-W46", "2026-W47"},
    ),
    "late open case resolved now": (_late_open_case_resolved_now, {"2026-W46", "2026-W47"}),
    "old escalation rewritten": (_old_escalation_rewritten, {"2026-W46", "2026-W47"}),
    "escalation event backdated": (_event_backdated, {"2026-W46", "2026-W47"}),
    "case moved to another unit": (_case_moved_to_another_unit, {"2026-W46"}),
    "response deleted": (_response_deleted, {"2026-W46"}),
    "erasure": (_erasure, STORED),
}


@pytest.mark.parametrize(("write", "left"), WRITES.values(), ids=WRITES.keys())
async def test_a_write_that_could_change_a_stored_week_makes_it_counted_again(
    sessions: SessionFactory, clock: FakeClock, write: Write, left: set[str]
) -> None:
    await seed(sessions)
    before = await stored(sessions, clock)
    assert await stored_labels(sessions) == STORED
    async with sessions.begin() as session:
        await write(session)
    assert await stored_labels(sessions) == left
    after = await live(sessions)
    assert await stored(sessions, clock) == after
    assert await stored(sessions, clock, "HN-LB") == await live(sessions, "HN-LB")
    if write is not _erasure:
        assert after != before  # the write did change the week, so this proves something
    assert await stored_labels(sessions) == STORED  # counted again and stored


async def test_a_write_of_today_keeps_the_stored_weeks(
    sessions: SessionFactory, clock: FakeClock
) -> None:
    await seed(sessions)
    await stored(sessions, clock)
    async with sessions.begin() as session:
        await add_response(session, "HN-LB", LATER, (5, 5, 5, 5, 5))
        await add_invitation(session, "HN-LB", LATER)
    assert await stored_labels(sessions) == STORED


async def test_a_write_while_the_week_is_counted_is_not_lost(
    sessions: SessionFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write committed after the claim, while the week is counted: the counts (which may
    not hold it) are not stored, and the next reader counts the week with it."""
    await seed(sessions)
    count = part_counts

    async def count_then_write(
        session: AsyncSession, week: Week, tz: ZoneInfo, part: str
    ) -> dict[int, Counts]:
        found = await count(session, week, tz, part)
        if week == W47 and part == "surveys":
            async with sessions.begin() as writer:
                await add_response(writer, "HN-BD", MID_W47, (5, 5, 5, 5, 5))
        return found

    monkeypatch.setattr(snapshots_module, "part_counts", count_then_write)
    await stored(sessions, clock)
    # Week 47's responses are not stored; its complaints' part, counted beside them, is
    # stored only if it was claimed after the write (the write's late case is in it).
    assert await stored_labels(sessions) - {"2026-W47 cases"} == {"2026-W46"}
    monkeypatch.setattr(snapshots_module, "part_counts", count)
    assert await stored(sessions, clock) == await live(sessions)
    assert await stored_labels(sessions) == STORED


async def test_two_first_counts_of_a_week_at_once_both_succeed(
    sessions: SessionFactory, clock: FakeClock
) -> None:
    await seed(sessions)
    expected = await live(sessions)
    reports = await asyncio.gather(*(stored(sessions, clock) for _ in range(3)))
    assert all(report == expected for report in reports)
    async with sessions() as session:
        rows = await session.scalar(select(func.count()).select_from(ReportSnapshot))
    assert rows == 3
    assert await stored_labels(sessions) <= STORED
    assert await stored(sessions, clock) == expected
    assert await stored_labels(sessions) == STORED


async def test_the_digest_sweep_stores_last_week(rig: Rig) -> None:
    sessions = rig.services.sessions
    await seed(sessions)
    rig.clock.set(datetime(2026, 11, 23, 0, 31, tzinfo=UTC))  # Monday 07:31 in Hà Nội, week 48
    outcome = await send_due_digests(rig.services)
    assert outcome.queued  # the digests went out, from the stored weeks
    stored_now = await stored_labels(sessions)
    assert {"2026-W46", "2026-W47"} <= stored_now
    assert "2026-W48" not in stored_now
    async with sessions.begin() as session:
        await session.execute(delete(ReportSnapshot))
    # Run again (every digest already sent): last week and the one before are stored anyway.
    again = await send_due_digests(rig.services)
    assert not again.queued
    assert await stored_labels(sessions) == STORED


async def test_a_write_in_flight_when_the_week_is_claimed_is_counted(
    sessions: SessionFactory, clock: FakeClock
) -> None:
    """A write into the week whose trigger ran before the claim (so it could not delete it)
    and that commits while the week is being claimed: the count waits for it (PostgreSQL:
    `wait_for_writers`; SQLite: the claim waits for the write lock) and so includes it."""
    await seed(sessions)
    async with sessions.begin() as writer:
        await add_response(writer, "HN-BD", MID_W47, (5, 5, 5, 5, 5))
        await writer.flush()  # the triggers have run: nothing stored to delete yet
        counting = asyncio.create_task(StoredWeeks(sessions, clock).counts([W47], HANOI))
        await asyncio.sleep(0.3)
        assert not counting.done()  # waiting for this transaction to end
    counted = await counting
    assert await stored_labels(sessions) == {"2026-W47"}
    assert counted[W47] == (await StoredWeeks(sessions, clock).counts([W47], HANOI))[W47]
    assert await stored(sessions, clock) == await live(sessions)
    assert await live(sessions, "HN-BD") == await stored(sessions, clock, "HN-BD")


async def test_cases_posted_through_the_api_make_a_stored_week_counted_again(api: Api) -> None:
    """The real intake (bulk statements): a case posted today as resolved late in week 47,
    and a case of week 46 still open past its date, then resolved today (`cases_overdue`'s
    drift). The API's report follows each, and equals a live count."""
    sessions = api.services.sessions
    async with sessions.begin() as session:
        for _ in range(5):
            await add_response(session, "HN-LB", MID_W47, (5, 4, 4, 3, 5))
    open_late = case_body(
        "OPEN-LATE",
        received_at="2026-11-10T08:00:00+07:00",
        due_at="2026-11-13T17:00:00+07:00",
    )
    assert (await api.post(open_late)).status == 201

    async def report() -> Report:
        response = await api.get("/api/v1/reports/weekly?week=2026-W47")
        assert response.status == 200
        body: Report = await response.json()
        return body

    first = await report()
    assert await stored_labels(sessions) == STORED
    assert first == await live(sessions)
    assert unit_of(first, "HN-LB")["cases_overdue"] == 1  # the open late case

    backdated = case_body(
        "LATE-W47",
        status="resolved",
        received_at="2026-11-12T08:00:00+07:00",
        due_at="2026-11-17T17:00:00+07:00",
        resolved_at="2026-11-19T10:00:00+07:00",
    )
    assert (await api.post(backdated)).status == 201
    second = await report()
    assert unit_of(second, "HN-LB")["cases_overdue"] == 2
    assert second == await live(sessions)

    resolved_now = {**open_late, "status": "resolved", "resolved_at": "2026-11-23T07:30:00+07:00"}
    assert (await api.post(resolved_now)).status == 200
    third = await report()
    # Resolved in week 48: week 47 counts it no more (still open "now" was the rule).
    assert unit_of(third, "HN-LB")["cases_overdue"] == 1
    assert third == await live(sessions)
    assert await stored_labels(sessions) == STORED


def unit_of(body: Report, code: str) -> dict[str, Any]:
    found: dict[str, Any] = next(u for u in body["units"] if u["unit_code"] == code)
    return found
