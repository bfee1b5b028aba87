"""Helpers for the dashboard's tests: sign a test client in as an official would, through a
real one-time link followed over HTTP, so that the client holds the session cookie."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from bot.app import Services
from bot.http.dashboard.session import COOKIE
from handlers.dashboard_access import CLI, IssuedLink, link_issued


async def issue_link(
    services: Services, unit_code: str, *, actor: str = CLI, head_of: str | None = None
) -> IssuedLink:
    """A fresh one-time link for the scope of `unit_code` (as `sipas-bot dashboard link`)."""
    async with services.sessions.begin() as session:
        return await link_issued(
            session, unit_code, services.clock.now(), actor=actor, head_of=head_of
        )


async def sign_in(
    client: TestClient[Any, Any],
    services: Services,
    unit_code: str,
    *,
    actor: str = CLI,
    head_of: str | None = None,
) -> None:
    """Mints a link for the scope of `unit_code` and follows it with `client`, which then
    holds the session cookie (and is signed in as `actor`, heading `head_of` if given)."""
    issued = await issue_link(services, unit_code, actor=actor, head_of=head_of)
    response = await client.get(f"/dashboard/login/{issued.token}", allow_redirects=False)
    assert response.status == 303, await response.text()
    assert COOKIE in response.cookies, response.headers
    response.release()


def session_cookie(client: TestClient[Any, Any]) -> str | None:
    """The session cookie `client` holds for the dashboard (to replay it elsewhere), if any."""
    cookies = client.session.cookie_jar.filter_cookies(client.make_url("/dashboard"))
    morsel = cookies.get(COOKIE)
    return morsel.value if morsel is not None else None
