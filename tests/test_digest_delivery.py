"""Scheduled delivery: each head and recipient gets the week's digest (text, chart, workbook)
exactly once, through the outbox and a fake Bot API, across a restart and two processes; a
digest missed while the service was down says it is late."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from telegram import Bot

from bot.app import build_services, prepare_database
from bot.channels.telegram.sender import TelegramSender
from bot.config import WeeklySchedule
from bot.jobs.digests import due_moment, send_due_digests
from bot.jobs.registry import sweep_registrars
from bot.jobs.scheduler import SweepScheduler
from bot.outbox import PermanentSendError
from handlers.digest import Week
from storage.db import create_session_factory
from storage.models import DigestDelivery, OutboxMessage, OutboxStatus
from tests.cli_support import run_main
from tests.conftest import engine_for
from tests.digest_support import TREE_YAML, add_response, load_tree
from tests.telegram_support import Rig, RigFactory, make_rig, rig

__all__ = ["make_rig", "rig"]  # fixtures

HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
MID_W47 = datetime(2026, 11, 18, 3, 0, tzinfo=UTC)
MONDAY_0731 = datetime(2026, 11, 23, 0, 31, tzinfo=UTC)  # 07:31 in Hà Nội, week 48
REACHABLE = (900, 901, 902, 950)  # the heads of HN, HN-LB, HN-LB-BD and Sở Nội vụ


async def seed(rig: Rig) -> None:
    async with rig.services.sessions.begin() as session:
        await load_tree(session, TREE_YAML)
        for _ in range(6):
            await add_response(session, "HN-LB", MID_W47, (5, 4, 4, 2, 5), officer_code="CB-9")
            await add_response(session, "HN-LB-BD", MID_W47, (3, 3, 4, 4, 4))


async def count(rig: Rig, model: type, *criteria: object) -> int:
    async with rig.services.sessions() as session:
        found = await session.scalar(select(func.count()).select_from(model).where(*criteria))
    return int(found or 0)


def test_the_due_moment_and_week_follow_the_schedule_in_local_time() -> None:
    class _Settings:
        timezone = HANOI

    class _Services:
        settings = _Settings()

    schedule = WeeklySchedule(0, datetime(2000, 1, 1, 7, 30).time())
    services = _Services()
    moment = due_moment(MONDAY_0731, schedule, services)  # type: ignore[arg-type]
    assert moment == datetime(2026, 11, 23, 7, 30, tzinfo=HANOI)
    assert Week.containing(moment, HANOI).previous() == Week(2026, 47)
    before = due_moment(MONDAY_0731 - timedelta(minutes=2), schedule, services)  # type: ignore[arg-type]
    assert before == datetime(2026, 11, 16, 7, 30, tzinfo=HANOI)  # a week earlier


async def test_the_digest_sweep_is_registered(rig: Rig) -> None:
    scheduler = SweepScheduler(rig.services)
    for register in sweep_registrars(rig.services):
        register(scheduler)
    assert {"digests", "digests_catch_up"} <= set(scheduler.job_names)


async def test_each_head_and_recipient_gets_text_chart_and_workbook_once(rig: Rig) -> None:
    await seed(rig)
    rig.clock.set(MONDAY_0731)
    outcome = await send_due_digests(rig.services)
    assert sorted(outcome.queued) == ["head:HN", "head:HN-LB", "head:HN-LB-BD", "recipient:1"]
    assert outcome.unreachable == ["recipient:2"]  # Zalo only, and Zalo is not configured
    rig.services.wake_dispatcher()
    for chat in REACHABLE:
        await rig.api.wait_for_message(chat, lambda m: m.method == "sendDocument", timeout=20)
        sent = rig.api.messages_to(chat)
        assert [m.method for m in sent] == ["sendMessage", "sendPhoto", "sendDocument"], chat
        assert sent[0].text is not None and "SIPAS tuần 2026-W47" in sent[0].text
        assert "gửi muộn" not in sent[0].text
        assert sent[1].file_name is not None and sent[1].file_name.endswith(".png")
        assert sent[2].file_name is not None and sent[2].file_name.endswith(".xlsx")
    lb_head = rig.api.messages_to(901)[0].text or ""
    assert "UBND phường Bồ Đề" in lb_head  # the head of a district sees the ward below, ranked
    assert "Cán bộ CB-9" in lb_head  # and, only they, the officers above the minimum
    assert "Cán bộ CB-9" not in (rig.api.messages_to(950)[0].text or "")

    # A restart, and the sweep's next runs: nothing more is queued or sent.
    await rig.restart()
    for _ in range(2):
        again = await send_due_digests(rig.services)
        assert again.queued == [] and again.unreachable == []
    assert await count(rig, DigestDelivery) == 5
    digest_rows = OutboxMessage.dedupe_key.like("digest:%")
    assert await count(rig, OutboxMessage, digest_rows) == 12
    assert (
        await count(rig, OutboxMessage, digest_rows, OutboxMessage.status == OutboxStatus.SENT)
        == 12
    )


async def test_two_processes_sweeping_at_once_queue_each_digest_once(rig: Rig) -> None:
    await seed(rig)
    rig.clock.set(MONDAY_0731)
    other = build_services(rig.services.settings, clock=rig.clock)
    await prepare_database(other)
    try:
        first, second = await asyncio.gather(
            send_due_digests(rig.services), send_due_digests(other)
        )
    finally:
        await other.engine.dispose()
    assert sorted(first.queued + second.queued) == [
        "head:HN",
        "head:HN-LB",
        "head:HN-LB-BD",
        "recipient:1",
    ]
    assert await count(rig, DigestDelivery) == 5
    assert await count(rig, OutboxMessage, OutboxMessage.dedupe_key.like("digest:%")) == 12


async def test_a_digest_missed_while_down_goes_out_late(rig: Rig) -> None:
    await seed(rig)
    rig.clock.set(MONDAY_0731 + timedelta(days=2))  # the service was down from Monday to now
    outcome = await send_due_digests(rig.services)
    assert len(outcome.queued) == 4
    rig.services.wake_dispatcher()
    text = await rig.api.wait_for_message(900, lambda m: m.method == "sendMessage", timeout=20)
    assert text.text is not None and "(gửi muộn do hệ thống gián đoạn)" in text.text
    async with rig.services.sessions() as session:
        lates = (await session.scalars(select(DigestDelivery.late))).all()
    assert set(lates) == {True}


async def test_digest_send_from_the_command_line_queues_once(
    migrated_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = engine_for(migrated_database_url)
    sessions = create_session_factory(engine)
    try:
        async with sessions.begin() as session:
            await load_tree(session, TREE_YAML)
            await add_response(session, "HN-LB", MID_W47, (5, 5, 5, 5, 5))
    finally:
        await engine.dispose()
    monkeypatch.setenv("SIPAS_DATABASE_URL", migrated_database_url)
    monkeypatch.setenv("SIPAS_TELEGRAM_TOKEN", "123456:TEST-token-not-used")
    argv = ["digest", "--week", "2026-W47", "--unit", "HN-LB", "--format", "json", "--send"]
    assert await run_main(argv) == 0
    out = capsys.readouterr().out
    # The head of HN-LB on Telegram; the district's office has only Zalo, not configured.
    assert out.rstrip().endswith(
        "queued: 1 digests queued, 1 recipients unreachable, 0 already sent"
    )
    assert await run_main(argv) == 0
    assert "queued: 0 digests queued, 0 recipients unreachable, 2 already sent" in (
        capsys.readouterr().out
    )
    engine = engine_for(migrated_database_url)
    try:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(OutboxMessage.address, OutboxMessage.dedupe_key).order_by(
                        OutboxMessage.id
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    assert rows == [
        ("901", "digest:head:HN-LB:2026-W47:text"),
        ("901", "digest:head:HN-LB:2026-W47:photo"),
        ("901", "digest:head:HN-LB:2026-W47:document"),
    ]


async def test_a_file_payload_without_its_bytes_is_refused_for_good() -> None:
    sender = TelegramSender(Bot("123456:TEST-token-not-used"))
    with pytest.raises(PermanentSendError, match="no valid photo"):
        await sender.send(
            "901", {"text": "chart", "photo": {"filename": "x.png"}}, clear_buttons_of=None
        )
    with pytest.raises(PermanentSendError, match="no valid document"):
        await sender.send(
            "901",
            {"text": "book", "document": {"filename": "x.xlsx", "data_b64": "%%%"}},
            clear_buttons_of=None,
        )


async def test_two_dispatching_processes_deliver_each_digest_once(make_rig: RigFactory) -> None:
    first, second = await make_rig(), await make_rig()  # one database, two running services
    await seed(first)
    first.clock.set(MONDAY_0731)
    outcomes = await asyncio.gather(
        send_due_digests(first.services), send_due_digests(second.services)
    )
    assert sum(len(o.queued) for o in outcomes) == 4
    first.services.wake_dispatcher()
    second.services.wake_dispatcher()
    digest_rows = OutboxMessage.dedupe_key.like("digest:%")
    deadline = asyncio.get_running_loop().time() + 30
    while await count(first, OutboxMessage, digest_rows, OutboxMessage.status == "sent") < 12:
        assert asyncio.get_running_loop().time() < deadline, "digests not sent in 30 s"
        await asyncio.sleep(0.05)
    for chat in REACHABLE:
        sent = first.api.messages_to(chat) + second.api.messages_to(chat)
        assert sorted(m.method for m in sent) == ["sendDocument", "sendMessage", "sendPhoto"]
