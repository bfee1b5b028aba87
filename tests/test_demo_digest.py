"""`sipas-bot demo` writes the city's latest digest to a folder it prints, from eight weeks of
answers that differ believably between units and over time."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest
from openpyxl import load_workbook
from PIL import Image

from bot.digest.render import CHART_SIZE
from tests.cli_support import run_main


async def test_the_demo_writes_a_city_digest_with_units_that_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert await run_main(["demo", "--no-serve"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"Digest: +(\S+)  \((sipas-digest-HN-(\d{4}-W\d{2}))", out)
    assert match, out
    folder, stem, week = Path(match[1]), match[2], match[3]
    assert folder == tmp_path / "sipas-demo" / "digest"

    text = await asyncio.to_thread((folder / f"{stem}.txt").read_text, encoding="utf-8")
    assert text.startswith(f"📊 SIPAS tuần {week}")
    assert "Xếp hạng đơn vị:" in text
    assert "UBND xã Tả Thanh Oai: chưa đủ phản hồi" in text
    png = await asyncio.to_thread((folder / f"{stem}.png").read_bytes)
    assert Image.open(io.BytesIO(png)).size == CHART_SIZE
    xlsx = await asyncio.to_thread((folder / f"{stem}.xlsx").read_bytes)
    book = load_workbook(io.BytesIO(xlsx))
    assert len(book.sheetnames) == 1 + 11  # the summary and each unit

    def trajectory(code: str) -> list[float]:
        sheet = book[code]
        return [row[2] for row in sheet.iter_rows(min_row=3, values_only=True) if row[2]]

    improving, falling = trajectory("HN-LB"), trajectory("HN-SXD")
    assert len(improving) == len(falling) == 8
    assert improving[-1] - improving[0] > 15
    assert falling[0] - falling[-1] > 15
    assert len(trajectory("HN-TT-TTO")) <= 2  # only its few sample answers: mostly unscored
