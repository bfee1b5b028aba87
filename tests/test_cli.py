"""The command line of docs/contract.md section 3: help, exit codes, and the database commands
run in-process against each backend."""

from __future__ import annotations

import io
import logging
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.cli.main import build_parser
from bot.logging_setup import MaskingFilter, mask, setup_logging
from storage.migrate import current_revision
from storage.models import Unit, UnitHead
from tests.cli_support import PYTHON, REPO, run_main, subprocess_env
from tests.conftest import engine_for
from tests.contract_data import UNITS_YAML


def test_python_dash_m_bot_help_lists_the_commands() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "bot", "--help"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for command in ("serve", "demo", "db", "units", "cases"):
        assert command in result.stdout


def test_every_contract_command_parses() -> None:
    parser = build_parser()
    for argv in (
        ["serve"],
        ["demo"],
        ["demo", "--no-serve"],
        ["db", "upgrade"],
        ["units", "load", "units.yaml"],
        ["cases", "import", "cases.csv"],
    ):
        assert callable(parser.parse_args(argv).run), argv


async def test_db_upgrade_migrates_an_empty_database(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIPAS_DATABASE_URL", database_url)
    assert await run_main(["db", "upgrade"]) == 0
    engine = engine_for(database_url)
    try:
        revision = await current_revision(engine)
    finally:
        await engine.dispose()
    assert revision is not None
    assert f"is at revision {revision}" in capsys.readouterr().out
    assert await run_main(["db", "upgrade"]) == 0  # twice is a no-op, not an error


async def test_units_load_creates_then_updates_nothing(
    migrated_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SIPAS_DATABASE_URL", migrated_database_url)
    units_file = tmp_path / "units.yaml"
    units_file.write_text(UNITS_YAML, encoding="utf-8")

    assert await run_main(["units", "load", str(units_file)]) == 0
    assert "2 units created, 0 updated, 1 digest recipients" in capsys.readouterr().out
    assert await run_main(["units", "load", str(units_file)]) == 0
    assert "0 units created, 0 updated" in capsys.readouterr().out

    engine = engine_for(migrated_database_url)
    try:
        async with engine.connect() as connection:
            units = (await connection.execute(select(Unit.code, Unit.name))).all()
            heads = await connection.scalar(select(func.count()).select_from(UnitHead))
    finally:
        await engine.dispose()
    assert sorted(units) == [("HN", "UBND thành phố Hà Nội"), ("HN-LB", "UBND quận Long Biên")]
    assert heads == 2


async def test_units_load_reports_each_bad_field_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIPAS_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'sipas.db'}")
    units_file = tmp_path / "units.yaml"
    units_file.write_text(
        "units:\n  - {code: HN-LB, name: UBND quận Long Biên, parent: HN}\n", encoding="utf-8"
    )
    assert await run_main(["units", "load", str(units_file)]) == 1
    err = capsys.readouterr().err
    assert "units[0].parent: unknown unit 'HN'" in err
    assert "Traceback" not in err


async def test_units_load_of_a_missing_file_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIPAS_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'sipas.db'}")
    assert await run_main(["units", "load", str(tmp_path / "nowhere.yaml")]) == 1
    assert "file: cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SIPAS_HTTP_PORT", "eighty"),
        ("SIPAS_SURVEY_DELAY", "soon"),
        ("SIPAS_TIMEZONE", "Mars/Olympus"),
        ("SIPAS_LOG_LEVEL", "LOUD"),
    ],
)
async def test_a_bad_setting_exits_2_naming_the_variable(
    variable: str,
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SIPAS_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'sipas.db'}")
    monkeypatch.setenv(variable, value)
    assert await run_main(["db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert variable in err
    assert "Traceback" not in err


async def test_serve_refuses_to_start_without_api_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "sipas.db"
    monkeypatch.setenv("SIPAS_DATABASE_URL", f"sqlite+aiosqlite:///{database}")
    assert await run_main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "SIPAS_API_TOKENS is not set" in err
    assert "comma-separated tokens" in err
    assert not database.exists()  # refused before touching anything


async def test_an_unreachable_database_fails_fast_with_the_password_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIPAS_DATABASE_URL", "postgresql+asyncpg://sipas:s3cret@127.0.0.1:9/sipas")
    monkeypatch.setenv("SIPAS_API_TOKENS", "token-1")
    assert await run_main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the database at postgresql+asyncpg://sipas:***@127.0.0.1:9/sipas" in err
    assert "s3cret" not in err


def test_a_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("message", "hidden", "kept"),
    [
        ("citizen 0912345678 answered", "0912345678", "citizen <phone> answered"),
        ("call +84 912 345 678 now", "912 345 678", "call <phone> now"),
        ("sms to 84912345678", "84912345678", "sms to <phone>"),
        ("phone 0912.345.678", "0912.345.678", "phone <phone>"),
        (
            "GET https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/getMe",
            "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
            "/bot<bot-token>/getMe",
        ),
        ("header Authorization: Bearer abc.DEF-123", "abc.DEF-123", "Bearer ***"),
        (
            "GET http://127.0.0.1:8080/s/pLHpW6rxoZBkN-UZ0gcvwj9WOiNV22Lm?lang=en failed",
            "pLHpW6rxoZBkN-UZ0gcvwj9WOiNV22Lm",
            "http://127.0.0.1:8080/s/***?lang=en failed",
        ),
        (
            "db postgresql+asyncpg://sipas:hunter2@db:5432/sipas",
            "hunter2",
            "postgresql+asyncpg://sipas:***@db:5432/sipas",
        ),
    ],
)
def test_the_log_filter_masks_personal_data_and_secrets(
    message: str, hidden: str, kept: str
) -> None:
    masked = mask(message)
    assert hidden not in masked
    assert kept in masked


def test_the_log_filter_leaves_case_codes_dates_and_ports_alone() -> None:
    message = "case 000.00.12.H26-261122-0001 due 2026-11-25T17:00:00+07:00 on port 8080"
    assert mask(message) == message


def test_masking_applies_to_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.masking")
    logger.addFilter(MaskingFilter())
    try:
        try:
            raise ValueError("bad phone 0987654321")
        except ValueError:
            logger.exception("intake failed for %s", "0912345678")
    finally:
        logger.filters.clear()
    record = caplog.records[-1]
    assert record.getMessage() == "intake failed for <phone>"
    assert record.exc_text is not None
    assert "0987654321" not in record.exc_text


def test_debug_logs_keep_the_libraries_that_log_message_texts_at_info() -> None:
    """SIPAS_LOG_LEVEL=DEBUG shows the service's own lines, not python-telegram-bot's and the
    HTTP client's, which quote each call's chat id and text in clear."""
    stream = io.StringIO()
    root = logging.getLogger()
    level, kept = root.level, [logging.getLogger(n).level for n in ("telegram", "httpcore")]
    try:
        setup_logging("DEBUG", stream=stream)
        logging.getLogger("bot.outbox.dispatcher").debug("outbox 7 sent to tg:…0400")
        logging.getLogger("telegram.ext.ExtBot").debug(
            "Calling Bot API endpoint `sendMessage` with parameters "
            "{'chat_id': 7000400, 'text': 'Kính gửi Ông Nguyễn Văn An'}"
        )
        logging.getLogger("httpcore.http11").debug("send_request_body.started")
    finally:
        for handler in [h for h in root.handlers if getattr(h, "_sipas", False)]:
            root.removeHandler(handler)
        root.setLevel(level)
        for name, old in zip(("telegram", "httpcore"), kept, strict=True):
            logging.getLogger(name).setLevel(old)
    written = stream.getvalue()
    assert "outbox 7 sent to tg:…0400" in written
    assert "7000400" not in written and "Nguyễn" not in written
    assert "send_request_body" not in written


@pytest.mark.parametrize("count", ["-5", "0", "many", "1000000"])
def test_demo_refuses_a_case_count_that_makes_no_sense(
    count: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["demo", "--cases", count])
    assert exited.value.code == 2
    assert "--cases" in capsys.readouterr().err


def test_demo_takes_a_sensible_case_count() -> None:
    assert build_parser().parse_args(["demo", "--cases", "40"]).cases == 40
