"""Every `SIPAS_*` variable of docs/contract.md section 2: its default, an override, and a bad value
that stops start-up with a message naming the variable."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr

from bot.config import (
    Settings,
    SettingsError,
    WeeklySchedule,
    load_settings,
    masked_token,
    parse_duration,
)
from handlers.policy import QuietHours


def test_defaults_are_the_contracts() -> None:
    settings = load_settings()

    assert settings.database_url == "sqlite+aiosqlite:///./sipas.db"
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)
    assert settings.public_url == "http://127.0.0.1:8080"
    assert settings.api_tokens == []
    assert settings.api_token_values() == frozenset()
    assert settings.timezone == ZoneInfo("Asia/Ho_Chi_Minh")
    assert settings.locale == "vi"
    assert settings.units_file is None
    assert settings.telegram_token is None
    assert settings.telegram_api_url == "https://api.telegram.org/bot"
    assert settings.telegram_mode == "polling"
    assert settings.telegram_webhook_secret is None
    assert settings.zalo_token is None
    assert settings.zalo_api_url.startswith("https://")
    assert settings.zalo_mode == "polling"
    assert settings.zalo_webhook_secret is None
    assert settings.survey_delay == timedelta(0)
    assert settings.quiet_hours == QuietHours(time(21, 0), time(7, 0))
    assert settings.reminder_after == timedelta(hours=24)
    assert settings.survey_expires_after == timedelta(days=7)
    assert settings.escalation_ack_sla == timedelta(hours=8)
    assert settings.escalation_resolve_sla == timedelta(days=10)
    assert settings.working_calendar == "vn"
    assert settings.digest_schedule == WeeklySchedule(0, time(7, 30))
    assert settings.digest_min_responses == 5


def test_every_variable_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    units = tmp_path / "units.yaml"
    units.write_text("units: []\n", encoding="utf-8")
    environment = {
        "SIPAS_DATABASE_URL": "postgresql+asyncpg://sipas@db.example/sipas",
        "SIPAS_HTTP_HOST": "0.0.0.0",
        "SIPAS_HTTP_PORT": "9090",
        "SIPAS_PUBLIC_URL": "https://gopy.example.gov.vn/",
        "SIPAS_API_TOKENS": " one , two,,three ",
        "SIPAS_TIMEZONE": "Asia/Bangkok",
        "SIPAS_LOCALE": "en",
        "SIPAS_UNITS_FILE": str(units),
        "SIPAS_TELEGRAM_TOKEN": "123:abc",
        "SIPAS_TELEGRAM_API_URL": "http://127.0.0.1:8081/bot/",
        "SIPAS_TELEGRAM_MODE": "webhook",
        "SIPAS_TELEGRAM_WEBHOOK_SECRET": "tg-secret",
        "SIPAS_ZALO_TOKEN": "zalo-token",
        "SIPAS_ZALO_API_URL": "http://127.0.0.1:8082/zalo",
        "SIPAS_ZALO_MODE": "webhook",
        "SIPAS_ZALO_WEBHOOK_SECRET": "zalo-secret",
        "SIPAS_SURVEY_DELAY": "30s",
        "SIPAS_QUIET_HOURS": "22:30-06:15",
        "SIPAS_REMINDER_AFTER": "10m",
        "SIPAS_SURVEY_EXPIRES_AFTER": "2d",
        "SIPAS_ESCALATION_ACK_SLA": "4h",
        "SIPAS_ESCALATION_RESOLVE_SLA": "5d",
        "SIPAS_WORKING_CALENDAR": "always",
        "SIPAS_DIGEST_SCHEDULE": "fri 16:45",
        "SIPAS_DIGEST_MIN_RESPONSES": "3",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    settings = load_settings()

    assert settings.database_url == "postgresql+asyncpg://sipas@db.example/sipas"
    assert (settings.http_host, settings.http_port) == ("0.0.0.0", 9090)
    assert settings.public_url == "https://gopy.example.gov.vn"
    assert settings.api_token_values() == {"one", "two", "three"}
    assert settings.timezone == ZoneInfo("Asia/Bangkok")
    assert settings.locale == "en"
    assert settings.units_file == units
    assert settings.telegram_token is not None
    assert settings.telegram_token.get_secret_value() == "123:abc"
    assert settings.telegram_api_url == "http://127.0.0.1:8081/bot"
    assert settings.telegram_mode == "webhook"
    assert settings.telegram_webhook_secret is not None
    assert settings.telegram_webhook_secret.get_secret_value() == "tg-secret"
    assert settings.zalo_token is not None
    assert settings.zalo_token.get_secret_value() == "zalo-token"
    assert settings.zalo_api_url == "http://127.0.0.1:8082/zalo"
    assert settings.zalo_mode == "webhook"
    assert settings.zalo_webhook_secret is not None
    assert settings.zalo_webhook_secret.get_secret_value() == "zalo-secret"
    assert settings.survey_delay == timedelta(seconds=30)
    assert settings.quiet_hours == QuietHours(time(22, 30), time(6, 15))
    assert settings.reminder_after == timedelta(minutes=10)
    assert settings.survey_expires_after == timedelta(days=2)
    assert settings.escalation_ack_sla == timedelta(hours=4)
    assert settings.escalation_resolve_sla == timedelta(days=5)
    assert settings.working_calendar == "always"
    assert settings.digest_schedule == WeeklySchedule(4, time(16, 45))
    assert settings.digest_min_responses == 3
    # Secrets never show in a printed settings object.
    assert "tg-secret" not in repr(settings)
    assert "one" not in str(settings.api_tokens)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("8h", timedelta(hours=8)),
        ("2d", timedelta(days=2)),
        ("0s", timedelta(0)),
        (" 5m ", timedelta(minutes=5)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_none_disables_quiet_hours_and_reminders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPAS_QUIET_HOURS", "none")
    monkeypatch.setenv("SIPAS_REMINDER_AFTER", "none")
    settings = load_settings()
    assert settings.quiet_hours is None
    assert settings.reminder_after is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
        ("sqlite+aiosqlite:////var/lib/sipas.db", "sqlite+aiosqlite:////var/lib/sipas.db"),
    ],
)
def test_database_urls_get_the_async_driver(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    monkeypatch.setenv("SIPAS_DATABASE_URL", url)
    assert load_settings().database_url == expected


@pytest.mark.parametrize("day", ["mon", "Monday", "MON"])
def test_digest_schedule_takes_short_and_long_day_names(
    monkeypatch: pytest.MonkeyPatch, day: str
) -> None:
    monkeypatch.setenv("SIPAS_DIGEST_SCHEDULE", f"{day} 7:05")
    assert load_settings().digest_schedule == WeeklySchedule(0, time(7, 5))


BAD_VALUES = [
    ("SIPAS_DATABASE_URL", "mysql://root@localhost/sipas"),
    ("SIPAS_DATABASE_URL", "sipas.db"),
    ("SIPAS_HTTP_PORT", "eighty"),
    ("SIPAS_HTTP_PORT", "70000"),
    ("SIPAS_HTTP_PORT", "-1"),
    ("SIPAS_PUBLIC_URL", "gopy.example.gov.vn"),
    ("SIPAS_TIMEZONE", "Mars/Olympus_Mons"),
    ("SIPAS_TIMEZONE", "../../etc/passwd"),
    ("SIPAS_LOCALE", "fr"),
    ("SIPAS_TELEGRAM_API_URL", "api.telegram.org"),
    ("SIPAS_TELEGRAM_MODE", "push"),
    ("SIPAS_ZALO_MODE", "Polling!"),
    ("SIPAS_SURVEY_DELAY", "soon"),
    ("SIPAS_SURVEY_DELAY", "1.5h"),
    ("SIPAS_SURVEY_DELAY", "-1h"),
    ("SIPAS_SURVEY_DELAY", "none"),
    ("SIPAS_SURVEY_DELAY", "2w"),
    ("SIPAS_QUIET_HOURS", "21:00"),
    ("SIPAS_QUIET_HOURS", "25:00-07:00"),
    ("SIPAS_QUIET_HOURS", "21:00-07:60"),
    ("SIPAS_QUIET_HOURS", "21:00-21:00"),
    ("SIPAS_QUIET_HOURS", "evening"),
    ("SIPAS_REMINDER_AFTER", "tomorrow"),
    ("SIPAS_SURVEY_EXPIRES_AFTER", "7 days"),
    ("SIPAS_ESCALATION_ACK_SLA", "8 hours"),
    ("SIPAS_ESCALATION_RESOLVE_SLA", "ten days"),
    ("SIPAS_WORKING_CALENDAR", "lunar"),
    ("SIPAS_DIGEST_SCHEDULE", "07:30"),
    ("SIPAS_DIGEST_SCHEDULE", "mon 7:30pm"),
    ("SIPAS_DIGEST_SCHEDULE", "funday 07:30"),
    ("SIPAS_DIGEST_SCHEDULE", "monkey 07:30"),
    ("SIPAS_DIGEST_SCHEDULE", "mon 24:00"),
    ("SIPAS_DIGEST_MIN_RESPONSES", "0"),
    ("SIPAS_DIGEST_MIN_RESPONSES", "five"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_a_units_file_that_is_not_there_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SIPAS_UNITS_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(SettingsError, match="SIPAS_UNITS_FILE"):
        load_settings()
    monkeypatch.setenv("SIPAS_UNITS_FILE", str(tmp_path))  # a directory
    with pytest.raises(SettingsError, match="SIPAS_UNITS_FILE"):
        load_settings()


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPAS_LOCALE", "fr")
    monkeypatch.setenv("SIPAS_SURVEY_DELAY", "soon")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "SIPAS_LOCALE" in str(raised.value)
    assert "SIPAS_SURVEY_DELAY" in str(raised.value)


@pytest.mark.parametrize("channel", ["TELEGRAM", "ZALO"])
def test_webhook_mode_without_its_secret_is_refused(
    monkeypatch: pytest.MonkeyPatch, channel: str
) -> None:
    monkeypatch.setenv("SIPAS_PUBLIC_URL", "https://gopy.example.gov.vn")
    monkeypatch.setenv(f"SIPAS_{channel}_TOKEN", "token")
    monkeypatch.setenv(f"SIPAS_{channel}_MODE", "webhook")
    with pytest.raises(SettingsError, match=f"SIPAS_{channel}_WEBHOOK_SECRET"):
        load_settings()
    monkeypatch.setenv(f"SIPAS_{channel}_WEBHOOK_SECRET", "s3cret")
    settings = load_settings()
    assert getattr(settings, f"{channel.lower()}_mode") == "webhook"


def test_webhook_mode_needs_an_https_public_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPAS_TELEGRAM_TOKEN", "token")
    monkeypatch.setenv("SIPAS_TELEGRAM_MODE", "webhook")
    monkeypatch.setenv("SIPAS_TELEGRAM_WEBHOOK_SECRET", "s3cret")
    with pytest.raises(SettingsError, match="SIPAS_PUBLIC_URL"):
        load_settings()


def test_polling_mode_needs_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPAS_TELEGRAM_TOKEN", "token")
    monkeypatch.setenv("SIPAS_ZALO_TOKEN", "token")
    settings = load_settings()
    assert (settings.telegram_mode, settings.zalo_mode) == ("polling", "polling")


def test_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPAS_LOCALE", "en")
    settings = load_settings(locale="vi", api_tokens="a,b")
    assert settings.locale == "vi"
    assert settings.api_token_values() == {"a", "b"}
    assert isinstance(settings, Settings)


@pytest.mark.parametrize("name", ["SIPAS_REMINDER_AFTER", "SIPAS_ESCALATION_ACK_SLA"])
def test_a_bare_number_is_no_duration(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "5")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert f"{name}: '5' has no unit; write 5s, 5m, 5h or 5d" in str(raised.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SIPAS_HTTP_PORT", "eighty", "'eighty' is not a whole number, e.g. 8080"),
        (
            "SIPAS_HTTP_PORT",
            "70000",
            "'70000' is out of range: it must be at most 65535, e.g. 8080",
        ),
        ("SIPAS_DIGEST_MIN_RESPONSES", "0", "'0' is out of range: it must be at least 1, e.g. 5"),
        ("SIPAS_LOCALE", "fr", "'fr' is not allowed; use 'vi' or 'en'"),
    ],
)
def test_bad_values_are_explained_in_the_projects_words(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert f"{name}: {message}" in str(raised.value)
    assert "Input should" not in str(raised.value)


@pytest.mark.parametrize("channel", ["TELEGRAM", "ZALO"])
def test_a_token_pasted_with_spaces_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, channel: str
) -> None:
    monkeypatch.setenv(f"SIPAS_{channel}_TOKEN", "7123456789:AAHsecret part")
    with pytest.raises(SettingsError, match=f"SIPAS_{channel}_TOKEN") as raised:
        load_settings()
    assert "AAHsecret" not in str(raised.value)


def test_tokens_are_shown_masked() -> None:
    assert masked_token("7123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw") == "7123456789:***"
    assert masked_token(SecretStr("zalo-secret")) == "***"
    assert masked_token(None) == "(not set)"
