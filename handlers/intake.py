"""What happens when the one-stop system posts a case: store it, mint the citizen's link,
check the status change, and start what the new status calls for (a survey, an apology).

Cases are taken a group at a time (`cases_posted`): a batch, a CSV file, or the single posts
that arrived together. Each case is judged alone, in order, exactly as if it came alone; what
the group shares is the round trips to the database (one statement per kind of row, not one
per case), which are most of what a post costs.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from handlers import apologies, courtesy, escalations, surveys
from handlers.errors import Conflict, DomainError, InvalidInput
from handlers.intake_schema import CaseIn, times_ahead
from handlers.policy import SurveyPolicy
from storage.models import Case, CaseStatus, Channel, ContactStatus, SurveyStatus
from storage.repositories import cases as case_repo
from storage.repositories import citizens as citizen_repo

# Which status may follow which. A case may arrive first in any status (the one-stop system
# may only report it once it is resolved); after that it only moves forward.
TRANSITIONS: dict[CaseStatus, frozenset[CaseStatus]] = {
    CaseStatus.RECEIVED: frozenset(CaseStatus),
    CaseStatus.DELAYED: frozenset(
        {CaseStatus.DELAYED, CaseStatus.RESOLVED, CaseStatus.REJECTED, CaseStatus.WITHDRAWN}
    ),
    CaseStatus.RESOLVED: frozenset({CaseStatus.RESOLVED}),
    CaseStatus.REJECTED: frozenset({CaseStatus.REJECTED}),
    CaseStatus.WITHDRAWN: frozenset({CaseStatus.WITHDRAWN}),
}
SURVEYED = frozenset({CaseStatus.RESOLVED, CaseStatus.REJECTED})


@dataclass(frozen=True)
class IntakeResult:
    case: Case
    created: bool
    changed: bool  # False for a replay of the last accepted body


def new_token() -> str:
    """32 characters of A-Za-z0-9_-: 192 random bits, unguessable and URL-safe."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Posted:
    """A case intake accepted: created, updated, or a replay of the last accepted body."""

    case_id: int
    case_code: str
    unit_code: str
    status: str
    created: bool
    changed: bool
    # A case created by this post, still without a survey or an escalation: its view is
    # known without asking the database (its link token, nothing else yet).
    fresh_token: str | None = None


# Per case of a group: what intake made of it, or the reason it was refused (nothing stored).
Outcome = Posted | DomainError


@dataclass
class ReferenceIds:
    """Ids of units, procedures and officers by code, kept across posts by one process.

    The code-to-id mapping never changes once a row exists (nothing deletes these rows), so
    units loaded or renamed meanwhile, by this process or another, cannot make it stale; a code
    not here is looked up. Procedure and officer names are written when a post gives other
    ones than this process last wrote. The holder clears it all when a transaction fails,
    which may have rolled back new rows.
    """

    units: dict[str, int] = field(default_factory=dict)
    procedures: dict[str, int] = field(default_factory=dict)
    officers: dict[str, int] = field(default_factory=dict)
    procedure_names: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    officer_names: dict[str, str | None] = field(default_factory=dict)

    def clear(self) -> None:
        self.units.clear()
        self.procedures.clear()
        self.officers.clear()
        self.procedure_names.clear()
        self.officer_names.clear()


async def case_posted(
    session: AsyncSession,
    body: CaseIn,
    now: datetime,
    policy: SurveyPolicy,
    *,
    channels: Sequence[str] = (),
) -> IntakeResult:
    """Creates or updates one case; the same body twice changes nothing and sends nothing.

    `channels`: the chat channels that can reach citizens, best first (for apologies and
    courtesy messages, which go out at once). Raises the case's DomainError when refused.
    """
    [outcome] = await cases_posted(session, [body], now, policy, channels=channels)
    if isinstance(outcome, DomainError):
        raise outcome
    cases = await case_repo.cases_with_relations(session, [outcome.case_id])
    return IntakeResult(cases[outcome.case_id], created=outcome.created, changed=outcome.changed)


async def cases_posted(
    session: AsyncSession,
    bodies: Sequence[CaseIn],
    now: datetime,
    policy: SurveyPolicy,
    *,
    channels: Sequence[str] = (),
    references: ReferenceIds | None = None,
) -> list[Outcome]:
    """Takes each case in order, as `case_posted` would one after the other; one outcome each.

    A refused case (unknown unit, impossible status change) stores nothing and leaves the
    others as they are. A later case with the code of an earlier one sees what that one did.
    """
    known = references if references is not None else ReferenceIds()
    outcomes: list[Outcome] = []
    for group in without_repeats(bodies):
        outcomes.extend(await _post_group(session, group, now, policy, channels, known))
    return outcomes


def without_repeats(bodies: Sequence[CaseIn]) -> Iterator[Sequence[CaseIn]]:
    """The bodies in consecutive runs in which no case code repeats: the second post of a
    code waits for the first to be written, so that it reads the case as the first left it."""
    start = 0
    seen: set[str] = set()
    for index, body in enumerate(bodies):
        if body.case_code in seen:
            yield bodies[start:index]
            start, seen = index, set()
        seen.add(body.case_code)
    if start < len(bodies):
        yield bodies[start:]


@dataclass
class _Person:
    """A citizen as intake sees it while deciding; written once the whole group is decided."""

    id: int | None
    name: str | None
    phone: str | None
    locale: str
    opted_out_at: datetime | None
    erased_at: datetime | None
    age: tuple[int, int]  # stored ones by id, then new ones in order: "oldest" for phones
    changed: bool = False
    # Had an active contact when read (a stored citizen; read only when courtesy is due).
    reachable: bool = False


@dataclass
class _Contact:
    id: int | None
    channel: str
    address: str
    person: _Person
    changed: bool = False


@dataclass
class _Accepted:
    """A case that will be written: the body, and what was stored before (None if new)."""

    index: int
    body: CaseIn
    unit_id: int
    fingerprint: str
    stored: case_repo.StoredCase | None
    old_status: CaseStatus | None
    person: _Person | None = None
    case_id: int = 0
    token: str | None = None  # the citizen's link, minted when the case is created
    touched: set[int] = field(default_factory=set)  # `id()` of persons whose data it changes
    values: dict[str, Any] = field(default_factory=dict)
    # (apology, courtesy, complaint) the case calls for: `_notices`, once its values are set.
    notices: tuple[bool, bool, bool] = (False, False, False)


async def _post_group(
    session: AsyncSession,
    bodies: Sequence[CaseIn],
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
    known: ReferenceIds,
) -> list[Outcome]:
    units = await _unit_ids(session, {body.unit_code for body in bodies}, known)
    # Two processes taking a new citizen's first cases at once: the second waits here for the
    # first to commit, and then finds the citizen it created (`citizens.phones_locked`).
    phones = {body.citizen.phone for body in bodies if body.citizen.phone}
    stored = await case_repo.cases_by_code(
        session, [body.case_code for body in bodies], phones=phones
    )
    outcomes: list[Outcome | None] = []
    accepted: list[_Accepted] = []
    for index, body in enumerate(bodies):
        if ahead := times_ahead(body, now):
            outcomes.append(InvalidInput(ahead))
            continue
        unit_id = units.get(body.unit_code)
        if unit_id is None:
            outcomes.append(
                InvalidInput(
                    {
                        "unit_code": f"unknown unit {body.unit_code!r}; "
                        "load it with `sipas-bot units load`"
                    }
                )
            )
            continue
        fingerprint = body.fingerprint()
        case = stored.get(body.case_code)
        if case is not None and body.hashes_to(case.body_hash, fingerprint):
            outcomes.append(
                Posted(case.id, case.case_code, body.unit_code, case.status, False, False)
            )
            continue
        old_status = CaseStatus(case.status) if case is not None else None
        if old_status is not None and body.status not in TRANSITIONS[old_status]:
            outcomes.append(
                Conflict(
                    f"case {body.case_code} is {old_status.value}; "
                    f"it cannot become {body.status.value}"
                )
            )
            continue
        outcomes.append(None)
        item = _Accepted(index, body, unit_id, fingerprint, case, old_status)
        item.values = _case_values(item, now)
        item.notices = _notices(item)
        accepted.append(item)
    if accepted:
        people = await _citizens_for(session, accepted, policy)
        cut = _first_to_notify_before_changes(accepted)
        if cut is not None:
            # A later case would change what this one's messages read (its citizen, their
            # chats, its procedure's name): take the cases up to it first, then the rest.
            return [
                *await _post_group(session, bodies[: cut + 1], now, policy, channels, known),
                *await _post_group(session, bodies[cut + 1 :], now, policy, channels, known),
            ]
        await _store(session, accepted, people, now, policy, channels, known)
    for item in accepted:
        outcomes[item.index] = Posted(
            item.case_id,
            item.body.case_code,
            item.body.unit_code,
            item.body.status.value,
            created=item.stored is None,
            changed=True,
            fresh_token=item.token if item.body.status not in SURVEYED else None,
        )
    return [outcome for outcome in outcomes if outcome is not None]


def _case_values(item: _Accepted, now: datetime) -> dict[str, Any]:
    """The columns of the case as this post leaves them (ids of related rows come later)."""
    body, case = item.body, item.stored
    values: dict[str, Any] = {
        "unit_id": item.unit_id,
        "status": body.status.value,
        "received_at": body.received_at,
        "due_at": body.due_at,
        "resolved_at": body.resolved_at or (now if body.status in SURVEYED else None),
        "delay_new_due_at": body.delay.new_due_at if body.delay else None,
        "delay_reason": body.delay.reason if body.delay else None,
        "body_hash": item.fingerprint,
    }
    if body.delay is None and case is not None:
        values["delay_new_due_at"] = case.delay_new_due_at
        values["delay_reason"] = case.delay_reason
    return values


def _notices(item: _Accepted) -> tuple[bool, bool, bool]:
    """Whether the case calls for an apology (a new date), a courtesy message (a resolution
    whose procedure has one) and a complaint (resolved after its promised date)."""
    body, case, values = item.body, item.stored, item.values
    promised_before = (case.delay_new_due_at or case.due_at) if case else None
    apology = body.status == CaseStatus.DELAYED and values["delay_new_due_at"] != promised_before
    newly_resolved = body.status == CaseStatus.RESOLVED and item.old_status not in SURVEYED
    polite = newly_resolved and bool(_courtesy_template(body.procedure.name, body.procedure.field))
    promised = values["delay_new_due_at"] or values["due_at"]
    late = (
        body.status == CaseStatus.RESOLVED
        and item.old_status != CaseStatus.RESOLVED
        and values["resolved_at"] is not None
        and values["resolved_at"] > promised
    )
    return apology, polite, late


def _first_to_notify_before_changes(accepted: list[_Accepted]) -> int | None:
    """The body index of the first case that sends a message while a later case of the group
    changes its citizen, their chats or its procedure's name; None when there is none.

    Messages are written after the whole group, so they must read what their case left."""
    last_touch: dict[int, int] = {}
    later_names: dict[str, set[tuple[str, str | None]]] = {}
    unsafe_names: list[bool] = [False] * len(accepted)
    for position in range(len(accepted) - 1, -1, -1):
        item = accepted[position]
        for person in item.touched:
            last_touch.setdefault(person, position)
        procedure = item.body.procedure
        seen = later_names.setdefault(procedure.code, set())
        unsafe_names[position] = bool(seen - {(procedure.name, procedure.field)})
        seen.add((procedure.name, procedure.field))
    for position, item in enumerate(accepted[:-1]):
        if not any(item.notices):
            continue
        touched_later = last_touch.get(id(item.person), -1) > position
        if touched_later or unsafe_names[position]:
            return item.index
    return None


async def _unit_ids(session: AsyncSession, codes: set[str], known: ReferenceIds) -> dict[str, int]:
    missing = codes - known.units.keys()
    if missing:
        known.units.update(await case_repo.unit_ids(session, missing))
    return known.units


async def _store(
    session: AsyncSession,
    accepted: list[_Accepted],
    people: _People,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
    known: ReferenceIds,
) -> None:
    procedures = await _procedure_ids(session, accepted, known)
    officers = await _officer_ids(session, accepted, known)
    new = [item for item in accepted if item.stored is None]
    case_ids, citizen_ids = await case_repo.new_ids(session, len(new), len(people.new))
    for person, citizen_id in zip(people.new, citizen_ids, strict=True):
        person.id = citizen_id
    for item, case_id in zip(new, case_ids, strict=True):
        item.case_id = case_id
    await _write_people(session, people)

    for item in accepted:
        body = item.body
        assert item.person is not None and item.person.id is not None
        item.values |= {
            "procedure_id": procedures[body.procedure.code],
            "officer_id": officers[body.officer.code] if body.officer else None,
            "citizen_id": item.person.id,
        }
    await case_repo.insert_cases(
        session,
        [{"id": item.case_id, "case_code": item.body.case_code, **item.values} for item in new],
    )
    updated = [item for item in accepted if item.stored is not None]
    for item in updated:
        assert item.stored is not None
        item.case_id = item.stored.id
    await case_repo.update_cases(session, [{"id": i.case_id, **i.values} for i in updated])
    for item in new:
        item.token = new_token()
    expires_at = now + policy.link_token_ttl
    await case_repo.insert_link_tokens(
        session,
        [{"token": i.token, "case_id": i.case_id, "expires_at": expires_at} for i in new],
    )
    await case_repo.insert_case_events(
        session,
        [
            {
                "case_id": i.case_id,
                "status": i.body.status.value,
                "detail": {"from": i.old_status.value if i.old_status else None},
            }
            for i in accepted
            if i.stored is None or i.old_status != i.body.status
        ],
    )
    await _schedule_surveys(session, accepted, now, policy)
    await _notify(session, accepted, people, now, policy, channels)


async def _procedure_ids(
    session: AsyncSession, accepted: list[_Accepted], known: ReferenceIds
) -> dict[str, int]:
    # The state a run of upserts in order leaves: the last name; the last field given.
    wanted: dict[str, tuple[str, str | None]] = {}
    for item in accepted:
        procedure = item.body.procedure
        earlier_field = wanted[procedure.code][1] if procedure.code in wanted else None
        wanted[procedure.code] = (procedure.name, procedure.field or earlier_field)
    written = known.procedure_names
    changed = {
        code: (name, field_)
        for code, (name, field_) in wanted.items()
        if code not in known.procedures
        or code not in written
        or written[code][0] != name
        or (field_ is not None and written[code][1] != field_)
    }
    if changed:
        known.procedures.update(
            await case_repo.ensure_procedures(session, changed, known.procedures)
        )
        for code, (name, field_) in changed.items():
            kept = written[code][1] if code in written else None
            written[code] = (name, field_ if field_ is not None else kept)
    return known.procedures


async def _officer_ids(
    session: AsyncSession, accepted: list[_Accepted], known: ReferenceIds
) -> dict[str, int]:
    # The last name given; a new officer belongs to the unit of the first case naming them.
    wanted: dict[str, tuple[str | None, int]] = {}
    for item in accepted:
        officer = item.body.officer
        if officer is None:
            continue
        earlier = wanted.get(officer.code)
        wanted[officer.code] = (
            officer.name or (earlier[0] if earlier else None),
            earlier[1] if earlier else item.unit_id,
        )
    written = known.officer_names
    changed = {
        code: (name, unit_id)
        for code, (name, unit_id) in wanted.items()
        if code not in known.officers
        or code not in written
        or (name is not None and written[code] != name)
    }
    if changed:
        known.officers.update(await case_repo.ensure_officers(session, changed, known.officers))
        for code, (name, _unit_id) in changed.items():
            written[code] = name if name is not None else written.get(code)
    return known.officers


@dataclass
class _People:
    """The citizens and contacts a group reads and writes, as its cases leave them."""

    stored: dict[int, _Person]
    new: list[_Person]
    contacts: dict[tuple[str, str], _Contact]

    @property
    def contacts_changed(self) -> bool:
        """Whether the group adds a contact or moves one to another citizen."""
        return any(c.id is None or c.changed for c in self.contacts.values())


async def _citizens_for(
    session: AsyncSession, accepted: list[_Accepted], policy: SurveyPolicy
) -> _People:
    """The person behind each case: already known by chat, by phone, or new.

    Decided case by case in order, on what the database holds plus what the cases before
    decided (a phone a previous case gave finds that citizen); `_write_people` stores it.
    Each case notes whose record or contacts it changed (`touched`).
    """
    addresses: set[tuple[str, str]] = set()
    phones: set[str] = set()
    ids: set[int] = set()
    for item in accepted:
        given = item.body.citizen
        if given.telegram_chat_id:
            addresses.add((Channel.TELEGRAM.value, given.telegram_chat_id))
        if given.zalo_user_id:
            addresses.add((Channel.ZALO.value, given.zalo_user_id))
        if given.phone:
            phones.add(given.phone)
        if item.stored is not None and item.stored.citizen_id is not None:
            ids.add(item.stored.citizen_id)
    stored_contacts = await citizen_repo.contacts_at(session, addresses)
    ids.update(contact.citizen_id for contact in stored_contacts)
    people: dict[int, _Person] = {
        row.id: _Person(
            row.id,
            row.name,
            row.phone,
            row.locale,
            row.opted_out_at,
            row.erased_at,
            (0, row.id),
            reachable=row.reachable,
        )
        for row in await citizen_repo.citizens_for_intake(
            session, ids, phones, reachable=any(item.notices[1] for item in accepted)
        )
    }
    contacts = {
        (row.channel, row.address): _Contact(
            row.id, row.channel, row.address, people[row.citizen_id]
        )
        for row in stored_contacts
    }
    by_phone: dict[str, set[int]] = {}
    everyone: dict[int, _Person] = {}  # by object id: the stored and the new

    def index(person: _Person) -> None:
        everyone[id(person)] = person
        if person.phone:
            by_phone.setdefault(person.phone, set()).add(id(person))

    for stored_person in people.values():
        index(stored_person)
    new_people: list[_Person] = []

    for item in accepted:
        given, case = item.body.citizen, item.stored
        person: _Person | None = None
        if case is not None and case.citizen_id is not None:
            person = people.get(case.citizen_id)
        for channel, address in (
            (Channel.TELEGRAM.value, given.telegram_chat_id),
            (Channel.ZALO.value, given.zalo_user_id),
        ):
            if person is None and address:
                contact = contacts.get((channel, address))
                person = contact.person if contact else None
        if person is None and given.phone:
            candidates = [
                everyone[key]
                for key in by_phone.get(given.phone, ())
                if everyone[key].erased_at is None and everyone[key].phone == given.phone
            ]
            person = min(candidates, key=lambda p: p.age) if candidates else None
        if person is None:
            # The desk's language only seeds a new record: a citizen's own /lang choice wins.
            locale = given.locale or policy.default_locale
            person = _Person(None, None, None, locale, None, None, (1, len(new_people)))
            new_people.append(person)
            index(person)
        if person.erased_at is None or case is None:
            # New data from the desk is a new processing purpose; an erased record stays
            # erased for the case it was erased on.
            name, phone = given.name or person.name, given.phone or person.phone
            if (name, phone, person.erased_at) != (person.name, person.phone, None):
                person.name, person.phone, person.erased_at = name, phone, None
                person.changed = True
                item.touched.add(id(person))
                index(person)
        # A chat id from the desk was given by the citizen at the desk: it links directly.
        for channel, address in (
            (Channel.TELEGRAM.value, given.telegram_chat_id),
            (Channel.ZALO.value, given.zalo_user_id),
        ):
            if address:
                contact = contacts.get((channel, address))
                if contact is None:
                    contacts[(channel, address)] = _Contact(None, channel, address, person)
                elif contact.person is not person:
                    item.touched.add(id(contact.person))
                    contact.person, contact.changed = person, True
                item.touched.add(id(person))
        item.person = person
    return _People(people, new_people, contacts)


async def _write_people(session: AsyncSession, found: _People) -> None:
    people, new_people, contacts = found.stored, found.new, found.contacts
    await citizen_repo.insert_citizens(
        session,
        [
            {"id": p.id, "name": p.name, "phone": p.phone, "locale": p.locale, "erased_at": None}
            for p in new_people
        ],
    )
    await citizen_repo.update_citizens(
        session,
        [
            {"id": p.id, "name": p.name, "phone": p.phone, "erased_at": p.erased_at}
            for p in people.values()
            if p.changed
        ],
    )
    await citizen_repo.insert_contacts(
        session,
        [
            {
                "citizen_id": c.person.id,
                "channel": c.channel,
                "address": c.address,
                "source": "intake",
                "status": ContactStatus.ACTIVE.value,
            }
            for c in contacts.values()
            if c.id is None
        ],
    )
    await citizen_repo.update_contacts(
        session,
        [{"id": c.id, "citizen_id": c.person.id} for c in contacts.values() if c.changed and c.id],
    )


async def _schedule_surveys(
    session: AsyncSession, accepted: list[_Accepted], now: datetime, policy: SurveyPolicy
) -> None:
    """`surveys.case_resolved` for every case the group resolved or rejected, in one insert:
    one survey per case, ever (a case that has one keeps it: the insert skips it), after the
    delay and outside quiet hours."""
    resolved = [
        item
        for item in accepted
        if item.body.status in SURVEYED and item.old_status not in SURVEYED
    ]
    if not resolved:
        return
    due_at = policy.sendable_at(now + policy.delay)
    rows = []
    for item in resolved:
        person = item.person
        assert person is not None
        opted_out = person.opted_out_at is not None
        rows.append(
            {
                "ref": surveys.new_ref(),
                "case_id": item.case_id,
                "questionnaire": policy.questionnaire,
                "locale": person.locale,
                "status": (SurveyStatus.OPTED_OUT if opted_out else SurveyStatus.SCHEDULED).value,
                "due_at": due_at,
                "expires_at": due_at + policy.expires_after,
                "position": 0,
            }
        )
    await case_repo.insert_surveys(session, rows)


@lru_cache(maxsize=4096)
def _courtesy_template(procedure_name: str, field: str | None) -> str | None:
    # The shipped rules never change while the process runs; procedures repeat a lot.
    return courtesy.template_for(procedure_name, field)


async def _notify(
    session: AsyncSession,
    accepted: list[_Accepted],
    people: _People,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
) -> None:
    """The messages a new status calls for: the apology for a new date, the courtesy message
    of a resolution, the complaint of a late one. Each handler runs for the cases that will
    act on it (decided here from what intake knows) and reads the case as stored now."""
    delayed: set[int] = set()
    courteous: set[int] = set()
    late: set[int] = set()
    for item in accepted:
        apology, polite, complaint = item.notices
        if apology:
            delayed.add(item.case_id)
        if polite:
            courteous.add(item.case_id)
        if complaint:
            late.add(item.case_id)
    if courteous:
        # Only a citizen with a chat to write to can be sent courtesy. What was read with the
        # citizens still holds unless the group linked a chat (then ask again).
        persons = {
            item.person.id: item.person for item in accepted if item.person and item.person.id
        }
        if people.contacts_changed:
            reachable = await citizen_repo.citizens_with_active_contact(session, set(persons))
        else:
            reachable = {person_id for person_id, p in persons.items() if p.reachable}
        courteous = {
            item.case_id
            for item in accepted
            if item.case_id in courteous and item.person and item.person.id in reachable
        }
    if not (delayed or courteous or late):
        return
    cases = await case_repo.cases_with_relations(session, delayed | courteous | late)
    for item in accepted:
        loaded = cases.get(item.case_id)
        if loaded is None:
            continue
        if item.case_id in delayed:
            stored = item.stored
            promised_before = (stored.delay_new_due_at or stored.due_at) if stored else None
            old_due_at = promised_before or loaded.due_at
            await apologies.case_delayed(session, loaded, old_due_at, now, policy, channels)
        if item.case_id in courteous:
            await courtesy.case_resolved(session, loaded, now, policy, channels)
        if item.case_id in late:
            # Resolved after its (latest) promised date: the unit head hears of it too.
            await escalations.case_resolved_late(session, loaded, now, policy, channels)
    await session.flush()
