"""The Zalo channel end to end: a fake Zalo Bot API over HTTP, the real channel, outbox and API.

Zalo has no buttons: every prompt is answered by typing its number or its words, and anything
else gets a hint and the question again (docs/contract.md section 7). On SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from storage.models import Escalation
from tests.fakes.zalo_api import Sent
from tests.telegram_support import CASE, case_body
from tests.zalo_support import ZaloRig, ZaloRigFactory, make_zalo_rig, zalo_rig

__all__ = ["make_zalo_rig", "zalo_rig"]  # fixtures

CITIZEN = "zl-citizen-1"
RESOLVED = {"status": "resolved", "resolved_at": "2026-11-23T08:00:00+07:00"}


def asks(fragment: str) -> Any:
    return lambda sent: fragment in sent.text


async def resolved_and_invited(rig: ZaloRig) -> Sent:
    await rig.post_case(case_body(), 201)
    await rig.link(CITIZEN)
    mark = rig.zalo.mark()
    await rig.post_case(case_body(**RESOLVED), 200)
    await rig.sweep()
    return await rig.zalo.wait_for_message(CITIZEN, asks("1. Bắt đầu"), since=mark)


async def answers(rig: ZaloRig) -> dict[str, Any]:
    survey: dict[str, Any] = (await rig.get_case())["survey"]
    return survey


async def test_the_survey_answered_by_numbers(zalo_rig: ZaloRig) -> None:
    rig = zalo_rig
    invitation = await resolved_and_invited(rig)
    view = await rig.get_case()
    assert view["links"]["zalo"].startswith("https://zalo.me/2718281828?start=")
    assert "2. Để sau" in invitation.text
    question = await rig.say(CITIZEN, "1", asks("Câu 1/7"))
    assert "1. 1 - Rất không hài lòng" in question.text and "5. 5 - Rất hài lòng" in question.text
    assert "Bỏ qua" not in question.text  # the first question is required
    for score in ("5", "4", "2", "1"):
        question = await rig.say(CITIZEN, score)
    assert "Câu 5/7" in question.text
    assert "6. Bỏ qua" in question.text and "7. « Quay lại" in question.text
    question = await rig.say(CITIZEN, "6")  # "6. Bỏ qua", answered by its number
    assert "Câu 6/7" in question.text and "1. Có" in question.text and "2. Không" in question.text
    question = await rig.say(CITIZEN, "2")
    assert "Câu 7/7" in question.text
    thanks = await rig.say(CITIZEN, "Cán bộ hướng dẫn rất tận tình")
    assert "Xin cảm ơn" in thanks.text and "1." not in thanks.text  # nothing left to choose
    survey = await answers(rig)
    assert survey["status"] == "completed" and survey["channel"] == "zalo"
    assert survey["answers"] == {
        "access": 5,
        "procedure": 4,
        "civil_servant": 2,
        "result": 1,
        "informal_payment": "no",
        "comment": "Cán bộ hướng dẫn rất tận tình",
    }
