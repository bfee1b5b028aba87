"""Units, their heads and digest recipients, from the units file (docs/contract.md section 5).

Loading is an upsert keyed on unit codes: loading the same file twice changes nothing, and a
changed file updates names, parents, heads and recipients in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.errors import InvalidInput
from storage.models import DigestRecipient, Unit, UnitHead

Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]


def _chat_id(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        raise ValueError("must be a number")
    return value


class ContactIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    telegram_chat_id: str | None = None
    zalo_user_id: str | None = None

    @field_validator("telegram_chat_id", mode="before")
    @classmethod
    def _telegram(cls, value: object) -> object:
        return None if value is None else _chat_id(value)

    @field_validator("zalo_user_id", mode="before")
    @classmethod
    def _zalo(cls, value: object) -> object:
        return None if value is None else str(value)


class HeadIn(ContactIn):
    officer_code: Code | None = None  # lets the escalation skip a head who is the rated officer


class UnitIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: Code
    name: Name
    parent: Code | None = None
    head: HeadIn | None = None


class RecipientIn(ContactIn):
    scope: Code


class UnitsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    units: list[UnitIn] = Field(default_factory=list)
    digest_recipients: list[RecipientIn] = Field(default_factory=list)


@dataclass(frozen=True)
class LoadReport:
    units_created: int
    units_updated: int
    recipients: int

    def __str__(self) -> str:
        return (
            f"{self.units_created} units created, {self.units_updated} updated, "
            f"{self.recipients} digest recipients"
        )


def parse_units_file(text: str) -> UnitsFile:
    """Parses and checks the YAML; errors name the entry, e.g. `units[2].parent`."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput({"file": f"not valid YAML: {exc}"}) from None
    if not isinstance(data, dict):
        raise InvalidInput({"file": "must be a mapping with `units` and `digest_recipients`"})
    try:
        parsed = UnitsFile.model_validate(data)
    except ValidationError as exc:
        fields = {}
        for error in exc.errors():
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
            fields[path.lstrip(".")] = str(error["msg"]).removeprefix("Value error, ")
        raise InvalidInput(fields) from None
    _check_structure(parsed)
    return parsed


def _check_structure(parsed: UnitsFile) -> None:
    problems: dict[str, str] = {}
    seen: dict[str, int] = {}
    for index, unit in enumerate(parsed.units):
        if unit.code in seen:
            problems[f"units[{index}].code"] = f"{unit.code!r} is listed twice"
        seen[unit.code] = index
        if unit.head and not (unit.head.telegram_chat_id or unit.head.zalo_user_id):
            problems[f"units[{index}].head"] = (
                "give telegram_chat_id or zalo_user_id, or link the head with "
                "`sipas-bot heads invite` and leave head out"
            )
    for index, recipient in enumerate(parsed.digest_recipients):
        if not (recipient.telegram_chat_id or recipient.zalo_user_id):
            problems[f"digest_recipients[{index}]"] = "give telegram_chat_id or zalo_user_id"
    if problems:
        raise InvalidInput(problems)


async def load_units(session: AsyncSession, parsed: UnitsFile) -> LoadReport:
    """Upserts every unit, head and recipient; parents may be in the file or already stored."""
    existing = {u.code: u for u in (await session.execute(select(Unit))).scalars()}
    created: set[str] = set()
    updated: set[str] = set()
    for unit_in in parsed.units:
        unit = existing.get(unit_in.code)
        if unit is None:
            unit = Unit(code=unit_in.code, name=unit_in.name)
            session.add(unit)
            existing[unit.code] = unit
            created.add(unit.code)
        elif unit.name != unit_in.name:
            unit.name = unit_in.name
            updated.add(unit.code)
    await session.flush()

    problems: dict[str, str] = {}
    for index, unit_in in enumerate(parsed.units):
        unit = existing[unit_in.code]
        parent_id = None
        if unit_in.parent is not None:
            parent = existing.get(unit_in.parent)
            if parent is None:
                problems[f"units[{index}].parent"] = f"unknown unit {unit_in.parent!r}"
                continue
            parent_id = parent.id
        if unit.parent_id != parent_id:
            unit.parent_id = parent_id
            if unit.code not in created:
                updated.add(unit.code)
    _check_cycles(existing, {u.code: i for i, u in enumerate(parsed.units)}, problems)
    for index, recipient in enumerate(parsed.digest_recipients):
        if recipient.scope not in existing:
            problems[f"digest_recipients[{index}].scope"] = f"unknown unit {recipient.scope!r}"
    if problems:
        raise InvalidInput(problems)
    await session.flush()

    for unit_in in parsed.units:
        if unit_in.head is not None:
            await _upsert_head(session, existing[unit_in.code], unit_in.head)
    for recipient in parsed.digest_recipients:
        await _upsert_recipient(session, recipient, existing[recipient.scope])
    await session.flush()
    return LoadReport(len(created), len(updated), len(parsed.digest_recipients))


def _check_cycles(
    units: dict[str, Unit], index_of: dict[str, int], problems: dict[str, str]
) -> None:
    """Names `units[i].parent` for every unit of the file whose parents lead back to it.

    The stored hierarchy had no cycle, so a new one runs through a unit of this file.
    """
    by_id = {u.id: u for u in units.values()}
    for code, index in index_of.items():
        start = units[code]
        seen = {start.id}
        current = start
        while current.parent_id is not None:
            if current.parent_id == start.id:
                problems[f"units[{index}].parent"] = "the parents form a cycle"
                break
            if current.parent_id in seen:
                break  # a cycle that does not pass through `start`; named from its own units
            seen.add(current.parent_id)
            current = by_id[current.parent_id]


async def _upsert_head(session: AsyncSession, unit: Unit, head_in: HeadIn) -> None:
    head = (
        await session.execute(select(UnitHead).where(UnitHead.unit_id == unit.id))
    ).scalar_one_or_none()
    if head is None:
        head = UnitHead(unit_id=unit.id, name=head_in.name)
        session.add(head)
    head.name = head_in.name
    head.officer_code = head_in.officer_code
    head.telegram_chat_id = head_in.telegram_chat_id
    head.zalo_user_id = head_in.zalo_user_id


async def _upsert_recipient(session: AsyncSession, recipient: RecipientIn, scope: Unit) -> None:
    query = select(DigestRecipient).where(
        DigestRecipient.name == recipient.name, DigestRecipient.scope_unit_id == scope.id
    )
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        row = DigestRecipient(name=recipient.name, scope_unit_id=scope.id)
        session.add(row)
    row.telegram_chat_id = recipient.telegram_chat_id
    row.zalo_user_id = recipient.zalo_user_id
