"""The demo's weekly digest: eight weeks of answered surveys with believable differences, and
the latest city digest (text, chart, workbook) written to a folder the demo prints.

The sample cases alone give each unit two or three answers a week, below
SIPAS_DIGEST_MIN_RESPONSES, so this step adds the answered surveys of earlier cases (codes
`HIST-<unit>-<week>-<n>`, stored as state like the demo's other answers): every unit gets
12-28 invitations a week, 70% answered, around its own level; quận Long Biên improves week
after week, Sở Xây dựng falls, quận Hai Bà Trưng holds its level until last week and then
drops beyond noise (its officers' attitude: the civil servant factor and the comments say so,
what an official opening the dashboard should find), and xã Tả Thanh Oai keeps only its few
sample answers, too few to be scored.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from bot.digest.render import build_files
from bot.digest.snapshots import stored_weeks
from demo.feedback import heads_keep_up
from handlers.digest import Week, build_report
from handlers.escalations import survey_completed
from handlers.questionnaire import load_questionnaire
from storage.models import (
    Answer,
    Case,
    CaseStatus,
    Officer,
    Procedure,
    Survey,
    SurveyStatus,
    Unit,
)

if TYPE_CHECKING:
    from demo.context import DemoContext

HISTORY_PREFIX = "HIST-"
DIGEST_DIR = Path("sipas-demo") / "digest"
CITY = "HN"
IMPROVING, FALLING, SPARSE = "HN-LB", "HN-SXD", "HN-TT-TTO"
SLUMP = "HN-HBT"  # steady, then a fall in the last week
# In the slump's last week: the share of satisfied ratings per factor, and what people wrote.
SLUMP_MOOD = {"civil_servant": 0.2, "access": 0.55, "procedure": 0.55}
SLUMP_MOOD_OTHER = 0.7
COMMENTS_SLUMP = (
    "Cán bộ thái độ khó chịu, nói trống không.",
    "Cán bộ quát người dân, không hướng dẫn.",
    "Thái độ phục vụ kém, gọi mãi không ai trả lời.",
)
ANSWER_SHARE = 0.7  # of invitations answered
COMMENTS_BAD = (
    "Phải chờ lâu quá, xếp hàng cả buổi.",
    "Cán bộ thái độ khó chịu.",
    "Hướng dẫn không rõ, phải bổ sung nhiều lần.",
    "Phòng chờ chật, thiếu ghế ngồi.",
    "Lệ phí cao, không được giải thích.",
)
COMMENTS_GOOD = ("Cán bộ nhiệt tình, cảm ơn.", "Nhanh gọn, đúng hẹn.")


def _mood(code: str, position: int, weeks: int, base: float) -> float:
    """The share of satisfied ratings in a unit's week `position` (0 = oldest)."""
    progress = position / max(1, weeks - 1)
    if code == IMPROVING:
        return 0.5 + 0.43 * progress
    if code == FALLING:
        return 0.93 - 0.45 * progress
    return base


async def seed_digest_weeks(context: DemoContext) -> None:
    services = context.services
    rng = random.Random(f"digest-{context.rng.random()}")
    tz = services.settings.timezone
    weeks = Week.last(context.now, tz).back(8)
    form = load_questionnaire("sipas-short")
    payment = form.by_role("informal_payment")
    comment = form.by_role("comment")
    added = complaints = 0
    async with services.sessions.begin() as session:
        units = [
            u for u in (await session.scalars(select(Unit).order_by(Unit.code))) if u.parent_id
        ]
        procedures = list((await session.scalars(select(Procedure.id))).all())
        officers: dict[int, list[int]] = {}
        for officer_id, unit_id in await session.execute(select(Officer.id, Officer.unit_id)):
            if unit_id is not None:
                officers.setdefault(unit_id, []).append(officer_id)
        for unit in units:
            base = rng.uniform(0.68, 0.9)
            for position, week in enumerate(weeks):
                mood = _mood(unit.code, position, len(weeks), base)
                slump = unit.code == SLUMP and position == len(weeks) - 1
                invitations = 0 if unit.code == SPARSE else rng.randint(12, 28)
                if unit.code == SLUMP:
                    mood = 0.9  # a high, steady level, so that the fall stands out
                    invitations = rng.randint(26, 30)
                for n in range(invitations):
                    day = week.monday + timedelta(days=rng.randrange(6))
                    local = datetime.combine(day, time(rng.randint(8, 16), rng.randrange(60)), tz)
                    resolved = local - timedelta(hours=rng.randint(1, 30))
                    late = rng.random() < 0.06
                    case = Case(
                        case_code=f"{HISTORY_PREFIX}{unit.code}-{week.label}-{n:03d}",
                        unit_id=unit.id,
                        procedure_id=rng.choice(procedures),
                        officer_id=rng.choice(officers[unit.id]) if officers.get(unit.id) else None,
                        status=CaseStatus.RESOLVED,
                        received_at=resolved - timedelta(days=rng.randint(3, 12)),
                        due_at=resolved + (-timedelta(days=1) if late else timedelta(days=1)),
                        resolved_at=resolved,
                        body_hash="demo-history",
                    )
                    session.add(case)
                    await session.flush()
                    answered = rng.random() < ANSWER_SHARE
                    survey = Survey(
                        ref=f"h{case.id}",
                        case_id=case.id,
                        questionnaire=form.id,
                        status=SurveyStatus.COMPLETED if answered else SurveyStatus.EXPIRED,
                        channel="telegram",
                        due_at=resolved,
                        invited_at=resolved,
                        started_at=local if answered else None,
                        completed_at=local if answered else None,
                    )
                    session.add(survey)
                    await session.flush()
                    if not answered:
                        continue
                    added += 1
                    unhappy = False
                    given: list[Answer] = []
                    for question in form.ratings:
                        if question.factor == "feedback_handling" and rng.random() < 0.4:
                            given.append(_answer(survey, question.id, None, None, local))
                            continue
                        share = mood
                        if slump:
                            share = SLUMP_MOOD.get(question.factor or "", SLUMP_MOOD_OTHER)
                        score = (
                            rng.choice((4, 5)) if rng.random() < share else rng.choice((1, 2, 3))
                        )
                        unhappy = unhappy or score <= 2
                        given.append(_answer(survey, question.id, question.factor, score, local))
                    if payment is not None:
                        paid = "yes" if rng.random() < 0.01 else "no"
                        given.append(_text(survey, payment.id, paid, local))
                    if comment is not None and rng.random() < (0.5 if unhappy else 0.15):
                        said = rng.choice(
                            COMMENTS_SLUMP if slump else COMMENTS_BAD if unhappy else COMMENTS_GOOD
                        )
                        given.append(_text(survey, comment.id, said, local))
                    session.add_all(given)
                    if slump:
                        # The slump's complaints go through the real escalation handler, so
                        # the district's page shows them with their audit trail.
                        await session.flush()
                        complaints += len(
                            await survey_completed(
                                session, survey, given, local, services.policy, ["telegram"]
                            )
                        )
        # Like the other complaints: what was due was handled in time (no climb at start-up).
        await heads_keep_up(session, rng, context.now)
    context.summary.append(
        f"History:   {added} more answered surveys over {len(weeks)} weeks, for the digest "
        f"({IMPROVING} improving, {FALLING} falling, {SLUMP} dropping last week with "
        f"{complaints} complaints, {SPARSE} with too few answers)"
    )


def _answer(
    survey: Survey, question_id: str, factor: str | None, score: int | None, at: datetime
) -> Answer:
    return Answer(
        survey_id=survey.id,
        question_id=question_id,
        factor=factor,
        value_int=score,
        skipped=score is None,
        answered_at=at,
    )


def _text(survey: Survey, question_id: str, text: str, at: datetime) -> Answer:
    return Answer(survey_id=survey.id, question_id=question_id, value_text=text, answered_at=at)


async def write_demo_digest(context: DemoContext) -> None:
    """Last week's digest of the city, as a head or an official receives it, into DIGEST_DIR."""
    services = context.services
    settings = services.settings
    week = Week.last(context.now, settings.timezone)
    async with services.sessions() as session:
        report = await build_report(
            session,
            week,
            settings.timezone,
            settings.digest_min_responses,
            CITY,
            closed=stored_weeks(services),
        )
    files = await build_files(services, report, settings.locale)
    folder = DIGEST_DIR.resolve()

    def write() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{files.stem}.txt").write_text(files.text + "\n", encoding="utf-8")
        (folder / f"{files.stem}.png").write_bytes(files.png)
        (folder / f"{files.stem}.xlsx").write_bytes(files.xlsx)

    await asyncio.to_thread(write)
    context.summary.append(
        f"Digest:    {folder}  ({files.stem}: .txt, .png chart, .xlsx workbook; "
        f"`sipas-bot digest --week {week.label} --unit {CITY}` builds it again)"
    )
