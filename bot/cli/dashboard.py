"""`sipas-bot dashboard link UNIT_CODE`: the administrator's way into the officials' dashboard."""

from __future__ import annotations

from bot.app import Services
from handlers.dashboard_access import CLI, LINK_TTL, link_issued, login_link


async def dashboard_link(services: Services, unit_code: str) -> list[str]:
    """Mints a one-time sign-in link for the scope of `unit_code`; returns the lines to print:
    the link, then what it opens and for how long."""
    async with services.sessions.begin() as session:
        issued = await link_issued(session, unit_code, services.clock.now(), actor=CLI, via="cli")
    until = issued.expires_at.astimezone(services.policy.timezone)
    minutes = int(LINK_TTL.total_seconds() // 60)
    return [
        login_link(services.settings.public_url, issued.token),
        f"Works once, within {minutes} minutes (until {until:%H:%M %d/%m/%Y}), for "
        f"{issued.scope_code} ({issued.scope_name}) and every unit below it.",
    ]
