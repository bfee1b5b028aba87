"""The real APScheduler runs the survey sweep; decisions follow the injected clock."""

from __future__ import annotations

from datetime import timedelta

from bot.scheduler import SweepScheduler, sweep_registrars
from bot.sweeps import survey_sweep
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
