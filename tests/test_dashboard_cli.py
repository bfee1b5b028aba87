"""`sipas-bot dashboard link UNIT_CODE` prints a one-time sign-in link to the officials'
dashboard (docs/contract.md sections 3 and 8), and the printed link signs a browser in."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from bot.app import build_services
from bot.config import load_settings
from bot.http.api import create_web_app
from storage.models import AuditEntry, DashboardLink
from storage.repositories.dashboard import token_hash
from tests.api_support import AiohttpClient, use_engine
from tests.cli_support import run_main
from tests.conftest import engine_for
from tests.contract_data import UNITS_YAML
from tests.web_support import read_page


async def test_link_prints_a_one_time_link_that_signs_in(
    cli_database: str,
    capsys: pytest.CaptureFixture[str],
    aiohttp_client: AiohttpClient,
) -> None:
    capsys.readouterr()
    assert await run_main(["dashboard", "link", "HN-LB"]) == 0
    link, explanation, *rest = capsys.readouterr().out.splitlines()
    assert rest == []
    assert link.startswith("http://127.0.0.1:8080/dashboard/login/")
    token = link.rsplit("/", 1)[1]
    assert len(token) >= 40
    assert "once" in explanation and "15 minutes" in explanation
    assert "HN-LB (UBND quận Long Biên)" in explanation and "below it" in explanation
    engine = engine_for(cli_database)
    try:
        async with engine.connect() as connection:
            hashes = (await connection.execute(select(DashboardLink.token_hash))).scalars().all()
            audited = (
                await connection.execute(select(AuditEntry.actor, AuditEntry.entity_id))
            ).all()
    finally:
        await engine.dispose()
    assert hashes == [token_hash(token)]
    assert [tuple(row) for row in audited] == [("cli", "HN-LB")]

    services = build_services(load_settings(database_url=cli_database.split("?")[0]))
    await services.engine.dispose()
    use_engine(services, engine_for(cli_database))
    try:
        client = await aiohttp_client(create_web_app(services))
        response = await client.get(link.removeprefix("http://127.0.0.1:8080"))
        page = await read_page(response)
        assert page.status == 200 and "UBND quận Long Biên" in page.text
        again = await read_page(await client.get(link.removeprefix("http://127.0.0.1:8080")))
        assert again.status == 410
    finally:
        await services.engine.dispose()


async def test_link_follows_the_public_url(
    cli_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIPAS_PUBLIC_URL", "https://dichvucong.example.gov.vn/sipas/")
    capsys.readouterr()
    assert await run_main(["dashboard", "link", "HN"]) == 0
    link = capsys.readouterr().out.splitlines()[0]
    assert link.startswith("https://dichvucong.example.gov.vn/sipas/dashboard/login/")


async def test_link_for_an_unknown_unit_exits_1_naming_it(
    cli_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert await run_main(["dashboard", "link", "NOPE"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = [line for line in captured.err.splitlines() if line.startswith("sipas-bot: ")]
    assert "'NOPE'" in line and "Traceback" not in captured.err


def test_link_needs_a_unit_code(capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli.main import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["dashboard", "link"])
    assert exited.value.code == 2
    assert "UNIT_CODE" in capsys.readouterr().err


async def test_link_finds_the_demos_database_when_none_is_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After `sipas-bot demo`, `sipas-bot dashboard link HN` in the same folder means the
    demo's units: with SIPAS_DATABASE_URL unset and no ./sipas.db, the demo's database is
    used, and said so; the default file is not created. With ./sipas.db there, it is used."""
    monkeypatch.chdir(tmp_path)
    demo = tmp_path / "sipas-demo" / "sipas.db"
    demo.parent.mkdir()
    monkeypatch.setenv("SIPAS_DATABASE_URL", f"sqlite+aiosqlite:///{demo}")
    units = tmp_path / "units.yaml"
    units.write_text(UNITS_YAML, encoding="utf-8")
    assert await run_main(["units", "load", str(units)]) == 0
    monkeypatch.delenv("SIPAS_DATABASE_URL")
    capsys.readouterr()

    assert await run_main(["dashboard", "link", "HN"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("http://127.0.0.1:8080/dashboard/login/")
    assert f"using the demo's database {demo}" in err
    assert not (tmp_path / "sipas.db").exists()

    (tmp_path / "sipas.db").touch()  # the operator's own database: never passed over
    assert await run_main(["dashboard", "link", "HN"]) == 1
    out, err = capsys.readouterr()
    assert "demo" not in err and "HN" in err
