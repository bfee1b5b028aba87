"""The dashboard's way in (docs/contract.md section 8): one-time sign-in links, server-side
sessions with a cookie, logout with CSRF protection, and the page a visitor without a session
sees. Over HTTP against the real application, on SQLite and PostgreSQL, with a fake clock.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from http.cookies import SimpleCookie

import pytest
from aiohttp import ClientResponse
from sqlalchemy import select

from bot.http.dashboard.session import COOKIE, LANG_COOKIE
from bot.logging_setup import mask
from handlers.dashboard_access import LINK_TTL, SESSION_TTL, session_found
from storage.models import AuditEntry, DashboardLink, DashboardSession
from storage.repositories.dashboard import token_hash
from tests.api_support import (
    Api,
    MakeApi,
    api_fixture,  # noqa: F401
    make_api_fixture,  # noqa: F401
)
from tests.dashboard_support import issue_link, session_cookie, sign_in
from tests.web_support import Page, read_page


async def follow(api: Api, token: str) -> ClientResponse:
    return await api.client.get(f"/dashboard/login/{token}", allow_redirects=False)


def set_cookie(response: ClientResponse, name: str = COOKIE) -> SimpleCookie:
    """The response's Set-Cookie header for `name`, parsed (attributes included)."""
    cookies = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        if header.startswith(f"{name}="):
            cookies.load(header)
    assert name in cookies, response.headers
    return cookies


async def home(api: Api) -> Page:
    return await read_page(await api.client.get("/dashboard"))


async def audit(api: Api, action: str) -> list[AuditEntry]:
    async with api.services.sessions() as session:
        query = select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
        return list((await session.scalars(query)).all())


async def logout_form(api: Api) -> dict[str, str]:
    page = await home(api)
    assert page.status == 200, page.text
    return {"csrf": page.hidden["csrf"]}


# --- signing in ---------------------------------------------------------------------------


async def test_a_link_signs_in_once_and_sets_a_safe_cookie(api: Api) -> None:
    issued = await issue_link(api.services, "HN")
    response = await follow(api, issued.token)
    assert response.status == 303
    assert response.headers["Location"] == "/dashboard"
    assert response.headers["Referrer-Policy"] == "no-referrer"  # the token is in the URL
    cookie = set_cookie(response)[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/dashboard"
    assert not cookie["secure"]  # the public URL is http here
    assert 0 < int(cookie["max-age"]) <= 12 * 3600
    page = await home(api)
    assert page.status == 200 and "UBND thành phố Hà Nội" in page.text
    again = await read_page(await follow(api, issued.token))
    assert again.status == 410 and "đã được dùng hoặc đã hết hạn" in again.text
    assert "/dashboard" in again.text and "sipas-bot dashboard link" in again.text


async def test_only_the_hash_of_a_token_is_stored(api: Api) -> None:
    issued = await issue_link(api.services, "HN")
    await follow(api, issued.token)
    session_token = session_cookie(api.client)
    assert session_token is not None
    async with api.services.sessions() as session:
        link = (await session.scalars(select(DashboardLink))).one()
        opened = (await session.scalars(select(DashboardSession))).one()
    assert link.token_hash == token_hash(issued.token) != issued.token
    assert opened.token_hash == token_hash(session_token) != session_token
    for row in await audit(api, "dashboard.link") + await audit(api, "dashboard.signin"):
        assert issued.token not in str(row.detail) and session_token not in str(row.detail)


async def test_two_concurrent_redeems_of_one_link_open_one_session(make_api: MakeApi) -> None:
    api = await make_api()
    issued = await issue_link(api.services, "HN")
    statuses = sorted(
        response.status
        for response in await asyncio.gather(*(follow(api, issued.token) for _ in range(4)))
    )
    assert statuses == [303, 410, 410, 410]
    assert await api.count(DashboardSession) == 1
    assert len(await audit(api, "dashboard.signin")) == 1


async def test_a_link_expires_after_15_minutes(api: Api) -> None:
    issued = await issue_link(api.services, "HN")
    api.clock.advance(LINK_TTL)
    page = await read_page(await follow(api, issued.token))
    assert page.status == 410 and "Đường dẫn không còn hiệu lực" in page.text
    fresh = await issue_link(api.services, "HN")
    api.clock.advance(LINK_TTL - timedelta(seconds=1))
    assert (await follow(api, fresh.token)).status == 303


async def test_a_forged_or_malformed_link_is_a_human_404(api: Api) -> None:
    for token in ("A" * 43, "short", "x" * 65, "bad%20token%3Cscript%3E"):
        response = await follow(api, token)
        page = await read_page(response)
        assert page.status == 404, token
        assert "Không tìm thấy đường dẫn" in page.text and "Traceback" not in page.html
        assert COOKIE not in response.cookies
    assert await api.count(DashboardSession) == 0


async def test_a_head_probe_does_not_use_up_a_link(api: Api) -> None:
    issued = await issue_link(api.services, "HN")
    probe = await api.client.head(f"/dashboard/login/{issued.token}", allow_redirects=False)
    assert probe.status == 405
    assert (await follow(api, issued.token)).status == 303


async def test_the_cookie_is_secure_behind_https(make_api: MakeApi) -> None:
    api = await make_api(public_url="https://dichvucong.example.gov.vn/sipas/")
    issued = await issue_link(api.services, "HN")
    response = await follow(api, issued.token)
    assert response.headers["Location"] == "/sipas/dashboard"
    cookie = set_cookie(response)[COOKIE]
    assert cookie["secure"] and cookie["path"] == "/sipas/dashboard"


# --- sessions -------------------------------------------------------------------------------


async def test_without_a_session_every_page_says_how_to_get_a_link(api: Api) -> None:
    for path in ("/dashboard", "/dashboard?week=2026-W47"):
        page = await read_page(await api.client.get(path))
        assert page.status == 401 and page.lang == "vi"
        assert "/dashboard" in page.text and "sipas-bot dashboard link" in page.text
        assert "password" not in page.html.lower() and not page.has_form
        assert "UBND" not in page.text  # nothing of the scope, no figures
    english = await read_page(await api.client.get("/dashboard", params={"lang": "en"}))
    assert english.status == 401 and english.lang == "en"
    assert "How to get a sign-in link" in english.text
    # The language chosen sticks for the dashboard's other pages.
    page = await read_page(await api.client.get("/dashboard"))
    assert page.lang == "en"
    assert LANG_COOKIE in api.client.session.cookie_jar.filter_cookies(
        api.client.make_url("/dashboard")
    )


async def test_a_session_ends_after_12_hours(api: Api) -> None:
    await sign_in(api.client, api.services, "HN")
    api.clock.advance(SESSION_TTL - timedelta(seconds=1))
    assert (await home(api)).status == 200
    api.clock.advance(timedelta(seconds=1))
    response = await api.client.get("/dashboard")
    assert response.status == 401
    assert set_cookie(response)[COOKIE].value == ""  # the browser forgets the dead cookie
    assert session_cookie(api.client) is None


async def test_a_revoked_session_no_longer_works(api: Api) -> None:
    await sign_in(api.client, api.services, "HN")
    async with api.services.sessions.begin() as session:
        row = (await session.scalars(select(DashboardSession))).one()
        row.revoked_at = api.clock.now()
    assert (await home(api)).status == 401


async def test_a_cookie_of_one_scope_is_not_another_scope(make_api: MakeApi) -> None:
    api = await make_api()
    other = await make_api()  # a second browser on the same service
    await sign_in(api.client, api.services, "HN-LB", actor="head:HN-LB", head_of="HN-LB")
    await sign_in(other.client, other.services, "HN")
    page = await home(api)
    assert "UBND quận Long Biên" in page.text and "thành phố" not in page.text
    assert "UBND thành phố Hà Nội" in (await home(other)).text


async def test_the_session_names_scope_head_and_actor(make_api: MakeApi) -> None:
    api = await make_api()
    await sign_in(api.client, api.services, "HN-LB", actor="head:HN-LB", head_of="HN-LB")
    token = session_cookie(api.client)
    assert token is not None
    async with api.services.sessions() as session:
        live = await session_found(session, token, api.clock.now())
    assert live is not None
    assert (live.actor, live.scope_code, live.head_of) == ("head:HN-LB", "HN-LB", "HN-LB")
    assert live.expires_at == api.clock.now() + SESSION_TTL
    page = await home(api)
    assert page.status == 200 and page.hidden["csrf"] == live.csrf_token


# --- logout ---------------------------------------------------------------------------------


async def test_logout_ends_the_session_and_the_cookie_no_longer_works(api: Api) -> None:
    await sign_in(api.client, api.services, "HN")
    stolen = session_cookie(api.client)
    assert stolen is not None
    form = await logout_form(api)
    response = await api.client.post("/dashboard/logout", data=form, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/dashboard/signed-out"
    assert set_cookie(response)[COOKIE].value == ""
    page = await read_page(await api.client.get("/dashboard/signed-out"))
    assert page.status == 200 and "Đã đăng xuất" in page.text
    assert (await home(api)).status == 401
    # The old cookie, sent again (copied before the logout), opens nothing either.
    replay = await api.client.get("/dashboard", cookies={COOKIE: stolen})
    assert replay.status == 401
    [signout] = await audit(api, "dashboard.signout")
    assert (signout.actor, signout.entity, signout.entity_id) == ("cli", "unit", "HN")


async def test_logout_without_a_valid_csrf_changes_nothing(api: Api) -> None:
    await sign_in(api.client, api.services, "HN")
    form = await logout_form(api)
    refusals = [
        ({}, {}),
        ({"csrf": "x" * 43}, {}),
        (form, {"Origin": "https://evil.example"}),
        (form, {"Origin": "null"}),
        (form, {"Referer": "https://evil.example/page"}),
    ]
    for data, headers in refusals:
        response = await api.client.post(
            "/dashboard/logout", data=data, headers=headers, allow_redirects=False
        )
        page = await read_page(response)
        assert page.status == 403, (data, headers)
        assert "Không có gì thay đổi" in page.text
        assert COOKIE not in response.cookies
        assert (await home(api)).status == 200
    assert await audit(api, "dashboard.signout") == []
    same_origin = {"Origin": str(api.client.make_url("/")).rstrip("/")}
    response = await api.client.post(
        "/dashboard/logout", data=form, headers=same_origin, allow_redirects=False
    )
    assert response.status == 303


async def test_logout_without_a_session_just_says_signed_out(api: Api) -> None:
    response = await api.client.post("/dashboard/logout", data={}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/dashboard/signed-out"


# --- the audit log --------------------------------------------------------------------------


async def test_links_sign_ins_and_sign_outs_are_audited(api: Api) -> None:
    await sign_in(api.client, api.services, "HN-LB", actor="head:HN-LB", head_of="HN-LB")
    await api.client.post("/dashboard/logout", data=await logout_form(api))
    entries = [
        (e.actor, e.action, e.entity, e.entity_id)
        for action in ("dashboard.link", "dashboard.signin", "dashboard.signout")
        for e in await audit(api, action)
    ]
    assert entries == [
        ("head:HN-LB", "dashboard.link", "unit", "HN-LB"),
        ("head:HN-LB", "dashboard.signin", "unit", "HN-LB"),
        ("head:HN-LB", "dashboard.signout", "unit", "HN-LB"),
    ]
    [signin] = await audit(api, "dashboard.signin")
    assert signin.at == api.clock.now()


# --- housekeeping and failures ----------------------------------------------------------------


async def test_dead_links_and_sessions_are_pruned_a_week_later(api: Api) -> None:
    await sign_in(api.client, api.services, "HN")
    unused = await issue_link(api.services, "HN")
    api.clock.advance(timedelta(days=7))
    await issue_link(api.services, "HN-LB")  # issuing a link prunes what ended a week ago
    # Ended less than a week ago: still told apart from a link that never existed.
    assert (await follow(api, unused.token)).status == 410
    assert await api.count(DashboardSession) == 1
    api.clock.advance(SESSION_TTL + timedelta(minutes=1))
    await issue_link(api.services, "HN-LB")
    assert await api.count(DashboardLink) == 2  # the two issued in the last week
    assert await api.count(DashboardSession) == 0
    assert (await follow(api, unused.token)).status == 404
    assert len(await audit(api, "dashboard.signin")) == 1  # the audit log keeps the story


async def test_an_unexpected_error_is_a_human_page(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("bot.http.dashboard.access.signed_in", broken)
    issued = await issue_link(api.services, "HN")
    page = await read_page(await follow(api, issued.token))
    assert page.status == 500 and "Có lỗi xảy ra" in page.text
    assert "boom" not in page.html and "Traceback" not in page.html


async def test_the_link_pages_have_english_too(api: Api) -> None:
    issued = await issue_link(api.services, "HN")
    await follow(api, issued.token)
    gone = await read_page(
        await api.client.get(f"/dashboard/login/{issued.token}", params={"lang": "en"})
    )
    assert gone.status == 410 and gone.lang == "en"
    assert "This link no longer works" in gone.text and "sipas-bot dashboard link" in gone.text


def test_a_sign_in_link_in_a_log_line_is_masked() -> None:
    token = "Zm9vYmFyYmF6cXV4cXV1eHh4eHh4eHh4eHh4eHh4eA"
    line = f"GET http://127.0.0.1:8080/dashboard/login/{token} HTTP/1.1"
    assert mask(line) == "GET http://127.0.0.1:8080/dashboard/login/*** HTTP/1.1"


async def test_a_chat_apps_link_previewer_does_not_use_up_a_link(api: Api) -> None:
    issued = await issue_link(api.services, "HN")
    for agent in ("TelegramBot (like TwitterBot)", "facebookexternalhit/1.1", "WhatsApp/2.23"):
        response = await api.client.get(
            f"/dashboard/login/{issued.token}",
            headers={"User-Agent": agent},
            allow_redirects=False,
        )
        page = await read_page(response)
        assert page.status == 200 and COOKIE not in response.cookies, agent
        assert "UBND" not in page.text
    assert (await follow(api, issued.token)).status == 303
