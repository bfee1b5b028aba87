"""An invitation follows its resolution at once: woken after the intake commit, it runs the
sweep's own per-item step, so a survey delay and quiet hours hold it exactly as they hold the
sweep (which stays the safety net)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.jobs.sweeps import InvitationWaker, survey_sweep
from handlers import survey_flow
from handlers.survey_flow import FRESH_INVITATION
from storage.models import Case, OutboxMessage, Priority
from tests.telegram_support import Rig, RigFactory, case_body, make_rig

__all__ = ["make_rig"]  # fixtures

HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
CHAT = 5556001


def resolved(
    code: str, chat: int, resolved_at: str = "2026-11-23T08:00:00+07:00"
) -> dict[str, Any]:
    body = case_body(case_code=code, status="resolved", resolved_at=resolved_at)
    body["citizen"] = {"name": "Trần Văn Minh", "telegram_chat_id": chat}
    return body


WakingRig = Callable[..., Awaitable[tuple[Rig, InvitationWaker]]]


@pytest.fixture
async def waking_rig(make_rig: RigFactory) -> AsyncIterator[WakingRig]:
    wakers: list[InvitationWaker] = []

    async def make(**settings: str) -> tuple[Rig, InvitationWaker]:
        rig = await make_rig(**settings)
        waker = InvitationWaker(rig.services)
        waker.start()
        rig.services.wake_invitations = waker.wake
        wakers.append(waker)
        return rig, waker

    yield make
    for waker in wakers:
        await waker.stop()


async def invitations(rig: Rig) -> list[tuple[str, int]]:
    async with rig.services.sessions() as session:
        query = select(OutboxMessage.address, OutboxMessage.priority).where(
            OutboxMessage.dedupe_key.like("invite:%")
        )
        return [(address, priority) for address, priority in (await session.execute(query))]


async def test_the_invitation_follows_the_resolution_without_a_sweep(
    waking_rig: WakingRig,
) -> None:
    rig, _waker = await waking_rig()
    await rig.post_case(resolved("WAKE-1", CHAT), 201)
    invitation = await rig.api.wait_for_message(
        CHAT, lambda m: "Bắt đầu" in [t for t, _ in rig.api.buttons(m)], timeout=5
    )
    assert "WAKE-1" in invitation.text
    assert (await rig.get_case("WAKE-1"))["survey"]["status"] == "invited"
    # Just served: it goes before invitations waiting in a backlog.
    assert await invitations(rig) == [(str(CHAT), FRESH_INVITATION)]


async def test_a_survey_delay_holds_the_woken_invitation(waking_rig: WakingRig) -> None:
    rig, waker = await waking_rig(survey_delay="2h")
    await rig.post_case(resolved("WAKE-DELAY", CHAT), 201)
    await waker.settle()
    assert (await rig.get_case("WAKE-DELAY"))["survey"]["status"] == "scheduled"
    rig.clock.advance(timedelta(hours=1, minutes=59))
    assert await survey_sweep(rig.services) == 0
    rig.clock.advance(timedelta(minutes=1))
    assert await survey_sweep(rig.services) == 1
    # Two hours after the resolution it is no longer fresh: it queues like any other.
    assert await invitations(rig) == [(str(CHAT), Priority.INVITATION)]


async def test_quiet_hours_hold_the_woken_invitation_until_morning(
    waking_rig: WakingRig,
) -> None:
    rig, waker = await waking_rig(quiet_hours="21:00-07:00")
    evening = datetime(2026, 11, 23, 22, 30, tzinfo=HANOI)
    rig.clock.set(evening)
    await rig.post_case(resolved("WAKE-NIGHT", CHAT, evening.isoformat()), 201)
    await waker.settle()
    assert (await rig.get_case("WAKE-NIGHT"))["survey"]["status"] == "scheduled"
    assert await invitations(rig) == []
    rig.clock.set(datetime(2026, 11, 24, 6, 59, tzinfo=HANOI))
    assert await survey_sweep(rig.services) == 0
    rig.clock.set(datetime(2026, 11, 24, 7, 0, tzinfo=HANOI).astimezone(UTC))
    assert await survey_sweep(rig.services) == 1


async def test_the_wake_and_the_sweep_invite_each_survey_once(make_rig: RigFactory) -> None:
    rig = await make_rig()
    codes = [f"RACE-{n}" for n in range(6)]
    for number, code in enumerate(codes):
        await rig.post_case(resolved(code, CHAT + 1 + number), 201)  # no waker: all wait
    async with rig.services.sessions() as session:
        case_ids = list((await session.execute(select(Case.id).order_by(Case.id))).scalars())
    waker = InvitationWaker(rig.services)
    results = await asyncio.gather(
        survey_sweep(rig.services), *(waker.invite_now(case_id) for case_id in case_ids)
    )
    swept, woken = results[0], results[1:]
    assert swept + sum(bool(w) for w in woken) == len(codes)
    async with rig.services.sessions() as session:
        count = (
            await session.execute(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.dedupe_key.like("invite:%"))
            )
        ).scalar_one()
    assert count == len(codes)


async def test_a_failing_woken_invitation_is_logged_and_the_next_goes_out(
    make_rig: RigFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await make_rig()
    await rig.post_case(resolved("BAD", CHAT), 201)
    await rig.post_case(resolved("GOOD", CHAT + 1), 201)
    async with rig.services.sessions() as session:
        bad, good = (await session.execute(select(Case.id).order_by(Case.id))).scalars()
    real = survey_flow.invite_for_case

    async def poisoned(session: AsyncSession, case_id: int, *args: Any) -> bool:
        invited = await real(session, case_id, *args)
        if case_id == bad:  # after its writes: they go back, the other case's stay
            raise KeyError("a text key went missing")
        return invited

    monkeypatch.setattr(survey_flow, "invite_for_case", poisoned)
    waker = InvitationWaker(rig.services, workers=1)
    waker.start()
    try:
        with caplog.at_level(logging.ERROR, logger="bot.jobs.sweeps"):
            waker.wake([bad, good])
            await asyncio.wait_for(waker.settle(), 10)
    finally:
        await waker.stop()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"invitation for case {bad} failed at once"
    ]
    assert (await rig.get_case("BAD"))["survey"]["status"] == "scheduled"  # the sweep's, later
    assert (await rig.get_case("GOOD"))["survey"]["status"] == "invited"


async def test_a_failing_invitation_woken_alone_is_rolled_back_and_logged(
    make_rig: RigFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A case woken by itself is invited without a savepoint: its transaction is its own."""
    rig = await make_rig()
    await rig.post_case(resolved("ALONE", CHAT), 201)
    async with rig.services.sessions() as session:
        alone = (await session.execute(select(Case.id))).scalar_one()
    real = survey_flow.invite_for_case

    async def poisoned(session: AsyncSession, case_id: int, *args: Any) -> bool:
        await real(session, case_id, *args)
        raise KeyError("a text key went missing")  # after its writes: they go back

    monkeypatch.setattr(survey_flow, "invite_for_case", poisoned)
    waker = InvitationWaker(rig.services, workers=1)
    with caplog.at_level(logging.ERROR, logger="bot.jobs.sweeps"):
        assert await waker.invite_all([alone]) == [None]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"invitation for case {alone} failed at once"
    ]
    assert (await rig.get_case("ALONE"))["survey"]["status"] == "scheduled"
    async with rig.services.sessions() as session:
        queued = (
            await session.execute(select(func.count()).select_from(OutboxMessage))
        ).scalar_one()
    assert queued == 0
