"""Typed settings from the `SIPAS_*` environment (docs/contract.md section 2).

One `Settings` object is built in `__main__` and passed down; nothing reads the environment
anywhere else. A bad value stops start-up with a message naming the variable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from handlers.policy import QuietHours

ENV_PREFIX = "SIPAS_"
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# `mon` or `monday`; not any word that happens to begin like a day (`monkey`).
_DAY_NAMES = {name: day for day, full in enumerate(_FULL_DAYS) for name in (full[:3], full)}


class SettingsError(Exception):
    """A configuration value is wrong; the message names the variable."""


def parse_duration(value: object) -> timedelta:
    """`30s`, `10m`, `8h`, `2d`. A bare number is refused: `5` could mean any of them."""
    if isinstance(value, timedelta):
        return value
    text = str(value).strip().lower()
    if text.isdigit():
        raise ValueError(f"{text!r} has no unit; write {text}s, {text}m, {text}h or {text}d")
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{value!r} is not a duration; write it like 30s, 10m, 8h or 2d")
    return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])


def _optional_duration(value: object) -> timedelta | None:
    if value is None or str(value).strip().lower() in {"none", "off", ""}:
        return None
    return parse_duration(value)


def _parse_clock(text: str) -> time:
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", text)
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"{text!r} is not a time of day; write it like 07:30")
    return time(int(match[1]), int(match[2]))


def _parse_quiet_hours(value: object) -> QuietHours | None:
    if value is None or isinstance(value, QuietHours):
        return value
    text = str(value).strip().lower()
    if text in {"none", "off", ""}:
        return None
    parts = text.split("-")
    if len(parts) != 2:
        raise ValueError(f"{value!r} is not a window; write it like 21:00-07:00, or none")
    start, end = (_parse_clock(part) for part in parts)
    if start == end:
        raise ValueError("quiet hours must not start and end at the same time")
    return QuietHours(start, end)


@dataclass(frozen=True)
class WeeklySchedule:
    """A weekday and a local time of day, e.g. `mon 07:30`."""

    weekday: int  # 0 = Monday, as datetime.weekday()
    at: time

    @property
    def day_name(self) -> str:
        return _WEEKDAYS[self.weekday]


def _parse_schedule(value: object) -> WeeklySchedule:
    if isinstance(value, WeeklySchedule):
        return value
    parts = str(value).strip().lower().split()
    if len(parts) != 2 or parts[0] not in _DAY_NAMES:
        raise ValueError(f"{value!r} is not a weekly time; write it like 'mon 07:30'")
    return WeeklySchedule(_DAY_NAMES[parts[0]], _parse_clock(parts[1]))


def _parse_tokens(value: object) -> list[SecretStr]:
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    tokens = [
        item if isinstance(item, SecretStr) else SecretStr(str(item).strip()) for item in items
    ]
    return [token for token in tokens if token.get_secret_value()]


def _parse_dates(value: object) -> list[date]:
    """Comma-separated ISO dates, e.g. `2026-08-22,2027-02-20`."""
    if value is None or isinstance(value, list):
        return list(value or [])
    dates = []
    for part in str(value).split(","):
        if part.strip():
            try:
                dates.append(date.fromisoformat(part.strip()))
            except ValueError:
                raise ValueError(f"{part.strip()!r} is not a date; write YYYY-MM-DD") from None
    return dates


def _parse_timezone(value: object) -> ZoneInfo:
    if isinstance(value, ZoneInfo):
        return value
    try:
        return ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{value!r} is not an IANA time zone, e.g. Asia/Ho_Chi_Minh") from exc


def masked_token(token: SecretStr | str | None) -> str:
    """A bot token as it may be shown: the bot's public id before the colon, the secret hidden."""
    if token is None:
        return "(not set)"
    text = token.get_secret_value() if isinstance(token, SecretStr) else token
    head, colon, _ = text.partition(":")
    if colon and head.isdigit():
        return f"{head}:***"
    return "***"


def token_rejected(
    variable: str,
    token: SecretStr | None,
    platform: str,
    api_url: str,
    advice: str = "set the token the platform gave the bot",
) -> SettingsError:
    """The one line an operator reads when a platform refuses a bot token (exit code 2)."""
    return SettingsError(
        f"{variable} ({masked_token(token)}) was rejected by {platform} at {api_url}: {advice}"
    )


def _parse_bot_token(value: object) -> SecretStr | None:
    """A token pasted with quotes, spaces or a line break inside is refused, never echoed."""
    if value is None:
        return None
    text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    text = text.strip()
    if not text:
        return None
    if any(char.isspace() or char in "\"'<>" for char in text):
        raise ValueError(
            "holds spaces, quotes or a line break; paste the token alone, e.g. 123456789:AAH..."
        )
    return SecretStr(text)


BotToken = Annotated[SecretStr | None, BeforeValidator(_parse_bot_token)]
Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
OptionalDuration = Annotated[timedelta | None, BeforeValidator(_optional_duration)]


class Settings(BaseSettings):
    """Every setting of the service; see docs/contract.md section 2 for the meaning of each."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, arbitrary_types_allowed=True
    )

    database_url: str = "sqlite+aiosqlite:///./sipas.db"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    public_url: str = "http://127.0.0.1:8080"
    api_tokens: Annotated[list[SecretStr], NoDecode, BeforeValidator(_parse_tokens)] = []
    timezone: Annotated[ZoneInfo, BeforeValidator(_parse_timezone)] = ZoneInfo("Asia/Ho_Chi_Minh")
    locale: Literal["vi", "en"] = "vi"
    units_file: Path | None = None

    telegram_token: BotToken = None
    telegram_api_url: str = "https://api.telegram.org/bot"
    telegram_mode: Literal["polling", "webhook"] = "polling"
    telegram_webhook_secret: SecretStr | None = None
    # Known from getMe once the bot is up; setting it avoids a call at start-up.
    telegram_bot_username: str | None = None

    zalo_token: BotToken = None
    zalo_api_url: str = "https://bot-api.zaloplatforms.com/bot"
    zalo_mode: Literal["polling", "webhook"] = "polling"
    zalo_webhook_secret: SecretStr | None = None

    survey_delay: Duration = timedelta(0)
    quiet_hours: Annotated[QuietHours | None, BeforeValidator(_parse_quiet_hours)] = QuietHours(
        time(21, 0), time(7, 0)
    )
    reminder_after: OptionalDuration = timedelta(hours=24)
    survey_expires_after: Duration = timedelta(days=7)
    questionnaire: str = "sipas-short"

    escalation_ack_sla: Duration = timedelta(hours=8)
    escalation_resolve_sla: Duration = timedelta(days=10)
    working_calendar: Literal["vn", "always"] = "vn"
    # Extensions: Saturdays the government declares working days, and local days off.
    working_makeup_days: Annotated[list[date], NoDecode, BeforeValidator(_parse_dates)] = []
    working_extra_days_off: Annotated[list[date], NoDecode, BeforeValidator(_parse_dates)] = []

    # NoDecode: pydantic-settings would otherwise read a dataclass from the environment as JSON.
    digest_schedule: Annotated[WeeklySchedule, NoDecode, BeforeValidator(_parse_schedule)] = (
        WeeklySchedule(0, time(7, 30))
    )
    digest_min_responses: int = Field(default=5, ge=1)

    # Dispatcher limits (docs/design.md: the limit is configuration).
    send_rate_global: float = Field(default=30.0, gt=0)
    send_rate_per_chat: float = Field(default=1.0, gt=0)
    # Zalo publishes no limits for bots: conservative defaults, raise them when Zalo allows.
    zalo_send_rate_global: float = Field(default=5.0, gt=0)
    zalo_send_rate_per_chat: float = Field(default=0.5, gt=0)
    link_token_ttl: Duration = timedelta(days=90)
    # A chat platform unreachable at start-up is retried with backoff up to this interval.
    channel_retry_max: Duration = timedelta(seconds=60)
    log_level: str = "INFO"
    # Extension: what the receipt's QR code opens (the web survey page, or a chat deep link).
    qr_target: Literal["web", "telegram", "zalo"] = "web"

    @field_validator("public_url", "telegram_api_url", "zalo_api_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("units_file")
    @classmethod
    def _units_file_exists(cls, value: Path | None) -> Path | None:
        # Checked here so that start-up names SIPAS_UNITS_FILE, not just a missing path.
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        if value.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + value.split(":///", 1)[1]
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB")
        return value

    def check_webhooks(self) -> None:
        """Webhook mode without its secret would accept forged updates from anyone."""
        telegram_webhook = self.telegram_token and self.telegram_mode == "webhook"
        if telegram_webhook and not self.telegram_webhook_secret:
            raise SettingsError(
                "SIPAS_TELEGRAM_WEBHOOK_SECRET is required when SIPAS_TELEGRAM_MODE=webhook"
            )
        webhooks = bool(telegram_webhook) or bool(self.zalo_token and self.zalo_mode == "webhook")
        if webhooks and not self.public_url.startswith("https://"):
            raise SettingsError(
                "SIPAS_PUBLIC_URL must be an https:// address in webhook mode: the platforms "
                "deliver updates only over HTTPS"
            )
        if self.zalo_token and self.zalo_mode == "webhook" and not self.zalo_webhook_secret:
            raise SettingsError(
                "SIPAS_ZALO_WEBHOOK_SECRET is required when SIPAS_ZALO_MODE=webhook"
            )

    def check_qr_target(self) -> None:
        """A QR code pointing at a chat the service does not run would lead nowhere."""
        token = {"telegram": self.telegram_token, "zalo": self.zalo_token}.get(self.qr_target)
        if self.qr_target != "web" and token is None:
            raise SettingsError(
                f"SIPAS_QR_TARGET={self.qr_target} needs SIPAS_{self.qr_target.upper()}_TOKEN: "
                "the QR code would open a chat this service does not run; set the token, or "
                "use SIPAS_QR_TARGET=web (the default: the web survey page)"
            )

    def api_token_values(self) -> frozenset[str]:
        return frozenset(token.get_secret_value() for token in self.api_tokens)


def telegram_token_rejected(settings: Settings) -> SettingsError:
    return token_rejected(
        "SIPAS_TELEGRAM_TOKEN",
        settings.telegram_token,
        "Telegram",
        settings.telegram_api_url,
        "set the token @BotFather gave the bot",
    )


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment; errors name the `SIPAS_*` variable."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            lines.append(f"{ENV_PREFIX}{field.upper()}: {_in_our_words(field, error)}")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    settings.check_webhooks()
    settings.check_qr_target()
    return settings


# An example of a good value, for the fields whose errors come from pydantic's own checks.
_EXAMPLES = {
    "http_port": "8080",
    "digest_min_responses": "5",
    "send_rate_global": "30",
    "send_rate_per_chat": "1",
    "zalo_send_rate_global": "5",
    "zalo_send_rate_per_chat": "0.5",
}


def _in_our_words(field: str, error: Any) -> str:
    """pydantic's message for a bad value, said as the project says it (what is allowed)."""
    kind = error["type"]
    given = error.get("input")
    context = error.get("ctx") or {}
    example = f", e.g. {_EXAMPLES[field]}" if field in _EXAMPLES else ""
    shown = repr(given) if isinstance(given, str | int | float) and "token" not in field else "it"
    if kind == "int_parsing":
        return f"{shown} is not a whole number{example}"
    if kind == "float_parsing":
        return f"{shown} is not a number{example}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("more than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"{shown} is out of range: it must be {words} {context.get(key)}{example}"
    if kind == "literal_error":
        return f"{shown} is not allowed; use {context.get('expected')}"
    return str(error["msg"]).removeprefix("Value error, ")
