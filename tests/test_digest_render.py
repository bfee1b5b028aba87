"""The digest's formats: chat text (vi, en), the PNG chart, the XLSX workbook and the CSV,
each read back and checked against the report's numbers."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from openpyxl import load_workbook
from PIL import Image

from bot.digest.render import CHART_SIZE, build_files, summary_csv
from bot.digest.report import weekly_report
from handlers.digest_text import MAX_CHARS, digest_text
from tests.api_support import (
    Api,
    api_fixture,  # noqa: F401
    make_api_fixture,  # noqa: F401
)
from tests.cli_support import run_main
from tests.digest_support import add_response, load_tree

MID_W47 = datetime(2026, 11, 18, 3, 0, tzinfo=UTC)


async def seed(api: Api) -> None:
    """HN-LB falls from all 5s to mostly 2s; HN-BD has too few responses."""
    async with api.services.sessions.begin() as session:
        await load_tree(session, _EXTRA_WARD)
        for weeks_back in range(1, 8):
            for _ in range(6):
                await add_response(
                    session, "HN-LB", MID_W47 - timedelta(days=7 * weeks_back), (5, 5, 5, 4, 5)
                )
        for _ in range(8):
            await add_response(session, "HN-LB", MID_W47, (2, 2, 3, 2, 2), comment="chờ lâu quá")
        for _ in range(6):
            await add_response(session, "HN-LB-BD", MID_W47, (5, 4, 4, 4, 4))
        await add_response(session, "HN-BD", MID_W47, (1, 1, 1, 1, 1), informal_payment=True)


_EXTRA_WARD = """
units:
  - code: HN-LB-BD
    name: UBND phường Bồ Đề
    parent: HN-LB
"""


async def test_the_chat_text_puts_the_numbers_that_matter_first(api: Api) -> None:
    await seed(api)
    report = await weekly_report(api.services, "2026-W47", None)
    vi = digest_text(report, "vi")
    en = digest_text(report, "en")
    assert vi.splitlines()[0] == "📊 SIPAS tuần 2026-W47 (16/11–22/11/2026)"
    # Pooled over 15 responses, 6 of them satisfied with every factor: 40.0, down from 100.
    assert "Chỉ số hài lòng: 40,0% ▼ (tuần trước 100,0%" in vi
    assert "UBND quận Long Biên: 0,0% ▼ (8)" in vi  # fell from 100 beyond noise
    assert "UBND phường Bồ Đề: 100,0% (6)" in vi  # no previous week: no arrow
    assert "UBND quận Ba Đình: chưa đủ phản hồi (1)" in vi
    assert "Phản ánh nhũng nhiễu, đòi tiền ngoài quy định: 1" in vi
    assert "chờ đợi, trễ hẹn (8)" in vi
    assert "Satisfaction index: 40.0% ▼" in en and "Units, ranked" in en
    assert len(vi) <= MAX_CHARS and "chờ lâu quá" not in vi


async def test_a_long_ranking_is_cut_to_fit_a_chat_message(api: Api) -> None:
    many = "units:\n" + "".join(
        f"  - {{code: W{n:03d}, name: UBND phường số {n} có tên khá dài, parent: HN-LB}}\n"
        for n in range(120)
    )
    async with api.services.sessions.begin() as session:
        await load_tree(session, many)
        for n in range(120):
            await add_response(session, f"W{n:03d}", MID_W47, (5, 4, 4, 4, 4))
    report = await weekly_report(api.services, "2026-W47", None)
    text = digest_text(report, "vi")
    assert len(text) <= MAX_CHARS
    assert text.splitlines()[-1].startswith("… và ")
    assert "(xem bảng tính)" in text


async def test_the_chart_is_a_phone_sized_png(api: Api) -> None:
    await seed(api)
    report = await weekly_report(api.services, "2026-W47", "HN-LB")
    files = await build_files(api.services, report, "vi")
    image = Image.open(io.BytesIO(files.png))
    image.load()
    assert image.format == "PNG"
    assert image.size == CHART_SIZE
    low, high = image.convert("L").getextrema()
    assert (low, high) == (0, 255) or high - low > 200  # drawn, not blank


async def test_the_workbook_reads_back_with_the_reports_numbers(api: Api) -> None:
    await seed(api)
    report = await weekly_report(api.services, "2026-W47", None)
    files = await build_files(api.services, report, "en")
    book = load_workbook(io.BytesIO(files.xlsx))
    assert book.sheetnames == ["Tong hop", "HN", "HN-BD", "HN-LB", "HN-LB-BD"]
    summary = book["Tong hop"]
    assert summary.freeze_panes == "C3"
    headings = [cell.value for cell in summary[2]]
    total, *units = summary.iter_rows(min_row=3, values_only=True)
    rows = {row[0]: row for row in units}
    index = headings.index("SIPAS (%)")
    assert total[1] == "Tổng / Total: UBND thành phố Hà Nội"
    assert total[index] == 40.0
    assert rows["HN"][index] is None  # the city's own cases: none
    assert rows["HN-LB-BD"][index] == 100.0
    assert rows["HN-BD"][index] is None
    assert summary.cell(row=3, column=index + 1).number_format == "0.0"
    lb = book["HN-LB"]
    assert lb.freeze_panes == "B3"
    weeks = list(lb.iter_rows(min_row=3, values_only=True))
    assert [w[0] for w in weeks] == [f"2026-W{n}" for n in range(40, 48)]
    assert weeks[-2][2] == 100.0 and weeks[-1][2] == 0.0
    assert weeks[0][1] == 6


async def test_the_csv_is_the_summary(api: Api) -> None:
    await seed(api)
    report = await weekly_report(api.services, "2026-W47", "HN-LB")
    data = summary_csv(report)
    assert data.startswith("\ufeff".encode())
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert [r["unit_code"] for r in rows] == ["HN-LB", "HN-LB", "HN-LB-BD"]
    assert rows[0]["sipas_index"] == "42.9"  # the scope: 14 responses
    assert rows[1]["sipas_index"] == "0.0"  # the unit's own cases


@pytest.mark.parametrize(("fmt", "magic"), [("png", b"\x89PNG"), ("xlsx", b"PK"), ("csv", b"\xef")])
async def test_the_cli_writes_each_format_to_the_folder(
    api: Api,
    fmt: str,
    magic: bytes,
    tmp_path: Path,
    migrated_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await seed(api)
    monkeypatch.setenv("SIPAS_DATABASE_URL", migrated_database_url)
    argv = ["digest", "--week", "2026-W47", "--unit", "HN-LB", "--format", fmt, "--out"]
    assert await run_main([*argv, str(tmp_path)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == tmp_path / f"sipas-digest-HN-LB-2026-W47.{fmt}"
    assert (await asyncio.to_thread(path.read_bytes)).startswith(magic)
