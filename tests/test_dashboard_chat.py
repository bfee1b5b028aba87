"""`/dashboard` in chat (docs/contract.md section 8): a unit head or a digest recipient gets a
one-time sign-in link for their own scope, on Telegram and on Zalo, and the link signs a
browser in to the real application; anyone else is told who may have one. The link is sent
without a preview and is not kept in the outbox once sent. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from bot.app import Services
from handlers.conversation import COMMANDS
from handlers.units import load_units, parse_units_file
from storage.models import AuditEntry, DashboardLink, OutboxMessage, OutboxStatus
from storage.repositories.outbox import REDACTED
from tests.contract_data import units_yaml
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.telegram_support import Rig, make_rig, rig
from tests.web_support import read_page
from tests.zalo_support import UNITS_WITH_ZALO_HEAD, ZaloRigFactory, make_zalo_rig

__all__ = ["make_rig", "make_zalo_rig", "rig"]  # fixtures

LINK = re.compile(r"http://127\.0\.0\.1:8080(/dashboard/login/[A-Za-z0-9_-]+)")
DEADLINE = 5.0


def login_path(text: str | None) -> str:
    found = LINK.search(text or "")
    assert found is not None, text
    return found.group(1)


async def signed_in_page(client: TestClient[Any, Any], path: str) -> str:
    """Follows a sign-in link as a browser does; returns the dashboard's text."""
    response = await client.get(path, allow_redirects=False)
    assert response.status == 303, await response.text()
    page = await read_page(await client.get(response.headers["Location"]))
    assert page.status == 200, page.text
    return page.text


async def settled_rows(services: Services, expected: int = 1) -> list[OutboxMessage]:
    """The outbox's rows once `expected` are there and none is pending any more (the
    dispatcher settles a row after the platform answered)."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        async with services.sessions() as session:
            rows = list((await session.scalars(select(OutboxMessage))).all())
        if len(rows) >= expected and all(row.status != OutboxStatus.PENDING for row in rows):
            return rows
        assert asyncio.get_running_loop().time() < deadline, "outbox rows still pending"
        await asyncio.sleep(0.02)


# --- Telegram -------------------------------------------------------------------------------


async def test_a_head_on_telegram_gets_a_link_that_signs_in_to_their_unit(rig: Rig) -> None:
    reply = await rig.say(901, "/dashboard")  # the head of HN-LB (contract units)
    assert "UBND quận Long Biên (HN-LB)" in (reply.text or "")
    assert "một lần, trong 15 phút" in (reply.text or "")
    assert reply.params["link_preview_options"] == {"is_disabled": True}
    assert FakeTelegramAPI.buttons(reply) == []
    text = await signed_in_page(rig.client, login_path(reply.text))
    assert "UBND quận Long Biên" in text and "thành phố" not in text
    # The link is gone from the outbox once sent; the audit log says who and which scope.
    [row] = await settled_rows(rig.services)
    assert row.status == OutboxStatus.SENT and row.payload == REDACTED
    async with rig.services.sessions() as session:
        entries = (await session.scalars(select(AuditEntry).order_by(AuditEntry.id))).all()
        link = (await session.scalars(select(DashboardLink))).one()
    assert [(e.actor, e.action, e.entity_id) for e in entries] == [
        ("head:HN-LB", "dashboard.link", "HN-LB"),
        ("head:HN-LB", "dashboard.signin", "HN-LB"),
    ]
    assert entries[0].detail == {"via": "telegram", "head_of": "HN-LB"}
    assert link.head_of_unit_id == link.scope_unit_id


async def test_a_digest_recipient_gets_a_link_to_their_scope(rig: Rig) -> None:
    async with rig.services.sessions.begin() as session:
        await load_units(session, parse_units_file(units_yaml()))  # adds Sở Nội vụ, chat 950
    reply = await rig.say(950, "/dashboard")
    assert "UBND thành phố Hà Nội (HN)" in (reply.text or "")
    text = await signed_in_page(rig.client, login_path(reply.text))
    assert "UBND thành phố Hà Nội" in text
    async with rig.services.sessions() as session:
        link = (await session.scalars(select(DashboardLink))).one()
    assert (link.actor, link.head_of_unit_id) == ("recipient:1", None)


async def test_one_link_per_scope_a_person_answers_for(rig: Rig) -> None:
    # The head of HN-LB also receives the city's digest and their own district's.
    more = (
        "  - {name: Lê Thị Bình (thành phố), telegram_chat_id: 901, scope: HN}\n"
        "  - {name: Lê Thị Bình (quận), telegram_chat_id: 901, scope: HN-LB}\n"
    )
    async with rig.services.sessions.begin() as session:
        await load_units(
            session,
            parse_units_file(units_yaml(recipients=False) + ("digest_recipients:\n" + more)),
        )
    mark = rig.api.mark()
    rig.api.push_text(901, "/dashboard")
    second = await rig.api.wait_for_message(901, count=2, since=mark)
    replies = [call for call in rig.api.messages_to(901) if call.seq >= mark]
    assert second in replies and len(replies) == 2
    scopes = sorted(re.findall(r"\((HN(?:-LB)?)\)", " ".join(r.text or "" for r in replies)))
    assert scopes == ["HN", "HN-LB"]
    async with rig.services.sessions() as session:
        links = (await session.scalars(select(DashboardLink).order_by(DashboardLink.id))).all()
    assert sorted(link.actor for link in links) == ["head:HN-LB", "recipient:1"]
    # Each link opens its own scope.
    for reply in replies:
        text = await signed_in_page(rig.client, login_path(reply.text))
        assert ("thành phố" in text) == ("(HN)" in (reply.text or ""))


async def test_a_citizen_gets_an_explanation_and_no_link(rig: Rig) -> None:
    reply = await rig.say(12345, "/dashboard")
    assert "dành cho lãnh đạo đơn vị" in (reply.text or "")
    assert "/dashboard/login/" not in (reply.text or "")
    async with rig.services.sessions() as session:
        assert (await session.scalars(select(DashboardLink))).first() is None


async def test_the_explanation_follows_the_persons_language(rig: Rig) -> None:
    mark = rig.api.mark()
    rig.api.push_text(12346, "/dashboard", language_code="en")
    reply = await rig.api.wait_for_message(12346, since=mark)
    assert "is for unit heads and digest recipients" in (reply.text or "")


async def test_the_command_menu_offers_dashboard(rig: Rig) -> None:
    assert "dashboard" in COMMANDS
    await rig.api.wait_for_call("setMyCommands", count=3)
    menus = [call.params["commands"] for call in rig.api.calls("setMyCommands")]
    for commands in menus:
        assert "dashboard" in [command["command"] for command in commands]


async def test_a_link_from_chat_works_once(rig: Rig) -> None:
    reply = await rig.say(900, "/dashboard")  # the city's head
    path = login_path(reply.text)
    await signed_in_page(rig.client, path)
    again = await read_page(await rig.client.get(path))
    assert again.status == 410 and "/dashboard" in again.text


async def test_a_link_the_platform_refused_is_not_kept_either(rig: Rig) -> None:
    rig.api.fail_next("sendMessage", 403, chat_id=901)  # the head blocked the bot
    rig.api.push_text(901, "/dashboard")
    rows = await settled_rows(rig.services, expected=1)
    assert [(row.status, row.payload) for row in rows] == [(OutboxStatus.FAILED, REDACTED)]


# --- Zalo -----------------------------------------------------------------------------------


async def test_a_head_on_zalo_gets_a_link_in_plain_text_that_signs_in(
    make_zalo_rig: ZaloRigFactory,
) -> None:
    zalo = await make_zalo_rig(units=UNITS_WITH_ZALO_HEAD)
    reply = await zalo.say("zl-head-901", "/dashboard")
    assert "UBND quận Long Biên (HN-LB)" in reply.text
    text = await signed_in_page(zalo.client, login_path(reply.text))
    assert "UBND quận Long Biên" in text
    [row] = await settled_rows(zalo.services)
    assert row.payload == REDACTED


async def test_someone_else_on_zalo_gets_the_explanation(make_zalo_rig: ZaloRigFactory) -> None:
    zalo = await make_zalo_rig(units=UNITS_WITH_ZALO_HEAD)
    reply = await zalo.say("zl-citizen-1", "/dashboard")
    assert "dành cho lãnh đạo đơn vị" in reply.text and "/dashboard/login/" not in reply.text
