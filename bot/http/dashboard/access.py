"""The dashboard's way in and out: `GET /dashboard/login/<token>` turns a one-time link into
a session cookie, `POST /dashboard/logout` ends the session, `GET /dashboard/signed-out` says
so. The decisions are handlers/dashboard_access.py's; this module translates HTTP.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web

from bot.app import Services
from bot.http.dashboard.session import (
    COOKIE,
    SECURITY_HEADERS,
    Viewer,
    base_path,
    csrf_ok,
    guarded,
    message_page,
    remember_locale,
    secure_cookies,
    services_of,
    signed_in_only,
    signin_page,
    viewer_of,
)
from handlers.dashboard_access import LinkRefusal, signed_in, signed_out
from storage.repositories import cases as case_repo

log = logging.getLogger(__name__)

LOGIN_PATH = "/dashboard/login/{token}"
LOGOUT_PATH = "/dashboard/logout"
SIGNED_OUT_PATH = "/dashboard/signed-out"
# Link previewers of chat and social platforms, which fetch a link pasted in a message: one
# must not use up a one-time link meant for a person. Only agents that are never a person's
# browser (an in-app browser, Zalo's included, must still sign in).
LINK_PREVIEWERS = re.compile(
    r"TelegramBot|facebookexternalhit|WhatsApp/|Slackbot|Twitterbot|Discordbot|"
    r"SkypeUriPreview|LinkedInBot",
    re.IGNORECASE,
)


def _redirect(location: str) -> web.Response:
    # 303: the browser follows with a GET, so a reload never posts or signs in again.
    return web.Response(status=303, headers={**SECURITY_HEADERS, "Location": location})


async def login(request: web.Request) -> web.StreamResponse:
    if LINK_PREVIEWERS.search(request.headers.get("User-Agent", "")):
        # A preview gets the page a visitor without a session sees, and the link stays unused.
        return await signin_page(request, status=200)
    services = services_of(request)
    now = services.clock.now()
    async with services.sessions.begin() as session:
        outcome = await signed_in(session, request.match_info["token"], now)
    if isinstance(outcome, LinkRefusal):
        if outcome == LinkRefusal.GONE:
            return message_page(
                request, "dashboard.link_gone_title", ["dashboard.link_gone"], status=410
            )
        return message_page(
            request, "dashboard.link_unknown_title", ["dashboard.link_unknown"], status=404
        )
    home = base_path(services)
    response = _redirect(home)
    response.set_cookie(
        COOKIE,
        outcome.token,
        max_age=max(int((outcome.session.expires_at - now).total_seconds()), 0),
        path=home,
        httponly=True,
        samesite="Lax",
        secure=secure_cookies(services),
    )
    remember_locale(request, response)
    return response


def _ended(services: Services) -> web.Response:
    response = _redirect(base_path(services) + "/signed-out")
    response.del_cookie(
        COOKIE,
        path=base_path(services),
        secure=secure_cookies(services),
        httponly=True,
        samesite="Lax",
    )
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    services = services_of(request)
    viewer = await viewer_of(request)
    form = await request.post()
    if viewer is None:
        return _ended(services)  # nothing left to end: the session expired or was ended
    if not csrf_ok(request, viewer, form):
        log.warning("dashboard logout refused: the form failed the CSRF check")
        return message_page(
            request,
            "dashboard.refused_title",
            ["dashboard.refused_csrf"],
            status=403,
            how_to=False,
            back=True,
            viewer=viewer,
        )
    async with services.sessions.begin() as session:
        await signed_out(
            session, viewer.session_id, viewer.actor, viewer.scope_code, services.clock.now()
        )
    return _ended(services)


async def signed_out_page(request: web.Request) -> web.StreamResponse:
    return message_page(request, "dashboard.signed_out_title", ["dashboard.signed_out"], status=200)


async def placeholder_overview(request: web.Request, viewer: Viewer) -> web.StreamResponse:
    """A minimal `GET /dashboard` (the scope and the logout form) until the real overview
    (bot/http/dashboard/pages.py) replaces it in `dashboard_routes`."""
    services = services_of(request)
    async with services.sessions() as session:
        unit = await case_repo.unit_by_code(session, viewer.scope_code)
    local = viewer.expires_at.astimezone(services.policy.timezone)
    return message_page(
        request,
        "dashboard.page_title",
        ["dashboard.scope_line", "dashboard.session_until"],
        status=200,
        how_to=False,
        viewer=viewer,
        params={
            "unit_name": unit.name if unit is not None else viewer.scope_code,
            "unit_code": viewer.scope_code,
            "time": local.strftime("%d/%m/%Y %H:%M"),
        },
    )


def access_routes(services: Services) -> list[web.RouteDef]:
    return [
        # No HEAD: a link checker's HEAD probe must not use up a one-time link.
        web.get(LOGIN_PATH, guarded(login), allow_head=False),
        web.post(LOGOUT_PATH, guarded(logout)),
        web.get(SIGNED_OUT_PATH, guarded(signed_out_page), allow_head=False),
    ]


def placeholder_routes(services: Services) -> list[web.RouteDef]:
    return [web.get("/dashboard", signed_in_only(placeholder_overview), allow_head=False)]
