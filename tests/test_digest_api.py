"""`GET /api/v1/reports/weekly` and `sipas-bot digest --format json` answer the same report, in
the shape of docs/contract.md section 6; bad weeks and unknown units are named."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.api_support import (
    Api,
    api_fixture,  # noqa: F401
    make_api_fixture,  # noqa: F401
)
from tests.cli_support import run_main
from tests.digest_support import add_response

# docs/contract.md section 6, verbatim.
CONTRACT_UNIT: dict[str, Any] = {
    "unit_code": "HN-LB",
    "unit_name": "UBND quận Long Biên",
    "surveys_sent": 20,
    "responses": 12,
    "response_rate": 0.6,
    "sipas_index": 87.5,
    "factors": {
        "access": 90.0,
        "procedure": 85.0,
        "civil_servant": 80.0,
        "result": 95.0,
        "feedback_handling": 87.5,
    },
    "escalations": {"opened": 2, "open_now": 1, "sla_breaches": 0},
    "cases_overdue": 1,
    "apologies_sent": 1,
}
MID_W47 = datetime(2026, 11, 18, 3, 0, tzinfo=UTC)


def same_shape(ours: Any, contract: Any, where: str = "") -> list[str]:
    """Every key of the contract's example is there, with a value of the same JSON type."""
    if isinstance(contract, dict):
        if not isinstance(ours, dict):
            return [f"{where}: not an object"]
        problems = []
        for key, value in contract.items():
            if key not in ours:
                problems.append(f"{where}.{key}: missing")
            else:
                problems.extend(same_shape(ours[key], value, f"{where}.{key}"))
        return problems
    numeric = (int, float)
    if isinstance(contract, numeric) and not isinstance(contract, bool):
        kind = int if isinstance(contract, int) and not isinstance(contract, float) else numeric
        if isinstance(ours, bool) or not isinstance(ours, kind):
            return [f"{where}: {ours!r} is not like {contract!r}"]
        return []
    return [] if isinstance(ours, type(contract)) else [f"{where}: {ours!r} is not a string"]


async def seed(api: Api) -> None:
    async with api.services.sessions.begin() as session:
        for ratings in [(5, 5, 4, 5, 4)] * 5 + [(3, 2, 4, 5, None)]:
            await add_response(session, "HN-LB", MID_W47, ratings)
        await add_response(session, "HN-BD", MID_W47, (1, 1, 1, 1, 1))


async def test_the_api_answers_the_contracts_shape(api: Api) -> None:
    await seed(api)
    response = await api.get("/api/v1/reports/weekly?week=2026-W47")
    assert response.status == 200
    body = await response.json()
    assert body["week"] == "2026-W47" and body["timezone"] == "Asia/Ho_Chi_Minh"
    lb = next(u for u in body["units"] if u["unit_code"] == "HN-LB")
    assert same_shape(lb, CONTRACT_UNIT) == []
    assert same_shape(body["overall"], CONTRACT_UNIT) == []
    assert lb["responses"] == 6 and lb["sipas_index"] == 93.3  # 83.3, 83.3, 100, 100, 100
    bd = next(u for u in body["units"] if u["unit_code"] == "HN-BD")
    assert bd["sipas_index"] is None and bd["too_few_responses"] is True


async def test_no_week_means_last_week_and_errors_name_the_culprit(api: Api) -> None:
    await seed(api)
    api.clock.set(datetime(2026, 11, 23, 1, 0, tzinfo=UTC))  # Monday of week 48
    default = await (await api.get("/api/v1/reports/weekly")).json()
    assert default == await (await api.get("/api/v1/reports/weekly?week=2026-W47")).json()

    bad = await api.get("/api/v1/reports/weekly?week=2026-47")
    assert bad.status == 422
    assert "2026-47" in (await bad.json())["error"]["fields"]["week"]
    unknown = await api.get("/api/v1/reports/weekly?week=2026-W47&unit=HN-XX")
    assert unknown.status == 404
    assert "HN-XX" in (await unknown.json())["error"]["message"]
    assert (await api.client.get("/api/v1/reports/weekly")).status == 401


@pytest.mark.parametrize("unit", [None, "HN-LB"])
async def test_the_cli_and_the_api_agree(
    api: Api,
    unit: str | None,
    migrated_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await seed(api)
    query = "?week=2026-W47" + (f"&unit={unit}" if unit else "")
    from_api = await (await api.get("/api/v1/reports/weekly" + query)).json()

    monkeypatch.setenv("SIPAS_DATABASE_URL", migrated_database_url)
    argv = ["digest", "--week", "2026-W47", "--format", "json"] + (["--unit", unit] if unit else [])
    assert await run_main(argv) == 0
    assert json.loads(capsys.readouterr().out) == from_api


async def test_the_cli_names_a_bad_week_and_an_unknown_unit(
    api: Api,
    migrated_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SIPAS_DATABASE_URL", migrated_database_url)
    assert await run_main(["digest", "--week", "47", "--format", "json"]) == 1
    assert "'47' is not an ISO week" in capsys.readouterr().err
    assert await run_main(["digest", "--week", "2026-W47", "--unit", "HN-XX"]) == 1
    assert "unknown unit 'HN-XX'" in capsys.readouterr().err
