"""The units file (docs/contract.md section 5): parsed, checked and upserted on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.app import Services, build_services, load_units_file
from bot.config import load_settings
from handlers.errors import InvalidInput
from handlers.units import LoadReport, load_units, parse_units_file
from storage.db import SessionFactory, create_session_factory
from storage.models import DigestRecipient, Unit, UnitHead
from tests.contract_data import UNITS_YAML

CONTRACT_EXAMPLE = UNITS_YAML


async def load(sessions: SessionFactory, text: str) -> LoadReport:
    async with sessions.begin() as session:
        return await load_units(session, parse_units_file(text))


async def count(sessions: SessionFactory, model: type[object]) -> int:
    async with sessions() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def units_by_code(sessions: SessionFactory) -> dict[str, Unit]:
    async with sessions() as session:
        return {u.code: u for u in (await session.execute(select(Unit))).scalars()}


async def parent_codes(sessions: SessionFactory) -> dict[str, str | None]:
    units = await units_by_code(sessions)
    by_id = {u.id: u.code for u in units.values()}
    return {code: by_id.get(u.parent_id) if u.parent_id else None for code, u in units.items()}


async def test_the_contracts_example_loads(sessions: SessionFactory) -> None:
    report = await load(sessions, CONTRACT_EXAMPLE)

    assert report == LoadReport(units_created=2, units_updated=0, recipients=1)
    assert await parent_codes(sessions) == {"HN": None, "HN-LB": "HN"}
    units = await units_by_code(sessions)
    assert units["HN-LB"].name == "UBND quận Long Biên"
    async with sessions() as session:
        heads = {
            h.unit_id: (h.name, h.telegram_chat_id)
            for h in (await session.execute(select(UnitHead))).scalars()
        }
        recipient = (await session.execute(select(DigestRecipient))).scalar_one()
    assert heads == {
        units["HN"].id: ("Nguyễn Văn An", "900"),
        units["HN-LB"].id: ("Lê Thị Bình", "901"),
    }
    assert (recipient.name, recipient.telegram_chat_id, recipient.scope_unit_id) == (
        "Sở Nội vụ Hà Nội",
        "950",
        units["HN"].id,
    )


async def test_loading_twice_changes_nothing(sessions: SessionFactory) -> None:
    await load(sessions, CONTRACT_EXAMPLE)
    before = await units_by_code(sessions)

    report = await load(sessions, CONTRACT_EXAMPLE)

    assert report == LoadReport(units_created=0, units_updated=0, recipients=1)
    after = await units_by_code(sessions)
    assert {c: (u.id, u.name, u.parent_id) for c, u in after.items()} == {
        c: (u.id, u.name, u.parent_id) for c, u in before.items()
    }
    assert await count(sessions, UnitHead) == 2
    assert await count(sessions, DigestRecipient) == 1


async def test_a_changed_file_renames_reparents_and_updates_in_place(
    sessions: SessionFactory,
) -> None:
    await load(sessions, CONTRACT_EXAMPLE)
    ids = {c: u.id for c, u in (await units_by_code(sessions)).items()}
    changed = """
units:
  - code: HN
    name: UBND TP Hà Nội
    head: {name: Nguyễn Văn An, telegram_chat_id: 900, zalo_user_id: "zl-900"}
  - code: HN-SOTP
    name: Sở Tư pháp Hà Nội
    parent: HN
  - code: HN-LB
    name: UBND quận Long Biên
    parent: HN-SOTP
    head: {name: Đỗ Văn Cường, telegram_chat_id: 902}
digest_recipients:
  - {name: Sở Nội vụ Hà Nội, telegram_chat_id: 951, scope: HN-SOTP}
"""
    report = await load(sessions, changed)

    assert report == LoadReport(units_created=1, units_updated=2, recipients=1)
    units = await units_by_code(sessions)
    assert {c: u.id for c, u in units.items() if c in ids} == ids  # updated, not replaced
    assert units["HN"].name == "UBND TP Hà Nội"
    assert await parent_codes(sessions) == {"HN": None, "HN-SOTP": "HN", "HN-LB": "HN-SOTP"}
    async with sessions() as session:
        head = (
            await session.execute(select(UnitHead).where(UnitHead.unit_id == ids["HN-LB"]))
        ).scalar_one()
        top = (
            await session.execute(select(UnitHead).where(UnitHead.unit_id == ids["HN"]))
        ).scalar_one()
    assert (head.name, head.telegram_chat_id) == ("Đỗ Văn Cường", "902")
    assert top.zalo_user_id == "zl-900"
    assert await count(sessions, UnitHead) == 2
    # A recipient is keyed by name and scope: a new scope is a new row.
    assert await count(sessions, DigestRecipient) == 2


async def test_recipients_are_upserted(sessions: SessionFactory) -> None:
    await load(sessions, CONTRACT_EXAMPLE)
    await load(sessions, CONTRACT_EXAMPLE.replace("telegram_chat_id: 950", "zalo_user_id: z950"))
    async with sessions() as session:
        recipient = (await session.execute(select(DigestRecipient))).scalar_one()
    assert (recipient.telegram_chat_id, recipient.zalo_user_id) == (None, "z950")


async def test_a_parent_may_be_already_stored(sessions: SessionFactory) -> None:
    await load(sessions, CONTRACT_EXAMPLE)
    report = await load(sessions, "units:\n  - {code: HN-BD, name: UBND quận Ba Đình, parent: HN}")
    assert report.units_created == 1
    assert (await parent_codes(sessions))["HN-BD"] == "HN"


async def test_an_unknown_parent_is_named_and_nothing_is_stored(sessions: SessionFactory) -> None:
    text = """
units:
  - {code: HN, name: Hà Nội}
  - {code: HN-LB, name: Long Biên, parent: HN}
  - {code: HN-X, name: X, parent: NOWHERE}
digest_recipients:
  - {name: Sở, telegram_chat_id: 1, scope: ELSEWHERE}
"""
    with pytest.raises(InvalidInput) as raised:
        await load(sessions, text)
    assert set(raised.value.fields) == {"units[2].parent", "digest_recipients[0].scope"}
    assert "NOWHERE" in raised.value.fields["units[2].parent"]
    assert await count(sessions, Unit) == 0


CYCLES = [
    (
        "units:\n  - {code: A, name: A, parent: B}\n  - {code: B, name: B, parent: A}",
        {"units[0].parent", "units[1].parent"},
    ),
    ("units:\n  - {code: A, name: A, parent: A}", {"units[0].parent"}),
    (
        "units:\n  - {code: A, name: A, parent: C}\n  - {code: B, name: B, parent: A}\n"
        "  - {code: C, name: C, parent: B}\n  - {code: D, name: D, parent: A}",
        {"units[0].parent", "units[1].parent", "units[2].parent"},
    ),
]


async def test_cycles_are_refused(sessions: SessionFactory) -> None:
    for text, named in CYCLES:
        with pytest.raises(InvalidInput) as raised:
            await load(sessions, text)
        assert set(raised.value.fields) == named, text
        assert await count(sessions, Unit) == 0


async def test_a_cycle_through_stored_units_is_refused(sessions: SessionFactory) -> None:
    await load(sessions, CONTRACT_EXAMPLE)
    with pytest.raises(InvalidInput) as raised:
        await load(sessions, "units:\n  - {code: HN, name: Hà Nội, parent: HN-LB}")
    assert set(raised.value.fields) == {"units[0].parent"}
    assert (await parent_codes(sessions))["HN"] is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("units: [", {"file"}),
        ("units:\n  - code: A\n   name: x", {"file"}),
        ("- just\n- a list", {"file"}),
        ("just text", {"file"}),
        ("", {"file"}),
        ("units:\n  - {code: A}", {"units[0].name"}),
        ("units:\n  - {code: A, name: A, colour: red}", {"units[0].colour"}),
        ("units:\n  - {code: A, name: A}\n  - {code: A, name: B}", {"units[1].code"}),
        ("units:\n  - {code: A, name: A, head: {name: H}}", {"units[0].head"}),
        (
            "units:\n  - {code: A, name: A, head: {name: H, telegram_chat_id: x}}",
            {"units[0].head.telegram_chat_id"},
        ),
        ("digest_recipients:\n  - {name: R, scope: A}", {"digest_recipients[0]"}),
        ("units: 5", {"units"}),
        ("sections: []", {"sections"}),
    ],
)
def test_a_bad_file_is_refused_naming_the_entry(text: str, named: set[str]) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_units_file(text)
    assert set(raised.value.fields) == named


@pytest.fixture(name="services")
async def services_fixture(database_url: str, engine: AsyncEngine) -> Services:
    """The composition root's services on the migrated test database."""
    services = build_services(load_settings(database_url=database_url.split("?")[0]))
    await services.engine.dispose()
    services.engine = engine
    services.sessions = create_session_factory(engine)
    return services


async def test_load_units_file_reads_the_file(services: Services, tmp_path: Path) -> None:
    path = tmp_path / "units.yaml"
    path.write_text(CONTRACT_EXAMPLE, encoding="utf-8")
    report = await load_units_file(services, path)
    assert str(report) == "2 units created, 0 updated, 1 digest recipients"
    assert await count(services.sessions, Unit) == 2
    with pytest.raises(InvalidInput) as raised:
        await load_units_file(services, tmp_path / "missing.yaml")
    assert set(raised.value.fields) == {"file"}
    assert "missing.yaml" in raised.value.fields["file"]
