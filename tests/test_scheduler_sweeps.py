"""The real APScheduler runs the sweeps; decisions follow the injected clock; each item is
handled in its own transaction, so one bad item holds back nothing but itself."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.jobs.registry import sweep_registrars
from bot.jobs.scheduler import SweepScheduler
from bot.jobs.sweeps import Retries, escalation_sweep, survey_sweep
from handlers import escalations, survey_flow
from storage.models import Case, Escalation, Survey
from storage.repositories import surveys as survey_repo
from tests.telegram_support import Rig, case_body, make_rig, rig

__all__ = ["make_rig", "rig"]  # fixtures

CHAT = 5553001


async def test_survey_sweep_is_registered(rig: Rig) -> None:
    scheduler = SweepScheduler(rig.services)
    for register in sweep_registrars(rig.services):
        register(scheduler)
    assert "surveys" in scheduler.job_names


async def test_running_scheduler_invites_when_the_clock_says_so(rig: Rig) -> None:
    await rig.post_case(case_body(), 201)
    await rig.link(CHAT)
    await rig.post_case(case_body(status="resolved", resolved_at="2026-11-23T08:00:00+07:00"), 200)
    rig.clock.advance(timedelta(minutes=1))
    scheduler = SweepScheduler(rig.services)
    scheduler.every(timedelta(milliseconds=50), survey_sweep, name="surveys")
    scheduler.start()
    try:
        invitation = await rig.api.wait_for_message(
            CHAT, lambda m: "Bắt đầu" in [t for t, _ in rig.api.buttons(m)], timeout=5
        )
    finally:
        await scheduler.stop()
    assert "000.00.12.H26-261122-0001" in invitation.text
    assert (await rig.get_case("000.00.12.H26-261122-0001"))["survey"]["status"] == "invited"


# --- one item at a time ----------------------------------------------------------------------


async def _resolved_cases(rig: Rig, count: int) -> list[str]:
    """`count` resolved cases of citizens who gave their chat at the desk, due now."""
    codes = []
    for number in range(count):
        code = f"SWEEP-{number}"
        body = case_body(case_code=code, status="resolved", resolved_at="2026-11-23T08:00:00+07:00")
        body["citizen"] = {"name": f"Người {number}", "telegram_chat_id": CHAT + 1 + number}
        await rig.post_case(body, 201)
        codes.append(code)
    return codes


async def _poison_survey(rig: Rig, case_code: str) -> int:
    """A survey whose questionnaire was removed from the configuration: inviting it fails."""
    async with rig.services.sessions.begin() as session:
        survey = (
            await session.execute(select(Survey).join(Case).where(Case.case_code == case_code))
        ).scalar_one()
        survey.questionnaire = "removed-questionnaire"
        return survey.id


async def test_a_poisoned_invitation_does_not_hold_back_the_others(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    codes = await _resolved_cases(rig, 4)
    poisoned = await _poison_survey(rig, codes[1])
    retries = Retries()
    with caplog.at_level(logging.ERROR, logger="bot.jobs.sweeps"):
        assert await survey_sweep(rig.services, retries) == 3
    statuses = [(await rig.get_case(code))["survey"]["status"] for code in codes]
    assert statuses == ["invited", "scheduled", "invited", "invited"]
    [line] = [r.getMessage() for r in caplog.records if r.name == "bot.jobs.sweeps"]
    assert f"invitation {poisoned} failed (1 in a row): UnknownQuestionnaire at" in line
    assert "Người" not in line and "removed-questionnaire" not in line  # no data, only where

    # Backoff: not tried again at once, tried again after a minute, then after two more.
    caplog.clear()
    assert await survey_sweep(rig.services, retries) == 0
    assert not caplog.records
    rig.clock.advance(timedelta(minutes=1))
    with caplog.at_level(logging.ERROR, logger="bot.jobs.sweeps"):
        await survey_sweep(rig.services, retries)
        rig.clock.advance(timedelta(minutes=1))
        await survey_sweep(rig.services, retries)
    assert ["2 in a row" in r.getMessage() for r in caplog.records] == [True]

    # Mended, it goes out on the next try.
    async with rig.services.sessions.begin() as session:
        survey = await session.get(Survey, poisoned)
        assert survey is not None
        survey.questionnaire = "sipas-short"
    rig.clock.advance(timedelta(minutes=1))
    assert await survey_sweep(rig.services, retries) == 1
    assert (await rig.get_case(codes[1]))["survey"]["status"] == "invited"


async def test_a_poisoned_escalation_does_not_hold_back_the_others(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rig.clock.set(datetime(2026, 11, 26, 9, 0, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh")))
    late = {"resolved_at": "2026-11-26T09:00:00+07:00", "status": "resolved"}  # due 25/11
    for number in range(3):
        await rig.post_case(case_body(case_code=f"LATE-{number}", **late), 201)
    async with rig.services.sessions() as session:
        ids = sorted((await session.execute(select(Escalation.id))).scalars())
    assert len(ids) == 3
    real = escalations.deadline_passed

    async def unroutable(session: AsyncSession, escalation_id: int, *args: Any) -> bool:
        if escalation_id == ids[0]:
            raise AssertionError("a unit of the chain vanished")
        return await real(session, escalation_id, *args)

    monkeypatch.setattr(escalations, "deadline_passed", unroutable)
    rig.clock.advance(timedelta(days=3))
    with caplog.at_level(logging.ERROR, logger="bot.jobs.sweeps"):
        assert await escalation_sweep(rig.services) == 2
    assert any(f"escalation {ids[0]} failed" in r.getMessage() for r in caplog.records)
    async with rig.services.sessions() as session:
        levels = dict((await session.execute(select(Escalation.id, Escalation.level))).all())
    assert levels == {ids[0]: 1, ids[1]: 2, ids[2]: 2}


async def test_an_unreachable_database_ends_the_run_instead_of_failing_every_item(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _resolved_cases(rig, 3)
    calls = 0

    async def away(*_args: Any) -> bool:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError("database went away")

    monkeypatch.setattr(survey_flow, "invite_one", away)
    with pytest.raises(ConnectionRefusedError):
        await survey_sweep(rig.services)
    assert calls == 1


async def test_a_claimed_survey_is_skipped_by_another_process(rig: Rig) -> None:
    [code] = await _resolved_cases(rig, 1)
    async with rig.services.sessions() as session:
        survey_id = (
            await session.execute(select(Survey.id).join(Case).where(Case.case_code == code))
        ).scalar_one()
    if rig.services.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time; SKIP LOCKED is PostgreSQL's")
    now = rig.clock.now()
    policy, channels = rig.services.policy, rig.services.invitation_channels
    async with rig.services.sessions.begin() as holder:
        assert await survey_repo.claim(holder, survey_id) is not None
        async with rig.services.sessions.begin() as other:
            assert not await survey_flow.invite_one(other, survey_id, now, policy, channels)
        assert await survey_flow.invite_one(holder, survey_id, now, policy, channels)
    async with rig.services.sessions.begin() as later:  # handled: no longer due
        assert not await survey_flow.invite_one(later, survey_id, now, policy, channels)
    assert (await rig.get_case(code))["survey"]["status"] == "invited"
