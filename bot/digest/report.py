"""The weekly report of docs/contract.md section 6 as the API and the command line ask for it,
so that `GET /api/v1/reports/weekly` and `sipas-bot digest --format json` answer the same
numbers."""

from __future__ import annotations

from bot.app import Services
from bot.digest.snapshots import stored_weeks
from handlers.digest import Report, Week, build_report


async def weekly_report(services: Services, week_text: str | None, unit: str | None) -> Report:
    """The report both the API and the command line answer with; no week means last week."""
    settings = services.settings
    tz = settings.timezone
    week = Week.parse(week_text) if week_text else Week.last(services.clock.now(), tz)
    # Closed weeks are stored (handlers/digest.py, "Stored weeks"); a week counted here is
    # counted on two connections, the previous week (for the trend) beside this one.
    async with services.sessions() as session, services.sessions() as side:
        return await build_report(
            session,
            week,
            tz,
            settings.digest_min_responses,
            unit,
            side_session=side,
            closed=stored_weeks(services),
        )
