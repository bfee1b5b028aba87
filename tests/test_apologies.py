"""Apology letters end to end (Nghị định 61/2018/NĐ-CP): a delayed case's letter with its new
return date, once per date; a late resolution's apology just ahead of the invitation; the
records digests count. Through the real API, the real PTB Application and both databases.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from handlers.apologies import DELAYED, LATE_RESOLUTION
from storage.models import Apology, Case, OutboxMessage
from storage.repositories import apologies as apology_repo
from tests.fakes.telegram_api import FakeTelegramAPI, SentCall
from tests.telegram_support import CASE, Rig, RigFactory, case_body, make_rig, rig

__all__ = ["make_rig", "rig"]  # fixtures

CHAT = 5552001
CODE = CASE["case_code"]
# A procedure no courtesy rule is about, so the only notices here are apologies.
BUILDING = {
    "code": "1.009994",
    "name": "Cấp giấy phép xây dựng nhà ở riêng lẻ",
    "field": "Xây dựng",
}
REASON = "Cần xác minh thêm thông tin với UBND phường nơi có công trình"
FIRST_DELAY = {"new_due_at": "2026-12-02T17:00:00+07:00", "reason": REASON}
SECOND_DELAY = {"new_due_at": "2026-12-09T17:00:00+07:00", "reason": "Chờ ý kiến của Sở Xây dựng"}


def building_case(**changes: Any) -> dict[str, Any]:
    return case_body(procedure=BUILDING, **changes)


def delayed(delay: dict[str, str], **changes: Any) -> dict[str, Any]:
    return building_case(**{"status": "delayed", "delay": delay, **changes})


def buttons(message: SentCall) -> list[str]:
    return [text for text, _ in FakeTelegramAPI.buttons(message)]


async def apologies_of(rig: Rig, case_code: str = CODE) -> list[Apology]:
    async with rig.services.sessions() as session:
        rows = await session.scalars(
            select(Apology)
            .join(Case, Case.id == Apology.case_id)
            .where(Case.case_code == case_code)
            .order_by(Apology.id)
        )
        return list(rows.all())


async def apology_messages(rig: Rig) -> int:
    async with rig.services.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.dedupe_key.like("apology:%"))
        )
    return int(count or 0)


async def linked(rig: Rig, chat: int = CHAT, case_code: str = CODE) -> None:
    await rig.post_case(building_case(case_code=case_code), 201)
    await rig.link(chat, case_code)


async def test_a_delayed_case_gets_a_letter_per_new_date_and_a_replay_nothing(rig: Rig) -> None:
    await linked(rig)
    mark = rig.api.mark()
    await rig.post_case(delayed(FIRST_DELAY), 200)
    letter = await rig.api.wait_for_message(CHAT, since=mark)
    assert letter.text.startswith("PHIẾU XIN LỖI VÀ HẸN LẠI NGÀY TRẢ KẾT QUẢ")
    for line in (
        "Kính gửi: Trần Văn Minh",
        "Ngày 20/11/2026, UBND quận Long Biên đã tiếp nhận hồ sơ đề nghị giải quyết thủ tục "
        "hành chính «Cấp giấy phép xây dựng nhà ở riêng lẻ» của Ông/Bà.",
        f"Mã hồ sơ: {CODE}",
        "Thời gian hẹn trả kết quả: ngày 25/11/2026",
        f"Lý do: {REASON}",
        "xin hẹn trả kết quả giải quyết hồ sơ vào ngày 02/12/2026.",
    ):
        assert line in letter.text
    assert not buttons(letter)

    # The same body again changes nothing; so the next message is the second letter.
    mark = rig.api.mark()
    await rig.post_case(delayed(FIRST_DELAY), 200)
    await rig.post_case(delayed(SECOND_DELAY), 200)
    second = await rig.api.wait_for_message(CHAT, since=mark)
    assert "Thời gian hẹn trả kết quả: ngày 02/12/2026" in second.text
    assert "vào ngày 09/12/2026." in second.text
    assert "Lý do: Chờ ý kiến của Sở Xây dựng" in second.text

    rows = await apologies_of(rig)
    assert [(r.kind, r.old_due_at, r.new_due_at) for r in rows] == [
        (DELAYED, datetime(2026, 11, 25, 10, tzinfo=UTC), datetime(2026, 12, 2, 10, tzinfo=UTC)),
        (DELAYED, datetime(2026, 12, 2, 10, tzinfo=UTC), datetime(2026, 12, 9, 10, tzinfo=UTC)),
    ]
    assert rows[0].reason == REASON
    assert await apology_messages(rig) == 2
    letters = [m for m in rig.api.messages_to(CHAT) if m.text.startswith("PHIẾU XIN LỖI")]
    assert len(letters) == 2


async def test_a_new_reason_for_the_same_date_is_no_new_letter(rig: Rig) -> None:
    await linked(rig)
    await rig.post_case(delayed(FIRST_DELAY), 200)
    await rig.post_case(delayed({**FIRST_DELAY, "reason": "Lý do được viết lại"}), 200)
    assert len(await apologies_of(rig)) == 1
    assert await apology_messages(rig) == 1


async def test_a_case_posted_delayed_at_once_apologises_from_its_due_date(rig: Rig) -> None:
    body = delayed(FIRST_DELAY)
    body["citizen"] = {**CASE["citizen"], "telegram_chat_id": CHAT}  # linked at the desk
    await rig.post_case(body, 201)
    letter = await rig.api.wait_for_message(CHAT, count=1)
    assert "ngày 25/11/2026" in letter.text and "vào ngày 02/12/2026." in letter.text


async def test_delayed_before_the_citizen_linked_is_recorded_and_not_sent(rig: Rig) -> None:
    await rig.post_case(delayed(FIRST_DELAY), 201)
    rows = await apologies_of(rig)
    assert [r.kind for r in rows] == [DELAYED]
    await rig.link(CHAT)
    assert await apology_messages(rig) == 0
    assert not any("XIN LỖI" in m.text for m in rig.api.messages_to(CHAT))
    # Counted for the digest all the same.
    async with rig.services.sessions() as session:
        counts = await apology_repo.counts(
            session, rig.clock.now() - timedelta(days=1), rig.clock.now() + timedelta(days=1)
        )
    assert counts == {DELAYED: 1}


async def test_a_late_resolution_apologises_just_before_the_invitation(rig: Rig) -> None:
    await linked(rig)
    rig.clock.advance(timedelta(days=4))  # Friday 27/11, two days past the promised 25/11
    resolved = building_case(status="resolved", resolved_at="2026-11-27T08:00:00+07:00")
    await rig.post_case(resolved, 200)
    mark = rig.api.mark()
    assert await rig.sweep() == 1
    await rig.api.wait_for_message(CHAT, lambda m: bool(buttons(m)), since=mark)
    apology, invitation = [m for m in rig.api.messages_to(CHAT) if m.seq >= mark]
    assert apology.text.startswith("Kính gửi: Trần Văn Minh")
    assert f"Hồ sơ {CODE} («Cấp giấy phép xây dựng nhà ở riêng lẻ»)" in apology.text
    assert "ngày hẹn trả kết quả là 25/11/2026" in apology.text
    assert "đến ngày 27/11/2026 mới được giải quyết xong" in apology.text
    assert "UBND quận Long Biên thành thật xin lỗi" in apology.text
    assert not buttons(apology)
    assert buttons(invitation) == ["Bắt đầu", "Để sau"]

    await rig.post_case(resolved, 200)  # replayed
    assert await rig.sweep() == 0
    rows = await apologies_of(rig)
    assert [(r.kind, r.old_due_at, r.new_due_at) for r in rows] == [
        (
            LATE_RESOLUTION,
            datetime(2026, 11, 25, 10, tzinfo=UTC),
            datetime(2026, 11, 27, 1, tzinfo=UTC),
        )
    ]
    assert await apology_messages(rig) == 1


async def test_on_time_is_no_apology(rig: Rig) -> None:
    await linked(rig)
    rig.clock.set(datetime(2026, 11, 25, 10, 0, tzinfo=UTC))  # 17:00 local, just after
    await rig.post_case(building_case(status="resolved", resolved_at="2026-11-25T16:59:00+07:00"))
    mark = rig.api.mark()
    assert await rig.sweep() == 1
    invitation = await rig.api.wait_for_message(CHAT, since=mark)
    assert buttons(invitation) == ["Bắt đầu", "Để sau"]
    assert await apologies_of(rig) == []


async def test_resolved_late_after_a_delay_letter_is_not_apologised_twice(rig: Rig) -> None:
    await linked(rig)
    await rig.post_case(delayed(FIRST_DELAY), 200)
    await rig.api.wait_for_message(CHAT, lambda m: "PHIẾU XIN LỖI" in m.text)
    rig.clock.advance(timedelta(days=10))  # 03/12: late even for the new date
    await rig.post_case(
        delayed(FIRST_DELAY, status="resolved", resolved_at="2026-12-03T08:00:00+07:00"), 200
    )
    mark = rig.api.mark()
    assert await rig.sweep() == 1
    invitation = await rig.api.wait_for_message(CHAT, since=mark)
    assert buttons(invitation) == ["Bắt đầu", "Để sau"]
    assert [r.kind for r in await apologies_of(rig)] == [DELAYED]
    assert await apology_messages(rig) == 1


async def test_english_letters_and_a_nameless_citizen(rig: Rig) -> None:
    citizen = {"phone": "0987654321", "locale": "en", "telegram_chat_id": CHAT}
    await rig.post_case(building_case(citizen=citizen), 201)
    await rig.post_case(delayed(FIRST_DELAY, citizen=citizen), 200)
    letter = await rig.api.wait_for_message(CHAT, count=1)
    assert letter.text.startswith("LETTER OF APOLOGY AND NEW DATE FOR THE RESULT")
    for line in (
        "To: Sir/Madam",
        "On 20/11/2026, UBND quận Long Biên received your application for the administrative "
        'procedure "Cấp giấy phép xây dựng nhà ở riêng lẻ".',
        f"Case code: {CODE}",
        "Promised date for the result: 25/11/2026",
        f"Reason: {REASON}",
        "will return the result of your case on 02/12/2026.",
    ):
        assert line in letter.text

    late_code = "000.00.12.H26-261122-0002"
    rig.clock.advance(timedelta(days=4))
    await rig.post_case(
        building_case(
            case_code=late_code,
            citizen=citizen,
            status="resolved",
            resolved_at="2026-11-27T08:00:00+07:00",
        ),
        201,
    )
    mark = rig.api.mark()
    assert await rig.sweep() == 1
    apology = await rig.api.wait_for_message(CHAT, since=mark)
    assert apology.text.startswith("To: Sir/Madam")
    assert f"Your case {late_code} " in apology.text
    assert "was promised for 25/11/2026, but it was only resolved on 27/11/2026." in apology.text
    invitation = await rig.api.wait_for_message(CHAT, lambda m: bool(buttons(m)), since=mark)
    assert buttons(invitation) == ["Start", "Later"]


async def test_a_letter_posted_at_night_waits_for_the_morning(make_rig: RigFactory) -> None:
    rig = await make_rig(quiet_hours="21:00-07:00")
    await linked(rig)
    rig.clock.set(datetime(2026, 11, 23, 15, 30, tzinfo=UTC))  # 22:30 in Hà Nội
    await rig.post_case(delayed(FIRST_DELAY), 200)
    async with rig.services.sessions() as session:
        letter = await session.scalar(
            select(OutboxMessage).where(OutboxMessage.dedupe_key.like("apology:%"))
        )
    assert letter is not None
    assert letter.not_before == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)  # 07:00 local
    assert [r.kind for r in await apologies_of(rig)] == [DELAYED]  # recorded at once


async def test_a_post_wakes_the_dispatcher_only_when_it_queued_a_letter(rig: Rig) -> None:
    """A post that queues nothing costs the dispatcher no claim; one that queues a letter
    wakes it once its transaction has committed, and the letter goes out."""
    woken: list[str] = []
    wake = rig.services.wake_dispatcher

    def counted_wake() -> None:
        woken.append("woken")
        wake()

    rig.services.wake_dispatcher = counted_wake
    citizen = {**CASE["citizen"], "telegram_chat_id": CHAT}  # linked at the desk
    await rig.post_case({**building_case(), "citizen": citizen}, 201)
    assert woken == []
    await rig.post_case({**delayed(FIRST_DELAY), "citizen": citizen}, 200)
    assert woken == ["woken"]
    assert "vào ngày 02/12/2026." in (await rig.api.wait_for_message(CHAT, count=1)).text
