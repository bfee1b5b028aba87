"""The dashboard's page data and files, below HTTP: the overview's rows are the JSON
report's, the unit page's comments and complaints, the exports read back, the parameters."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from openpyxl import load_workbook

from bot.http.dashboard import view
from bot.http.dashboard.export_files import EXPORT_COLUMNS, export_csv, export_rows, export_xlsx
from bot.http.dashboard.query import BadParameter, span_params, week_param
from handlers.dashboard_text import duration_text
from handlers.digest import Week
from handlers.units import load_units, parse_units_file
from tests.api_support import (
    Api,
    api_fixture,  # noqa: F401
    make_api_fixture,  # noqa: F401
)
from tests.dashboard_seed import MID_W46, MID_W47, W46, W47, seed
from tests.digest_support import TREE_YAML, add_response


async def report_json(api: Api, week: Week, unit: str) -> dict[str, Any]:
    response = await api.get(f"/api/v1/reports/weekly?week={week.label}&unit={unit}")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def test_the_overview_rows_are_the_json_reports(api: Api) -> None:
    await seed(api.services)
    data = await view.overview(api.services, "HN", W47, "unit", False)
    body = await report_json(api, W47, "HN")
    assert data.overall == body["overall"]
    assert [row.body for row in data.rows] == body["units"]
    codes = [row.body["unit_code"] for row in data.rows]
    assert codes == ["HN", "HN-BD", "HN-LB", "HN-LB-BD"]
    assert [row.depth for row in data.rows] == [0, 1, 1, 2]
    assert [fall.body["unit_code"] for fall in data.falls] == ["HN-LB"]


async def test_sorting_keeps_the_missing_last(api: Api) -> None:
    await seed(api.services)
    data = await view.overview(api.services, "HN", W47, "index", True)
    codes = [row.body["unit_code"] for row in data.rows]
    indices = [row.body["sipas_index"] for row in data.rows]
    shown = [value for value in indices if value is not None]
    assert shown == sorted(shown, reverse=True)
    assert indices[len(shown) :] == [None] * (len(indices) - len(shown))
    assert set(codes) == {"HN", "HN-LB", "HN-LB-BD", "HN-BD"}


async def test_the_unit_page_reads_comments_and_complaints(api: Api) -> None:
    await seed(api.services)
    page = await view.unit_page(api.services, "HN-LB", W47, viewer_scope="HN", with_officers=True)
    body = await report_json(api, W47, "HN-LB")
    assert page.body == body["overall"]
    assert page.comments_total == 3
    assert [c.at for c in page.comments] == sorted((c.at for c in page.comments), reverse=True)
    assert [complaint.ref for complaint in page.complaints] == ["E-0001"]
    steps = page.complaints[0].steps
    assert [step.kind for step in steps] == ["opened", "sent", "acknowledged", "resolved"]
    assert steps[0].took is None and steps[2].took is not None
    assert duration_text(steps[2].took, "vi") == "3 giờ 19 phút"
    assert page.officers is not None
    assert [officer["officer"] for officer in page.officers] == ["Cán bộ CB-1"]
    assert page.parent == ("HN", "UBND thành phố Hà Nội")
    no_parent = await view.unit_page(
        api.services, "HN-LB", W47, viewer_scope="HN-LB", with_officers=False
    )
    assert no_parent.parent is None and no_parent.officers is None


async def test_the_exports_read_back_as_the_json_reports(api: Api) -> None:
    await seed(api.services)
    rows = await export_rows(api.services, "HN-LB", [W46, W47])
    book = load_workbook(io.BytesIO(export_xlsx(rows, "t")))
    sheet = book.active
    assert sheet is not None and sheet.freeze_panes == "C3"
    from_xlsx = [list(row) for row in sheet.iter_rows(min_row=3, values_only=True)]
    from_csv = list(csv.reader(io.StringIO(export_csv(rows).decode("utf-8-sig"))))
    assert from_csv[0] == [key for key, _, _ in EXPORT_COLUMNS]
    expected = []
    for week in (W46, W47):
        for unit in (await report_json(api, week, "HN-LB"))["units"]:
            expected.append({"week": week.label, **unit})
    assert len(from_xlsx) == len(expected) == len(from_csv) - 1 == 4
    for xlsx_row, csv_row, json_row in zip(from_xlsx, from_csv[1:], expected, strict=True):
        for (key, _, _), from_book, from_text in zip(
            EXPORT_COLUMNS, xlsx_row, csv_row, strict=True
        ):
            value: Any = json_row
            for part in key.split("."):
                value = None if value is None else value.get(part)
            assert from_book == value, key
            shown = (
                ""
                if value is None
                else ("true" if value is True else "false" if value is False else str(value))
            )
            assert from_text == shown, key


def test_bad_parameters_are_named() -> None:
    last = Week(2026, 47)
    assert week_param({}, "week", last) == last
    with pytest.raises(BadParameter) as bad:
        week_param({"week": "2026-47"}, "week", last)
    assert bad.value.status == 400 and bad.value.values["name"] == "week"
    with pytest.raises(BadParameter) as order:
        span_params({"from": "2026-W50", "to": "2026-W40"}, last)
    assert order.value.status == 422
    with pytest.raises(BadParameter) as span:
        span_params({"from": "2020-W01", "to": "2026-W40"}, last)
    assert span.value.status == 422 and span.value.values["limit"] == 60
    assert span_params({}, last) == (Week(2026, 35), last)


async def test_with_no_fall_beyond_noise_the_largest_drops_are_named_as_within_it(
    api: Api,
) -> None:
    async with api.services.sessions.begin() as session:
        await load_units(session, parse_units_file(TREE_YAML))
        for index in range(10):
            await add_response(session, "HN-BD", MID_W46, (5, 5, 5, 5, 5))
            await add_response(session, "HN-BD", MID_W47, (5, 5, 5, 3 if index else 5, 5))
            await add_response(session, "HN-LB", MID_W46, (4, 4, 4, 4, 4))
            await add_response(session, "HN-LB", MID_W47, (4, 4, 4, 4, 4))
    data = await view.overview(api.services, "HN", W47, "unit", False)
    assert data.falls == []
    [dip] = data.dips
    assert dip.body["unit_code"] == "HN-BD" and dip.body["trend"] == "same"
    assert dip.weakest_factor == ("result", 10.0)


async def test_a_chart_is_drawn_once_for_the_same_figures(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Charts are kept by what they show: the same figures are not drawn again, a changed
    figure is (and the comments' count on the unit page is the report's own)."""
    await seed(api.services)
    drawn: list[str] = []
    real = view.chart_png

    def counting(*args: Any, **kwargs: Any) -> bytes:
        drawn.append("x")
        return real(*args, **kwargs)

    monkeypatch.setattr(view, "chart_png", counting)
    monkeypatch.setattr(view, "_CHARTS", {})  # not what another test (or backend) drew
    first = await view.unit_chart(api.services, "HN-LB", W47, "vi")
    again = await view.unit_chart(api.services, "HN-LB", W47, "vi")
    assert again == first and len(drawn) == 1
    assert await view.unit_chart(api.services, "HN-LB", W47, "en") != first
    assert len(drawn) == 2
    async with api.services.sessions.begin() as session:
        await add_response(session, "HN-LB", MID_W47, (1, 1, 1, 1, 1), comment="Chờ quá lâu")
    await view.unit_chart(api.services, "HN-LB", W47, "vi")
    assert len(drawn) == 3
    page = await view.unit_page(api.services, "HN-LB", W47, viewer_scope="HN", with_officers=False)
    assert page.comments_total == 4 == (await report_json(api, W47, "HN-LB"))["overall"]["comments"]
