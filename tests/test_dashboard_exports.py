"""`GET /dashboard/export.xlsx` and `export.csv`: one row per unit in scope and week, the same
values as the JSON report of each week, read back with openpyxl and csv; each export audited."""

from __future__ import annotations

import csv
import io
from typing import Any

from openpyxl import load_workbook
from sqlalchemy import select

from bot.http.dashboard.export_files import EXPORT_COLUMNS
from storage.models import AuditEntry
from tests.api_support import (
    Api,
    api_fixture,  # noqa: F401
    make_api_fixture,  # noqa: F401
)
from tests.dashboard_seed import seed
from tests.dashboard_support import sign_in

WEEKS = ("2026-W46", "2026-W47")


async def expected_rows(api: Api, unit: str) -> list[dict[str, Any]]:
    rows = []
    for week in WEEKS:
        response = await api.get(f"/api/v1/reports/weekly?week={week}&unit={unit}")
        for body in (await response.json())["units"]:
            rows.append({"week": week, **body})
    return rows


def pick(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        value = None if value is None else value.get(part)
    return value


def as_csv(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def audit_rows(api: Api) -> list[AuditEntry]:
    async with api.services.sessions() as session:
        query = select(AuditEntry).where(AuditEntry.action == "dashboard.export")
        return list((await session.scalars(query.order_by(AuditEntry.id))).all())


async def test_the_workbook_reads_back_as_the_json_reports(api: Api) -> None:
    await seed(api.services)
    await sign_in(api.client, api.services, "HN", actor="cli")
    response = await api.client.get("/dashboard/export.xlsx?from=2026-W46&to=2026-W47")
    assert response.status == 200
    assert response.headers["Content-Disposition"] == (
        'attachment; filename="sipas-HN-2026-W46-2026-W47.xlsx"'
    )
    sheet = load_workbook(io.BytesIO(await response.read())).active
    assert sheet is not None and sheet.freeze_panes == "C3"
    rows = [list(row) for row in sheet.iter_rows(min_row=3, values_only=True)]
    expected = await expected_rows(api, "HN")
    assert len(rows) == len(expected) == 8  # four units, two weeks
    for row, body in zip(rows, expected, strict=True):
        assert row == [pick(body, key) for key, _, _ in EXPORT_COLUMNS]
    formats = {cell.number_format for cell in sheet[3]}
    assert "0.0" in formats and "0.0%" in formats
    [entry] = await audit_rows(api)
    assert (entry.actor, entry.entity, entry.entity_id) == ("cli", "unit", "HN")
    assert entry.detail == {"format": "xlsx", "from": "2026-W46", "to": "2026-W47"}


async def test_the_csv_reads_back_as_the_json_reports(api: Api) -> None:
    await seed(api.services)
    await sign_in(api.client, api.services, "HN", actor="head:HN")
    response = await api.client.get("/dashboard/export.csv?from=2026-W46&to=2026-W47&unit=HN-LB")
    assert response.status == 200
    assert response.headers["Content-Disposition"].endswith('sipas-HN-LB-2026-W46-2026-W47.csv"')
    raw = await response.read()
    assert raw.startswith("\ufeff".encode())
    table = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert table[0] == [key for key, _, _ in EXPORT_COLUMNS]
    expected = await expected_rows(api, "HN-LB")
    assert len(table) - 1 == len(expected) == 4  # HN-LB and its ward, two weeks
    for row, body in zip(table[1:], expected, strict=True):
        assert row == [as_csv(pick(body, key)) for key, _, _ in EXPORT_COLUMNS]
    [entry] = await audit_rows(api)
    assert (entry.actor, entry.entity_id) == ("head:HN", "HN-LB")
    assert entry.detail == {"format": "csv", "from": "2026-W46", "to": "2026-W47"}


async def test_no_span_means_the_last_thirteen_weeks_and_refusals_are_not_audited(
    api: Api,
) -> None:
    await seed(api.services)
    await sign_in(api.client, api.services, "HN-LB")
    response = await api.client.get("/dashboard/export.csv")
    assert response.status == 200
    weeks = {row[3] for row in list(csv.reader(io.StringIO(await response.text())))[1:]}
    assert len(weeks) == 13 and max(weeks) == "2026-W47" and min(weeks) == "2026-W35"
    assert (await api.client.get("/dashboard/export.csv?unit=HN-BD")).status == 404
    assert (await api.client.get("/dashboard/export.csv?from=2026-W48&to=2026-W47")).status == 422
    assert len(await audit_rows(api)) == 1
