"""Case intake at the handler level (no HTTP): citizens recognised across cases, phones in one
form, status transitions, and the survey a resolution schedules."""

from __future__ import annotations

import itertools
import secrets
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.errors import Conflict, DomainError, InvalidInput
from handlers.intake import TRANSITIONS, IntakeResult, Posted, case_posted, cases_posted
from handlers.intake_schema import normalize_phone, parse_case
from handlers.policy import QuietHours, SurveyPolicy
from handlers.units import load_units, parse_units_file
from storage.db import SessionFactory
from storage.models import (
    Case,
    CaseEvent,
    CaseStatus,
    Citizen,
    CitizenContact,
    Escalation,
    OutboxMessage,
    Survey,
    SurveyStatus,
)
from tests.api_support import UNITS_YAML, case_body, delayed_body, resolved_body

POLICY = SurveyPolicy()  # 21:00-07:00 quiet hours, no delay, Asia/Ho_Chi_Minh
MONDAY_0800_LOCAL = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


@pytest.fixture(name="db")
async def db_fixture(sessions: SessionFactory) -> SessionFactory:
    async with sessions.begin() as session:
        await load_units(session, parse_units_file(UNITS_YAML))
    return sessions


async def post(
    db: SessionFactory,
    body: dict[str, Any],
    now: datetime = MONDAY_0800_LOCAL,
    policy: SurveyPolicy = POLICY,
) -> IntakeResult:
    async with db.begin() as session:
        return await case_posted(session, parse_case(body), now, policy)


def with_citizen(body: dict[str, Any], **citizen: Any) -> dict[str, Any]:
    body["citizen"] = citizen
    return body


async def survey_of(db: SessionFactory, case: Case) -> Survey | None:
    async with db() as session:
        query = select(Survey).where(Survey.case_id == case.id)
        return (await session.execute(query)).scalar_one_or_none()


async def contacts(db: SessionFactory) -> list[tuple[int, str, str, str]]:
    async with db() as session:
        rows = (await session.execute(select(CitizenContact))).scalars()
        return [(c.citizen_id, c.channel, c.address, c.source) for c in rows]


# --- citizens --------------------------------------------------------------------------------


async def test_the_same_phone_is_the_same_citizen(db: SessionFactory) -> None:
    first = await post(db, with_citizen(case_body("C-1"), name="Trần Văn Minh", phone="0912345678"))
    second = await post(db, with_citizen(case_body("C-2"), phone="+84 912 345 678"))
    other = await post(db, with_citizen(case_body("C-3"), phone="0987654321"))

    assert second.case.citizen_id == first.case.citizen_id
    assert other.case.citizen_id != first.case.citizen_id
    async with db() as session:
        citizen = await session.get(Citizen, first.case.citizen_id)
    assert citizen is not None
    assert (citizen.name, citizen.phone) == ("Trần Văn Minh", "0912345678")


async def test_a_chat_id_from_the_desk_links_telegram_directly(db: SessionFactory) -> None:
    first = await post(
        db, with_citizen(case_body("C-1"), name="Lê Thị Hoa", telegram_chat_id=777000111)
    )
    citizen_id = first.case.citizen_id
    assert await contacts(db) == [(citizen_id, "telegram", "777000111", "intake")]

    # A later case with the same chat id (and no phone) finds the same citizen.
    later = await post(db, with_citizen(case_body("C-2"), telegram_chat_id="777000111"))
    assert later.case.citizen_id == citizen_id
    assert await contacts(db) == [(citizen_id, "telegram", "777000111", "intake")]


async def test_a_zalo_id_from_the_desk_links_zalo_directly(db: SessionFactory) -> None:
    first = await post(db, with_citizen(case_body("C-1"), zalo_user_id="zl-42"))
    later = await post(db, with_citizen(case_body("C-2"), zalo_user_id="zl-42", phone="0911111111"))
    assert later.case.citizen_id == first.case.citizen_id
    assert await contacts(db) == [(first.case.citizen_id, "zalo", "zl-42", "intake")]


async def test_a_chat_id_finds_the_citizen_known_by_phone(db: SessionFactory) -> None:
    first = await post(db, with_citizen(case_body("C-1"), phone="0912345678"))
    second = await post(
        db, with_citizen(case_body("C-2"), phone="0912 345 678", telegram_chat_id=5551)
    )
    third = await post(db, with_citizen(case_body("C-3"), telegram_chat_id=5551))
    assert first.case.citizen_id == second.case.citizen_id == third.case.citizen_id


async def test_a_case_without_citizen_details_gets_its_own_citizen(db: SessionFactory) -> None:
    body = case_body("C-1")
    del body["citizen"]
    first = await post(db, body)
    second = await post(db, {**body, "case_code": "C-2"})
    assert first.case.citizen_id is not None
    assert second.case.citizen_id != first.case.citizen_id


@pytest.mark.parametrize(
    "raw",
    ["+84 912 345 678", "84912345678", "0912.345.678", "(091) 234-5678", " 0912345678 "],
)
def test_phones_are_stored_in_one_form(raw: str) -> None:
    assert normalize_phone(raw) == "0912345678"
    body = with_citizen(case_body(), phone=raw)
    assert parse_case(body).citizen.phone == "0912345678"


@pytest.mark.parametrize("raw", ["12345", "+1 202 555 0100", "0912abc678", "091234567890"])
def test_a_phone_that_is_not_vietnamese_is_refused(raw: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_case(with_citizen(case_body(), phone=raw))
    assert set(raised.value.fields) == {"citizen.phone"}


# --- transitions -----------------------------------------------------------------------------


def test_the_transition_table_is_the_contracts() -> None:
    final = {CaseStatus.RESOLVED, CaseStatus.REJECTED, CaseStatus.WITHDRAWN}
    assert TRANSITIONS[CaseStatus.RECEIVED] == set(CaseStatus)
    assert TRANSITIONS[CaseStatus.DELAYED] == set(CaseStatus) - {CaseStatus.RECEIVED}
    for status in final:
        assert TRANSITIONS[status] == {status}


IMPOSSIBLE = [
    ("resolved", "received"),
    ("withdrawn", "resolved"),
    ("rejected", "delayed"),
    ("delayed", "received"),
    ("resolved", "withdrawn"),
]


def body_in(status: str, code: str) -> dict[str, Any]:
    if status == "resolved":
        return resolved_body(code)
    if status == "delayed":
        return delayed_body(code)
    return case_body(code, status=status)


async def test_impossible_transitions_raise_conflict(db: SessionFactory) -> None:
    for before, after in IMPOSSIBLE:
        code = f"X-{before}-{after}"
        await post(db, body_in(before, code))
        with pytest.raises(Conflict, match=f"{before}.*{after}"):
            await post(db, body_in(after, code))
        async with db() as session:
            query = select(Case.status).where(Case.case_code == code)
            status = (await session.execute(query)).scalar_one()
        assert status == before


async def test_a_replay_is_reported_unchanged(db: SessionFactory) -> None:
    created = await post(db, case_body("X"))
    replay = await post(db, case_body("X"))
    update = await post(db, delayed_body("X"))
    assert (created.created, created.changed) == (True, True)
    assert (replay.created, replay.changed) == (False, False)
    assert (update.created, update.changed) == (False, True)


async def test_a_case_stored_with_the_earlier_hash_is_still_known_as_a_replay(
    db: SessionFactory,
) -> None:
    # Cases taken before the hash changed form keep 64 hex digits; posted again unchanged
    # they are replays, not updates, and a changed body is still an update.
    body = parse_case(case_body("OLD-1"))
    await post(db, case_body("OLD-1"))
    async with db.begin() as session:
        case = (await session.execute(select(Case).where(Case.case_code == "OLD-1"))).scalar_one()
        assert case.body_hash == body.fingerprint() and len(case.body_hash) == 43
        case.body_hash = body.fingerprint_v1()
    replay = await post(db, case_body("OLD-1"))
    assert (replay.created, replay.changed) == (False, False)
    update = await post(db, delayed_body("OLD-1"))
    assert (update.created, update.changed) == (False, True)
    async with db() as session:
        stored = await session.scalar(select(Case.body_hash).where(Case.case_code == "OLD-1"))
    assert stored == parse_case(delayed_body("OLD-1")).fingerprint()


# --- surveys ---------------------------------------------------------------------------------


async def test_a_resolution_at_2230_is_invited_at_0700_next_morning(db: SessionFactory) -> None:
    tuesday_2230_local = datetime(2026, 11, 24, 15, 30, tzinfo=UTC)
    result = await post(
        db, resolved_body("S-1", "2026-11-24T22:30:00+07:00"), now=tuesday_2230_local
    )

    survey = await survey_of(db, result.case)
    assert survey is not None
    assert survey.status == SurveyStatus.SCHEDULED
    assert survey.due_at == datetime(2026, 11, 25, 0, 0, tzinfo=UTC)  # 07:00 local
    assert survey.expires_at == survey.due_at + POLICY.expires_after


async def test_the_delay_is_added_before_quiet_hours_apply(db: SessionFactory) -> None:
    policy = SurveyPolicy(delay=timedelta(hours=12))
    # 08:00 local + 12h = 20:00 local: outside quiet hours, kept.
    result = await post(db, resolved_body("S-1"), policy=policy)
    survey = await survey_of(db, result.case)
    assert survey is not None
    assert survey.due_at == MONDAY_0800_LOCAL + timedelta(hours=12)
    # 12:00 local + 12h = 00:00 local: moved to 07:00.
    noon = MONDAY_0800_LOCAL + timedelta(hours=4)
    result = await post(db, resolved_body("S-2"), now=noon, policy=policy)
    survey = await survey_of(db, result.case)
    assert survey is not None
    assert survey.due_at == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)


async def test_without_quiet_hours_the_survey_is_due_at_once(db: SessionFactory) -> None:
    policy = SurveyPolicy(quiet_hours=None)
    late = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)  # 23:00 local
    result = await post(db, resolved_body("S-1", "2026-11-24T22:30:00+07:00"), late, policy)
    survey = await survey_of(db, result.case)
    assert survey is not None
    assert survey.due_at == late


def test_quiet_hours_that_do_not_wrap_midnight() -> None:
    lunch = QuietHours(time(12, 0), time(13, 30))
    policy = SurveyPolicy(quiet_hours=lunch)
    at_1215_local = datetime(2026, 11, 23, 5, 15, tzinfo=UTC)
    assert policy.sendable_at(at_1215_local) == datetime(2026, 11, 23, 6, 30, tzinfo=UTC)
    assert policy.sendable_at(MONDAY_0800_LOCAL) == MONDAY_0800_LOCAL


async def test_a_rejection_is_surveyed_and_a_withdrawal_is_not(db: SessionFactory) -> None:
    rejected = await post(db, case_body("S-1", status="rejected"))
    withdrawn = await post(db, case_body("S-2", status="withdrawn"))
    survey = await survey_of(db, rejected.case)
    assert survey is not None
    assert survey.status == SurveyStatus.SCHEDULED
    assert rejected.case.resolved_at == MONDAY_0800_LOCAL  # the decision's time, if not given
    assert await survey_of(db, withdrawn.case) is None


async def test_an_opted_out_citizen_is_not_invited(db: SessionFactory) -> None:
    first = await post(db, with_citizen(case_body("S-1"), phone="0912345678"))
    async with db.begin() as session:
        citizen = await session.get(Citizen, first.case.citizen_id)
        assert citizen is not None
        citizen.opted_out_at = MONDAY_0800_LOCAL

    result = await post(db, with_citizen(resolved_body("S-2"), phone="0912345678"))

    assert result.case.citizen_id == first.case.citizen_id
    survey = await survey_of(db, result.case)
    assert survey is not None
    assert survey.status == SurveyStatus.OPTED_OUT


async def test_one_survey_per_case_however_often_it_is_resolved(db: SessionFactory) -> None:
    result = await post(db, resolved_body("S-1"))
    first = await survey_of(db, result.case)
    await post(db, resolved_body("S-1", "2026-11-23T07:30:00+07:00"))
    async with db() as session:
        surveys = (await session.execute(select(Survey))).scalars().all()
    assert first is not None
    assert [s.id for s in surveys] == [first.id]


# --- many cases at once ------------------------------------------------------------------------

# Late enough for the scripts' resolutions after their due date (25 November) to be in the past.
FRIDAY_0800_LOCAL = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
PHONES = ("0912345678", "0987654321", None)
CHATS = (5551, 5552, None)
NAMES = ("Trần Văn Minh", "Lê Thị Hoa", None)


def scripted_body(code: str, status: str, variant: int, namespace: str) -> dict[str, Any]:
    """A body whose citizen, unit and dates depend on `variant`; `namespace` (5 digits) keeps
    phones and chat ids of each run apart in one database, so that no run finds another's."""
    body = body_in(status, code)
    phone = PHONES[variant % 3]
    chat = CHATS[(variant // 3) % 3]
    body["citizen"] = {
        "name": NAMES[(variant // 9) % 3],
        "phone": f"09{namespace}{phone[-3:]}" if phone else None,
        "telegram_chat_id": f"{chat}{namespace}" if chat else None,
    }
    if variant % 7 == 6:
        body["unit_code"] = "NOWHERE"
    if variant % 5 == 4:
        body["procedure"] = {"code": "1.000894", "name": f"Đăng ký kết hôn {variant % 2}"}
        body["officer"] = {"code": "CB-9", "name": None if variant % 2 else "Phạm Văn Đức"}
    if status == "resolved" and variant % 2:
        body["resolved_at"] = "2026-11-26T09:00:00+07:00"  # after its due date: late
    if status == "delayed" and variant % 3 == 0:
        body["delay"]["new_due_at"] = "2026-11-30T17:00:00+07:00"
    return body


async def outcome_kinds(
    session: AsyncSession, bodies: list[dict[str, Any]], together: bool
) -> list[str]:
    parsed = [parse_case(body) for body in bodies]
    if together:
        outcomes = await cases_posted(
            session, parsed, FRIDAY_0800_LOCAL, POLICY, channels=["telegram"]
        )
    else:
        outcomes = []
        for body in parsed:
            try:
                async with session.begin_nested():
                    result = await case_posted(
                        session, body, FRIDAY_0800_LOCAL, POLICY, channels=["telegram"]
                    )
            except DomainError as exc:
                outcomes.append(exc)
                continue
            outcomes.append(Posted(0, "", "", "", created=result.created, changed=result.changed))
    return [
        type(o).__name__ if isinstance(o, DomainError) else f"{o.created}-{o.changed}"
        for o in outcomes
    ]


async def stored_state(db: SessionFactory, prefix: str) -> dict[str, Any]:
    """What a run left, with ids replaced by the run's case codes (prefix removed)."""
    async with db() as session:
        cases = (
            await session.execute(select(Case).where(Case.case_code.startswith(prefix)))
        ).scalars()
        by_id = {case.id: case for case in cases}
        people: dict[int | None, set[str]] = {}
        for case in by_id.values():
            people.setdefault(case.citizen_id, set()).add(case.case_code.removeprefix(prefix))
        citizens = {
            c.id: (c.name, c.phone[-3:] if c.phone else None)
            for c in (await session.execute(select(Citizen))).scalars()
        }
        contacts = {
            (contact.address[:4], frozenset(people.get(contact.citizen_id, ())))
            for contact in (await session.execute(select(CitizenContact))).scalars()
            if contact.citizen_id in people
        }

        def per_case(rows: Any) -> list[str]:
            return sorted(
                by_id[case_id].case_code.removeprefix(prefix)
                for case_id in rows
                if case_id in by_id
            )

        events = per_case((await session.execute(select(CaseEvent.case_id))).scalars())
        surveys = per_case((await session.execute(select(Survey.case_id))).scalars())
        escalations = per_case((await session.execute(select(Escalation.case_id))).scalars())
        outbox = sorted(
            (by_id[case_id].case_code.removeprefix(prefix), (key or "").split(":")[0])
            for case_id, key in await session.execute(
                select(OutboxMessage.case_id, OutboxMessage.dedupe_key)
            )
            if case_id in by_id
        )
    return {
        "cases": sorted(
            (
                c.case_code.removeprefix(prefix),
                c.status,
                c.resolved_at,
                c.delay_new_due_at,
            )
            for c in by_id.values()
        ),
        "people": sorted(
            (sorted(codes), citizens.get(citizen_id)) for citizen_id, codes in people.items()
        ),
        "contacts": sorted(contacts, key=repr),
        "events": events,
        "surveys": surveys,
        "escalations": escalations,
        "outbox": outbox,
    }


STATUSES = ("received", "delayed", "resolved", "rejected", "withdrawn")
# Each run of a script gets a namespace of its own for phones and chat ids: drawn at random,
# two of the 50 runs of one test shared one about once in a hundred test runs, and the later
# run found the earlier one's citizen (a flaky failure). Counted from a random start instead.
_NAMESPACES = itertools.count(secrets.randbelow(90_000))


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    script=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(STATUSES), st.integers(0, 40)),
        min_size=1,
        max_size=12,
    )
)
async def test_cases_taken_together_end_as_if_taken_one_by_one(
    db: SessionFactory, script: list[tuple[int, str, int]]
) -> None:
    # Two runs of one script, in one database: apart (one savepoint each, as the demo does)
    # and together in one call; codes, phones and chat ids of each run are its own.
    run = secrets.token_hex(3)
    results = []
    for together in (False, True):
        namespace = f"{next(_NAMESPACES):05d}"
        prefix = f"{run}-{together}-"
        bodies = [
            scripted_body(f"{prefix}{case}", status, variant, namespace)
            for case, status, variant in script
        ]
        async with db.begin() as session:
            kinds = await outcome_kinds(session, bodies, together)
        results.append((kinds, await stored_state(db, prefix)))
    assert results[0] == results[1]


async def test_a_phone_and_a_chat_id_given_by_earlier_cases_of_a_group_find_the_citizen(
    db: SessionFactory,
) -> None:
    bodies = [
        with_citizen(case_body("G-1"), name="Lê Thị Hoa", phone="0912345678"),
        with_citizen(case_body("G-2"), phone="0912345678", telegram_chat_id=777),
        with_citizen(case_body("G-3"), telegram_chat_id=777),
        with_citizen(case_body("G-4"), phone="0987654321"),
    ]
    async with db.begin() as session:
        outcomes = await cases_posted(
            session, [parse_case(b) for b in bodies], MONDAY_0800_LOCAL, POLICY
        )
    assert all(isinstance(o, Posted) and o.created for o in outcomes)
    async with db() as session:
        rows = await session.execute(select(Case.case_code, Case.citizen_id).order_by(Case.id))
        citizen_of = {code: citizen_id for code, citizen_id in rows}
    assert citizen_of["G-1"] == citizen_of["G-2"] == citizen_of["G-3"] != citizen_of["G-4"]
    assert await contacts(db) == [(citizen_of["G-1"], "telegram", "777", "intake")]
