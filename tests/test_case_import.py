"""`sipas-bot cases import FILE.csv`: the same validation as the API, per-row rejections with
the file's line numbers, a header checked before any row, and idempotent replays."""

from __future__ import annotations

import asyncio
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

import bot.cli.main
from handlers.case_import import COLUMNS, decode, read_rows, row_to_body
from handlers.errors import InvalidInput
from storage.models import Case, Citizen
from storage.models import OutboxMessage as Outbox
from tests.cli_support import PYTHON, REPO, run_main, subprocess_env
from tests.conftest import engine_for

HEADER = ",".join(COLUMNS)
UNITS_YAML = """\
units:
  - {code: HN, name: UBND thành phố Hà Nội}
  - {code: HN-LB, name: UBND quận Long Biên, parent: HN}
"""
BIRTH = "1.001193,Đăng ký khai sinh,Hộ tịch"
GOOD_ROWS = [
    # received, with a citizen and an officer
    f"000.00.12.H26-261120-0001,HN-LB,{BIRTH},CB-017,Nguyễn Thị Lan,Trần Văn Minh,0912 345 678,"
    ",,vi,received,2026-11-20T08:05:00+07:00,2026-11-25T17:00:00+07:00,,,",
    # resolved, local times without an offset (as spreadsheets write them)
    "000.00.12.H26-261120-0002,HN-LB,2.000815,Chứng thực bản sao từ bản chính,Chứng thực,,,"
    "Lê Thị Hồng Nhung,+84 987 654 321,,,,resolved,2026-11-20 09:00,2026-11-20 17:00,"
    "2026-11-20 10:30,,",
    # delayed, with the apology's new date and a reason containing the delimiter
    "000.00.12.H26-261120-0003,HN-LB,1.009974,Cấp giấy phép xây dựng nhà ở riêng lẻ,Xây dựng,"
    ",,Phạm Văn Đức,,,,,delayed,2026-11-02T08:00:00+07:00,2026-11-20T17:00:00+07:00,,"
    '2026-11-27T17:00:00+07:00,"Chờ ý kiến thẩm định, kiểm tra thực địa"',
]


def csv_text(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


async def import_file(path: Path, text: str, *, encoding: str = "utf-8") -> int:
    await asyncio.to_thread(path.write_text, text, encoding=encoding)
    return await run_main(["cases", "import", str(path)])


async def stored_cases(database_url: str) -> dict[str, tuple[str, str | None]]:
    engine = engine_for(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(Case.case_code, Case.status, Citizen.name).join(
                    Citizen, Case.citizen_id == Citizen.id, isouter=True
                )
            )
            return {code: (status, name) for code, status, name in rows}
    finally:
        await engine.dispose()


async def test_a_good_file_creates_every_case_with_vietnamese_text(
    cli_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert await import_file(tmp_path / "cases.csv", csv_text(*GOOD_ROWS)) == 0
    out = capsys.readouterr().out
    assert "3 created, 0 updated, 0 unchanged, 0 rejected" in out
    cases = await stored_cases(cli_database)
    assert cases == {
        "000.00.12.H26-261120-0001": ("received", "Trần Văn Minh"),
        "000.00.12.H26-261120-0002": ("resolved", "Lê Thị Hồng Nhung"),
        "000.00.12.H26-261120-0003": ("delayed", "Phạm Văn Đức"),
    }


async def test_excel_utf8_with_bom_and_semicolons_is_read(
    cli_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = GOOD_ROWS[0].replace(",", ";")
    text = csv_text(row, header=HEADER.replace(",", ";")).replace("\n", "\r\n")
    assert await import_file(tmp_path / "excel.csv", text, encoding="utf-8-sig") == 0
    assert "1 created" in capsys.readouterr().out
    assert (await stored_cases(cli_database))["000.00.12.H26-261120-0001"][1] == "Trần Văn Minh"


async def test_importing_the_same_file_twice_changes_nothing(
    cli_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cases.csv"
    assert await import_file(path, csv_text(*GOOD_ROWS)) == 0
    capsys.readouterr()
    assert await run_main(["cases", "import", str(path)]) == 0
    assert "0 created, 0 updated, 3 unchanged, 0 rejected" in capsys.readouterr().out


async def test_bad_rows_are_rejected_with_line_and_column_and_the_others_kept(
    cli_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_phone = GOOD_ROWS[0].replace("0001", "0101").replace("0912 345 678", "12345")
    unknown_unit = GOOD_ROWS[0].replace("0001", "0102").replace(",HN-LB,", ",HN-XX,")
    no_status = GOOD_ROWS[0].replace("0001", "0103").replace(",received,", ",,")
    resolved_without_date = GOOD_ROWS[1].replace("0002", "0104").replace(",2026-11-20 10:30,", ",,")
    rows = [GOOD_ROWS[0], bad_phone, unknown_unit, "", no_status, GOOD_ROWS[2]]
    rows += [resolved_without_date]
    capsys.readouterr()
    assert await import_file(tmp_path / "cases.csv", csv_text(*rows)) == 1
    out = capsys.readouterr().out
    assert "2 created, 0 updated, 0 unchanged, 4 rejected" in out
    assert "line 3: citizen_phone: not a Vietnamese phone number" in out
    assert "line 4: unit_code: unknown unit 'HN-XX'" in out
    assert "line 6: status: is required" in out  # line 5 is blank and skipped
    assert "line 8: resolved_at: is required when status is resolved" in out
    assert set(await stored_cases(cli_database)) == {
        "000.00.12.H26-261120-0001",
        "000.00.12.H26-261120-0003",
    }


async def test_a_file_of_many_chunks_is_reported_as_one_in_file_order(
    cli_database: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two rows a transaction: the report and the rejections still follow the file.
    monkeypatch.setattr(bot.cli.main, "IMPORT_CHUNK_ROWS", 2)
    bad_phone = GOOD_ROWS[0].replace("0001", "0101").replace("0912 345 678", "12345")
    unknown_unit = GOOD_ROWS[0].replace("0001", "0102").replace(",HN-LB,", ",HN-XX,")
    first_resolved = (
        GOOD_ROWS[0]
        .replace(",received,", ",resolved,")
        .replace("+07:00,,,", "+07:00,2026-11-21T10:00:00+07:00,,")
    )
    rows = [GOOD_ROWS[0], bad_phone, GOOD_ROWS[1], unknown_unit, GOOD_ROWS[2], first_resolved]
    capsys.readouterr()
    assert await import_file(tmp_path / "cases.csv", csv_text(*rows)) == 1
    out = capsys.readouterr().out
    assert "3 created, 1 updated, 0 unchanged, 2 rejected" in out
    assert out.index("line 3: citizen_phone") < out.index("line 5: unit_code: unknown unit")
    stored = await stored_cases(cli_database)
    assert stored["000.00.12.H26-261120-0001"][0] == "resolved"  # the later chunk's update
    assert len(stored) == 3


async def test_an_impossible_status_change_is_rejected_on_its_line(
    cli_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    resolved = GOOD_ROWS[1]
    reopened = resolved.replace(",resolved,", ",received,").replace(",2026-11-20 10:30,", ",,")
    capsys.readouterr()
    assert await import_file(tmp_path / "cases.csv", csv_text(resolved, reopened)) == 1
    assert "line 3: status: case 000.00.12.H26-261120-0002 is resolved" in capsys.readouterr().out


async def test_a_missing_or_unknown_column_stops_before_any_row(
    cli_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    header = HEADER.replace("due_at,", "").replace("citizen_locale", "citizen_language")
    rows = [",".join(row.split(",")[:-1]) for row in GOOD_ROWS[:1]]
    capsys.readouterr()
    assert await import_file(tmp_path / "cases.csv", csv_text(*rows, header=header)) == 1
    err = capsys.readouterr().err
    assert "missing columns: due_at" in err
    assert "unknown columns: 'citizen_language'" in err
    assert await stored_cases(cli_database) == {}


def test_line_numbers_follow_the_file_across_quoted_line_breaks() -> None:
    text = csv_text(
        'A,HN,1,"Tên\nhai dòng",,,,,,,,,received,x,y,,,',
        "B,HN,1,Tên,,,,,,,,,received,x,y,,,",
        "C,HN,1",
    )
    rows = list(read_rows(text))
    assert [row.line for row in rows] == [2, 4, 5]
    assert rows[0].values["procedure_name"] == "Tên\nhai dòng"
    assert rows[0].values["officer_code"] is None  # an empty cell is null
    assert "__shape__" in rows[2].values  # too few cells: rejected when imported


def test_empty_cells_leave_optional_parts_out_and_naive_times_get_the_zone() -> None:
    values = next(read_rows(csv_text(GOOD_ROWS[1]))).values
    body = row_to_body(values, ZoneInfo("Asia/Ho_Chi_Minh"))
    assert "officer" not in body
    assert "delay" not in body
    assert body["received_at"] == "2026-11-20T09:00:00+07:00"
    assert body["citizen"] == {"name": "Lê Thị Hồng Nhung", "phone": "+84 987 654 321"}


def test_text_that_is_not_utf8_is_refused_with_advice() -> None:
    with pytest.raises(InvalidInput) as error:
        decode("Văn".encode("cp1258"))  # Windows-1258, as old Vietnamese Excel
    assert "CSV UTF-8" in error.value.fields["file"]


def test_an_empty_file_is_refused() -> None:
    with pytest.raises(InvalidInput):
        list(read_rows(""))


async def test_the_documented_examples_load_and_import_cleanly(
    migrated_database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    examples = REPO / "docs" / "examples"
    monkeypatch.setenv("SIPAS_DATABASE_URL", migrated_database_url)
    assert await run_main(["units", "load", str(examples / "units.yaml")]) == 0
    assert await run_main(["cases", "import", str(examples / "cases.csv")]) == 0
    assert "4 created, 0 updated, 0 unchanged, 0 rejected" in capsys.readouterr().out


async def test_an_imported_delay_queues_the_apology_as_the_api_would(
    cli_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SIPAS_TELEGRAM_TOKEN", "123456:" + "A" * 35)
    monkeypatch.setenv("SIPAS_TELEGRAM_BOT_USERNAME", "sipas_test_bot")
    delayed = GOOD_ROWS[2].replace(",Phạm Văn Đức,,,", ",Phạm Văn Đức,,777001,")
    assert await import_file(tmp_path / "cases.csv", csv_text(delayed)) == 0
    assert "1 created" in capsys.readouterr().out
    engine = engine_for(cli_database)
    try:
        async with engine.connect() as connection:
            queued = (await connection.execute(select(Outbox.channel, Outbox.address))).all()
    finally:
        await engine.dispose()
    assert queued == [("telegram", "777001")]


async def test_rejections_say_what_is_allowed_in_the_projects_words(
    cli_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spaced_code = GOOD_ROWS[0].replace("000.00.12.H26-261120-0001", "000 00 12")
    future = GOOD_ROWS[1].replace("0002", "0105").replace("2026-11-20 10:30", "2031-11-20 10:30")
    capsys.readouterr()
    assert await import_file(tmp_path / "cases.csv", csv_text(spaced_code, future)) == 1
    out = capsys.readouterr().out
    assert (
        "line 2: case_code: must not contain spaces or '/', e.g. 000.00.12.H26-261122-0001" in out
    )
    assert "line 3: resolved_at: 2031-11-20T10:30:00+07:00 is in the future" in out
    assert "should" not in out.lower()


async def test_an_import_starts_without_the_server_the_channels_or_alembic(
    cli_database: str, tmp_path: Path
) -> None:
    """A one-off command on an up-to-date database loads only the database and the domain:
    the HTTP server, the chat platforms, the scheduler, the digest's files and Alembic were
    about two thirds of a second of its start (README, "Speed")."""
    path = tmp_path / "cases.csv"
    path.write_text(csv_text(*GOOD_ROWS), encoding="utf-8")
    heavy = ["aiohttp.web", "telegram", "apscheduler", "alembic", "matplotlib", "jinja2"]
    script = (
        "import sys\n"
        "from bot.__main__ import main\n"
        f"code = main(['cases', 'import', {str(path)!r}])\n"
        f"print(code, [name for name in {heavy!r} if name in sys.modules])\n"
    )
    child = await asyncio.create_subprocess_exec(
        PYTHON,
        "-c",
        script,
        env=subprocess_env(SIPAS_DATABASE_URL=cli_database),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await child.communicate()
    assert child.returncode == 0, err.decode()
    assert "3 created" in out.decode()
    assert out.decode().splitlines()[-1] == "0 []"
