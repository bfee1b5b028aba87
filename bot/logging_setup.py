"""Logging for the whole process: one concise format, the level from SIPAS_LOG_LEVEL, and a
filter that masks personal data and secrets should they ever reach a log message.

The code never logs tokens, phone numbers or names on purpose; the mask is the safety net
for what slips through (an exception text quoting a request, a library logging a URL with
the bot token in it). Masked: Vietnamese phone numbers (`09xxxxxxxx`, `+84…`, `84…`),
Telegram bot tokens (`123456:ABC…`), `Bearer …` credentials and passwords in database URLs,
and the tokens of survey and dashboard sign-in links in paths.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Final

from bot.config import SettingsError

FORMAT: Final = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT: Final = "%Y-%m-%d %H:%M:%S"

# Order matters: a bot token contains digits a phone pattern could bite into, and a URL
# password may hold anything, so the wider patterns run first.
_MASKS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # user:password@ in any URL (database URLs, proxies).
    (re.compile(r"(?P<keep>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)[^@\s]+(?=@)"), r"\g<keep>***"),
    # Telegram bot tokens: digits, a colon, then 30+ URL-safe characters.
    (re.compile(r"(?<!\d)\d{6,12}:[A-Za-z0-9_-]{30,}"), "<bot-token>"),
    # Authorization headers and the like.
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***"),
    # The link token in a web survey path (/s/<token>): whoever holds it can answer the survey.
    (re.compile(r"(/s/)[A-Za-z0-9_-]{8,64}"), r"\1***"),
    # A dashboard sign-in link (/dashboard/login/<token>): whoever holds it can sign in once.
    (re.compile(r"(/dashboard/login/)[A-Za-z0-9_-]{8,64}"), r"\1***"),
    # Vietnamese phone numbers: 0 + 9-10 digits, +84/84 + 9-10 digits, with common separators.
    (
        re.compile(r"(?<![\w+])(?:\+84|84|0)(?:[\s.-]?\d){9,10}(?!\d)"),
        "<phone>",
    ),
)


def mask(text: str) -> str:
    """The text with phone numbers, bot tokens, bearer credentials and URL passwords hidden."""
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


class MaskingFilter(logging.Filter):
    """Renders each record's message once, masked, so no handler ever sees the clear text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # A broken format string is a bug elsewhere; let the handler report it as usual.
            return True
        masked = mask(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        record.msg = masked
        record.args = None
        return True


def setup_logging(level: str = "INFO", *, stream: object = None) -> None:
    """Configures the root logger; safe to call more than once (tests, the demo then serve)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_sipas", False):
            root.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler._sipas = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(MaskingFilter())
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    # Libraries that log every request or poll at INFO drown out the service's own lines.
    for noisy in ("httpx", "aiohttp.access", "apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # At DEBUG these log each call's parameters and bodies: chat ids, names and message texts
    # no mask can tell apart. SIPAS_LOG_LEVEL=DEBUG is for the service's own lines (its sends
    # with masked addresses), so they never go below INFO.
    for talkative in ("telegram", "httpcore", "hpack"):
        # Above DEBUG they follow the root (and a later call at another level with it).
        logging.getLogger(talkative).setLevel(logging.INFO if root.level < logging.INFO else 0)


def parse_level(name: str) -> int:
    """`DEBUG`, `INFO`, `WARNING`, `ERROR` (any case); anything else is a settings error."""
    value = logging.getLevelName(name.strip().upper())
    if not isinstance(value, int):
        raise SettingsError(
            f"SIPAS_LOG_LEVEL: {name!r} is not a log level; use DEBUG, INFO, WARNING or ERROR"
        )
    return value
