"""`sipas-bot heads invite UNIT_CODE` prints a one-time deep link for a unit head."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from storage.models import HeadInvite
from tests.cli_support import free_port, run_main
from tests.conftest import engine_for
from tests.fakes.telegram_api import FakeTelegramAPI

UNITS_YAML = """
units:
  - code: HN
    name: UBND thành phố Hà Nội
"""


async def test_invite_prints_a_deep_link_with_a_fresh_token(
    cli_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIPAS_TELEGRAM_BOT_USERNAME", "sipas_hn_bot")
    capsys.readouterr()
    assert await run_main(["heads", "invite", "HN"]) == 0
    link = capsys.readouterr().out.strip()
    assert link.startswith("https://t.me/sipas_hn_bot?start=")
    token = link.split("start=")[1]
    assert 20 <= len(token) <= 64
    engine = engine_for(cli_database)
    try:
        async with engine.connect() as connection:
            stored = (await connection.execute(select(HeadInvite.token))).scalars().all()
    finally:
        await engine.dispose()
    assert stored == [token]
    assert await run_main(["heads", "invite", "HN"]) == 0
    assert capsys.readouterr().out.strip() != link  # each invite is new


async def test_invite_for_an_unknown_unit_exits_1(
    cli_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIPAS_TELEGRAM_BOT_USERNAME", "sipas_hn_bot")
    assert await run_main(["heads", "invite", "NOPE"]) == 1
    assert "NOPE" in capsys.readouterr().err


async def test_invite_without_telegram_is_a_configuration_error_exit_2(
    cli_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_main(["heads", "invite", "HN"]) == 2
    assert "SIPAS_TELEGRAM_TOKEN is not set" in capsys.readouterr().err


async def test_invite_with_a_rejected_token_exits_2_without_the_token(
    cli_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeTelegramAPI() as api:
        monkeypatch.setenv("SIPAS_TELEGRAM_TOKEN", "7123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw")
        monkeypatch.setenv("SIPAS_TELEGRAM_API_URL", api.base_url)
        assert await run_main(["heads", "invite", "HN"]) == 2
    err = capsys.readouterr().err
    assert "SIPAS_TELEGRAM_TOKEN (7123456789:***) was rejected by Telegram" in err
    assert "AAHdqTcv" not in err and "Traceback" not in err


async def test_invite_with_the_bot_api_down_exits_1_and_says_so(
    cli_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIPAS_TELEGRAM_TOKEN", "7123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw")
    monkeypatch.setenv("SIPAS_TELEGRAM_API_URL", f"http://127.0.0.1:{free_port()}/bot")
    assert await run_main(["heads", "invite", "HN"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the Telegram Bot API" in err
    assert "AAHdqTcv" not in err and "Traceback" not in err
